"""compile: Table (IR) -> Plan, pure Python, no syscalls.

Rules of the table are numbered 0..N-1 in iptables order, chain by chain (INPUT, FORWARD,
OUTPUT, then user chains in file order), so each chain is a contiguous range. For every
field some rule matches on, the compiler splits the field's value space into regions on which
every rule's condition is constant, and gives each region a *class*: the bit vector of the
rules whose condition on that field holds there. The datapath ANDs the vectors of a packet's
classes and walks the set bits (see programs/ebpfw.c).

Conditions are evaluated here with iptables' own semantics, one "atom" per option:
  pass_k(x) = NO_k | (C_k(x) & POS_k) | (INV_k & ~C_k(x))
where C_k(x) are the rules whose atom of kind k contains x, POS_k/INV_k the rules with a
plain/inverted atom of kind k and NO_k the rules without one; a field's vector is the AND
over its kinds. Bit sets are Python ints (bit r = rule r).
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field
from typing import Iterable, Mapping, Optional

from ..errors import RulesetError
from ..marks import ConnmarkMatch, MarkMatch
from ..ruleset import (
    chain_key,
    AddrtypeMatch, ConnmarkTarget, MarkTarget, CommentMatch, ConnlimitMatch, ConntrackMatch, DscpMatch, HashlimitMatch, IcmpMatch, IpMatch,
    IprangeMatch, LengthMatch, LimitMatch, LogTarget, MacMatch, MultiportMatch, PkttypeMatch, RecentMatch, RejectTarget,
    Rule, SetMatch, Table, TcpMatch,
    TcpmssMatch, TosMatch,
    TtlMatch, UdpMatch,
)
from . import fields as F
from .groups import find_groups

BUILTINS = ("INPUT", "FORWARD", "OUTPUT")
# the target kinds the datapath enforces (ebpfw.check refuses the others with the rule's FILE:LINE)
ACT = {"NONE": 0, "ACCEPT": 1, "DROP": 2, "RETURN": 3, "JUMP": 4, "GOTO": 5, "REJECT": 6, "LOG": 7,
       "MARK": 8, "CONNMARK": 9, "NOTRACK": 10, "CT": 10}
RAW_BUILTINS = ("PREROUTING", "OUTPUT")
# what the raw stage of the datapath enforces: targets, and matches it refuses (with why)
RAW_TARGETS = ("NONE", "ACCEPT", "DROP", "RETURN", "JUMP", "GOTO", "NOTRACK", "CT", "MARK", "CONNMARK", "LOG")
RF_NEEDS_L4 = 1
RF_MSS = 2          # a tcpmss match hotdrops a packet whose TCP header it cannot read
RF_MAC = 4          # a mac match: fail closed where the datapath has no source MAC
RF_LIMIT = 8        # a limit match (the rule's last): its token bucket decides after the other conditions
RF_SET = 16         # a set match: the set decides after the other conditions
RF_SETFIRST = 32    # ... and it comes before every match that can hotdrop (judged before their hotdrop)
RF_TCP = 64         # a tcp match: hotdrops a TCP fragment at offset 8 (xt_tcp's "evil" fragment)
RF_RECENT = 128     # a recent match (the rule's last): its list decides (and is updated) after the others
RF_HASHLIMIT = 256  # a hashlimit match (the rule's last): its per-key bucket decides after the others
RF_CONNLIMIT = 512  # a connlimit match (the rule's last): the per-key connection count decides
RF_MARK = 1024      # a mark/connmark match: the packet's or connection's mark decides after the vectors
# a conntrack/state match in the raw table: judged in the walk (INVALID until a NOTRACK, then
# UNTRACKED; RELATED for a REJECT answer), with the states it holds for
RF_RAWCT, RF_CT_INV_OK, RF_CT_UNT_OK, RF_CT_REL_OK = 2048, 4096, 8192, 16384
HOTDROP_MATCHES = (TcpMatch, UdpMatch, IcmpMatch, MultiportMatch, TcpmssMatch, MacMatch)
SET_KINDS = {"hash:ip": 1, "hash:net": 1, "hash:ip,port": 2, "hash:net,port": 2, "bitmap:port": 3}
# the matches the datapath enforces (each one a field, see fields.py)
ENFORCED_MATCHES = (TcpMatch, UdpMatch, IcmpMatch, MultiportMatch, IprangeMatch, CommentMatch, ConntrackMatch,
                    LengthMatch, TtlMatch, TosMatch, DscpMatch, TcpmssMatch, PkttypeMatch, MacMatch,
                    AddrtypeMatch)
# -m mark / -m connmark conditions of a rule (struct ebpfw_markc.m_flags): present, inverted, and
# judged before the rule's hotdrop (it comes before every match that can hotdrop)
MK_MARK, MK_MARK_INV, MK_MARK_FIRST = 1, 2, 4
MK_CONN, MK_CONN_INV, MK_CONN_FIRST = 8, 16, 32
# CONNMARK modes (struct ebpfw_markc.t_mode)
CM_MODES = {"set": 1, "save": 2, "restore": 3}
# REJECT's rule argument: the ICMP destination-unreachable code, or REJ_TCP_RESET
REJ_TCP_RESET = 256
REJECT_CODES = {"icmp-net-unreachable": 0, "icmp-host-unreachable": 1, "icmp-proto-unreachable": 2,
                "icmp-port-unreachable": 3, "icmp-net-prohibited": 9, "icmp-host-prohibited": 10,
                "icmp-admin-prohibited": 13, "tcp-reset": REJ_TCP_RESET}


@dataclass(frozen=True)
class HlTable:
    """One xt_hashlimit table (a --hashlimit-name) as the kernel makes it: the config of the
    first rule naming it in the kernel's check order. `mode` are XT_HASHLIMIT_HASH_* bits,
    `size`/`max` as htable_create settles them, times in ms."""
    name: str
    avg: int
    burst: int
    mode: int
    srcmask: int
    dstmask: int
    expire: int
    gcinterval: int
    size: int
    max: int
    pos: object = None
    bytes: bool = False          # XT_HASHLIMIT_BYTES: avg is a byte cost, burst a number of refills
    rate_match: bool = False     # XT_HASHLIMIT_RATE_MATCH
    interval: int = 0            # --hashlimit-rate-interval (s)


HL_MODE_BITS = {"dstip": 1, "dstport": 2, "srcip": 4, "srcport": 8}   # XT_HASHLIMIT_HASH_*
HL_TABLES_MAX = 64                                                   # datapath/abi.py HL_NT


@dataclass
class Plan:
    nrules: int
    chain_names: list[str]                   # chain id -> name
    chain_ranges: list[tuple[int, int]]      # chain id -> [start, end)
    chain_policy: list[int]                  # ACT_ACCEPT / ACT_DROP for built-ins, 0 otherwise
    rule_chain: list[tuple[str, int]]        # rule number -> (chain name, index in chain)
    rule_kind: list[int]
    rule_arg: list[int]
    rule_flags: list[int]
    max_depth: int
    # field tables; classes are indexes into `vectors` (class 0 = all rules)
    vectors: list[int]
    src: Optional[list[tuple[int, int, int]]] = None    # (addr, prefixlen, class)
    dst: Optional[list[tuple[int, int, int]]] = None
    proto: Optional[list[int]] = None                   # 256 classes
    sport: Optional[list[int]] = None                   # 65537 classes (last: no L4 value)
    dport: Optional[list[int]] = None
    xsport: Optional[list[int]] = None                  # multiport --ports, OR-ed in the datapath
    xdport: Optional[list[int]] = None
    tcpfl: Optional[list[int]] = None                   # 257 classes
    icmp: Optional[list[int]] = None                    # 65537 classes
    iif: Optional[dict[str, int]] = None                # interface name -> class ("" = none)
    oif: Optional[dict[str, int]] = None
    ct: Optional[list[int]] = None                      # 8 classes by conntrack state bit number
    length: Optional[list[int]] = None                  # 65536 classes by IP total length
    ttl: Optional[list[int]] = None                     # 256 classes by TTL at the hook
    tos: Optional[list[int]] = None                     # 256 classes by TOS byte
    frag: Optional[list[int]] = None                    # 2 classes: 1 = a non-first fragment
    tcpmss: Optional[list[int]] = None                  # 65537 classes (last: no MSS option)
    pkttype: Optional[list[int]] = None                 # 4 classes by skb->pkt_type
    mac: Optional[dict[bytes, int]] = None              # source MAC -> class (b"" = any other)
    atsrc: Optional[list[int]] = None                   # 4096 classes by route types (fields.py)
    atdst: Optional[list[int]] = None
    log: dict[int, LogTarget] = field(default_factory=dict)   # rule number -> options of its -j LOG
    limits: dict[int, LimitMatch] = field(default_factory=dict)  # rule number -> its -m limit
    # -m hashlimit: the tables (index = table number in the slot) and rule -> (table, above)
    hl_tables: list = field(default_factory=list)
    hashlimits: dict[int, tuple[int, bool]] = field(default_factory=dict)
    # rule number -> (set name, kind, dimension 1 from src, dimension 2 from src, inverted)
    setm: dict[int, tuple] = field(default_factory=dict)
    set_ids: dict[str, int] = field(default_factory=dict)   # set name -> id (ebpfw.sets, at apply)
    recent: dict[int, RecentMatch] = field(default_factory=dict)  # rule number -> its -m recent
    recent_ids: dict[str, int] = field(default_factory=dict)  # --name -> table id (ebpfw.recent, at apply)
    connlimits: dict[int, ConnlimitMatch] = field(default_factory=dict)  # rule number -> its -m connlimit
    iface_patterns: list = field(default_factory=list)  # kept to classify interfaces that appear later
    # exact-match rule groups (compiler/groups.py): shapes and key -> rule numbers
    group_shapes: list = field(default_factory=list)
    group_entries: dict = field(default_factory=dict)
    # interval bounds of the range groups per port side [sport, dport] (groups.Groups.ranges)
    group_ranges: list = field(default_factory=lambda: [None, None])
    # interface name -> interface class of the -i group keys ("": any other interface)
    group_ifclass: dict = field(default_factory=dict)
    # the residual rules (decided by the bit vectors), ascending: vector bit k is rule resid[k]
    resid: list = field(default_factory=list)
    # rule number -> struct ebpfw_markc fields (t_value, t_mask, t_nfmask, t_mode, m_flags,
    # m_value, m_mask, c_value, c_mask) of its -m mark/connmark and -j MARK/CONNMARK
    marks: dict[int, tuple] = field(default_factory=dict)
    # the first rule (in file order) that reads or writes the packet's mark, as
    # "FILE:LINE: -A CHAIN ...": the ruleset's ingress must then run at TC (see api.py)
    skb_mark_rule: Optional[str] = None
    # the raw table: chain ids of its PREROUTING and OUTPUT (its rules and chains follow the
    # filter table's in the numbering, chain names "raw NAME"); None: no raw table
    raw_chains: Optional[tuple[int, int]] = None

    @property
    def fields(self) -> list[str]:
        return [f for f in F.FIELD_NAMES if getattr(self, f) is not None and not f.startswith("xd")]

    def summary(self) -> dict:
        return {
            "rules": self.nrules,
            "chains": {n: list(r) for n, r in zip(self.chain_names, self.chain_ranges)},
            "fields": self.fields,
            "classes": len(self.vectors),
            "prefixes": {"src": len(self.src or []), "dst": len(self.dst or [])},
            "max_jump_depth": self.max_depth,
            "groups": [{"src_plen": g.src_plen, "dst_plen": g.dst_plen, "proto": g.proto, "port": g.port,
                        "iif": g.iif,
                        "keys": sum(1 for k in self.group_entries if k[0] == i)}
                       for i, g in enumerate(self.group_shapes)],
            "grouped_rules": len({r for ids in self.group_entries.values() for r in ids}),
            "conntrack": self.ct is not None,
            "actions": self.actions,
            # the first rule that reads or writes skb->mark: the ingress must run at TC
            "needs_tc": self.skb_mark_rule,
            # the -m recent lists the rules name (kept across applies that keep the name)
            "recent_lists": sorted({m.name for m in self.recent.values()}),
            # chain ids of raw PREROUTING and OUTPUT (evaluated in a stage before the filter table)
            "raw": list(self.raw_chains) if self.raw_chains is not None else None,
            # the rules with -m connlimit (each keeps its own per-key connection lists)
            "connlimit_rules": len(self.connlimits),
        }

    @property
    def actions(self) -> list[str]:
        """The non-verdict actions compiled into the datapath (each a -D flag)."""
        out = []
        if ACT["REJECT"] in self.rule_kind:
            out.append("reject")
        if self.log:
            out.append("log")
        if self.marks:
            out.append("mark")
        if self.raw_chains is not None:
            out.append("raw")
        return out


class _Classes:
    """Dedupe vectors into class ids; class 0 is the all-rules vector."""

    def __init__(self, all_rules: int):
        self.vectors = [all_rules]
        self.index = {all_rules: 0}

    def cls(self, vec: int) -> int:
        c = self.index.get(vec)
        if c is None:
            c = len(self.vectors)
            self.vectors.append(vec)
            self.index[vec] = c
        return c


def _order_chains(table: Table) -> list:
    by_name = {c.name: c for c in table.chains}
    order = [by_name[n] for n in BUILTINS if n in by_name]
    missing = [n for n in BUILTINS if n not in by_name]
    order += [c for c in table.chains if c.name not in BUILTINS]
    return order, missing


def _max_depth(chains, by_name) -> int:
    memo: dict[str, int] = {}

    def depth(name: str, seen: frozenset) -> int:
        if name in memo:
            return memo[name]
        if name in seen:  # loops are refused by check; be safe
            return 0
        d = 0
        for r in by_name[name].rules:
            if r.target.kind in ("JUMP", "GOTO") and r.target.chain in by_name:
                sub = depth(r.target.chain, seen | {name})
                d = max(d, sub + (1 if r.target.kind == "JUMP" else 0))
        memo[name] = d
        return d

    return max([depth(c.name, frozenset()) for c in chains] or [0])


def _last_match(r: Rule, cls: type, what: str, why: str, problems: list[str],
                later_text=lambda ms: ", ".join(type(m).__name__ for m in ms)):
    """The rule's one `cls` match (-m `what`), when it is the rule's last match (comments aside).
    A stateful match changes its state whenever it is reached, and iptables evaluates a rule's
    matches in order, so it is only exact when every other condition is judged before it (`why`
    says what the kernel would do for packets later matches refuse). Otherwise a problem."""
    idx = [i for i, m in enumerate(r.matches) if isinstance(m, cls)]
    if not idx:
        return None
    if len(idx) > 1:
        problems.append(f"{r.pos}: more than one -m {what} in a rule is not supported by the datapath, "
                        f"expected at most one, found {len(idx)}")
        return None
    later = [m for m in r.matches[idx[0] + 1:] if not isinstance(m, CommentMatch)]
    if later:
        problems.append(f"{r.pos}: -m {what} before other matches is not supported by the datapath ({why}), "
                        f"expected -m {what} as the rule's last match, found it before {later_text(later)}")
        return None
    return r.matches[idx[0]]


def _limit_of(r: Rule, problems: list[str]) -> Optional[LimitMatch]:
    """The rule's -m limit, when the datapath can reproduce it exactly (one bucket per rule)."""
    return _last_match(r, LimitMatch, "limit", "xt_limit would take a token from packets the later "
                       "matches refuse", problems)


def _hashlimit_of(r: Rule, problems: list[str]) -> Optional[HashlimitMatch]:
    """The rule's -m hashlimit, when the datapath can reproduce it exactly: like -m limit, a
    bucket is only exact when every other condition is judged before it (the rule's last match,
    comments aside), one per rule."""
    m = _last_match(r, HashlimitMatch, "hashlimit", "xt_hashlimit would take a token, make a bucket or "
                    "hotdrop for packets the later matches refuse", problems)
    if m is None:
        return None
    if m.name in (".", ".."):
        problems.append(f"{r.pos}: --hashlimit-name '{m.name}' is refused by the kernel (xt_check_proc_name), "
                        f"expected another name, found '{m.name}'")
        return None
    return m


# timestamps the datapath keeps per address (EBPFW_RECENT_STAMPS): enough for any --hitcount up to it
RECENT_MAX_HITCOUNT = 32


# connections one -m connlimit list holds in the datapath (EBPFW_CL_CONNS): one more hotdrops, as
# nf_conncount's allocation failure would; a limit must leave room above it (datapath/abi.py)
CONNLIMIT_MAX_LIMIT = 960


def _connlimit_of(r: Rule, problems: list[str]) -> Optional[ConnlimitMatch]:
    """The rule's -m connlimit, when the datapath can reproduce it exactly: connlimit_mt adds
    the packet's connection to its key's list whenever the match is reached, so only a
    connlimit match after every other condition of its rule is exact (comments aside)."""
    m = _last_match(r, ConnlimitMatch, "connlimit", "xt_connlimit would add the packet's connection to its "
                    "list, or hotdrop, for packets the later matches refuse", problems,
                    lambda ms: "-m " + ", -m ".join(type(x).__name__.removesuffix("Match").lower() for x in ms))
    if m is None:
        return None
    if m.limit > CONNLIMIT_MAX_LIMIT:
        opt = "--connlimit-above" if m.above else "--connlimit-upto"
        problems.append(f"{r.pos}: connlimit {opt} {m.limit} is beyond what the datapath counts (a list holds at "
                        f"most {CONNLIMIT_MAX_LIMIT + 64} connections per address group), expected a limit of at most "
                        f"{CONNLIMIT_MAX_LIMIT}, found {m.limit}")
        return None
    return m


def _recent_of(r: Rule, problems: list[str]) -> Optional[RecentMatch]:
    """The rule's -m recent, when the datapath can reproduce xt_recent exactly: recent_mt
    looks the address up, and --set/--update/--remove change the list, whenever the match is
    reached, so only a recent match that comes after every other condition of its rule is
    exact (comments aside)."""
    m = _last_match(r, RecentMatch, "recent", "xt_recent would look up and update its list for packets "
                    "the later matches refuse", problems,
                    lambda ms: "-m " + ", -m ".join(type(x).__name__.removesuffix("Match").lower() for x in ms))
    if m is None:
        return None
    if m.hitcount > RECENT_MAX_HITCOUNT:
        problems.append(f"{r.pos}: recent --hitcount {m.hitcount} is not supported by the datapath (it keeps the "
                        f"last {RECENT_MAX_HITCOUNT} times of an address), expected --hitcount 1-{RECENT_MAX_HITCOUNT}, "
                        f"found --hitcount {m.hitcount}")
        return None
    return m


def _kernel_check_order(table: Table) -> list:
    """The rules in the order iptables-legacy's kernel checks them (translate_table walks the
    blob libiptc writes: INPUT, FORWARD, OUTPUT, then user chains sorted by name)."""
    by_name = {c.name: c for c in table.chains}
    order = [by_name[n] for n in BUILTINS if n in by_name]
    order += sorted((c for c in table.chains if c.name not in BUILTINS), key=lambda c: c.name.encode())
    return [r for c in order for r in c.rules]


def _hl_tables(table: Table, problems: list[str]) -> dict[str, "HlTable"]:
    """One table per --hashlimit-name, configured by the first rule the kernel checks."""
    from ..datapath.abi import (HASHLIMIT_GCINTERVAL, hashlimit_credits_byte, hashlimit_overflows,
                                hashlimit_size_max, host_hz)
    try:
        hz = host_hz()
    except Exception:
        hz = None
    tables: dict[str, HlTable] = {}
    for r in _kernel_check_order(table):
        for m in r.matches:
            if not isinstance(m, HashlimitMatch):
                continue
            bytes_, rate = getattr(m, "bytes", False), getattr(m, "rate_match", False)
            if hz is not None and not bytes_ and not rate and hashlimit_overflows(m.avg, m.burst, hz):
                problems.append(f"{r.pos}: hashlimit rate and burst overflow the kernel's token bucket "
                                "(xt_hashlimit refuses the rule: \"overflow, try lower\"), expected a higher "
                                f"rate or a smaller --hashlimit-burst, found avg {m.avg} us and burst {m.burst}")
            if hz is not None and bytes_ and not rate and hashlimit_credits_byte(m.avg, hz) == 0:
                problems.append(f"{r.pos}: hashlimit byte rate too high for the kernel (xt_hashlimit: \"overflow, "
                                f"rate too high\"), expected a lower rate, found cost {m.avg}")
            if m.name in tables:
                first = tables[m.name]
                if (first.bytes, first.rate_match) != (bytes_, rate):
                    def kind(b: bool, rm: bool) -> str:
                        return ("a byte " if b else "a packet ") + ("rate with --hashlimit-rate-match" if rm else "rate")
                    problems.append(
                        f"{r.pos}: hashlimit --hashlimit-name {m.name} with {kind(bytes_, rate)}, but {first.pos} "
                        f"makes the table with {kind(first.bytes, first.rate_match)} (xt_hashlimit would run "
                        f"that table's buckets with this rule's other arithmetic), expected the same kind of "
                        f"rate for every rule of a --hashlimit-name, found {kind(bytes_, rate)}")
                continue
            size, max_ = hashlimit_size_max(getattr(m, "size", 0) or 0, getattr(m, "max", 0) or 0)
            tables[m.name] = HlTable(
                name=m.name, avg=m.avg, burst=m.burst, mode=sum(HL_MODE_BITS[k] for k in m.mode),
                srcmask=m.srcmask, dstmask=m.dstmask, expire=m.expire,
                gcinterval=getattr(m, "gcinterval", HASHLIMIT_GCINTERVAL) or HASHLIMIT_GCINTERVAL,
                size=size, max=max_, pos=r.pos, bytes=bytes_, rate_match=rate,
                interval=getattr(m, "interval", 0))
    if len(tables) > HL_TABLES_MAX:
        problems.append(f"{next(iter(tables.values())).pos}: {len(tables)} hashlimit tables are more than the "
                        f"datapath holds, expected at most {HL_TABLES_MAX} distinct --hashlimit-name, found "
                        f"{len(tables)}")
    return tables


def _recent_masks(recent: dict, rules: list, problems: list[str]) -> None:
    """xt_recent gives a table the --mask of the rule that creates it and ignores the others'
    (recent_mt_check): rules sharing a --name with different masks are refused rather than
    resolved by rule order."""
    first: dict[str, tuple] = {}
    for rn, m in recent.items():
        f = first.setdefault(m.name, (m.mask, rules[rn].pos))
        if f[0] != m.mask:
            def dotted(v: int) -> str:
                return ".".join(str(v >> s & 255) for s in (24, 16, 8, 0))
            problems.append(f"{rules[rn].pos}: recent --name {m.name} with --mask {dotted(m.mask)}, but {f[1]} "
                            f"gives the same list --mask {dotted(f[0])} (the kernel would use the mask of whichever "
                            f"rule made the list), expected one --mask per --name, found {dotted(m.mask)}")


def _set_of(r: Rule, sets: Optional[Mapping], problems: list[str]) -> Optional[tuple]:
    """The rule's -m set as (name, kind, src0, src1, inv); `sets` are the definitions by name
    (ebpfw.ipset.IpSet) the rule can refer to."""
    found = [m for m in r.matches if isinstance(m, SetMatch)]
    if not found:
        return None
    if len(found) > 1:
        problems.append(f"{r.pos}: more than one -m set in a rule is not supported by the datapath, "
                        f"expected at most one, found {len(found)}")
        return None
    m = found[0]
    st = (sets or {}).get(m.name)
    if st is None:
        known = ", ".join(sets) if sets else "none loaded"
        problems.append(f"{r.pos}: set '{m.name}' is not known, expected a set from the --sets file or one "
                        f"already loaded ({known}), found '--match-set {m.name}'")
        return None
    dim = SET_KINDS.get(st.type)
    if dim is None:
        problems.append(f"{r.pos}: set '{m.name}' of type {st.type} is not supported by the datapath, expected "
                        + ", ".join(SET_KINDS))
        return None
    need = 2 if st.type.endswith(",port") else 1
    if len(m.flags) < need:
        problems.append(f"{r.pos}: set '{m.name}' is {st.type} ({need} dimensions), expected {need} directions "
                        f"after its name, found '{','.join(m.flags)}'")
        return None
    src1 = len(m.flags) > 1 and m.flags[1] == "src"
    return (m.name, dim, int(m.flags[0] == "src"), int(src1), int(m.invert))


def _marks_of(r: Rule, problems: list[str]) -> tuple[Optional[tuple], bool]:
    """(the rule's struct ebpfw_markc fields or None, whether it reads or writes skb->mark)."""
    found = [(i, m) for i, m in enumerate(r.matches) if isinstance(m, (MarkMatch, ConnmarkMatch))]
    t = r.target
    if not found and t.kind not in ("MARK", "CONNMARK"):
        return None, False
    for kind in (MarkMatch, ConnmarkMatch):
        n = sum(1 for _, m in found if isinstance(m, kind))
        if n > 1:
            name = "mark" if kind is MarkMatch else "connmark"
            problems.append(f"{r.pos}: more than one -m {name} in a rule is not supported by the datapath, "
                            f"expected at most one, found {n}")
    hot = [i for i, m in enumerate(r.matches) if isinstance(m, HOTDROP_MATCHES)]
    first_hot = hot[0] if hot else len(r.matches)
    flags, mv, mm, cv, cmask = 0, 0, 0, 0, 0
    skb = t.kind == "MARK"
    for i, m in found:
        if isinstance(m, MarkMatch):
            flags |= MK_MARK | (MK_MARK_INV if m.invert else 0) | (MK_MARK_FIRST if i < first_hot else 0)
            mv, mm = m.value, m.mask
            skb = True
        else:
            flags |= MK_CONN | (MK_CONN_INV if m.invert else 0) | (MK_CONN_FIRST if i < first_hot else 0)
            cv, cmask = m.value, m.mask
    tv = tm = tn = tmode = 0
    if t.kind == "MARK":
        ext = t.ext if isinstance(t.ext, MarkTarget) else None
        if ext is None:
            problems.append(f"{r.pos}: target 'MARK' without its options, expected --set-xmark VALUE/MASK")
        else:
            tv, tm = ext.value, ext.mask
    elif t.kind == "CONNMARK":
        ext = t.ext if isinstance(t.ext, ConnmarkTarget) else None
        if ext is None:
            problems.append(f"{r.pos}: target 'CONNMARK' without its options, expected --set-xmark, "
                            "--save-mark or --restore-mark")
        else:
            tv, tm, tn, tmode = ext.value, ext.ctmask, ext.nfmask, CM_MODES[ext.mode]
            skb = skb or ext.mode != "set"
    return (tv, tm, tn, tmode, flags, mv, mm, cv, cmask), skb


def rule_entry(r: Rule, chain_id: Mapping[str, int], sets: Optional[Mapping], hl_index: Mapping[str, int],
               problems: list[str]) -> tuple:
    """One rule's (kind, arg, flags, LOG options, -m limit, -m set, (hashlimit table, above),
    marks, whether it needs skb->mark, -m recent, -m connlimit), None where the rule has none,
    with its problems appended to `problems`."""
    t = r.target
    log = None
    if t.kind not in ACT:
        problems.append(f"{r.pos}: target '{t.kind}' is not supported by the datapath yet, expected ACCEPT, "
                        f"DROP, REJECT, LOG, RETURN or a user-defined chain, found '-j {t.kind}'")
        kind = 0
    else:
        kind = ACT[t.kind]
    if t.kind == "REJECT":
        ext = t.ext if isinstance(t.ext, RejectTarget) else RejectTarget()
        code = REJECT_CODES.get(ext.reject_with)
        if code is None:
            problems.append(f"{r.pos}: unknown reject type '{ext.reject_with}', expected one of "
                            + ", ".join(REJECT_CODES))
            code = 3
        arg = code
    elif t.kind == "LOG":
        ext = t.ext if isinstance(t.ext, LogTarget) else LogTarget()
        if ext.uid:
            problems.append(f"{r.pos}: LOG --log-uid is not supported by the datapath (XDP and TC see no "
                            "socket owner), expected LOG without --log-uid, found '--log-uid'")
        log = ext
        arg = 0
    elif t.kind in ("JUMP", "GOTO"):
        if t.chain not in chain_id or t.chain in BUILTINS:
            problems.append(f"{r.pos}: jump to '{t.chain}', expected an existing user-defined chain")
            arg = 0
        else:
            arg = chain_id[t.chain]
    else:
        arg = 0
    f = 0
    special = t.kind in ("MARK", "CONNMARK")     # a match or target with its own judgement
    unsupported = False
    for m in r.matches:
        if isinstance(m, (TcpMatch, UdpMatch, IcmpMatch, MultiportMatch)):
            f |= RF_NEEDS_L4
        if isinstance(m, TcpMatch):
            f |= RF_TCP
        elif isinstance(m, TcpmssMatch):
            f |= RF_MSS
        elif isinstance(m, MacMatch):
            f |= RF_MAC
        elif isinstance(m, _SPECIAL_MATCHES):
            special = True
        elif not isinstance(m, ENFORCED_MATCHES):
            unsupported = True
    lim = sm = hlv = mk = rc = cl = None
    skb = False
    if special:
        sm = _set_of(r, sets, problems)
        if sm is not None:
            f |= RF_SET
            si = next(i for i, m in enumerate(r.matches) if isinstance(m, SetMatch))
            if not any(isinstance(m, HOTDROP_MATCHES) for m in r.matches[:si]):
                f |= RF_SETFIRST
        lim = _limit_of(r, problems)
        if lim is not None:
            f |= RF_LIMIT
        hl = _hashlimit_of(r, problems)
        if hl is not None:
            f |= RF_HASHLIMIT
            hlv = (hl_index[hl.name], hl.above)
        mk, skb = _marks_of(r, problems)
        if mk is not None and mk[4]:
            f |= RF_MARK
        rc = _recent_of(r, problems)
        if rc is not None:
            f |= RF_RECENT
        cl = _connlimit_of(r, problems)
        if cl is not None:
            f |= RF_CONNLIMIT
    for m in r.matches if unsupported else ():
        if isinstance(m, _SPECIAL_MATCHES):
            continue
        if not isinstance(m, ENFORCED_MATCHES):
            name = type(m).__name__.removesuffix("Match").lower()
            problems.append(f"{r.pos}: match '{name}' is not supported by the datapath yet, expected the "
                            f"matches ebpfw-rules(5) lists, found '-m {name}'")
    return kind, arg, f, log, lim, sm, hlv, mk, skb, rc, cl


_SPECIAL_MATCHES = (LimitMatch, SetMatch, HashlimitMatch, MarkMatch, ConnmarkMatch, RecentMatch, ConnlimitMatch)


def _raw_problems(r: Rule, problems: list[str]) -> None:
    """What the raw stage of the datapath does not enforce (the kernel accepts it)."""
    t = r.target
    if t.kind not in RAW_TARGETS:
        problems.append(f"{r.pos}: target '{t.kind}' in the raw table is not supported by the datapath yet, "
                        f"expected ACCEPT, DROP, RETURN, NOTRACK, CT --notrack, MARK, CONNMARK, LOG or a user-defined chain, "
                        f"found '-j {t.kind}'")
    for m in r.matches:
        if isinstance(m, (HashlimitMatch, RecentMatch, ConnlimitMatch)):
            name = type(m).__name__.removesuffix("Match").lower()
            problems.append(f"{r.pos}: match '{name}' in the raw table is not supported by the datapath yet, "
                            f"expected it only in *filter, found '-m {name}'")


def _raw_ct_flags(r: Rule, problems: list[str]) -> int:
    """RF_RAWCT and the RF_CT_*_OK bits of a raw rule's conntrack/state match (0 without one)."""
    from ..ruleset import CT_INVALID, CT_RELATED, CT_UNTRACKED
    found = [m for m in r.matches if isinstance(m, ConntrackMatch)]
    if not found:
        return 0
    if len(found) > 1:
        problems.append(f"{r.pos}: more than one -m conntrack/-m state in a raw rule is not supported by the "
                        f"datapath, expected at most one, found {len(found)}")
        return 0
    m = found[0]
    f = RF_RAWCT
    for bit, ok in ((CT_INVALID, RF_CT_INV_OK), (CT_UNTRACKED, RF_CT_UNT_OK), (CT_RELATED, RF_CT_REL_OK)):
        if bool((m.states or 0) & bit) != m.states_invert:
            f |= ok
    return f


def _without_ct(r: Rule) -> Rule:
    """The rule for the field vectors: a raw rule's conntrack match is judged in the walk."""
    from dataclasses import replace
    if not any(isinstance(m, ConntrackMatch) for m in r.matches):
        return r
    return replace(r, matches=tuple(m for m in r.matches if not isinstance(m, ConntrackMatch)))


def compile_state(table: Table, ifnames: Iterable[str] | dict = (), group: bool = True,
                  sets: Optional[Mapping] = None, raw: Optional[Table] = None) -> "CompileState":
    """compile_plan, also returning what the compile found on the way."""
    chains, missing = _order_chains(table)
    problems: list[str] = []
    by_name = {c.name: c for c in chains}
    names: list[str] = []
    ranges: list[tuple[int, int]] = []
    policy: list[int] = []
    rules: list[Rule] = []
    rule_chain: list[tuple[str, int]] = []
    # built-ins that the file does not declare behave as iptables' defaults: empty, ACCEPT
    for n in BUILTINS:
        c = by_name.get(n)
        start = len(rules)
        if c is not None:
            for i, r in enumerate(c.rules):
                rules.append(r)
                rule_chain.append((n, i))
        names.append(n)
        ranges.append((start, len(rules)))
        policy.append(ACT[c.policy] if c is not None else ACT["ACCEPT"])
    for c in chains:
        if c.name in BUILTINS:
            continue
        start = len(rules)
        for i, r in enumerate(c.rules):
            rules.append(r)
            rule_chain.append((c.name, i))
        names.append(c.name)
        ranges.append((start, len(rules)))
        policy.append(0)
    chain_id = {n: i for i, n in enumerate(names)}
    nfilter = len(rules)
    raw_chains = None
    raw_chain_id: dict[str, int] = {}
    max_depth = _max_depth(chains, by_name)
    if raw is not None:
        # the raw table's chains after the filter table's: PREROUTING, OUTPUT, then user chains
        raw_by = {c.name: c for c in raw.chains}
        raw_order = [raw_by[b] for b in RAW_BUILTINS if b in raw_by]
        raw_order += [c for c in raw.chains if c.name not in RAW_BUILTINS]
        for b in RAW_BUILTINS:
            c = raw_by.get(b)
            start = len(rules)
            for i, r in enumerate(c.rules if c is not None else ()):
                rules.append(r)
                rule_chain.append((chain_key("raw", b), i))
            raw_chain_id[b] = len(names)
            names.append(chain_key("raw", b))
            ranges.append((start, len(rules)))
            policy.append(ACT[c.policy] if c is not None else ACT["ACCEPT"])
        for c in raw_order:
            if c.name in RAW_BUILTINS:
                continue
            start = len(rules)
            for i, r in enumerate(c.rules):
                rules.append(r)
                rule_chain.append((chain_key("raw", c.name), i))
            raw_chain_id[c.name] = len(names)
            names.append(chain_key("raw", c.name))
            ranges.append((start, len(rules)))
            policy.append(0)
        raw_chains = (raw_chain_id["PREROUTING"], raw_chain_id["OUTPUT"])
        max_depth = max(max_depth, _max_depth(raw_order, raw_by))
        for r in rules[nfilter:]:
            _raw_problems(r, problems)

    n = len(rules)
    kinds, args, flags = [], [], []
    logs: dict[int, LogTarget] = {}
    limits: dict[int, LimitMatch] = {}
    setm: dict[int, tuple] = {}
    hl_by_name = _hl_tables(table, problems)
    hl_index = {name: i for i, name in enumerate(hl_by_name)}
    hashlimits: dict[int, tuple[int, bool]] = {}
    marks: dict[int, tuple] = {}
    skb_mark: list[Rule] = []
    uses_conn = False
    recent: dict[int, RecentMatch] = {}
    connlimits: dict[int, ConnlimitMatch] = {}
    for rn, r in enumerate(rules):
        kind, arg, f, log, lim, sm, hl, mk, skb, rc, cl = rule_entry(
            r, chain_id if rn < nfilter else raw_chain_id, sets, hl_index, problems)
        if rn >= nfilter:
            f |= _raw_ct_flags(r, problems)
        kinds.append(kind)
        args.append(arg)
        flags.append(f)
        if log is not None:
            logs[rn] = log
        if lim is not None:
            limits[rn] = lim
        if sm is not None:
            setm[rn] = sm
        if hl is not None:
            hashlimits[rn] = hl
        if mk is not None:
            marks[rn] = mk
            uses_conn = uses_conn or bool(mk[4] & MK_CONN) or r.target.kind == "CONNMARK"
            if skb:
                skb_mark.append(r)
        if rc is not None:
            recent[rn] = rc
        if cl is not None:
            connlimits[rn] = cl
            uses_conn = True       # xt_connlimit counts tracked connections: tracking is on

    _recent_masks(recent, rules, problems)
    all_ids = {n: i for i, n in enumerate(names)}
    rule_chain_id = [all_ids[c] for c, _ in rule_chain]
    ifindex_of = dict(ifnames) if isinstance(ifnames, dict) else None
    groups = find_groups(rules, rule_chain_id, None if group else n + 1, ifindex_of)
    # the bit vectors number only the residual rules (compact index k -> rule resid[k]), so
    # grouped rules cost neither vector bits nor walk steps
    resid = [r for r in range(n) if r not in groups.grouped]
    iface_names = set(ifnames) | {""}
    plan = Plan(
        nrules=n, chain_names=names, chain_ranges=ranges, chain_policy=policy,
        rule_chain=rule_chain, rule_kind=kinds, rule_arg=args, rule_flags=flags,
        max_depth=max_depth, vectors=[], log=logs, limits=limits,
        setm=setm, hl_tables=list(hl_by_name.values()), hashlimits=hashlimits, marks=marks, recent=recent,
        raw_chains=raw_chains,
        connlimits=connlimits,
    )
    # the vectors never see a raw rule's conntrack match (the walk judges it, RF_RAWCT)
    atom_rules = rules if nfilter == n else rules[:nfilter] + [_without_ct(r) for r in rules[nfilter:]]
    residual_fields(plan, atom_rules, resid, iface_names, problems, uses_conn)
    if skb_mark:
        first = min(skb_mark, key=lambda r: r.pos.line)
        chain = next(c for (c, i), r in zip(rule_chain, rules) if r is first)
        from ..iptables.save import format_rule
        table, _, bare = chain.rpartition(" ")     # "raw PREROUTING": chain_key's form
        try:
            text = format_rule(bare, first)
        except Exception:              # a hand-made IR the printer cannot print
            text = f"-A {bare} ..."
        if table:
            text = f"-t {table} {text}"
        plan.skb_mark_rule = f"{first.pos}: {text}"
    set_groups(plan, groups)
    return CompileState(plan=plan, rules=rules, rule_chain_id=rule_chain_id, chain_id=chain_id, groups=groups,
                        ifindex_of=ifindex_of, iface_names=iface_names, min_group=None if group else n + 1,
                        sets=sets, hl_index=hl_index, uses_conn=uses_conn)


def residual_fields(plan: Plan, rules: list[Rule], resid: list[int], iface_names: set[str],
                    problems: list[str], uses_conn: bool) -> None:
    """The field tables and vectors of the residual rules `resid` (ascending rule numbers);
    raises the compile's RulesetError when there are problems. `uses_conn`: some rule reads or
    sets the connection's mark (tracking is on even when no rule tests the state)."""
    nres = len(resid)
    classes = _Classes((1 << nres) - 1)
    atoms = F.collect_atoms([rules[r] for r in resid], problems)
    if problems:
        raise RulesetError(f"{len(problems)} problem(s) compiling the ruleset", problems=problems)
    plan.vectors = classes.vectors
    F.build_fields(plan, atoms, nres, classes, iface_names)
    if uses_conn and plan.ct is None:
        # -m connmark / CONNMARK need the connection: tracking on, no rule tests the state
        plan.ct = [0] * F.CT_SLOTS
    plan.resid = resid
    plan.vectors = classes.vectors


def set_groups(plan: Plan, groups) -> None:
    if groups.grouped:
        plan.group_shapes = groups.shapes
        plan.group_entries = groups.entries
        plan.group_ranges = groups.ranges
        plan.group_ifclass = groups.ifclass
    else:
        plan.group_shapes, plan.group_entries, plan.group_ranges = [], {}, [None, None]
        plan.group_ifclass = {}


@dataclass
class CompileState:
    """A plan and what compiling it found on the way, for compiler/incremental.py."""
    plan: Plan
    rules: list[Rule]                 # rule number -> rule
    rule_chain_id: list[int]
    chain_id: dict[str, int]
    groups: object                    # groups.Groups
    ifindex_of: Optional[dict]
    iface_names: set[str]
    min_group: Optional[int]
    sets: Optional[Mapping]
    hl_index: dict[str, int]
    uses_conn: bool


def compile_plan(table: Table, ifnames: Iterable[str] | dict = (), group: bool = True,
                 sets: Optional[Mapping] = None, raw: Optional[Table] = None) -> Plan:
    """Compile the filter table. `sets` are the ipset definitions by name that -m set rules
    may name (ebpfw.ipset.IpSet; entries are not read). `ifnames` are the host's interface names, for -i/-o; given as
    a dict name -> ifindex, rules with `-i NAME` (or a wildcard) can join exact-match groups.
    `group=False` keeps every rule in the bit vectors (no hash groups). `raw` is the raw table
    (or None): its chains are numbered after the filter table's and run in a stage of their own
    before conntrack (programs/ebpfw.c: the raw stage)."""
    return compile_state(table, ifnames, group, sets, raw).plan
