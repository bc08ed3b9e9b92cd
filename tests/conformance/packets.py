"""Packet scripts: the steps a conformance case plays, and how observed frames are described.

A script is a list of steps; each step is one of
  Send(role, [scapy IP packets])   crafted packets: role "cli" sends them out of cli0 (they enter
                                   the DUT on dut0), "srv" out of srv0 (enter on dut1), "dut" sends
                                   them from the DUT itself through its IP stack (OUTPUT chain)
  Connect(role, dst, dport)        a real TCP handshake from role's namespace, then an abortive
                                   close (exactly SYN, SYN-ACK, ACK, RST when it works)
  Udp(role, dst, dport)            one real UDP datagram from a socket
Listeners for Connect are declared on the case (Case.listen).

Crafted packets get TTL CRAFTED_TTL (unless the packet sets ttl itself) so the endpoints drop
them before their stack could answer, and a unique IP ID (the "tag") that identifies the packet
wherever it is seen: delivered to the other side, delivered locally to the DUT, or quoted
inside an ICMP error.
"""

from __future__ import annotations

import socket
import struct
from dataclasses import dataclass, field
from typing import Optional, Union

CRAFTED_TTL = 128
PROTO_NAMES = {1: "icmp", 6: "tcp", 17: "udp", 47: "gre"}
TCP_FLAG_NAMES = "FSRPAUEC"


@dataclass
class Send:
    role: str                       # cli | srv | dut
    packets: list                   # scapy IP() objects
    label: str = ""


@dataclass
class Connect:
    role: str                       # cli | srv | dut
    dst: str
    dport: int
    src: Optional[str] = None       # default: the role's main address
    sport: Optional[int] = None     # default: 40000 + step index (deterministic)
    label: str = ""


@dataclass
class Udp:
    role: str
    dst: str
    dport: int
    src: Optional[str] = None
    sport: Optional[int] = None
    payload: bytes = b"conformance"
    label: str = ""


@dataclass
class SetOp:
    """A live change of an ipset set between two packets: `ipset OP NAME [ELEMENT]` under
    iptables, `ebpfw set OP NAME [ELEMENT]` under ebpfw (op: add, del, flush; swap with the
    other set's name as ELEMENT)."""
    op: str
    name: str
    element: str = ""
    label: str = ""


Step = Union[Send, Connect, Udp, SetOp]


@dataclass
class Listen:
    role: str
    addr: str
    port: int


@dataclass
class Case:
    """A ruleset plus the script that exercises it. `expect_unhit` lists rule/policy keys
    ("INPUT:3", "FORWARD:policy") that the script deliberately cannot reach, with the reason."""
    name: str
    ruleset: str                     # iptables-save text
    steps: list
    listen: list = field(default_factory=list)
    stateful: bool = False
    known_difference: str = ""       # non-empty: ebpfw is known to differ here, and why
    expect_unhit: dict = field(default_factory=dict)
    source: str = ""                 # where the ruleset came from (a rulesets/ path)
    sets: str = ""                   # `ipset save` text of the sets the ruleset names


@dataclass(frozen=True)
class Tagged:
    tag: int
    step: int
    src: str
    dst: str
    proto: int
    text: str                        # human description of the crafted packet


def describe_ip(data: bytes) -> str:
    """One line for an IPv4 packet: proto src:sport > dst:dport and the interesting bits."""
    if len(data) < 20 or data[0] >> 4 != 4:
        return f"non-ipv4 {data[:16].hex()}"
    ihl = (data[0] & 0x0F) * 4
    proto = data[9]
    src, dst = socket.inet_ntoa(data[12:16]), socket.inet_ntoa(data[16:20])
    l4 = data[ihl:]
    name = PROTO_NAMES.get(proto, f"proto{proto}")
    frag = _frag_text(data)
    if frag and not frag.startswith("frag@0"):
        return f"{name} {src} > {dst} {frag}"     # no transport header in this one
    if frag:
        return describe_ip(data[:6] + b"\x00\x00" + data[8:]) + f" {frag}"
    if proto in (6, 17) and len(l4) >= 4:
        sport, dport = struct.unpack("!HH", l4[:4])
        text = f"{name} {src}:{sport} > {dst}:{dport}"
        if proto == 6 and len(l4) >= 14:
            flags = l4[13]
            text += " [" + "".join(c for i, c in enumerate(TCP_FLAG_NAMES) if flags & (1 << i)) + "]"
        return text
    if proto == 1 and len(l4) >= 2:
        return f"icmp {src} > {dst} type {l4[0]} code {l4[1]}"
    return f"{name} {src} > {dst}"


def _frag_text(data: bytes) -> str:
    """'' for a whole packet, else 'frag@OFFSET' plus '+MF' if more fragments follow."""
    word = struct.unpack("!H", data[6:8])[0]
    offset, more = (word & 0x1FFF) * 8, bool(word & 0x2000)
    if not offset and not more:
        return ""
    return f"frag@{offset}" + ("+MF" if more else "")


def _ip_key(data: bytes) -> Optional[tuple[int, str, str, int]]:
    if len(data) < 20 or data[0] >> 4 != 4:
        return None
    ident = struct.unpack("!H", data[4:6])[0]
    return ident, socket.inet_ntoa(data[12:16]), socket.inet_ntoa(data[16:20]), data[9]


def summarize(where: str, data: bytes, tags: dict[int, Tagged]) -> str:
    """A timing-independent description of one observed IP packet. Tagged crafted packets are
    named by tag; ICMP errors that quote a tagged packet name it too; anything else (replies
    generated by a stack) is described by its header fields, never by IP ID or sequence numbers."""
    key = _ip_key(data)
    if key is None:
        return f"{where}: {describe_ip(data)}"
    ident, src, dst, proto = key
    t = tags.get(ident)
    if t is not None and (t.src, t.dst, t.proto) == (src, dst, proto):
        frag = _frag_text(data)
        return f"{where}: #{t.tag} {t.text}" + (f" [{frag}]" if frag else "")
    ihl = (data[0] & 0x0F) * 4
    if proto == 1 and len(data) >= ihl + 8 + 20 and data[ihl] in (3, 4, 5, 11, 12):
        inner = _ip_key(data[ihl + 8:])
        if inner is not None:
            t = tags.get(inner[0])
            if t is not None and (t.src, t.dst, t.proto) == inner[1:]:
                return (f"{where}: icmp {src} > {dst} type {data[ihl]} code {data[ihl + 1]}"
                        f" quoting #{t.tag}")
    return f"{where}: {describe_ip(data)}"


def frame_ip(where: str, frame: bytes) -> bytes:
    """IP bytes of a captured frame: taps give Ethernet frames, local raw sockets IP packets."""
    if where.startswith("local/"):
        return frame
    if len(frame) >= 14 and frame[12:14] == b"\x08\x00":
        return frame[14:]
    return b""
