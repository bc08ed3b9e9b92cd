"""Compiler tables of the issue-5 fields (length, ttl, tos/dscp, -f, tcpmss, pkttype, mac,
addrtype) and the route reader behind -m addrtype: pure Python, no root."""

from __future__ import annotations

from ebpfw.compiler import compile_plan
from ebpfw.datapath.maps import addrtype_routes
from ebpfw.iptables import parse_ruleset

HEAD = "*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n"


def plan_of(rules: str):
    return compile_plan(parse_ruleset(HEAD + rules + "COMMIT\n", "f.rules").table("filter"))


def rules_at(plan, table, value) -> set[int]:
    v = plan.vectors[table[value]]
    return {r for r in range(plan.nrules) if v >> r & 1}


def test_tos_and_dscp_are_two_kinds_on_one_field():
    p = plan_of("-A INPUT -m tos --tos 0x10/0x3f\n-A INPUT -m dscp ! --dscp 0x04\n"
                "-A INPUT -m tos --tos 0x03/0x01\n-A INPUT -m tos --tos 0x10/0x3f -m dscp --dscp 0x04\n")
    assert rules_at(p, p.tos, 0x10) == {0, 3}         # dscp 0x04
    assert rules_at(p, p.tos, 0x50) == {0, 1}         # 0x50 & 0x3f == 0x10, dscp 0x14
    assert rules_at(p, p.tos, 0x11) == set()          # dscp 0x04, 0x11 & 0x3f != 0x10
    assert rules_at(p, p.tos, 0x17) == {1}            # value 0x03 has a bit outside mask 0x01: never


def test_ttl_modes_and_length_bounds():
    p = plan_of("-A INPUT -m ttl --ttl-lt 1\n-A INPUT -m ttl ! --ttl-eq 64\n-A INPUT -m ttl --ttl-gt 254\n"
                "-A INPUT -m length ! --length 28:1500\n")
    assert rules_at(p, p.ttl, 0) == {0, 1, 3}
    assert rules_at(p, p.ttl, 64) == {3}
    assert rules_at(p, p.ttl, 255) == {1, 2, 3}
    assert len(p.length) == 65536
    assert rules_at(p, p.length, 27) == {0, 1, 2, 3} and rules_at(p, p.length, 28) == {0, 1, 2}
    assert rules_at(p, p.length, 1500) == {0, 1, 2} and rules_at(p, p.length, 1501) == {0, 1, 2, 3}


def test_tcpmss_without_option_matches_only_negated():
    p = plan_of("-A INPUT -p tcp -m tcpmss --mss 1:536\n-A INPUT -p tcp -m tcpmss ! --mss 1400:1460\n"
                "-A INPUT -p tcp\n")
    assert rules_at(p, p.tcpmss, 65536) == {1, 2}     # no MSS option
    assert rules_at(p, p.tcpmss, 536) == {0, 1, 2}
    assert rules_at(p, p.tcpmss, 1460) == {2}
    assert p.rule_flags[0] & 2 and p.rule_flags[1] & 2 and not p.rule_flags[2] & 2


def test_fragment_pkttype_mac():
    p = plan_of("-A INPUT -f\n-A INPUT ! -f\n-A INPUT -m pkttype ! --pkt-type unicast\n"
                "-A INPUT -m mac --mac-source 02:00:00:00:00:aa\n-A INPUT -m mac ! --mac-source 02:00:00:00:00:aa\n")
    assert rules_at(p, p.frag, 0) == {1, 2, 3, 4} and rules_at(p, p.frag, 1) == {0, 2, 3, 4}
    assert rules_at(p, p.pkttype, 0) == {0, 1, 3, 4} and rules_at(p, p.pkttype, 1) == {0, 1, 2, 3, 4}
    assert rules_at(p, p.mac, bytes.fromhex("0200000000aa")) == {0, 1, 2, 3}
    assert rules_at(p, p.mac, b"") == {0, 1, 2, 4}
    assert p.rule_flags[3] & 4 and p.rule_flags[4] & 4


def test_addrtype_limits_read_their_own_nibble():
    p = plan_of("-A FORWARD -m addrtype --src-type LOCAL\n-A FORWARD -m addrtype --src-type LOCAL --limit-iface-in\n"
                "-A FORWARD -m addrtype ! --dst-type UNICAST --limit-iface-out\n")
    local_everywhere = 2 | 2 << 4 | 2 << 8
    local_not_on_iif = 2 | 1 << 4 | 2 << 8
    assert rules_at(p, p.atsrc, local_everywhere) == {0, 1, 2}
    assert rules_at(p, p.atsrc, local_not_on_iif) == {0, 2}
    assert rules_at(p, p.atdst, 1 | 1 << 4 | 3 << 8) == {0, 1, 2}
    assert rules_at(p, p.atdst, 3 | 3 << 4 | 1 << 8) == {0, 1}


def ip(s: str) -> int:
    a, b, c, d = map(int, s.split("."))
    return a << 24 | b << 16 | c << 8 | d


def test_addrtype_routes_keep_what_decides_the_type():
    # (table, type, dst, plen, tos, priority, flags, ifindex)
    dump = [
        (255, 2, ip("10.9.0.1"), 32, 0, 0, 0, 3), (255, 3, ip("10.9.0.255"), 32, 0, 0, 0, 3),
        (254, 1, ip("10.9.0.0"), 24, 0, 0, 0, 3),            # unicast, nests no special route: left out
        (255, 2, ip("10.68.0.0"), 16, 0, 0, 0, 1),
        (254, 1, ip("10.68.5.0"), 24, 0, 0, 0, 4),           # shadows the local /16 (merged tables)
        (254, 6, ip("10.68.6.0"), 24, 0, 0, 0, 0),           # blackhole inside it: UNICAST
        (254, 1, ip("0.0.0.0"), 0, 0, 0, 0, 2),              # the default route: left out
        (255, 2, ip("10.70.0.1"), 32, 8, 0, 0, 3),           # a tos route: tos 0 lookups skip it
        (255, 2, ip("10.71.0.1"), 32, 0, 0, 1, 3),           # dead: skipped
        (100, 2, ip("10.72.0.1"), 32, 0, 0, 0, 3),           # another table: not looked at
    ]
    got = addrtype_routes(dump)
    assert got == {
        (ip("10.9.0.1"), 32): (2, 3), (ip("10.9.0.255"), 32): (3, 3), (ip("10.68.0.0"), 16): (2, 1),
        (ip("10.68.5.0"), 24): (1, 4), (ip("10.68.6.0"), 24): (1, 0),
    }
