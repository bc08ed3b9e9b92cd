"""A reference interpreter of iptables' filter-table semantics over the IR, for tests.

It is deliberately the naive linked-list walk (what the kernel's ipt_do_table does), written
independently of the compiler, so that the bit-vector datapath can be checked against it on
any ruleset and packet. Real iptables is the oracle of the conformance suite; this is the
fast oracle for BPF_PROG_TEST_RUN tests and property tests.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Optional

from ebpfw.ruleset import (
    CommentMatch, IcmpMatch, IprangeMatch, MultiportMatch, Rule, Table, TcpMatch, UdpMatch,
)

TCP, UDP, ICMP = 6, 17, 1


@dataclass
class Pkt:
    src: int
    dst: int
    proto: int = TCP
    sport: int = 1234
    dport: int = 80
    flags: int = 0x02          # TCP flags byte
    icmp_type: int = 8
    icmp_code: int = 0
    iif: str = ""
    oif: str = ""
    payload: int = 0           # payload bytes after the L4 header
    ttl: int = 64

    @property
    def l4_len(self) -> int:
        return {TCP: 20, UDP: 8, ICMP: 8}.get(self.proto, 0)

    @property
    def ip_len(self) -> int:
        return 20 + self.l4_len + self.payload


def _iface(name: str, pattern: str) -> bool:
    return name.startswith(pattern[:-1]) if pattern.endswith("+") else name == pattern


def _in(ranges, v) -> bool:
    return any(lo <= v <= hi for lo, hi in ranges)


def rule_matches(r: Rule, p: Pkt) -> bool:
    ip = r.ip
    if ip.src is not None and (((p.src & ip.src.mask) == ip.src.addr) == ip.src_invert):
        return False
    if ip.dst is not None and (((p.dst & ip.dst.mask) == ip.dst.addr) == ip.dst_invert):
        return False
    if ip.iface_in is not None and _iface(p.iif, ip.iface_in.name) == ip.iface_in.invert:
        return False
    if ip.iface_out is not None and _iface(p.oif, ip.iface_out.name) == ip.iface_out.invert:
        return False
    if ip.proto and ((p.proto == ip.proto) == ip.proto_invert):
        return False
    for m in r.matches:
        if isinstance(m, (TcpMatch, UdpMatch)):
            if p.proto not in (TCP, UDP):
                return False
            if m.sport is not None and _in([m.sport], p.sport) == m.sport_invert:
                return False
            if m.dport is not None and _in([m.dport], p.dport) == m.dport_invert:
                return False
            if isinstance(m, TcpMatch) and m.flags is not None:
                if ((p.flags & m.flags[0]) == m.flags[1]) == m.flags_invert:
                    return False
        elif isinstance(m, MultiportMatch):
            if p.proto not in (TCP, UDP):
                return False
            if m.kind == "sports":
                hit = _in(m.ranges, p.sport)
            elif m.kind == "dports":
                hit = _in(m.ranges, p.dport)
            else:
                hit = _in(m.ranges, p.sport) or _in(m.ranges, p.dport)
            if hit == m.invert:
                return False
        elif isinstance(m, IcmpMatch):
            if p.proto != ICMP:
                return False
            hit = m.type == 255 or (p.icmp_type == m.type and m.code_min <= p.icmp_code <= m.code_max)
            if hit == m.invert:
                return False
        elif isinstance(m, IprangeMatch):
            if m.src is not None and (m.src[0] <= p.src <= m.src[1]) == m.src_invert:
                return False
            if m.dst is not None and (m.dst[0] <= p.dst <= m.dst[1]) == m.dst_invert:
                return False
        elif isinstance(m, CommentMatch):
            pass
        else:
            raise NotImplementedError(type(m).__name__)
    return True


def evaluate(table: Table, hook: str, p: Pkt) -> tuple[str, list[tuple[str, int]], Optional[str]]:
    """(verdict, rules counted as (chain, index), chain whose policy was counted or None)."""
    chains = {c.name: c for c in table.chains}
    counted: list[tuple[str, int]] = []

    def walk(name: str, depth: int) -> Optional[str]:
        if depth > 64:
            raise RuntimeError("jump loop")
        for i, r in enumerate(chains[name].rules):
            if not rule_matches(r, p):
                continue
            counted.append((name, i))
            k = r.target.kind
            if k in ("ACCEPT", "DROP"):
                return k
            if k == "RETURN":
                return None
            if k == "JUMP":
                v = walk(r.target.chain, depth + 1)
                if v is not None:
                    return v
            elif k == "GOTO":
                return walk(r.target.chain, depth + 1)
        return None

    if hook not in chains:
        return "ACCEPT", counted, None
    v = walk(hook, 0)
    if v is None:
        return chains[hook].policy, counted, hook
    return v, counted, None


def _csum(b: bytes) -> int:
    if len(b) % 2:
        b += b"\0"
    s = sum(struct.unpack(f"!{len(b) // 2}H", b))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def build_frame(p: Pkt, dst_mac: bytes, src_mac: bytes = b"\x02\0\0\0\0\x01") -> bytes:
    """Ethernet + IPv4 + L4 bytes for `p` (valid checksums, no options)."""
    if p.proto == TCP:
        l4 = struct.pack("!HHIIBBHHH", p.sport, p.dport, 1, 0, 5 << 4, p.flags, 1024, 0, 0)
    elif p.proto == UDP:
        l4 = struct.pack("!HHHH", p.sport, p.dport, 8 + p.payload, 0)
    elif p.proto == ICMP:
        l4 = struct.pack("!BBHHH", p.icmp_type, p.icmp_code, 0, 1, 1)
    else:
        l4 = b""
    body = l4 + b"\xab" * p.payload
    hdr = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(body), 1, 0, p.ttl, p.proto, 0,
                      p.src.to_bytes(4, "big"), p.dst.to_bytes(4, "big"))
    hdr = hdr[:10] + struct.pack("!H", _csum(hdr)) + hdr[12:]
    frame = dst_mac + src_mac + b"\x08\x00" + hdr + body
    return frame + b"\0" * max(0, 60 - len(frame))
