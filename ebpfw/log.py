"""LOG events: read the datapath's ring buffer and print the kernel's LOG lines.

Contract: `format_event(ev, names)` turns one `struct ebpfw_logev` (programs/ebpfw_abi.h: the
rule's prefix and flags, the hook, the interfaces and the first 128 bytes of the frame) into
the text nf_log_syslog (net/netfilter/nf_log_syslog.c) writes for an IPv4 packet:
`<prefix>IN=.. OUT=.. MAC=.. SRC=.. DST=.. LEN=.. TOS=.. PREC=.. TTL=.. ID=.. [CE] [DF] [MF]
[FRAG:..] [OPT (..)] PROTO=.. ...` with the kernel's trailing space (no syslog level marker and
no timestamp: dmesg adds those). `read_events()` drains the ring buffer of the applied ruleset
(`follow=True`: keep polling until stopped) and yields the lines.
MARK= is the packet's mark when the LOG rule was reached (TC: skb->mark as MARK rules before it
left it; XDP: 0, the packet has no mark before the stack), printed like the kernel's only when not
zero and only when the dump was not cut short. Not exact: --log-uid is refused at compile time; the VLAN fields of --log-macdecode are not printed (the datapath sees untagged frames); a
frame longer than 128 bytes is cut there, so long TCP/IP options print as in a truncated packet.
The ring buffer is consumed: two readers share the events between them.
"""

from __future__ import annotations

import ctypes as ct
import ipaddress
import struct
import time
from pathlib import Path
from typing import Callable, Iterator, Optional

from . import state
from .datapath import bpfsys
from .datapath.abi import LOG_CFG, LOG_EV, LOG_RING, LOGF_IPOPT, LOGF_MACDEC, LOGF_TCPOPT, LOGF_TCPSEQ
from .errors import EbpfwError, StateError

HOOKS = {0: "INPUT", 1: "FORWARD", 2: "OUTPUT"}
ICMP_REQUIRED = {0: 4, 3: 28, 4: 28, 5: 28, 8: 4, 11: 28, 12: 28, 13: 20, 14: 20, 17: 12, 18: 12}


def _ip(b: bytes) -> str:
    return str(ipaddress.IPv4Address(b))


class _Cut(str):
    """A dump that dump_ipv4_packet() ends early (`return` before its UID/MARK tail)."""


def _dump_ipv4(pkt: bytes, flags: int, wire: int, inner: bool = False, ttl_delta: int = 0) -> str:
    """dump_ipv4_packet() over `pkt` (the IP packet as captured; `wire` bytes existed). The
    result is a _Cut where the kernel returns before printing MARK= (a truncated IP header or
    options, an incomplete TCP/UDP header, truncated TCP options)."""
    if len(pkt) < 20:
        return _Cut("TRUNCATED")
    ver_ihl, tos, tot, ipid, frag, ttl, proto = struct.unpack_from("!BBHHHBB", pkt)
    out = f"SRC={_ip(pkt[12:16])} DST={_ip(pkt[16:20])} "
    out += f"LEN={tot} TOS=0x{tos & 0x1E:02X} PREC=0x{tos & 0xE0:02X} TTL={ttl - ttl_delta} ID={ipid} "
    if frag & 0x8000:
        out += "CE "
    if frag & 0x4000:
        out += "DF "
    if frag & 0x2000:
        out += "MF "
    if frag & 0x1FFF:
        out += f"FRAG:{frag & 0x1FFF} "
    ihl = (ver_ihl & 0xF) * 4
    if flags & LOGF_IPOPT and ihl > 20:
        if len(pkt) < ihl:
            return _Cut(out + "TRUNCATED")
        out += "OPT (" + pkt[20:ihl].hex().upper() + ") "
    l4 = pkt[ihl:]
    l4wire = wire - ihl
    fragment = frag & 0x1FFF
    if proto == 6:
        out += "PROTO=TCP "
        if fragment:
            return out
        if len(l4) < 20:
            return _Cut(out + f"INCOMPLETE [{l4wire} bytes] ")
        sp, dp, seq, ack, off, fl, win, _c, urg = struct.unpack_from("!HHIIBBHHH", l4)
        out += f"SPT={sp} DPT={dp} "
        if flags & LOGF_TCPSEQ:
            out += f"SEQ={seq} ACK={ack} "
        out += f"WINDOW={win} RES=0x{(off & 0x0E) << 2:02x} "
        names = [("AE", off & 0x01), ("CWR", fl & 0x80), ("ECE", fl & 0x40), ("URG", fl & 0x20),
                 ("ACK", fl & 0x10), ("PSH", fl & 0x08), ("RST", fl & 0x04), ("SYN", fl & 0x02),
                 ("FIN", fl & 0x01)]
        out += "".join(n + " " for n, on in names if on)
        out += f"URGP={urg} "
        doff = (off >> 4) * 4
        if flags & LOGF_TCPOPT and doff > 20:
            if len(l4) < doff:
                return _Cut(out + "OPT (TRUNCATED)")
            out += "OPT (" + l4[20:doff].hex().upper() + ") "
        return out
    if proto in (17, 136):
        out += "PROTO=UDP " if proto == 17 else "PROTO=UDPLITE "
        if fragment:
            return out
        if len(l4) < 8:
            return _Cut(out + f"INCOMPLETE [{l4wire} bytes] ")
        sp, dp, ulen = struct.unpack_from("!HHH", l4)
        return out + f"SPT={sp} DPT={dp} LEN={ulen} "
    if proto == 1:
        out += "PROTO=ICMP "
        if fragment:
            return out
        if len(l4) < 8:
            return out + f"INCOMPLETE [{l4wire} bytes] "
        t, c = l4[0], l4[1]
        out += f"TYPE={t} CODE={c} "
        if ICMP_REQUIRED.get(t) and l4wire < ICMP_REQUIRED[t]:
            return out + f"INCOMPLETE [{l4wire} bytes] "
        if t in (0, 8):
            ident, sq = struct.unpack_from("!HH", l4, 4)
            out += f"ID={ident} SEQ={sq} "
        elif t == 12:
            out += f"PARAMETER={l4[4]} "
        elif t in (3, 4, 5, 11):
            if t == 5:
                out += f"GATEWAY={_ip(l4[4:8])} "
            if not inner:
                out += "[" + _dump_ipv4(l4[8:], flags, l4wire - 8, inner=True) + "] "
            if t == 3 and c == 4:
                out += f"MTU={struct.unpack_from('!H', l4, 6)[0]} "
        return out
    if proto == 51:
        if fragment:
            return out
        out += "PROTO=AH "
        if len(l4) < 12:
            return out + f"INCOMPLETE [{l4wire} bytes] "
        return out + f"SPI=0x{struct.unpack_from('!I', l4, 4)[0]:x} "
    if proto == 50:
        out += "PROTO=ESP "
        if fragment:
            return out
        if len(l4) < 8:
            return out + f"INCOMPLETE [{l4wire} bytes] "
        return out + f"SPI=0x{struct.unpack_from('!I', l4, 0)[0]:x} "
    return out + f"PROTO={proto} "


def format_event(raw: bytes, names: dict[int, str]) -> str:
    """One ring buffer record -> the kernel's LOG line (see the module contract)."""
    ts, rule, hook, slot, caplen, iif, oif, wire, egress, mark, _pad, cfg, data = LOG_EV.unpack_from(raw)
    prefix, level, flags, _p, _p2 = LOG_CFG.unpack(cfg)
    frame = data[:caplen]
    out = prefix.split(b"\0", 1)[0].decode(errors="replace")
    out += f"IN={names.get(iif, '') if iif else ''} OUT={names.get(oif, '') if oif else ''} "
    if iif:   # nf_log_ip_packet dumps the MAC header only with an input device
        if flags & LOGF_MACDEC:
            out += (f"MACSRC={frame[6:12].hex(':')} MACDST={frame[0:6].hex(':')} "
                    f"MACPROTO={frame[12:14].hex()} ")
        else:
            out += "MAC=" + frame[:14].hex(":") + "  "
    # at ingress the frame is as it arrived; the kernel's FORWARD hook sees the TTL decremented;
    # raw PREROUTING judged at egress (hook 3, a forwarded packet) saw it before the decrement
    ttl_delta = 1 if hook == 1 and not egress else (-1 if hook == 3 else 0)
    dump = _dump_ipv4(frame[14:], flags, wire - 14, ttl_delta=ttl_delta)
    out += dump
    if mark and not isinstance(dump, _Cut):
        out += f"MARK=0x{mark:x} "
    return out


def _ring_path() -> Path:
    cur = state.read_json("current.json")
    if not cur:
        raise StateError("no ruleset is applied in this network namespace", hint="ebpfw apply RULESET --iface IF")
    if "log" not in cur["shape"].get("fields", []):
        raise EbpfwError("the applied ruleset has no -j LOG rule, so there are no LOG events",
                         hint="add a rule such as `-A INPUT -p tcp --syn -j LOG --log-prefix \"in: \"`")
    return Path(cur["gen_dir"]) / LOG_RING


def read_events(follow: bool = False, poll_ms: int = 200, stop: Optional[Callable[[], bool]] = None,
                max_seconds: Optional[float] = None) -> Iterator[str]:
    """The LOG lines waiting in the ring buffer; with `follow`, then every new one until `stop()`
    returns True or `max_seconds` pass (None: until interrupted). Re-opens the ring buffer when
    an apply builds new programs."""
    from bcc import libbcc
    from .netlink import host

    names = {l.ifindex: l.name for l in host.links()}
    end = time.monotonic() + max_seconds if max_seconds is not None else None
    while True:
        path = _ring_path()
        fd = bpfsys.get(str(path))
        got: list[bytes] = []

        def cb(_ctx, data, size):
            got.append(ct.string_at(data, size))
            return 0

        cbf = libbcc._RINGBUF_CB_TYPE(cb)
        rb = libbcc.lib.bpf_new_ringbuf(fd, cbf, None)
        if not rb:
            raise EbpfwError(f"cannot open the LOG ring buffer {path}")
        try:
            libbcc.lib.bpf_consume_ringbuf(rb)
            while True:
                for raw in got:
                    iifs = struct.unpack_from("<II", raw, 16)
                    if any(i and i not in names for i in iifs):
                        names = {l.ifindex: l.name for l in host.links()}
                    yield format_event(raw, names)
                got.clear()
                if not follow or (stop and stop()) or (end is not None and time.monotonic() >= end):
                    return
                libbcc.lib.bpf_poll_ringbuf(rb, poll_ms)
                try:
                    if _ring_path() != path or not path.exists():
                        break   # new programs: their ring buffer
                except EbpfwError:
                    return
        finally:
            libbcc.lib.bpf_free_ringbuf(rb)
            import os
            os.close(fd)
