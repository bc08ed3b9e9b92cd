"""Connection tracking, the datapath half: the TCP transition table, timeouts, and the
encoding of conntrack keys, values and configuration (programs/ebpfw.c, EBPFW_F_CT).

The TCP table is netfilter's `tcp_conntracks` (nf_conntrack_proto_tcp.c) as data: the BPF
program reads it from ebpfw_ctcfg.tcp_rows, one 64-bit row per (direction, flag index) with
4 bits of new state per old state. Timeouts default to netfilter's and can be overridden
with EBPFW_CT_TIMEOUTS="tcp_established=600,udp=10,..." (seconds).
"""

from __future__ import annotations

import ipaddress
import os
import struct
from dataclasses import dataclass

from ..errors import EbpfwError
from .abi import CT_CFG, CT_KEY, CT_VAL, NTIMEOUTS

TCP_STATES = ("NONE", "SYN_SENT", "SYN_RECV", "ESTABLISHED", "FIN_WAIT", "CLOSE_WAIT", "LAST_ACK",
              "TIME_WAIT", "CLOSE", "SYN_SENT2")
sNO, sSS, sSR, sES, sFW, sCW, sLA, sTW, sCL, sS2, sIV, sIG = range(12)

# [direction][flag index: syn, synack, fin, ack, rst, none][old state sNO..sS2] -> new state
TCP_CONNTRACKS = (
    (   # ORIGINAL
        (sSS, sSS, sIG, sIG, sIG, sIG, sIG, sSS, sSS, sS2),   # syn
        (sIV, sIV, sSR, sIV, sIV, sIV, sIV, sIV, sIV, sSR),   # synack
        (sIV, sIV, sFW, sFW, sLA, sLA, sLA, sTW, sCL, sIV),   # fin
        (sES, sIV, sES, sES, sCW, sCW, sTW, sTW, sCL, sIV),   # ack
        (sIV, sCL, sCL, sCL, sCL, sCL, sCL, sCL, sCL, sCL),   # rst
        (sIV, sIV, sIV, sIV, sIV, sIV, sIV, sIV, sIV, sIV),   # none
    ),
    (   # REPLY
        (sIV, sS2, sIV, sIV, sIV, sIV, sIV, sSS, sIV, sS2),   # syn
        (sIV, sSR, sIG, sIG, sIG, sIG, sIG, sIG, sIG, sSR),   # synack
        (sIV, sIV, sFW, sFW, sLA, sLA, sLA, sTW, sCL, sIV),   # fin
        (sIV, sIG, sSR, sES, sCW, sCW, sTW, sTW, sCL, sIG),   # ack
        (sIV, sCL, sCL, sCL, sCL, sCL, sCL, sCL, sCL, sCL),   # rst
        (sIV, sIV, sIV, sIV, sIV, sIV, sIV, sIV, sIV, sIV),   # none
    ),
)

# timeout slot -> (name in EBPFW_CT_TIMEOUTS and /proc/sys/net/netfilter/nf_conntrack_<name>, seconds)
TIMEOUTS = {
    1: ("tcp_timeout_syn_sent", 120), 2: ("tcp_timeout_syn_recv", 60),
    3: ("tcp_timeout_established", 432000), 4: ("tcp_timeout_fin_wait", 120),
    5: ("tcp_timeout_close_wait", 60), 6: ("tcp_timeout_last_ack", 30),
    7: ("tcp_timeout_time_wait", 120), 8: ("tcp_timeout_close", 10),
    9: ("tcp_timeout_syn_sent", 120),   # SYN_SENT2 uses the SYN_SENT value
    10: ("tcp_timeout_unacknowledged", 300), 11: ("udp_timeout", 30),
    12: ("udp_timeout_stream", 120), 13: ("icmp_timeout", 30), 14: ("generic_timeout", 600),
}
SHORT_NAMES = {name.replace("_timeout", "").replace("timeout_", ""): name
               for name, _ in TIMEOUTS.values()}     # tcp_established, udp, udp_stream, icmp, ...

PROTO_NAMES = {1: "icmp", 6: "tcp", 17: "udp"}
STATUS_SEEN_REPLY, STATUS_ASSURED, STATUS_SEEDED = 1, 2, 32


def tcp_rows() -> list[int]:
    rows = []
    for d in range(2):
        for idx in range(6):
            v = 0
            for old, new in enumerate(TCP_CONNTRACKS[d][idx]):
                v |= new << (4 * old)
            rows.append(v)
    return rows


def timeouts_from_env(env: dict | None = None) -> dict[str, int]:
    """name -> seconds: netfilter's defaults, overridden by EBPFW_CT_TIMEOUTS (NAME=SECONDS,...;
    NAME as in /proc/sys/net/netfilter/nf_conntrack_NAME, with or without the 'timeout' word)."""
    env = os.environ if env is None else env
    out = {name: secs for name, secs in TIMEOUTS.values()}
    raw = env.get("EBPFW_CT_TIMEOUTS", "").strip()
    for item in filter(None, (x.strip() for x in raw.split(","))):
        name, _, val = item.partition("=")
        name = name.strip().removeprefix("nf_conntrack_")
        full = name if name in out else SHORT_NAMES.get(name)
        try:
            secs = int(val)
        except ValueError:
            secs = -1
        if full is None or secs < 1:
            known = ", ".join(sorted(SHORT_NAMES))
            raise EbpfwError(f"EBPFW_CT_TIMEOUTS: bad item {item!r}, expected NAME=SECONDS with SECONDS >= 1 "
                             f"and NAME one of {known}")
        out[full] = secs
    return out


def config_bytes(timeouts: dict[str, int] | None = None, tcp_loose: bool = True) -> bytes:
    t = timeouts or timeouts_from_env()
    ns = [0] * NTIMEOUTS
    for slot, (name, _) in TIMEOUTS.items():
        ns[slot] = t[name] * 1_000_000_000
    return CT_CFG.pack(*ns, *tcp_rows(), 1 if tcp_loose else 0, 0)


def tcp_loose_from_env(env: dict | None = None) -> bool:
    env = os.environ if env is None else env
    return env.get("EBPFW_CT_TCP_LOOSE", "1").strip() not in ("0", "no", "false")


# ---- keys and values --------------------------------------------------------------------------

ICMP_REPLY = {8: 0, 13: 14, 15: 16, 17: 18}


def _ip(b: bytes) -> str:
    return str(ipaddress.IPv4Address(b))


def make_key(proto: int, src: str, dst: str, sport: int = 0, dport: int = 0,
             icmp_type: int = 8, icmp_id: int = 0) -> tuple[bytes, bool]:
    """The table key of a flow given by its original-direction tuple; returns (key, orig_a).
    For ICMP, sport/dport are unused: the request type and id name the pseudo-connection."""
    s = ipaddress.IPv4Address(src).packed
    d = ipaddress.IPv4Address(dst).packed
    if proto == 1:
        return CT_KEY.pack(s, d, icmp_id, icmp_id, 1, icmp_type, 0), True
    if proto not in (6, 17):
        sport = dport = 0
    if (int.from_bytes(s, "big"), sport) <= (int.from_bytes(d, "big"), dport):
        return CT_KEY.pack(s, d, sport, dport, proto, 0, 0), True
    return CT_KEY.pack(d, s, dport, sport, proto, 0, 0), False


@dataclass
class Entry:
    proto: int
    src: str            # original direction
    dst: str
    sport: int
    dport: int
    icmp_type: int
    icmp_id: int
    state: str          # TCP state name, or "" for other protocols
    status: int
    expires_ns: int     # CLOCK_MONOTONIC deadline
    created_ns: int
    packets: tuple[int, int]   # original, reply
    bytes: tuple[int, int]
    key: bytes
    mark: int = 0       # the connection's mark (CONNMARK, -m connmark)

    @property
    def proto_name(self) -> str:
        return PROTO_NAMES.get(self.proto, str(self.proto))

    @property
    def seen_reply(self) -> bool:
        return bool(self.status & STATUS_SEEN_REPLY)

    @property
    def assured(self) -> bool:
        return bool(self.status & STATUS_ASSURED)

    def orig(self) -> dict:
        if self.proto == 1:
            return {"src": self.src, "dst": self.dst, "type": self.icmp_type, "id": self.icmp_id}
        if self.proto in (6, 17):
            return {"src": self.src, "dst": self.dst, "sport": self.sport, "dport": self.dport}
        return {"src": self.src, "dst": self.dst}

    def reply(self) -> dict:
        if self.proto == 1:
            return {"src": self.dst, "dst": self.src, "type": ICMP_REPLY.get(self.icmp_type, 0), "id": self.icmp_id}
        if self.proto in (6, 17):
            return {"src": self.dst, "dst": self.src, "sport": self.dport, "dport": self.sport}
        return {"src": self.dst, "dst": self.src}


def decode(key: bytes, val: bytes) -> Entry:
    a, b, ap, bp, proto, kind, _ = CT_KEY.unpack(key)
    expires, created, p0, p1, b0, b1, orig_a, state, status, _last, mark = CT_VAL.unpack(val)
    if proto == 1 or orig_a:
        src, dst, sport, dport = a, b, ap, bp
    else:
        src, dst, sport, dport = b, a, bp, ap
    return Entry(proto=proto, src=_ip(src), dst=_ip(dst), sport=sport if proto != 1 else 0,
                 dport=dport if proto != 1 else 0, icmp_type=kind if proto == 1 else 0,
                 icmp_id=ap if proto == 1 else 0,
                 state=TCP_STATES[state] if proto == 6 and state < len(TCP_STATES) else "",
                 status=status, expires_ns=expires, created_ns=created, packets=(p0, p1), bytes=(b0, b1),
                 key=key, mark=mark)


def encode_value(orig_a: bool, state: int, status: int, expires_ns: int, created_ns: int,
                 packets: tuple[int, int] = (0, 0), nbytes: tuple[int, int] = (0, 0), mark: int = 0) -> bytes:
    last = 5   # TIX_NONE: no packet seen by the datapath yet
    return CT_VAL.pack(expires_ns, created_ns, packets[0], packets[1], nbytes[0], nbytes[1],
                       1 if orig_a else 0, state, status, last, mark & 0xFFFFFFFF)


def unpack_stat_values(raw: bytes, ncpu: int) -> int:
    return sum(struct.unpack(f"<{ncpu}Q", raw))
