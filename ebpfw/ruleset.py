"""The ruleset IR: plain frozen dataclasses, no BPF and no parsing knowledge.

A Ruleset holds tables; a Table holds chains in file order; a Chain holds rules in
iptables order. Every node keeps the source position it came from so that later
stages (check, compile) can report `FILE:LINE: ...` errors.

Matches are typed: one dataclass per iptables match extension (plus `IpMatch` for
the built-in `-s -d -i -o -p -f` part). Addresses are ints (host order), ports
and ranges are inclusive `(lo, hi)` tuples. `invert` is iptables' `!`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Optional, Union

BUILTIN_CHAINS = {"filter": ("INPUT", "FORWARD", "OUTPUT")}
VERDICTS = ("ACCEPT", "DROP")


@dataclass(frozen=True)
class Pos:
    file: str
    line: int

    def __str__(self) -> str:
        return f"{self.file}:{self.line}"


@dataclass(frozen=True)
class Counters:
    packets: int = 0
    bytes: int = 0


@dataclass(frozen=True)
class Net:
    """An IPv4 prefix, `addr` already masked. `mask` may be non-contiguous
    only if iptables accepts it (it does: dotted masks such as 255.0.255.0)."""
    addr: int
    mask: int

    @property
    def prefixlen(self) -> Optional[int]:
        m = self.mask
        n = bin(m).count("1")
        return n if m == ((0xFFFFFFFF << (32 - n)) & 0xFFFFFFFF) else None


@dataclass(frozen=True)
class IfaceMatch:
    name: str          # as written, including a trailing '+' wildcard
    invert: bool = False

    @property
    def wildcard(self) -> bool:
        return self.name.endswith("+")


@dataclass(frozen=True)
class IpMatch:
    """The built-in part of a rule: what iptables keeps in `struct ipt_ip`."""
    src: Optional[Net] = None
    src_invert: bool = False
    dst: Optional[Net] = None
    dst_invert: bool = False
    iface_in: Optional[IfaceMatch] = None
    iface_out: Optional[IfaceMatch] = None
    proto: Optional[int] = None        # None or 0 = all
    proto_invert: bool = False
    fragment: Optional[bool] = None    # -f (True) / ! -f (False); None = not given


PortRange = tuple[int, int]


@dataclass(frozen=True)
class TcpMatch:
    sport: Optional[PortRange] = None
    sport_invert: bool = False
    dport: Optional[PortRange] = None
    dport_invert: bool = False
    flags: Optional[tuple[int, int]] = None   # (mask, comp); --syn is (0x17, 0x02)
    flags_invert: bool = False
    option: Optional[int] = None              # --tcp-option (refused by check for now)
    option_invert: bool = False


@dataclass(frozen=True)
class UdpMatch:
    sport: Optional[PortRange] = None
    sport_invert: bool = False
    dport: Optional[PortRange] = None
    dport_invert: bool = False


@dataclass(frozen=True)
class IcmpMatch:
    type: int                  # 255 = any
    code_min: int = 0
    code_max: int = 255
    invert: bool = False


@dataclass(frozen=True)
class MultiportMatch:
    kind: Literal["sports", "dports", "ports"]
    ranges: tuple[PortRange, ...]
    invert: bool = False


@dataclass(frozen=True)
class IprangeMatch:
    src: Optional[tuple[int, int]] = None     # inclusive address range
    src_invert: bool = False
    dst: Optional[tuple[int, int]] = None
    dst_invert: bool = False


@dataclass(frozen=True)
class CommentMatch:
    text: str


@dataclass(frozen=True)
class ConntrackMatch:
    """-m conntrack / -m state. `states` is a bitmask of CT_* below."""
    states: Optional[int] = None
    states_invert: bool = False
    module: Literal["conntrack", "state"] = "conntrack"


# Conntrack state bits (the datapath uses the same numbers, see programs/ebpfw_abi.h)
CT_INVALID = 1 << 0
CT_ESTABLISHED = 1 << 1
CT_RELATED = 1 << 2
CT_NEW = 1 << 3
CT_UNTRACKED = 1 << 4
CT_STATE_NAMES = {
    "INVALID": CT_INVALID,
    "ESTABLISHED": CT_ESTABLISHED,
    "RELATED": CT_RELATED,
    "NEW": CT_NEW,
    "UNTRACKED": CT_UNTRACKED,
}


Match = Union[TcpMatch, UdpMatch, IcmpMatch, MultiportMatch, IprangeMatch, CommentMatch, ConntrackMatch]


@dataclass(frozen=True)
class Target:
    """`kind` is ACCEPT, DROP, RETURN, JUMP (to `chain`), GOTO (to `chain`) or NONE
    (a rule without -j: it only counts). Targets we do not enforce yet never get here:
    the parser refuses them."""
    kind: Literal["ACCEPT", "DROP", "RETURN", "JUMP", "GOTO", "NONE"]
    chain: Optional[str] = None


@dataclass(frozen=True)
class Rule:
    ip: IpMatch
    matches: tuple[Match, ...]
    target: Target
    pos: Pos
    counters: Counters = Counters()

    @property
    def comment(self) -> Optional[str]:
        for m in self.matches:
            if isinstance(m, CommentMatch):
                return m.text
        return None


@dataclass(frozen=True)
class Chain:
    name: str
    policy: Optional[Literal["ACCEPT", "DROP"]]   # None for user-defined chains
    rules: tuple[Rule, ...]
    pos: Pos
    counters: Counters = Counters()

    @property
    def builtin(self) -> bool:
        return self.policy is not None


@dataclass(frozen=True)
class Table:
    name: str
    chains: tuple[Chain, ...]
    pos: Pos

    def chain(self, name: str) -> Optional[Chain]:
        for c in self.chains:
            if c.name == name:
                return c
        return None


@dataclass(frozen=True)
class Ruleset:
    tables: tuple[Table, ...] = field(default_factory=tuple)

    def table(self, name: str) -> Optional[Table]:
        for t in self.tables:
            if t.name == name:
                return t
        return None
