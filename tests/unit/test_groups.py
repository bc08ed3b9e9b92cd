"""Exact-match rule groups (ebpfw/compiler/groups.py): pure Python, no root.

The property every test checks (`check_groups`): for a packet, the rules its group keys list are
exactly the grouped rules that match it, cut after the first one that ends its chain (the walk
never gets past it), in rule order. `lookup` builds the keys the way programs/ebpfw.c does
(group_hits): masked addresses, protocol, the port or its interval id, the input interface.
"""

from __future__ import annotations

import ipaddress

from hypothesis import given, settings
from hypothesis import strategies as st

from ebpfw.compiler import compile_plan
from ebpfw.compiler import groups as G
from ebpfw.compiler.fields import iface_matches
from ebpfw.iptables import parse_ruleset

HEAD = "*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n:U - [0:0]\n"
IFS = {"lo": 1, "eth0": 2, "eth1": 3, "wg0": 4}
TCP, UDP, ICMP = 6, 17, 1


def ip(s: str) -> int:
    return int(ipaddress.IPv4Address(s))


def table_of(rules: str):
    return parse_ruleset(HEAD + rules + "COMMIT\n", "g.rules").table("filter")


def groups_of(rules: str, min_size: int = 2):
    t = table_of(rules)
    flat, chain_id = [], []
    for cid, name in enumerate(["INPUT", "FORWARD", "OUTPUT", "U"]):
        for r in next(c for c in t.chains if c.name == name).rules:
            flat.append(r)
            chain_id.append(cid)
    return flat, chain_id, G.find_groups(flat, chain_id, min_size, list(IFS))


_IDS: dict = {}


def _ids(g: G.Groups) -> list:
    k = (id(g), tuple(map(tuple, filter(None, g.ranges))))
    if k not in _IDS:
        _IDS.clear()
        _IDS[k] = [g.interval_ids(0), g.interval_ids(1)]
    return _IDS[k]


def lookup(g: G.Groups, pkt: dict) -> list[int]:
    """The rule numbers the datapath's group lookups find for pkt, in rule order."""
    found = set()
    ids = _ids(g)
    for gid, s in enumerate(g.shapes):
        port = 0
        if s.port != G.PORT_NONE:
            if s.port == G.PORT_ICMP:
                if pkt["proto"] != ICMP:
                    continue
                port = pkt["icmp"]
            else:
                if pkt["proto"] not in (TCP, UDP):
                    continue
                port = {G.PORT_SPORT: pkt["sport"], G.PORT_DPORT: pkt["dport"],
                        G.PORT_SRANGE: ids[0][pkt["sport"]] if ids[0] else -1,
                        G.PORT_DRANGE: ids[1][pkt["dport"]] if ids[1] else -1}[s.port]
        pp = ((pkt["proto"] << 24) if s.proto else 0) | port
        ifc = g.ifclass.get(pkt["iif"], g.ifclass.get("", 0)) if s.iif else 0
        key = (gid, pkt["src"] & s.src_mask, pkt["dst"] & s.dst_mask, pp, ifc)
        found.update(g.entries.get(key, ()))
    return sorted(found)


def matches(rule, pkt: dict) -> bool:
    """Whether a grouped rule's condition holds (groupable rules only have these options)."""
    ipm = rule.ip
    if ipm.src is not None and (pkt["src"] & ipm.src.mask) != ipm.src.addr:
        return False
    if ipm.dst is not None and (pkt["dst"] & ipm.dst.mask) != ipm.dst.addr:
        return False
    if ipm.proto and ipm.proto != pkt["proto"]:
        return False
    if ipm.iface_in is not None and not iface_matches(pkt["iif"], ipm.iface_in.name):
        return False
    for m in rule.matches:
        kind = type(m).__name__
        if kind in ("TcpMatch", "UdpMatch"):
            rng, val = (m.sport, pkt["sport"]) if m.sport is not None else (m.dport, pkt["dport"])
            if pkt["proto"] not in (TCP, UDP) or not rng[0] <= val <= rng[1]:
                return False
        elif kind == "MultiportMatch":
            val = pkt["sport"] if m.kind == "sports" else pkt["dport"]
            if pkt["proto"] not in (TCP, UDP) or not any(lo <= val <= hi for lo, hi in m.ranges):
                return False
        elif kind == "IcmpMatch":
            if pkt["proto"] != ICMP or pkt["icmp"] != m.type:
                return False
    return True


def check_groups(flat, chain_id, g: G.Groups, pkts: list[dict]) -> None:
    for pkt in pkts:
        got = lookup(g, pkt)
        assert set(got) <= g.grouped, (pkt, got)
        want, ended = [], set()
        for r, rule in enumerate(flat):
            if r not in g.grouped or chain_id[r] in ended or not matches(rule, pkt):
                continue
            want.append(r)
            if rule.target.kind in G.FINAL:
                ended.add(chain_id[r])
        # every reachable matching grouped rule is found; nothing that does not match is
        assert set(want) <= set(got), (pkt, got, want)
        assert all(matches(flat[r], pkt) for r in got), (pkt, got)


def pkt(proto=TCP, sport=40000, dport=80, src="10.0.0.1", dst="10.0.0.2", iif="eth0", icmp=8) -> dict:
    return {"proto": proto, "sport": sport, "dport": dport, "src": ip(src), "dst": ip(dst), "iif": iif, "icmp": icmp}


def test_overlapping_ranges_list_rules_up_to_the_first_final_one():
    rules = ("-A INPUT -p tcp -m tcp --dport 100:200 -j LOG\n"
             "-A INPUT -p tcp -m tcp --dport 150:300 -j ACCEPT\n"
             "-A INPUT -p tcp -m tcp --dport 180:190 -j DROP\n"      # shadowed by rule 1 everywhere
             "-A INPUT -p tcp -m tcp --dport 250:400 -j DROP\n"
             "-A INPUT -p tcp -m tcp --dport 100:100 -j ACCEPT\n")
    flat, cid, g = groups_of(rules)
    assert [s.port for s in g.shapes] == [G.PORT_DRANGE]
    assert g.ranges[1] == [0, 100, 101, 150, 180, 191, 201, 250, 301, 401, 65536] and g.ranges[0] is None
    assert g.grouped == {0, 1, 2, 3, 4}
    assert all(2 not in ids for ids in g.entries.values())      # never reachable: no entry
    ids = g.interval_ids(1)
    assert ids[99] == 0 and ids[100] == 1 and ids[185] == 4 and ids[65535] == 9
    assert lookup(g, pkt(dport=100)) == [0, 4]
    assert lookup(g, pkt(dport=185)) == [0, 1]
    assert lookup(g, pkt(dport=260)) == [1]
    assert lookup(g, pkt(dport=350)) == [3]
    assert lookup(g, pkt(dport=401)) == [] and lookup(g, pkt(proto=UDP, dport=185)) == []
    check_groups(flat, cid, g, [pkt(dport=d) for d in range(90, 410)])


def test_ranges_and_exact_ports_share_one_group_per_side():
    rules = ("-A INPUT -p tcp -m tcp --dport 22 -j ACCEPT\n"
             "-A INPUT -p udp -m udp --dport 53 -j ACCEPT\n"
             "-A INPUT -p tcp -m tcp --dport 1000:2000 -j ACCEPT\n"
             "-A INPUT -p tcp -m multiport --dports 80,443,8000:8080 -j ACCEPT\n"
             "-A INPUT -p tcp -m tcp --dport 1500 -j DROP\n"             # inside 1000:2000: shadowed
             "-A INPUT -p udp -m udp --sport 123 -j ACCEPT\n"
             "-A INPUT -p udp -m udp --sport 5000:5010 -j ACCEPT\n"
             "-A INPUT -s 10.1.0.0/16 -p tcp -m tcp --dport 22 -j DROP\n"
             "-A INPUT -s 10.2.0.0/16 -p tcp -m tcp --dport 23 -j DROP\n")
    flat, cid, g = groups_of(rules)
    kinds = sorted(s.port for s in g.shapes)
    # one dport range group (exact ports included), one sport range group, and the /16 shape
    # without ranges stays an exact-port group
    assert kinds == [G.PORT_DPORT, G.PORT_SRANGE, G.PORT_DRANGE], g.shapes
    assert 53 in g.ranges[1] and 54 in g.ranges[1] and 8081 in g.ranges[1]
    assert g.ranges[0] == [0, 123, 124, 5000, 5011, 65536]
    probe = [pkt(proto=p, dport=d, sport=s, src=src) for p in (TCP, UDP) for d in (22, 53, 80, 443, 999, 1000,
             1500, 2000, 2001, 8000, 8080, 8081) for s in (123, 5005, 40000) for src in ("10.1.2.3", "10.3.0.1")]
    check_groups(flat, cid, g, probe)
    assert lookup(g, pkt(dport=1500)) == [2]
    assert lookup(g, pkt(dport=8040)) == [3]


def test_range_rules_in_several_chains_and_non_final_targets():
    rules = ("-A INPUT -p tcp -m tcp --dport 10:20 -j U\n"
             "-A INPUT -p tcp -m tcp --dport 15:25 -j ACCEPT\n"
             "-A INPUT -p tcp -m tcp --dport 18 -j DROP\n"
             "-A U -p tcp -m tcp --dport 12:30 -j RETURN\n"
             "-A U -p tcp -m tcp --dport 5:40\n"
             "-A U -p tcp -m tcp --dport 5:40 -j DROP\n")
    flat, cid, g = groups_of(rules)
    check_groups(flat, cid, g, [pkt(dport=d) for d in range(0, 45)])
    assert lookup(g, pkt(dport=18)) == [0, 1, 3]
    assert lookup(g, pkt(dport=11)) == [0, 4, 5]


def test_too_wide_a_range_stays_in_the_bit_vectors():
    narrow = "".join(f"-A INPUT -p tcp -m tcp --dport {p}:{p + 1} -j ACCEPT\n" for p in range(1000, 1000 + 4 * 700, 4))
    rules = narrow + "-A INPUT -p tcp -m tcp --dport 1:65535 -j LOG\n"
    flat, cid, g = groups_of(rules)
    assert len(flat) - 1 not in g.grouped          # ~1,400 intervals: more keys than MAX_RANGE_KEYS
    assert set(range(len(flat) - 1)) <= g.grouped
    check_groups(flat, cid, g, [pkt(dport=d) for d in (999, 1000, 1001, 1002, 3000, 3001, 3796, 3797, 65535)])


def test_negated_and_both_port_rules_are_not_grouped():
    rules = ("-A INPUT -p tcp -m tcp ! --dport 100:200 -j ACCEPT\n"
             "-A INPUT -p tcp -m tcp ! --dport 300:400 -j ACCEPT\n"
             "-A INPUT -p tcp -m tcp --sport 1:2 --dport 100:200 -j ACCEPT\n"
             "-A INPUT -p tcp -m tcp --sport 1:2 --dport 100:300 -j ACCEPT\n"
             "-A INPUT -p tcp -m multiport ! --dports 1:5,7 -j ACCEPT\n"
             "-A INPUT -p tcp -m multiport --ports 1:5,7 -j ACCEPT\n"
             "-A INPUT -p tcp -m multiport --ports 1:5,8 -j ACCEPT\n")
    _, _, g = groups_of(rules)
    assert g.grouped == set() and g.entries == {}


def test_compiled_plan_keeps_range_rules_out_of_the_vectors():
    lines = "".join(f"-A INPUT -p tcp -m tcp --dport {1024 + 7 * i}:{1030 + 11 * i} -j ACCEPT\n" for i in range(40))
    lines += "-A INPUT ! -i eth+ -p udp -j DROP\n"
    plan = compile_plan(table_of(lines), IFS)
    assert plan.resid == [40]
    assert plan.group_ranges[1] is not None and plan.group_ranges[0] is None
    assert [s.port for s in plan.group_shapes] == [G.PORT_DRANGE]


def test_interface_wildcards_key_on_interface_classes():
    rules = ("-A INPUT -i eth+ -p udp -m udp --dport 53 -j ACCEPT\n"
             "-A INPUT -i eth0 -p udp -m udp --dport 53 -j DROP\n"       # shadowed by eth+ on eth0
             "-A INPUT -i eth1 -p udp -m udp --dport 67 -j DROP\n"
             "-A INPUT -i e+ -p udp -m udp --dport 67 -j ACCEPT\n"
             "-A INPUT -i wg0 -p udp -m udp --dport 53 -j ACCEPT\n"
             "-A INPUT -i br+ -p udp -m udp --dport 53 -j ACCEPT\n"        # no such interface (yet)
             "-A INPUT -i lo -p udp -m udp --dport 99 -j LOG\n"
             "-A INPUT -i lo -p udp -m udp --dport 99 -j ACCEPT\n")
    flat, cid, g = groups_of(rules)
    assert [s.iif for s in g.shapes] == [True] and g.grouped == set(range(8))
    # classes: by the set of patterns each name matches; "" (any other interface) matches none
    assert g.ifclass[""] == 0 and len({g.ifclass[n] for n in ("lo", "eth0", "eth1", "wg0", "")}) == 5
    assert lookup(g, pkt(proto=UDP, dport=53, iif="eth0")) == [0]
    assert lookup(g, pkt(proto=UDP, dport=53, iif="eth1")) == [0]
    assert lookup(g, pkt(proto=UDP, dport=67, iif="eth1")) == [2]
    assert lookup(g, pkt(proto=UDP, dport=67, iif="newif")) == []
    assert lookup(g, pkt(proto=UDP, dport=53, iif="newif")) == []
    assert lookup(g, pkt(proto=UDP, dport=99, iif="lo")) == [6, 7]
    check_groups(flat, cid, g, [pkt(proto=UDP, dport=d, iif=i) for d in (53, 67, 99)
                                for i in ("lo", "eth0", "eth1", "wg0", "newif")])


def test_negated_interface_stays_residual_and_unknown_host_keeps_interfaces_out():
    rules = "".join(f"-A INPUT ! -i eth{i} -s 10.0.0.{i}/32 -j DROP\n" for i in range(4))
    rules += "".join(f"-A INPUT -i eth{i} -s 10.1.0.{i}/32 -j DROP\n" for i in range(4))
    flat, cid, g = groups_of(rules)
    assert g.grouped == set(range(4, 8))
    t = table_of(rules)
    plan = compile_plan(t, ["lo", "eth0"])        # names only (check): -i rules are not grouped
    assert len(plan.resid) == 8 and plan.group_ifclass == {}


PORTS = st.sampled_from([1, 5, 10, 11, 20, 21, 22, 53, 80, 99, 100, 65535])


@st.composite
def port_rulesets(draw):
    lines = []
    for _ in range(draw(st.integers(2, 14))):
        chain = draw(st.sampled_from(["INPUT", "INPUT", "U"]))
        parts = [f"-A {chain}"]
        if draw(st.booleans()):
            parts.append(f"-s {draw(st.sampled_from(['10.0.0.0/8', '10.0.0.1/32', '10.9.0.0/16']))}")
        if draw(st.integers(0, 3)) == 0:
            parts.append(f"-i {draw(st.sampled_from(['eth0', 'lo', 'nosuch', 'eth+', 'e+', 'wg+']))}")
        proto = draw(st.sampled_from(["tcp", "udp"]))
        parts.append(f"-p {proto}")
        side = draw(st.sampled_from(["sport", "dport"]))
        k = draw(st.integers(0, 2))
        if k == 0:
            parts.append(f"-m {proto} --{side} {draw(PORTS)}")
        elif k == 1:
            lo = draw(PORTS)
            hi = draw(PORTS.filter(lambda x: x >= lo))
            parts.append(f"-m {proto} --{side} {lo}:{hi}")
        else:
            items = []
            for _ in range(draw(st.integers(1, 3))):
                lo = draw(PORTS)
                hi = draw(PORTS.filter(lambda x: x >= lo))
                items.append(str(lo) if lo == hi or draw(st.booleans()) else f"{lo}:{hi}")
            parts.append(f"-m multiport --{side}s {','.join(items)}")
        tgt = draw(st.sampled_from(["ACCEPT", "DROP", "RETURN", "", "LOG"] + (["U"] if chain == "INPUT" else [])))
        if tgt:
            parts.append(f"-j {tgt}")
        lines.append(" ".join(parts))
    return "\n".join(lines) + "\n"


@settings(max_examples=150, deadline=None)
@given(rules=port_rulesets())
def test_random_port_rulesets(rules):
    flat, cid, g = groups_of(rules)
    probe = [pkt(proto=p, sport=s, dport=d, src=src, iif=i)
             for p in (TCP, UDP) for s in (1, 10, 21, 80, 100) for d in (5, 11, 22, 99, 65535)
             for src in ("10.0.0.1", "10.9.3.3") for i in ("eth0", "lo", "eth1", "wg0", "other")]
    check_groups(flat, cid, g, probe)


def test_bloom_filters_hold_every_key_and_fit_their_words():
    rules = "".join(f"-A INPUT -s 10.0.{i >> 8}.{i & 255}/32 -j DROP\n" for i in range(3000))
    rules += "".join(f"-A INPUT -p tcp -m tcp --dport {1000 + 3 * i}:{1001 + 3 * i} -j ACCEPT\n" for i in range(40))
    _, _, g = groups_of(rules)
    for words in (4096, 512, 40):
        layout, bloom = G.bloom_words(g.entries, len(g.shapes), words)
        assert len(bloom) == words
        ends = sorted((off, off + (mask + 1) // 64) for off, mask in layout)
        assert all(a[1] <= b[0] for a, b in zip(ends, ends[1:])) and ends[-1][1] <= words
        for k in g.entries:           # no false negatives: every key's bits are set
            assert G.bloom_has(layout, bloom, k)
    layout, bloom = G.bloom_words(g.entries, len(g.shapes), 4096)
    assert [m + 1 for _, m in layout] == [131072, 2048]     # 32 bits per key, rounded up
    # a key that is not there is mostly refused: few false positives at 32 bits per key
    fp = sum(G.bloom_has(layout, bloom, (0, (172 << 24) + i, 0, 0, 0)) for i in range(4000))
    assert fp < 60
