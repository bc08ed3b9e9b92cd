"""Rule groups: exact-match rules classified by one hash lookup instead of bit vectors.

Large rulesets are mostly rules whose every condition is an exact value: blocklists
(`-s 203.0.113.7/32 -j DROP`), per-service allows (`-p tcp --dport 443 -j ACCEPT`), per-host
services (`-s 10.1.2.0/24 -p tcp --dport 22`). Rules of one *shape* — the same source and
destination prefix lengths, whether a protocol is given, and which port (or ICMP type) is
matched — form a group: one hash map keyed by (group, masked source, masked destination,
protocol, port) gives the rule numbers whose condition is exactly that key. Per packet each
group costs one lookup, whatever the number of rules in it, and the rules found are OR-ed into
the walk's candidate vector, so iptables' order, jumps and per-rule counters are unchanged.

Port *ranges* (`--dport 1024:2047`, multiport lists with ranges) join groups too: a shape with
a range gets the "range" port kind, whose key holds an elementary-interval id instead of the
port. The bounds of every range rule of a side (source or destination port) split 0..65535
into intervals on which every such rule's condition is constant; the datapath maps the
packet's port to its interval id with one array lookup (`Groups.ranges`), and a rule has one
key per interval it covers. Like exact keys, an interval lists its rules only up to the first
one that ends the chain, so overlapping ACCEPT/DROP ranges cost one entry per interval.

An input interface (`-i eth0`, and wildcards such as `-i eth+`) joins the key as an *interface
class*: the host's interface names (and "", any interface the host does not have) are split by
the set of `-i` patterns of the grouped rules they match, each distinct set is a class (0: none),
and a rule has one key per class its pattern is in. The datapath finds the class of the packet's
input interface in the interface's ebpfw_ifinfo entry, which it reads anyway (`Groups.ifclass`).

Rules stay in the bit-vector ("residual") part when they have anything a key cannot express
(negations, flags, conntrack, ...), when their shape has too few rules to be worth a lookup,
when a key already lists MAX_IDS rules that can all be reached, or when a range or interface
rule would need more than MAX_RANGE_KEYS / MAX_IFACE_KEYS keys.
"""

from __future__ import annotations

import bisect
import os
from collections import defaultdict
from dataclasses import dataclass, field

from ..ruleset import CommentMatch, IcmpMatch, MultiportMatch, Rule, TcpMatch, UdpMatch
from .fields import iface_matches

MAX_GROUPS = 16           # lookups per packet at most (compile-time bound of the datapath)
MAX_IDS = 4               # rule numbers per key
MAX_RANGE_KEYS = 512      # keys (covered intervals) a range rule may add; wider rules stay residual
MAX_IFACE_KEYS = 64       # interface classes an -i pattern may key on
MIN_GROUP = int(os.environ.get("EBPFW_GROUP_MIN", "32"))
NO_ID = 0xFFFFFFFF
PORT_NONE, PORT_SPORT, PORT_DPORT, PORT_ICMP, PORT_SRANGE, PORT_DRANGE = 0, 1, 2, 3, 4, 5
RANGE_OF = {PORT_SPORT: PORT_SRANGE, PORT_DPORT: PORT_DRANGE}
SIDE = {PORT_SRANGE: 0, PORT_DRANGE: 1}   # index of Groups.ranges (0 = source port, 1 = destination)
FINAL = ("ACCEPT", "DROP", "RETURN", "GOTO")   # the walk never goes past these in a chain


@dataclass(frozen=True)
class GroupShape:
    src_plen: int          # -1: no source condition
    dst_plen: int
    proto: bool            # the key includes the protocol
    port: int              # PORT_*
    iif: bool = False      # the key includes the input interface's class

    @property
    def src_mask(self) -> int:
        return 0 if self.src_plen < 0 else (0xFFFFFFFF << (32 - self.src_plen)) & 0xFFFFFFFF

    @property
    def dst_mask(self) -> int:
        return 0 if self.dst_plen < 0 else (0xFFFFFFFF << (32 - self.dst_plen)) & 0xFFFFFFFF


_PLEN: dict[int, int | None] = {}      # netmask -> prefix length (None: not a prefix)
_MASK = {-1: 0, **{n: (0xFFFFFFFF << (32 - n)) & 0xFFFFFFFF if n else 0 for n in range(33)}}
_SHAPES: dict[tuple, "GroupShape"] = {}


def _prefix(net) -> tuple[int | None, int]:
    """(prefix length, address) of an address condition for a key: -1 when there is none (or it
    is /0), None when the mask is not a prefix (not groupable)."""
    if net is None:
        return -1, 0
    m = net.mask
    plen = _PLEN.get(m, -2)
    if plen == -2:
        plen = _PLEN[m] = net.prefixlen
    if plen == 0:
        return -1, 0
    return plen, net.addr


def _keys(rule: Rule, ifindex_of: dict | None) -> tuple | None:
    """(shape, src, dst, proto << 24, -i pattern or None, port ranges) of a groupable rule, else
    None; -i rules only when the host's interfaces are known (`ifindex_of`: name -> ifindex).
    The shape's port kind is PORT_SPORT / PORT_DPORT for any port condition; find_groups turns
    it into the range kind when some rule of the shape has a range."""
    ip = rule.ip
    if ip.iface_out or ip.fragment is not None:
        return None
    iif = None
    if ip.iface_in is not None:
        # the input interface pattern (a name or a wildcard) joins the key through its classes
        if ifindex_of is None or ip.iface_in.invert:
            return None
        iif = ip.iface_in.name
    if ip.src_invert or ip.dst_invert or ip.proto_invert:
        return None
    src_plen, src = _prefix(ip.src)
    dst_plen, dst = _prefix(ip.dst)
    if src_plen is None or dst_plen is None:
        return None
    proto = ip.proto or 0
    port_kind = PORT_NONE
    ports: list[tuple[int, int]] = [(0, 0)]
    for m in rule.matches:
        if isinstance(m, CommentMatch):
            continue
        if port_kind != PORT_NONE:
            return None      # one port condition at most
        if isinstance(m, (TcpMatch, UdpMatch)):
            if isinstance(m, TcpMatch) and (m.flags is not None or m.option is not None):
                return None
            if (m.sport is None) == (m.dport is None):
                return None  # both or neither: not a single-port key
            rng, inv = (m.sport, m.sport_invert) if m.sport is not None else (m.dport, m.dport_invert)
            if inv:
                return None
            port_kind = PORT_SPORT if m.sport is not None else PORT_DPORT
            ports = [(rng[0], rng[1])]
        elif isinstance(m, MultiportMatch):
            if m.invert or m.kind == "ports":
                return None
            port_kind = PORT_SPORT if m.kind == "sports" else PORT_DPORT
            ports = sorted({(lo, hi) for lo, hi in m.ranges})
        elif isinstance(m, IcmpMatch):
            if m.invert or m.type == 255 or (m.code_min, m.code_max) != (0, 255):
                return None
            port_kind = PORT_ICMP
            ports = [(m.type, m.type)]
        else:
            return None
    if port_kind != PORT_NONE and not proto:
        return None
    sk = (src_plen, dst_plen, bool(proto), port_kind, ip.iface_in is not None)
    shape = _SHAPES.get(sk)
    if shape is None:
        shape = _SHAPES[sk] = GroupShape(*sk)
    return shape, src & _MASK[src_plen], dst & _MASK[dst_plen], proto << 24, iif, ports


@dataclass
class Groups:
    shapes: list[GroupShape]
    # (gid, src, dst, pp, iif) -> rule numbers in order
    entries: dict[tuple[int, int, int, int, int], list[int]]
    grouped: set[int]
    # interval bounds per port side [sport, dport] of the range groups (None: no range group on
    # that side): interval i is [bounds[i], bounds[i+1]), bounds[0] = 0, bounds[-1] = 65536
    ranges: list = field(default_factory=lambda: [None, None])
    # interface name -> interface class of the -i keys ("": an interface the host does not have)
    ifclass: dict = field(default_factory=dict)
    # -i pattern -> the interface classes it matches (what the -i groups were filled with)
    pclasses: dict = field(default_factory=dict)
    # how they were found, for an incremental update (compiler/incremental.py): every groupable
    # rule's _keys, the chosen shapes, their port kinds, the bounds of both sides, per chosen
    # shape its (entries without gid, grouped rules), and every shape's members in rule order
    keys: dict = field(default_factory=dict)
    chosen: list = field(default_factory=list)
    kinds: dict = field(default_factory=dict)
    all_ranges: list = field(default_factory=lambda: [None, None])
    per_shape: list = field(default_factory=list)
    by_shape: dict = field(default_factory=dict)

    def interval_ids(self, side: int) -> list[int] | None:
        """Port 0..65535 -> interval id for the datapath's table (None: no range group)."""
        b = self.ranges[side]
        if b is None:
            return None
        out = [0] * 65536
        for i in range(len(b) - 1):
            out[b[i]:b[i + 1]] = [i] * (b[i + 1] - b[i])
        return out


def rule_keys(rules: list[Rule], ifindex_of: dict | None) -> dict[int, tuple]:
    """rule number -> _keys(rule) of every groupable rule."""
    out = {}
    for r, rule in enumerate(rules):
        k = _keys(rule, ifindex_of)
        if k is not None:
            out[r] = k
    return out


def choose_shapes(keys: dict[int, tuple], min_size: int) -> tuple[list[GroupShape], dict]:
    """The shapes that become groups (largest first, at most MAX_GROUPS, ties in order of
    first appearance) and every shape's members [(rule, src, dst, pp, iif, ports)] in rule order."""
    by_shape: dict[GroupShape, list[tuple]] = defaultdict(list)
    for r in sorted(keys):
        k = keys[r]
        by_shape[k[0]].append((r,) + k[1:])
    chosen = sorted((s for s, members in by_shape.items() if len(members) >= min_size),
                    key=lambda s: -len(by_shape[s]))[:MAX_GROUPS]
    return chosen, by_shape


def port_kinds(chosen: list[GroupShape], by_shape: dict) -> tuple[dict, list]:
    """Each chosen shape's port kind, and the interval bounds per port side: a port shape with a
    range among its rules keys on interval ids, and the bounds of every rule of such shapes
    (single ports too) split that side's port space."""
    kinds = {}
    bounds: list[set | None] = [None, None]
    for s in chosen:
        kinds[s] = s.port
        if s.port in RANGE_OF and any(lo != hi for m in by_shape[s] for lo, hi in m[5]):
            kinds[s] = RANGE_OF[s.port]
            side = SIDE[kinds[s]]
            if bounds[side] is None:
                bounds[side] = {0, 65536}
            for m in by_shape[s]:
                for lo, hi in m[5]:
                    if lo <= hi:
                        bounds[side].add(lo)
                        bounds[side].add(hi + 1)
    return kinds, [sorted(b) if b is not None else None for b in bounds]


def iface_classes(chosen: list[GroupShape], by_shape: dict, ifnames) -> tuple[dict[str, int], dict[str, list[int]]]:
    """Split the interface names (and "", any other) by the -i patterns of the chosen shapes'
    rules they match: name -> class (0 = matches none) and pattern -> the classes it matches."""
    patterns = {m[4] for s in chosen if s.iif for m in by_shape[s]}
    if not patterns:
        return {}, {}
    ids: dict[frozenset, int] = {frozenset(): 0}
    ifclass: dict[str, int] = {}
    for name in sorted(set(ifnames or ()) | {""}):
        ps = frozenset(p for p in patterns if iface_matches(name, p))
        ifclass[name] = ids.setdefault(ps, len(ids))
    of_pattern: dict[str, list[int]] = {p: [] for p in patterns}
    for ps, c in ids.items():
        for p in ps:
            of_pattern[p].append(c)
    return ifclass, {p: sorted(cs) for p, cs in of_pattern.items()}


def fill_group(kind: int, b: list | None, members: list, rules: list[Rule], rule_chain_id: list[int],
               pclasses: dict | None = None) -> tuple:
    """One group's keys, (src, dst, pp, iif) -> rule numbers, and the rules it takes, from its
    members in rule order (`b`: its side's interval bounds for a range kind, else None; `pclasses`:
    -i pattern -> interface classes, see iface_classes): a key lists at most MAX_IDS rules, and
    none after a final rule of the same chain."""
    entries: dict[tuple[int, int, int, int], list[int]] = {}
    grouped: list[int] = []
    closed: dict[int, set] = {}   # chain -> keys already ending at a final rule there
    get = entries.get
    for r, src, dst, pp, pattern, ports in members:
        cid = rule_chain_id[r]
        iif = 0
        if b is None:
            if len(ports) == 1:
                keys = [(src, dst, pp | ports[0][0], iif)]
            else:
                keys = [(src, dst, pp | v, iif) for v in sorted({lo for lo, _ in ports})]
        elif len(ports) == 1:    # one range: its intervals are already in order
            lo, hi = ports[0]
            if lo > hi:
                keys = []
            else:
                first, last = bisect.bisect_right(b, lo) - 1, bisect.bisect_right(b, hi) - 1
                if last - first >= 4 * MAX_RANGE_KEYS:
                    continue         # far too wide: stays in the bit vectors
                keys = [(src, dst, pp | v, iif) for v in range(first, last + 1)]
        else:
            ids: set[int] | None = set()
            for lo, hi in ports:
                if lo <= hi:
                    first, last = bisect.bisect_right(b, lo) - 1, bisect.bisect_right(b, hi) - 1
                    if last - first >= 4 * MAX_RANGE_KEYS:
                        ids = None
                        break
                    ids.update(range(first, last + 1))
            if ids is None:
                continue         # far too wide: stays in the bit vectors
            keys = [(src, dst, pp | v, iif) for v in sorted(ids)]
        if pattern is not None:
            cs = (pclasses or {}).get(pattern, ())
            if len(cs) > MAX_IFACE_KEYS:
                continue         # matches too many kinds of interface: stays in the bit vectors
            keys = [(s_, d_, p_, c) for s_, d_, p_, _ in keys for c in cs]
        cl = closed.get(cid)
        open_keys = [k for k in keys if k not in cl] if cl else keys
        if b is not None and len(open_keys) > MAX_RANGE_KEYS:
            continue             # stays in the bit vectors
        full = False
        for k in open_keys:
            ids_ = get(k)
            if ids_ is not None and len(ids_) >= MAX_IDS:
                full = True
                break
        if full:
            continue             # stays in the bit vectors
        for k in open_keys:
            ids_ = get(k)
            if ids_ is None:
                entries[k] = [r]
            else:
                ids_.append(r)
        if open_keys and rules[r].target.kind in FINAL:
            if cl is None:
                cl = closed[cid] = set()
            cl.update(open_keys)
        grouped.append(r)
    return entries, grouped


def assemble(chosen: list[GroupShape], kinds: dict, ranges: list, per_shape: list, keys: dict,
             by_shape: dict, ifclass: dict | None = None, pclasses: dict | None = None) -> Groups:
    """Groups from the filled chosen shapes: shapes without entries are dropped and the others
    numbered densely."""
    shapes, entries, grouped = [], {}, set()
    for s, (ent, members) in zip(chosen, per_shape):
        if not ent:
            continue
        gid = len(shapes)
        shapes.append(GroupShape(s.src_plen, s.dst_plen, s.proto, kinds[s], s.iif))
        for k, v in ent.items():
            entries[(gid,) + k] = v
        grouped.update(members)
    sides = {SIDE[s.port] for s in shapes if s.port in SIDE}
    return Groups(shapes=shapes, entries=entries, grouped=grouped,
                  ranges=[ranges[i] if i in sides else None for i in (0, 1)],
                  ifclass=(ifclass or {}) if any(s.iif for s in shapes) else {}, pclasses=pclasses or {},
                  keys=keys, chosen=chosen, kinds=kinds, all_ranges=ranges, per_shape=per_shape,
                  by_shape=by_shape)


def fill_all(chosen: list, kinds: dict, ranges: list, by_shape: dict, rules: list[Rule],
             rule_chain_id: list[int], pclasses: dict | None = None) -> list:
    return [fill_group(kinds[s], ranges[SIDE[kinds[s]]] if kinds[s] in SIDE else None, by_shape[s], rules,
                       rule_chain_id, pclasses) for s in chosen]


def find_groups(rules: list[Rule], rule_chain_id: list[int], min_size: int | None = None,
                ifindex_of: dict | None = None) -> Groups:
    """`ifindex_of` (interface name -> ifindex, the host's interfaces) lets rules with `-i` join groups."""
    min_size = MIN_GROUP if min_size is None else min_size
    keys = rule_keys(rules, ifindex_of)
    chosen, by_shape = choose_shapes(keys, min_size)
    kinds, ranges = port_kinds(chosen, by_shape)
    ifclass, pclasses = iface_classes(chosen, by_shape, ifindex_of)
    per_shape = fill_all(chosen, kinds, ranges, by_shape, rules, rule_chain_id, pclasses)
    return assemble(chosen, kinds, ranges, per_shape, keys, by_shape, ifclass, pclasses)


# ---- the groups' Bloom filters (programs/ebpfw.c: bloom_maybe) -------------------------------
_M64 = (1 << 64) - 1


def _mix(v: int) -> int:
    v ^= v >> 33
    v = (v * 0xFF51AFD7ED558CCD) & _M64
    v ^= v >> 33
    v = (v * 0xC4CEB9FE1A85EC53) & _M64
    v ^= v >> 33
    return v


def bloom_hash(gid: int, src: int, dst: int, pp: int, iif: int) -> int:
    """The datapath's hash of a group key (src, dst: host order, masked)."""
    return _mix(((src << 32) | dst) ^ _mix((((pp << 32) | iif) + gid) & _M64))


_BLOOM_CACHE: dict = {}
_BLOOM_CACHE_MAX = 1 << 21


def _bloom_bits(key: tuple) -> tuple[int, int]:
    """The key's hash halves, remembered: an apply that changes a few rules rehashes only their
    keys (a 10k-rule ruleset has ≈ 10,000 keys: 25 ms of hashing per apply otherwise)."""
    h = _BLOOM_CACHE.get(key)
    if h is None:
        if len(_BLOOM_CACHE) >= _BLOOM_CACHE_MAX:
            _BLOOM_CACHE.clear()
        v = bloom_hash(*key)
        h = _BLOOM_CACHE[key] = (v & 0xFFFFFFFF, v >> 32 & 0xFFFFFFFF)
    return h


def bloom_words(entries: dict, ngroups: int, words: int) -> tuple[list[tuple[int, int]], list[int]]:
    """Lay the groups' Bloom filters out in `words` 64-bit words: per group (first word, bits - 1)
    and the words. A key sets two bits (the two halves of its hash); a group gets 32 bits per key
    (a power of two, 64 bits at least); when they do not all fit, the largest filters are halved
    (more false positives, never a wrong answer)."""
    count = [0] * ngroups
    for k in entries:
        count[k[0]] += 1
    bits = []
    for n in count:
        b = 64
        while b < 32 * n and b < (1 << 20):
            b <<= 1
        bits.append(b)
    while sum(bits) > 64 * words:
        i = max(range(ngroups), key=lambda j: bits[j])
        if bits[i] == 64:
            raise ValueError("internal: no room for the groups' Bloom filters")
        bits[i] >>= 1
    layout, off = [], 0
    for b in bits:
        layout.append((off, b - 1))
        off += b // 64
    out = [0] * words
    get = _BLOOM_CACHE.get
    for k in entries:
        off, mask = layout[k[0]]
        h = get(k) or _bloom_bits(k)
        b = h[0] & mask
        out[off + (b >> 6)] |= 1 << (b & 63)
        b = h[1] & mask
        out[off + (b >> 6)] |= 1 << (b & 63)
    return layout, out


def bloom_has(layout: list, words: list, key: tuple) -> bool:
    """Whether the filters say the key may be there (what the datapath's bloom_maybe answers)."""
    off, mask = layout[key[0]]
    h = bloom_hash(*key)
    return all(words[off + (b >> 6)] >> (b & 63) & 1 for b in (h & mask, (h >> 32) & mask))
