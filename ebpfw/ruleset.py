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

BUILTIN_CHAINS = {"filter": ("INPUT", "FORWARD", "OUTPUT"), "raw": ("PREROUTING", "OUTPUT")}
# the tables ebpfw enforces, in the order a Plan numbers their rules
TABLES = ("filter", "raw")


def chain_key(table: str, chain: str) -> str:
    """The name of `chain` of `table` where one namespace holds the chains of every table
    (Plan.chain_names, counters keys): filter chains keep their name, the others are
    "TABLE CHAIN" (chain names never contain white space, so the two never collide)."""
    return chain if table == "filter" else f"{table} {chain}"
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


@dataclass(frozen=True)
class LimitMatch:
    """-m limit: a token bucket shared by every packet the rule sees. `avg` is what the kernel
    stores: the time between two packets in 1/10000 s (XT_LIMIT_SCALE; 3/hour = 12_000_000,
    10/sec = 1000); `burst` is the bucket size. iptables has no `!` for it."""
    avg: int
    burst: int = 5


# hashlimit --hashlimit-mode keys, in iptables-save's print order
HASHLIMIT_MODES = ("srcip", "srcport", "dstip", "dstport")


@dataclass(frozen=True)
class HashlimitMatch:
    """-m hashlimit (revision 3): one token bucket per key. `avg` is the time between two
    packets in 1/1_000_000 s (XT_HASHLIMIT_SCALE_v2; 1/sec = 1_000_000); `above` is
    --hashlimit-above (match when the flow goes over the rate), False is --hashlimit-upto
    (match while under it). `mode` are the key parts in HASHLIMIT_MODES order (empty: one
    bucket for all packets), `srcmask`/`dstmask` the prefix lengths applied to the addresses
    in the key, `expire` the idle time in ms after which a bucket is forgotten. Rules with
    the same `name` share one table in the kernel (the first rule's settings win).
    `size`/`max` are --hashlimit-htable-size/-max (0: the kernel's default; values over
    1048576 are stored as the kernel clamps them), `gcinterval` the collector's period in ms.
    `bytes` is a byte rate (XT_HASHLIMIT_BYTES, `--hashlimit-upto 1mb/s`): then `avg` is the
    kernel's cost value UINT32_MAX // ((bytes/s >> 4) + 1) and `burst` the number of times a
    bucket may be refilled (0 when --hashlimit-burst is not given). `rate_match` is
    --hashlimit-rate-match (XT_HASHLIMIT_RATE_MATCH): `avg` then holds the kernel's value (a
    packet rate's period divided by its unit) and `interval` the window in seconds
    (--hashlimit-rate-interval; 0 without rate_match)."""
    name: str
    avg: int
    expire: int
    burst: int = 5
    above: bool = False
    mode: tuple[str, ...] = ()
    srcmask: int = 32
    dstmask: int = 32
    size: int = 0
    max: int = 0
    gcinterval: int = 1000
    bytes: bool = False
    rate_match: bool = False
    interval: int = 0


@dataclass(frozen=True)
class SetMatch:
    """-m set --match-set NAME src|dst[,...]: the packet's address/port per set dimension,
    `flags[i]` says which side of the packet dimension i+1 is read from."""
    name: str
    flags: tuple[Literal["src", "dst"], ...]
    invert: bool = False


@dataclass(frozen=True)
class RecentMatch:
    """-m recent: a per-`name` list of addresses. `command` is what --set/--rcheck/--update/
    --remove do; `seconds` (0 = no limit) and `hitcount` (0 = no test) restrict rcheck/update,
    `reap` drops older entries, `rttl` also compares the TTL, `side` picks the source or
    destination address, `mask` is ANDed to it (as given, not necessarily a prefix)."""
    command: Literal["set", "rcheck", "update", "remove"]
    name: str = "DEFAULT"
    invert: bool = False
    seconds: int = 0
    reap: bool = False
    hitcount: int = 0
    rttl: bool = False
    side: Literal["source", "dest"] = "source"
    mask: int = 0xFFFFFFFF


# addrtype types; the bit of type T is 1 << ADDRTYPE_NAMES.index(T) (1 << RTN_T in the kernel)
ADDRTYPE_NAMES = ("UNSPEC", "UNICAST", "LOCAL", "BROADCAST", "ANYCAST", "MULTICAST", "BLACKHOLE",
                  "UNREACHABLE", "PROHIBIT", "THROW", "NAT", "XRESOLVE")


@dataclass(frozen=True)
class AddrtypeMatch:
    """-m addrtype: `src`/`dst` are bit masks of ADDRTYPE_NAMES (0 = not tested). The type is
    looked up in the routing table, on any interface unless `limit_iface_in` (the packet's
    input interface) or `limit_iface_out` (its output interface)."""
    src: int = 0
    src_invert: bool = False
    dst: int = 0
    dst_invert: bool = False
    limit_iface_in: bool = False
    limit_iface_out: bool = False


PKTTYPE_NAMES = ("unicast", "broadcast", "multicast", "otherhost")   # = PACKET_HOST .. OTHERHOST


@dataclass(frozen=True)
class PkttypeMatch:
    """-m pkttype --pkt-type: the link-layer class (skb->pkt_type) as named by iptables."""
    pkt_type: Literal["unicast", "broadcast", "multicast", "otherhost"]
    invert: bool = False


@dataclass(frozen=True)
class MacMatch:
    """-m mac --mac-source: the Ethernet source address, 6 bytes."""
    addr: bytes
    invert: bool = False


@dataclass(frozen=True)
class LengthMatch:
    """-m length --length: the IP total length (header included), inclusive range."""
    min: int
    max: int
    invert: bool = False


@dataclass(frozen=True)
class TtlMatch:
    """-m ttl: `mode` eq (--ttl-eq), ne (! --ttl-eq), lt (--ttl-lt), gt (--ttl-gt)."""
    mode: Literal["eq", "ne", "lt", "gt"]
    value: int


@dataclass(frozen=True)
class TosMatch:
    """-m tos --tos value/mask: (ip->tos & mask) == value. `value` is kept as given (iptables
    does not mask it: a value with bits outside the mask never matches)."""
    value: int
    mask: int = 0xFF
    invert: bool = False


@dataclass(frozen=True)
class DscpMatch:
    """-m dscp --dscp / --dscp-class: the 6-bit DSCP (ip->tos >> 2)."""
    value: int
    invert: bool = False


@dataclass(frozen=True)
class TcpmssMatch:
    """-m tcpmss --mss: the MSS option of SYN packets, inclusive range (needs -p tcp; a
    packet without the option does not match)."""
    min: int
    max: int
    invert: bool = False


@dataclass(frozen=True)
class ConnlimitMatch:
    """-m connlimit: the number of tracked connections per group of addresses (`mask` is a
    prefix length over the source address, or the destination if `daddr`). `above` True
    matches when the count is > `limit` (--connlimit-above), False when <= (--connlimit-upto)."""
    limit: int
    above: bool = True
    mask: int = 32
    daddr: bool = False


Match = Union[TcpMatch, UdpMatch, IcmpMatch, MultiportMatch, IprangeMatch, CommentMatch, ConntrackMatch,
              LimitMatch, HashlimitMatch, SetMatch, RecentMatch, AddrtypeMatch, PkttypeMatch, MacMatch,
              LengthMatch, TtlMatch, TosMatch, DscpMatch, TcpmssMatch, ConnlimitMatch]


# --- target extensions: the options of -j REJECT / LOG / MARK / CONNMARK -----------------------

# REJECT --reject-with types in iptables' table order (libipt_REJECT), with their aliases.
REJECT_TYPES = (
    ("icmp-net-unreachable", "net-unreach"),
    ("icmp-host-unreachable", "host-unreach"),
    ("icmp-proto-unreachable", "proto-unreach"),
    ("icmp-port-unreachable", "port-unreach"),
    ("icmp-net-prohibited", "net-prohib"),
    ("icmp-host-prohibited", "host-prohib"),
    ("tcp-reset", "tcp-rst"),
    ("icmp-admin-prohibited", "admin-prohib"),
)


@dataclass(frozen=True)
class RejectTarget:
    """-j REJECT: drop and answer. `reject_with` is one canonical name of REJECT_TYPES (ICMP
    destination unreachable with code net 0, host 1, proto 2, port 3, net-prohibited 9,
    host-prohibited 10, admin-prohibited 13; or a TCP RST, which needs -p tcp)."""
    reject_with: str = "icmp-port-unreachable"


LOG_DEFAULT_LEVEL = 4


@dataclass(frozen=True)
class LogTarget:
    """-j LOG (does not end the chain): `prefix` at most 29 bytes, `level` a syslog level 0-7,
    the flags as the options of the same names."""
    prefix: str = ""
    level: int = LOG_DEFAULT_LEVEL
    tcp_sequence: bool = False
    tcp_options: bool = False
    ip_options: bool = False
    uid: bool = False
    macdecode: bool = False


@dataclass(frozen=True)
class MarkTarget:
    """-j MARK (does not end the chain): skb->mark = (skb->mark & ~mask) ^ value. Every MARK
    option comes down to this (--set-mark V = V/0xffffffff, --and-mark B = 0/~B, ...)."""
    value: int
    mask: int = 0xFFFFFFFF


@dataclass(frozen=True)
class ConnmarkTarget:
    """-j CONNMARK (does not end the chain) on the packet's conntrack entry:
    set: ctmark = (ctmark & ~ctmask) ^ value;
    save: ctmark = (ctmark & ~ctmask) ^ (skb->mark & nfmask);
    restore: skb->mark = (skb->mark & ~nfmask) ^ (ctmark & ctmask)."""
    mode: Literal["set", "save", "restore"]
    value: int = 0
    ctmask: int = 0xFFFFFFFF
    nfmask: int = 0xFFFFFFFF


@dataclass(frozen=True)
class CtTarget:
    """-j CT in the raw table. Only `--notrack` is enforced (the packet is not tracked: no
    connection is made or updated, filter's ctstate is UNTRACKED), the same as -j NOTRACK; the
    parser refuses CT's other options and a CT without --notrack."""
    notrack: bool = True


TargetExt = Union[RejectTarget, LogTarget, MarkTarget, ConnmarkTarget, CtTarget]
EXT_TARGETS = {"REJECT": RejectTarget, "LOG": LogTarget, "MARK": MarkTarget, "CONNMARK": ConnmarkTarget,
               "CT": CtTarget}


@dataclass(frozen=True)
class Target:
    """`kind` is ACCEPT, DROP, RETURN, JUMP (to `chain`), GOTO (to `chain`), NONE (a rule
    without -j: it only counts), or a target extension REJECT, LOG, MARK, CONNMARK whose
    options are in `ext` (RejectTarget, LogTarget, MarkTarget, ConnmarkTarget; the type always
    matches `kind`, see EXT_TARGETS). REJECT ends the packet like DROP; LOG, MARK and CONNMARK
    do their work and the packet continues with the next rule. Targets we do not know never
    get here: the parser refuses them. NOTRACK (raw table only, no options) and CT (raw table,
    options in a CtTarget) exempt the packet from connection tracking and continue."""
    kind: Literal["ACCEPT", "DROP", "RETURN", "JUMP", "GOTO", "NONE", "REJECT", "LOG", "MARK", "CONNMARK",
                  "NOTRACK", "CT"]
    chain: Optional[str] = None
    ext: Optional[TargetExt] = None


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
