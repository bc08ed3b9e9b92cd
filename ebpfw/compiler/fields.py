"""Per-field classification tables: atoms (one per rule option) -> classes.

Each field is one classifier kind:
  lpm       src, dst              longest-prefix regions over the prefixes rules mention
  interval  sport, dport, icmp    elementary intervals over a 16-bit value, plus "no value"
  xport     multiport --ports     two interval tables OR-ed by the datapath
  exact     proto, tcpfl          every value of a small domain
  iface     iif, oif              every interface name of the host, plus "" (no interface)
  ctstate   ct                    the 8 conntrack state bit numbers (CT_* = 1 << n); the
                                  datapath labels each packet before classification
  interval  length                IP total length 0..65535 (-m length)
  exact     ttl, tos              the TTL at the hook (-m ttl) and the TOS byte (-m tos, and
                                  -m dscp as TOS >> 2: two kinds on one field)
  exact     frag                  0, or 1 for a non-first fragment (-f / ! -f)
  interval  tcpmss                the MSS option 0..65535, plus "no MSS option" (-m tcpmss)
  exact     pkttype               PACKET_HOST / BROADCAST / MULTICAST / OTHERHOST (-m pkttype)
  mac       mac                   every source MAC rules name, plus "any other" (-m mac)
  exact     atsrc, atdst          route types of the source / destination address for any
                                  device, the input and the output interface, 12 bits
                                  (-m addrtype, see ATYPE_* below)
Adding a match extension means adding its atoms in `collect_atoms`.
"""

from __future__ import annotations

from collections import defaultdict

from ..ruleset import (
    PKTTYPE_NAMES, AddrtypeMatch, ConntrackMatch, DscpMatch, IcmpMatch, IprangeMatch, LengthMatch, MacMatch,
    MultiportMatch, PkttypeMatch, Rule, TcpMatch, TcpmssMatch, TosMatch, TtlMatch, UdpMatch,
)

FIELD_NAMES = ("src", "dst", "proto", "sport", "dport", "xsport", "xdport", "tcpfl", "icmp", "iif", "oif", "ct",
               "length", "ttl", "tos", "frag", "tcpmss", "pkttype", "mac", "atsrc", "atdst")
CT_SLOTS = 8
PORT_NONE = 65536
# addrtype values: the address's route type (RTN_*, = ADDRTYPE_NAMES index) in bits 0-3 for
# any device, 4-7 when limited to the input interface, 8-11 to the output interface
ATYPE_SLOTS = 4096
ATYPE_SHIFT = {None: 0, "in": 4, "out": 8}
TTL_TESTS = {
    "eq": lambda v, x: v == x, "ne": lambda v, x: v != x,
    "lt": lambda v, x: v < x, "gt": lambda v, x: v > x,
}


def range_to_cidrs(lo: int, hi: int) -> list[tuple[int, int]]:
    """Minimal list of (addr, prefixlen) covering [lo, hi] of the IPv4 space."""
    out = []
    while lo <= hi:
        size = (lo & -lo) if lo else 1 << 32
        while size > hi - lo + 1:
            size >>= 1
        plen = 32 - (size.bit_length() - 1)
        out.append((lo, plen))
        lo += size
    return out


class Atoms:
    """field -> kind -> list of (rule number, payload, inverted)."""

    def __init__(self) -> None:
        self.by_field: dict[str, dict[str, list]] = defaultdict(lambda: defaultdict(list))
        self.seen: set = set()

    def add(self, problems: list[str], rule: Rule, r: int, fieldname: str, kind: str, payload, inv: bool) -> None:
        key = (r, fieldname, kind)
        if key in self.seen:
            problems.append(f"{rule.pos}: two '{kind}' conditions on {fieldname} in one rule are not supported, "
                            "expected at most one, found a second")
            return
        self.seen.add(key)
        self.by_field[fieldname][kind].append((r, payload, inv))


def collect_atoms(rules: list[Rule], problems: list[str]) -> Atoms:
    a = Atoms()
    for r, rule in enumerate(rules):
        ip = rule.ip
        for fname, net, inv in (("src", ip.src, ip.src_invert), ("dst", ip.dst, ip.dst_invert)):
            if net is None:
                continue
            plen = net.prefixlen
            if plen is None:
                problems.append(f"{rule.pos}: non-contiguous netmask {net.mask:#010x} is not supported, "
                                "expected a prefix such as /24 or 255.255.255.0")
                continue
            if plen == 0 and not inv:
                continue  # 0.0.0.0/0 matches everything
            a.add(problems, rule, r, fname, "addr", [(net.addr, plen)], inv)
        if ip.proto:
            a.add(problems, rule, r, "proto", "proto", ip.proto, ip.proto_invert)
        if ip.iface_in is not None:
            a.add(problems, rule, r, "iif", "iface", ip.iface_in.name, ip.iface_in.invert)
        if ip.iface_out is not None:
            a.add(problems, rule, r, "oif", "iface", ip.iface_out.name, ip.iface_out.invert)
        for m in rule.matches:
            if isinstance(m, (TcpMatch, UdpMatch)):
                if m.sport is not None:
                    a.add(problems, rule, r, "sport", "port", [m.sport], m.sport_invert)
                if m.dport is not None:
                    a.add(problems, rule, r, "dport", "port", [m.dport], m.dport_invert)
                if isinstance(m, TcpMatch) and m.flags is not None:
                    a.add(problems, rule, r, "tcpfl", "flags", m.flags, m.flags_invert)
            elif isinstance(m, MultiportMatch):
                ranges = list(m.ranges)
                if m.kind == "sports":
                    a.add(problems, rule, r, "sport", "multiport", ranges, m.invert)
                elif m.kind == "dports":
                    a.add(problems, rule, r, "dport", "multiport", ranges, m.invert)
                elif m.invert:
                    # !(sport in S or dport in S) == sport not in S and dport not in S
                    a.add(problems, rule, r, "sport", "xport", ranges, True)
                    a.add(problems, rule, r, "dport", "xport", ranges, True)
                else:
                    a.add(problems, rule, r, "xsport", "xport", ranges, False)
                    a.add(problems, rule, r, "xdport", "xport", ranges, False)
            elif isinstance(m, IcmpMatch):
                if m.type == 255:
                    rng = [(0, 0xFFFF)]
                else:
                    rng = [((m.type << 8) | m.code_min, (m.type << 8) | m.code_max)]
                a.add(problems, rule, r, "icmp", "icmp", rng, m.invert)
            elif isinstance(m, ConntrackMatch):
                if m.states is None:
                    problems.append(f"{rule.pos}: match '{m.module}' without a state list is not supported, "
                                    f"expected --{'ctstate' if m.module == 'conntrack' else 'state'} STATES")
                    continue
                # -m conntrack and -m state in one rule are two conditions, ANDed
                a.add(problems, rule, r, "ct", m.module, m.states, m.states_invert)
            elif isinstance(m, IprangeMatch):
                if m.src is not None:
                    a.add(problems, rule, r, "src", "range", range_to_cidrs(*m.src), m.src_invert)
                if m.dst is not None:
                    a.add(problems, rule, r, "dst", "range", range_to_cidrs(*m.dst), m.dst_invert)
            elif isinstance(m, LengthMatch):
                a.add(problems, rule, r, "length", "length", [(m.min, m.max)], m.invert)
            elif isinstance(m, TtlMatch):
                a.add(problems, rule, r, "ttl", "ttl", (m.mode, m.value), False)
            elif isinstance(m, TosMatch):
                a.add(problems, rule, r, "tos", "tos", (m.value, m.mask), m.invert)
            elif isinstance(m, DscpMatch):
                a.add(problems, rule, r, "tos", "dscp", m.value, m.invert)
            elif isinstance(m, TcpmssMatch):
                a.add(problems, rule, r, "tcpmss", "mss", [(m.min, m.max)], m.invert)
            elif isinstance(m, PkttypeMatch):
                a.add(problems, rule, r, "pkttype", "pkttype", PKTTYPE_NAMES.index(m.pkt_type), m.invert)
            elif isinstance(m, MacMatch):
                a.add(problems, rule, r, "mac", "mac", bytes(m.addr), m.invert)
            elif isinstance(m, AddrtypeMatch):
                limit = "in" if m.limit_iface_in else ("out" if m.limit_iface_out else None)
                if m.src:
                    a.add(problems, rule, r, "atsrc", "addrtype", (m.src, limit), m.src_invert)
                if m.dst:
                    a.add(problems, rule, r, "atdst", "addrtype", (m.dst, limit), m.dst_invert)
        if ip.fragment is not None:
            # -f: a non-first fragment (value 1); ! -f: anything else
            a.add(problems, rule, r, "frag", "frag", None, not ip.fragment)
    return a


def _kind_sets(atoms: list, all_rules: int) -> tuple[int, int, int]:
    pos = inv = 0
    for r, _, i in atoms:
        if i:
            inv |= 1 << r
        else:
            pos |= 1 << r
    return pos, inv, all_rules & ~(pos | inv)


def _combine(kinds: dict, contained: dict, all_rules: int) -> int:
    """AND over kinds of NO | (C & POS) | (INV & ~C)."""
    v = all_rules
    for kind, (pos, inv, no) in kinds.items():
        c = contained.get(kind, 0)
        v &= no | (c & pos) | (inv & ~c)
    return v


def build_lpm(field_atoms: dict, all_rules: int, classes) -> list[tuple[int, int, int]]:
    kinds = {k: _kind_sets(v, all_rules) for k, v in field_atoms.items()}
    own: dict[tuple[int, int], dict[str, int]] = defaultdict(lambda: defaultdict(int))
    own[(0, 0)]
    for kind, lst in field_atoms.items():
        for r, cidrs, _ in lst:
            for addr, plen in cidrs:
                own[(addr, plen)][kind] |= 1 << r
    acc: dict[tuple[int, int], dict[str, int]] = {}
    out = []
    for addr, plen in sorted(own, key=lambda p: p[1]):
        parent = None
        for l in range(plen - 1, -1, -1):
            mask = (0xFFFFFFFF << (32 - l)) & 0xFFFFFFFF if l else 0
            cand = (addr & mask, l)
            if cand in acc:
                parent = cand
                break
        c = dict(acc[parent]) if parent is not None else {}
        for kind, bits in own[(addr, plen)].items():
            c[kind] = c.get(kind, 0) | bits
        acc[(addr, plen)] = c
        out.append((addr, plen, classes.cls(_combine(kinds, c, all_rules))))
    return out


def build_interval(field_atoms: dict, all_rules: int, classes, size: int = 65536,
                   none_is_outside: bool = False) -> list[int]:
    """Classes for each value 0..size-1 plus a last entry for "no value": there only rules
    without a condition pass (no L4 header: the match fails, negated or not), or, with
    `none_is_outside`, the value is outside every range (a missing MSS option: xt_tcpmss
    returns `invert`)."""
    kinds = {k: _kind_sets(v, all_rules) for k, v in field_atoms.items()}
    events: list[tuple[int, str, int, int]] = []
    bounds = {0, size}
    for kind, lst in field_atoms.items():
        for r, ranges, _ in lst:
            for lo, hi in ranges:
                events.append((lo, kind, r, 1))
                events.append((hi + 1, kind, r, -1))
                bounds.add(lo)
                bounds.add(hi + 1)
    events.sort()
    bl = sorted(b for b in bounds if b <= size)
    counts: dict[tuple[str, int], int] = defaultdict(int)
    contained: dict[str, int] = defaultdict(int)
    out = [0] * (size + 1)
    ei = 0
    for i in range(len(bl) - 1):
        b = bl[i]
        while ei < len(events) and events[ei][0] <= b:
            _, kind, r, d = events[ei]
            ei += 1
            before = counts[(kind, r)]
            counts[(kind, r)] = before + d
            if before == 0 and d > 0:
                contained[kind] |= 1 << r
            elif before + d == 0:
                contained[kind] &= ~(1 << r)
        c = classes.cls(_combine(kinds, contained, all_rules))
        out[b:bl[i + 1]] = [c] * (bl[i + 1] - b)
    if none_is_outside:
        out[size] = classes.cls(_combine(kinds, {}, all_rules))
    else:
        out[size] = classes.cls(_no_atoms(kinds, all_rules))  # no value: only rules without a condition
    return out


def _no_atoms(kinds: dict, all_rules: int) -> int:
    v = all_rules
    for pos, inv, no in kinds.values():
        v &= no
    return v


def _groups(atoms: list) -> dict:
    g: dict = defaultdict(int)
    for r, payload, inv in atoms:
        g[(payload, inv)] |= 1 << r
    return g


def build_exact(atoms: list, all_rules: int, classes, values: int, test, none_entry: bool) -> list[int]:
    pos, inv, no = _kind_sets(atoms, all_rules)
    groups = _groups(atoms)
    out = []
    for v in range(values):
        bits = no
        for (payload, i), rb in groups.items():
            if test(v, payload) != i:
                bits |= rb
        out.append(classes.cls(bits))
    if none_entry:
        out.append(classes.cls(no))
    return out


def build_exact_kinds(field_atoms: dict, all_rules: int, classes, values: int, tests: dict) -> list[int]:
    """Classes for the values 0..values-1 of a field with several kinds of atoms (AND over
    kinds); tests[kind](value, payload) says whether the atom holds for the value."""
    kinds = {k: _kind_sets(v, all_rules) for k, v in field_atoms.items()}
    groups = {k: _groups(v) for k, v in field_atoms.items()}
    out = []
    for v in range(values):
        contained = {}
        for kind, g in groups.items():
            c = 0
            for (payload, _), rb in g.items():
                if tests[kind](v, payload):
                    c |= rb
            contained[kind] = c
        out.append(classes.cls(_combine(kinds, contained, all_rules)))
    return out


def build_mac(atoms: list, all_rules: int, classes) -> dict[bytes, int]:
    """Class of every MAC some rule names, and under b"" the class of any other MAC."""
    kinds = {"mac": _kind_sets(atoms, all_rules)}
    out = {b"": classes.cls(_combine(kinds, {}, all_rules))}
    for mac in sorted({payload for _, payload, _ in atoms}):
        c = 0
        for r, payload, _ in atoms:
            if payload == mac:
                c |= 1 << r
        out[mac] = classes.cls(_combine(kinds, {"mac": c}, all_rules))
    return out


def _atype_holds(v: int, payload) -> bool:
    mask, limit = payload
    return bool((mask >> ((v >> ATYPE_SHIFT[limit]) & 15)) & 1)


def iface_matches(name: str, pattern: str) -> bool:
    if pattern.endswith("+"):
        return name.startswith(pattern[:-1])
    return name == pattern


def build_iface(atoms: list, all_rules: int, classes, names: set[str]) -> dict[str, int]:
    _, _, no = _kind_sets(atoms, all_rules)
    groups = _groups(atoms)
    out = {}
    for name in sorted(names):
        bits = no
        for (pattern, inv), rb in groups.items():
            if iface_matches(name, pattern) != inv:
                bits |= rb
        out[name] = classes.cls(bits)
    return out


def build_ct(field_atoms: dict, all_rules: int, classes) -> list[int]:
    """Classes for the conntrack state bit numbers 0..7 (payload = a CT_* mask)."""
    kinds = {k: _kind_sets(v, all_rules) for k, v in field_atoms.items()}
    out = []
    for bit in range(CT_SLOTS):
        contained: dict[str, int] = {}
        for kind, lst in field_atoms.items():
            c = 0
            for r, mask, _ in lst:
                if (mask >> bit) & 1:
                    c |= 1 << r
            contained[kind] = c
        out.append(classes.cls(_combine(kinds, contained, all_rules)))
    return out


def build_fields(plan, atoms: Atoms, n: int, classes, ifnames: set[str]) -> None:
    all_rules = (1 << n) - 1
    bf = atoms.by_field
    if "src" in bf:
        plan.src = build_lpm(bf["src"], all_rules, classes)
    if "dst" in bf:
        plan.dst = build_lpm(bf["dst"], all_rules, classes)
    if "proto" in bf:
        plan.proto = build_exact(bf["proto"]["proto"], all_rules, classes, 256, lambda v, p: v == p, False)
    for f in ("sport", "dport", "icmp"):
        if f in bf:
            setattr(plan, f, build_interval(bf[f], all_rules, classes))
    if "xsport" in bf:
        plan.xsport = build_interval(bf["xsport"], all_rules, classes)
        plan.xdport = build_interval(bf["xdport"], all_rules, classes)
    if "tcpfl" in bf:
        plan.tcpfl = build_exact(bf["tcpfl"]["flags"], all_rules, classes, 256,
                                 lambda v, mc: (v & mc[0]) == mc[1], True)
    if "iif" in bf:
        plan.iif = build_iface(bf["iif"]["iface"], all_rules, classes, ifnames)
        plan.iface_patterns.append(("iif", bf["iif"]["iface"]))
    if "oif" in bf:
        plan.oif = build_iface(bf["oif"]["iface"], all_rules, classes, ifnames)
        plan.iface_patterns.append(("oif", bf["oif"]["iface"]))
    if "ct" in bf:
        plan.ct = build_ct(bf["ct"], all_rules, classes)
    if "length" in bf:
        plan.length = build_interval(bf["length"], all_rules, classes)[:65536]
    if "ttl" in bf:
        plan.ttl = build_exact_kinds(bf["ttl"], all_rules, classes, 256,
                                     {"ttl": lambda v, p: TTL_TESTS[p[0]](v, p[1])})
    if "tos" in bf:
        plan.tos = build_exact_kinds(bf["tos"], all_rules, classes, 256, {
            "tos": lambda v, p: (v & p[1]) == p[0],
            "dscp": lambda v, p: (v >> 2) == p,
        })
    if "frag" in bf:
        plan.frag = build_exact_kinds(bf["frag"], all_rules, classes, 2, {"frag": lambda v, p: v == 1})
    if "tcpmss" in bf:
        plan.tcpmss = build_interval(bf["tcpmss"], all_rules, classes, none_is_outside=True)
    if "pkttype" in bf:
        plan.pkttype = build_exact_kinds(bf["pkttype"], all_rules, classes, 4,
                                         {"pkttype": lambda v, p: v == p})
    if "mac" in bf:
        plan.mac = build_mac(bf["mac"]["mac"], all_rules, classes)
    for f in ("atsrc", "atdst"):
        if f in bf:
            setattr(plan, f, build_exact_kinds(bf[f], all_rules, classes, ATYPE_SLOTS,
                                               {"addrtype": _atype_holds}))
