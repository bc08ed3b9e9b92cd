"""Rule groups: exact-match rules classified by one hash lookup instead of bit vectors.

Large rulesets are mostly rules whose every condition is an exact value: blocklists
(`-s 203.0.113.7/32 -j DROP`), per-service allows (`-p tcp --dport 443 -j ACCEPT`), per-host
services (`-s 10.1.2.0/24 -p tcp --dport 22`). Rules of one *shape* — the same source and
destination prefix lengths, whether a protocol is given, and which port (or ICMP type) is
matched — form a group: one hash map keyed by (group, masked source, masked destination,
protocol, port) gives the rule numbers whose condition is exactly that key. Per packet each
group costs one lookup, whatever the number of rules in it, and the rules found are OR-ed into
the walk's candidate vector, so iptables' order, jumps and per-rule counters are unchanged.

Rules stay in the bit-vector ("residual") part when they have anything a key cannot express
(negations, ranges, interfaces, flags, conntrack, ...), when their shape has too few rules to be
worth a lookup, or when a key already lists MAX_IDS rules that can all be reached.
"""

from __future__ import annotations

import os
from collections import defaultdict
from dataclasses import dataclass

from ..ruleset import CommentMatch, IcmpMatch, MultiportMatch, Rule, TcpMatch, UdpMatch

MAX_GROUPS = 16           # lookups per packet at most (compile-time bound of the datapath)
MAX_IDS = 4               # rule numbers per key
MIN_GROUP = int(os.environ.get("EBPFW_GROUP_MIN", "32"))
NO_ID = 0xFFFFFFFF
PORT_NONE, PORT_SPORT, PORT_DPORT, PORT_ICMP = 0, 1, 2, 3
FINAL = ("ACCEPT", "DROP", "RETURN", "GOTO")   # the walk never goes past these in a chain


@dataclass(frozen=True)
class GroupShape:
    src_plen: int          # -1: no source condition
    dst_plen: int
    proto: bool            # the key includes the protocol
    port: int              # PORT_*
    iif: bool = False      # the key includes the input interface (ifindex)

    @property
    def src_mask(self) -> int:
        return 0 if self.src_plen < 0 else (0xFFFFFFFF << (32 - self.src_plen)) & 0xFFFFFFFF

    @property
    def dst_mask(self) -> int:
        return 0 if self.dst_plen < 0 else (0xFFFFFFFF << (32 - self.dst_plen)) & 0xFFFFFFFF


NO_IFINDEX = 0xFFFFFFFE


def _prefix(net) -> tuple[int | None, int]:
    """(prefix length, address) of an address condition for a key: -1 when there is none (or it
    is /0), None when the mask is not a prefix (not groupable)."""
    if net is None or net.prefixlen == 0:
        return -1, 0
    return net.prefixlen, net.addr    # an interface the host does not have (yet): its key never matches


def _keys(rule: Rule, ifindex_of: dict | None) -> tuple[GroupShape, list[tuple[int, int, int, int]]] | None:
    """The shape and the (src, dst, proto<<24|port, iif) keys of a groupable rule, else None."""
    ip = rule.ip
    if ip.iface_out or ip.fragment is not None:
        return None
    iif = 0
    if ip.iface_in is not None:
        # an exact input interface name joins the key (wildcards and negations do not)
        if ifindex_of is None or ip.iface_in.invert or ip.iface_in.wildcard:
            return None
        iif = ifindex_of.get(ip.iface_in.name, NO_IFINDEX)
    if ip.src_invert or ip.dst_invert or ip.proto_invert:
        return None
    src_plen, src = _prefix(ip.src)
    dst_plen, dst = _prefix(ip.dst)
    if src_plen is None or dst_plen is None:
        return None
    proto = ip.proto or 0
    port_kind = PORT_NONE
    ports: list[int] = [0]
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
            if inv or rng[0] != rng[1]:
                return None
            port_kind = PORT_SPORT if m.sport is not None else PORT_DPORT
            ports = [rng[0]]
        elif isinstance(m, MultiportMatch):
            if m.invert or m.kind == "ports" or any(lo != hi for lo, hi in m.ranges):
                return None
            port_kind = PORT_SPORT if m.kind == "sports" else PORT_DPORT
            ports = sorted({lo for lo, _ in m.ranges})
        elif isinstance(m, IcmpMatch):
            if m.invert or m.type == 255 or (m.code_min, m.code_max) != (0, 255):
                return None
            port_kind = PORT_ICMP
            ports = [m.type]
        else:
            return None
    if port_kind != PORT_NONE and not proto:
        return None
    shape = GroupShape(src_plen, dst_plen, bool(proto), port_kind, ip.iface_in is not None)
    return shape, [(src, dst, (proto << 24) | p, iif) for p in ports]


@dataclass
class Groups:
    shapes: list[GroupShape]
    # (gid, src, dst, pp, iif) -> rule numbers in order
    entries: dict[tuple[int, int, int, int, int], list[int]]
    grouped: set[int]


def find_groups(rules: list[Rule], rule_chain_id: list[int], min_size: int | None = None,
                ifindex_of: dict | None = None) -> Groups:
    """`ifindex_of` (interface name -> ifindex) lets rules with an exact `-i NAME` join groups."""
    min_size = MIN_GROUP if min_size is None else min_size
    by_shape: dict[GroupShape, list[tuple[int, list]]] = defaultdict(list)
    for r, rule in enumerate(rules):
        k = _keys(rule, ifindex_of)
        if k is not None:
            by_shape[k[0]].append((r, k[1]))
    chosen = sorted((s for s, members in by_shape.items() if len(members) >= min_size),
                    key=lambda s: -len(by_shape[s]))[:MAX_GROUPS]
    entries: dict[tuple[int, int, int, int, int], list[int]] = {}
    grouped: set[int] = set()
    closed: set[tuple] = set()    # (key..., chain) already ends at a final rule
    for gid, shape in enumerate(chosen):
        for r, keys in by_shape[shape]:
            cid = rule_chain_id[r]
            final = rules[r].target.kind in FINAL
            fits = True
            for src, dst, pp, iif in keys:
                key = (gid, src & shape.src_mask, dst & shape.dst_mask, pp, iif)
                if (key + (cid,)) in closed:
                    continue         # shadowed in this chain: the walk never gets here with this key
                if len(entries.get(key, ())) >= MAX_IDS:
                    fits = False
            if not fits:
                continue             # stays in the bit vectors
            for src, dst, pp, iif in keys:
                key = (gid, src & shape.src_mask, dst & shape.dst_mask, pp, iif)
                if (key + (cid,)) in closed:
                    continue
                entries.setdefault(key, []).append(r)
                if final:
                    closed.add(key + (cid,))
            grouped.add(r)
    used = sorted({k[0] for k in entries})
    remap = {g: i for i, g in enumerate(used)}
    return Groups(shapes=[chosen[g] for g in used],
                  entries={(remap[k[0]],) + k[1:]: v for k, v in entries.items()},
                  grouped=grouped)
