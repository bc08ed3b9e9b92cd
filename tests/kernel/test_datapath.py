"""Datapath tests: BPF_PROG_TEST_RUN of the real programs, loaded into the running kernel,
against the reference interpreter (tests/reference.py), packet by packet: the verdict, which
rule counters moved (packets and bytes = IP length) and which policy counter moved.

Topology (all made here): namespace DUT with veths `va` (10.9.0.1/24) and `vb` (10.9.1.1/24),
their peers in namespace PEER; forwarding on in DUT; 10.9.1.2 has a permanent neighbour
entry so FORWARD lookups resolve. Extra routes give -m addrtype something to find: a local
route 10.68.0.0/16 (lo) with a more specific main route 10.68.5.0/24 (vb) inside it, and a
blackhole 10.66.0.0/16. Nothing is sent anywhere: test runs do not transmit.
"""

from __future__ import annotations

import ipaddress
import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ebpfw.iptables import parse_ruleset
import netns as nsh
from dpclient import Worker
from reference import ICMP, L2_BROADCAST, L2_MULTICAST, TCP, UDP, Host, Pkt, RecentTables, Route, build_frame, evaluate

pytestmark = pytest.mark.kernel

XDP_DROP, XDP_PASS = 1, 2
TC_OK, TC_SHOT = 0, 2


def ip(s: str) -> int:
    return int(ipaddress.IPv4Address(s))


@pytest.fixture(scope="module")
def dut():
    factory = nsh.NetnsFactory()
    try:
        d, peer = factory("dp"), factory("dp")
        nsh.veth(d, "va", peer, "pa", "10.9.0.1/24", "10.9.0.2/24")
        nsh.veth(d, "vb", peer, "pb", "10.9.1.1/24", "10.9.1.2/24")
        nsh.run_in(d, "sysctl -qw net.ipv4.ip_forward=1")
        nsh.run_in(d, "ip neigh replace 10.9.1.2 lladdr 02:00:00:00:01:02 dev vb nud permanent")
        nsh.run_in(d, "ip neigh replace 10.9.0.2 lladdr 02:00:00:00:00:02 dev va nud permanent")
        nsh.run_in(d, "ip route add local 10.68.0.0/16 dev lo")
        nsh.run_in(d, "ip route add 10.68.5.0/24 dev vb")
        nsh.run_in(d, "ip route add blackhole 10.66.0.0/16")
        info = json.loads(nsh.run_in(d, "ip -j link show").stdout)
        links = {l["ifname"]: (l["ifindex"], bytes.fromhex(l["address"].replace(":", ""))) for l in info}
        # groups from two rules on, so that small test rulesets exercise the hash groups too
        w = Worker(d, env={"EBPFW_GROUP_MIN": "2"})
        yield w, links
        w.close()
    finally:
        factory.cleanup()


# the DUT's local and main routes as the kernel makes them for the fixture's addresses and routes
# (written out here, independently of ebpfw's route reader)
DUT_HOST = Host([
    Route(ip("10.9.0.1"), 32, "LOCAL", "va"), Route(ip("10.9.0.255"), 32, "BROADCAST", "va"),
    Route(ip("10.9.1.1"), 32, "LOCAL", "vb"), Route(ip("10.9.1.255"), 32, "BROADCAST", "vb"),
    Route(ip("127.0.0.0"), 8, "LOCAL", "lo"), Route(ip("127.0.0.1"), 32, "LOCAL", "lo"),
    Route(ip("127.255.255.255"), 32, "BROADCAST", "lo"),
    Route(ip("10.9.0.0"), 24, "UNICAST", "va"), Route(ip("10.9.1.0"), 24, "UNICAST", "vb"),
    Route(ip("10.68.0.0"), 16, "LOCAL", "lo"), Route(ip("10.68.5.0"), 24, "UNICAST", "vb"),
    Route(ip("10.66.0.0"), 16, "BLACKHOLE", ""),
])


def judge(w: Worker, links: dict, hook: str, p: Pkt) -> dict:
    """Run p through the program for `hook` and return the worker's answer."""
    if hook in ("INPUT", "FORWARD"):
        idx, mac = links[p.iif]
        dst = {"host": mac, "broadcast": L2_BROADCAST, "multicast": L2_MULTICAST}[p.l2]
        return w.call(op="run", prog="xdp", frame=build_frame(p, dst).hex(), ifindex=idx)
    idx, mac = links[p.oif]
    return w.call(op="run", prog="tc_egress", frame=build_frame(p, b"\x02\0\0\0\0\x09", mac).hex(),
                  ifindex=idx, ingress_ifindex=0)


# Matches the datapath turns into classifier fields (judged together, before the walk sees a
# rule), as opposed to the L4 matches that can hotdrop and the stateful ones judged in the walk.
def _is_field_match(m) -> bool:
    from ebpfw.ruleset import (AddrtypeMatch, CommentMatch, ConntrackMatch, DscpMatch, IprangeMatch,
                               LengthMatch, MacMatch, PkttypeMatch, TosMatch, TtlMatch)
    return isinstance(m, (AddrtypeMatch, CommentMatch, ConntrackMatch, DscpMatch, IprangeMatch,
                          LengthMatch, MacMatch, PkttypeMatch, TosMatch, TtlMatch))


def fields_first(table):
    """The table with every rule's classifier-field matches moved before its other matches.
    For a well-formed packet this changes nothing (those matches are pure conditions). For a
    packet an L4 match hotdrops it gives ebpfw's known difference (docs/CONFORMANCE.md, "hotdrop
    and later matches"): iptables hotdrops at the tcp/udp/icmp/multiport match even when a
    LATER match of the rule (iprange, length, ttl, conntrack...) would have failed; ebpfw's
    field vectors judge those later matches before the walk reaches the rule, so it does not."""
    import dataclasses as dc

    def rule(r):
        ms = [m for m in r.matches if _is_field_match(m)] + [m for m in r.matches if not _is_field_match(m)]
        return dc.replace(r, matches=tuple(ms))
    return dc.replace(table, chains=tuple(dc.replace(c, rules=tuple(rule(r) for r in c.rules))
                                          for c in table.chains))


def check_against_reference(w: Worker, links: dict, text: str, cases: list[tuple[str, Pkt]],
                            group: bool = True, known_difference=None) -> None:
    """`known_difference(hook, pkt)`, when given, is called for a packet whose iptables verdict
    depends on the hotdrop/later-match order above (the property test rejects such examples; the
    hand test test_hotdrop_before_a_later_field_match_is_a_known_difference shows it)."""
    # -m recent lists start empty for every ruleset here (the datapath keeps them across loads)
    w.call(op="recent_reset")
    r = w.call(op="load", rules=text, group=group)
    assert "error" not in r, r.get("error")
    table = parse_ruleset(text, "t.rules").table("filter")
    recent = RecentTables(list_tot=100, hz=250)
    recent.prepare(table)
    rule_index = {tuple(rc): i for i, rc in enumerate(r["rule_chain"])}
    for hook, p in cases:
        # --seconds in these tests are hours: every stamp is inside its window, whatever `now`
        if known_difference is not None:
            import copy
            alt = evaluate(fields_first(table), hook, p, DUT_HOST, recent=copy.deepcopy(recent), now=0)
            exact = evaluate(table, hook, p, DUT_HOST, recent=copy.deepcopy(recent), now=0)
            if alt != exact:
                known_difference(hook, p)
        verdict, counted, policy = evaluate(table, hook, p, DUT_HOST, recent=recent, now=0)
        got = judge(w, links, hook, p)
        assert "error" not in got, got
        drop = got["ret"] == (TC_SHOT if hook == "OUTPUT" else XDP_DROP)
        where = f"{hook} {p}\n{text}"
        assert drop == (verdict == "DROP"), f"verdict differs: reference {verdict}, datapath ret {got['ret']} for {where}"
        want = sorted([rule_index[c], 1, p.ip_len] for c in counted)
        # a rule can be counted twice for one packet when a chain is entered twice
        merged: dict = {}
        for i, n, b in want:
            merged[i] = [i, merged.get(i, [i, 0, 0])[1] + n, merged.get(i, [i, 0, 0])[2] + b]
        assert sorted(got["rules"]) == sorted(merged.values()), f"rule counters differ for {where}"
        want_chains = [[r["chains"].index(policy), 1, p.ip_len]] if policy else []
        assert got["chains"] == want_chains, f"policy counters differ for {where}"


SERVER = """*filter
:INPUT DROP [0:0]
:FORWARD DROP [0:0]
:OUTPUT ACCEPT [0:0]
:SSH - [0:0]
-A INPUT -i lo -j ACCEPT
-A INPUT -s 10.9.0.0/24 -p tcp -m tcp --dport 22 -j SSH
-A INPUT -p tcp -m multiport --dports 80,443,8000:8080 -j ACCEPT
-A INPUT -p icmp -m icmp --icmp-type 8 -j ACCEPT
-A INPUT ! -s 192.168.0.0/16 -p udp -m udp --sport 53 -j ACCEPT
-A INPUT -m iprange --src-range 10.9.0.10-10.9.0.20 -j DROP
-A INPUT -p tcp -m comment --comment "count only"
-A FORWARD -i va -o vb -p udp -j ACCEPT
-A FORWARD -i va+ ! -o va -p tcp -m tcp --tcp-flags FIN,SYN,RST,ACK SYN -j ACCEPT
-A OUTPUT -o vb -p tcp -m tcp --sport 22 -j DROP
-A SSH -s 10.9.0.5/32 -j RETURN
-A SSH -p tcp -m tcp --syn -j ACCEPT
-A SSH -j DROP
COMMIT
"""


def test_server_ruleset_matches_reference(dut):
    w, links = dut
    a, b = ip("10.9.0.2"), ip("10.9.0.1")
    cases = [
        ("INPUT", Pkt(a, b, TCP, dport=22, iif="va")),
        ("INPUT", Pkt(ip("10.9.0.5"), b, TCP, dport=22, iif="va")),   # RETURN from SSH, then on
        ("INPUT", Pkt(a, b, TCP, dport=22, flags=0x10, iif="va")),   # not SYN: SSH drops
        ("INPUT", Pkt(a, b, TCP, dport=443, iif="va", payload=100)),
        ("INPUT", Pkt(a, b, TCP, dport=8080, iif="va")),
        ("INPUT", Pkt(a, b, TCP, dport=8081, iif="va")),             # comment rule counts, policy drops
        ("INPUT", Pkt(a, b, ICMP, icmp_type=8, iif="va")),
        ("INPUT", Pkt(a, b, ICMP, icmp_type=0, iif="va")),
        ("INPUT", Pkt(a, b, UDP, sport=53, dport=999, iif="va")),
        ("INPUT", Pkt(ip("10.9.0.15"), b, UDP, sport=54, iif="va")),
        ("FORWARD", Pkt(a, ip("10.9.1.2"), UDP, iif="va", oif="vb")),
        ("FORWARD", Pkt(a, ip("10.9.1.2"), TCP, iif="va", oif="vb")),
        ("FORWARD", Pkt(a, ip("10.9.1.2"), TCP, flags=0x12, iif="va", oif="vb")),
        ("OUTPUT", Pkt(ip("10.9.1.1"), ip("10.9.1.2"), TCP, sport=22, oif="vb")),
        ("OUTPUT", Pkt(ip("10.9.1.1"), ip("10.9.1.2"), TCP, sport=23, oif="vb")),
    ]
    check_against_reference(w, links, SERVER, cases)


def test_exact_match_groups_keep_order_jumps_and_counters(dut):
    """Blocklist, per-service and per-host rules become hash groups; duplicates, a shadowed key,
    non-terminal and jump members and multiport keys keep iptables' first-match order."""
    w, links = dut
    text = """*filter
:INPUT DROP [0:0]
:FORWARD DROP [0:0]
:OUTPUT ACCEPT [0:0]
:SVC - [0:0]
-A INPUT -s 10.9.0.5/32 -j DROP
-A INPUT -s 10.9.0.6/32 -j DROP
-A INPUT -s 10.9.0.7/32
-A INPUT -s 10.9.0.7/32 -j SVC
-A INPUT -s 10.9.0.7/32 -j DROP
-A INPUT -s 10.9.0.7/32 -j ACCEPT
-A INPUT -p tcp -m tcp --dport 22 -j SVC
-A INPUT -p tcp -m tcp --dport 80 -j ACCEPT
-A INPUT -p udp -m udp --dport 53 -j ACCEPT
-A INPUT -p tcp -m multiport --dports 443,8443 -j ACCEPT
-A INPUT -p tcp -m tcp --dport 80 -j DROP
-A INPUT -p icmp -m icmp --icmp-type 8 -j ACCEPT
-A INPUT -p icmp -m icmp --icmp-type 0 -j ACCEPT
-A INPUT -i vb -s 10.9.0.5/32 -j ACCEPT
-A INPUT -i va -s 10.9.0.9/32 -p udp -j DROP
-A INPUT -i va -s 10.9.0.2/32 -p udp -j ACCEPT
-A INPUT -i nosuch -s 10.9.0.130/32 -p udp -j ACCEPT
-A INPUT -s 10.9.0.0/24 -p tcp -m tcp ! --dport 22 -j DROP
-A SVC -s 10.9.0.2/32 -p tcp -m tcp --dport 22 -j RETURN
-A SVC -s 10.9.0.7/32 -p tcp -m tcp --dport 22 -j ACCEPT
-A SVC -s 10.9.0.9/32 -p tcp -m tcp --dport 22 -j ACCEPT
-A SVC -j DROP
COMMIT
"""
    r = w.call(op="load", rules=text, group=True)
    assert r.get("ok"), r
    assert r["groups"] >= 3 and r["grouped"] >= 12, r
    b = ip("10.9.0.1")
    cases = []
    for s in ("10.9.0.2", "10.9.0.5", "10.9.0.7", "10.9.0.9", "10.9.0.130"):
        for proto, kw in ((TCP, {"dport": 22}), (TCP, {"dport": 80}), (TCP, {"dport": 8443}), (TCP, {"dport": 81}),
                          (UDP, {"dport": 53}), (UDP, {"dport": 22}), (ICMP, {"icmp_type": 8}),
                          (ICMP, {"icmp_type": 0, "icmp_code": 5}), (ICMP, {"icmp_type": 3})):
            cases.append(("INPUT", Pkt(ip(s), b, proto, iif="va", **kw)))
    check_against_reference(w, links, text, cases, group=True)
    check_against_reference(w, links, text, cases, group=False)


def test_port_range_groups_keep_order_jumps_and_counters(dut):
    """Port ranges join groups through the port -> interval table: overlapping ranges, ranges
    with single ports and multiport lists in one group, source-port ranges, non-final and jump
    members, a shadowed range and an -i key."""
    w, links = dut
    text = """*filter
:INPUT DROP [0:0]
:FORWARD DROP [0:0]
:OUTPUT ACCEPT [0:0]
:SVC - [0:0]
-A INPUT -p tcp -m tcp --dport 100:200
-A INPUT -p tcp -m tcp --dport 150:300 -j SVC
-A INPUT -p tcp -m tcp --dport 180:190 -j DROP
-A INPUT -p tcp -m tcp --dport 250:400 -j DROP
-A INPUT -p tcp -m tcp --dport 22 -j ACCEPT
-A INPUT -p udp -m udp --dport 53 -j ACCEPT
-A INPUT -p udp -m multiport --dports 60:70,90,95:99 -j ACCEPT
-A INPUT -p tcp -m tcp --dport 100 -j DROP
-A INPUT -p udp -m udp --sport 1:20 -j ACCEPT
-A INPUT -p udp -m udp --sport 15:30 -j DROP
-A INPUT -p udp -m udp --sport 31 -j ACCEPT
-A INPUT -i va -p tcp -m tcp --dport 500:600 -j ACCEPT
-A INPUT -i vb -p tcp -m tcp --dport 550:650 -j ACCEPT
-A INPUT -p tcp -m tcp --dport 1:65535 -j DROP
-A SVC -p tcp -m tcp --dport 160:170 -j RETURN
-A SVC -p tcp -m tcp --dport 150:160 -j ACCEPT
-A SVC -p tcp -m tcp --dport 1:1000
COMMIT
"""
    r = w.call(op="load", rules=text, group=True)
    assert r.get("ok"), r
    assert 4 in r["group_ports"] and 5 in r["group_ports"], r
    b = ip("10.9.0.1")
    cases = []
    for d in (22, 53, 60, 65, 70, 71, 90, 99, 100, 101, 150, 160, 165, 171, 185, 200, 201, 250, 301, 401,
              499, 500, 560, 600, 640, 651, 65535):
        for proto in (TCP, UDP):
            cases.append(("INPUT", Pkt(ip("10.9.0.2"), b, proto, sport=40000, dport=d, iif="va")))
    for s in (1, 14, 15, 20, 21, 30, 31, 32):
        cases.append(("INPUT", Pkt(ip("10.9.0.2"), b, UDP, sport=s, dport=9, iif="va")))
    cases.append(("INPUT", Pkt(ip("10.9.0.2"), b, TCP, dport=150, iif="va", frag=20, mf=False)))
    cases.append(("INPUT", Pkt(ip("10.9.0.2"), b, ICMP, icmp_type=8, iif="va")))
    check_against_reference(w, links, text, cases, group=True)
    check_against_reference(w, links, text, cases, group=False)


def test_interface_wildcard_groups(dut):
    """-i with wildcards joins groups through interface classes (looked up with the interface's
    ebpfw_ifinfo entry): overlapping patterns, a pattern matching no interface, INPUT and
    FORWARD, next to residual -i/-o rules."""
    w, links = dut
    text = """*filter
:INPUT DROP [0:0]
:FORWARD DROP [0:0]
:OUTPUT ACCEPT [0:0]
-A INPUT -i v+ -p udp -m udp --dport 53 -j ACCEPT
-A INPUT -i va -p udp -m udp --dport 53 -j DROP
-A INPUT -i vb -p udp -m udp --dport 67 -j DROP
-A INPUT -i va+ -p udp -m udp --dport 67
-A INPUT -i va+ -p udp -m udp --dport 67 -j ACCEPT
-A INPUT -i x+ -p udp -m udp --dport 68 -j ACCEPT
-A INPUT -i lo -p udp -m udp --dport 68 -j ACCEPT
-A INPUT -i va -s 10.9.0.2/32 -j DROP
-A INPUT -i v+ -s 10.9.0.5/32 -j ACCEPT
-A INPUT ! -i vb -p udp -m udp --dport 69 -j ACCEPT
-A FORWARD -i v+ -p udp -m udp --dport 53 -j ACCEPT
-A FORWARD -i vb -p udp -m udp --dport 53 -j DROP
-A FORWARD -i va -o vb -p udp -m udp --dport 54 -j ACCEPT
COMMIT
"""
    r = w.call(op="load", rules=text, group=True)
    assert r.get("ok"), r
    assert r["groups"] >= 2 and r["resid"] <= 2, r
    b = ip("10.9.0.1")
    cases = []
    for s in ("10.9.0.2", "10.9.0.5", "10.9.0.7"):
        for d in (53, 54, 67, 68, 69, 70):
            cases.append(("INPUT", Pkt(ip(s), b, UDP, sport=1000, dport=d, iif="va")))
            cases.append(("FORWARD", Pkt(ip(s), ip("10.9.1.2"), UDP, sport=1000, dport=d, iif="va", oif="vb")))
    check_against_reference(w, links, text, cases, group=True)
    check_against_reference(w, links, text, cases, group=False)


def test_long_walk_continues_in_tail_calls(dut):
    """700 matching counting rules need more steps than one program verifies (256): the walk
    goes on in tail calls, every rule is counted once, and the verdict is the last rule's."""
    w, links = dut
    lines = ["*filter", ":INPUT DROP [0:0]", ":FORWARD DROP [0:0]", ":OUTPUT ACCEPT [0:0]", ":C - [0:0]"]
    lines += ["-A INPUT -p udp"] * 350 + ["-A INPUT -p udp -j C", "-A INPUT -p udp -j ACCEPT"]
    lines += ["-A C -p udp"] * 350 + ["COMMIT"]
    text = "\n".join(lines) + "\n"
    p = Pkt(ip("10.9.0.2"), ip("10.9.0.1"), UDP, iif="va", payload=3)
    for group in (True, False):
        check_against_reference(w, links, text, [("INPUT", p)], group=group)
        got = judge(w, links, "INPUT", p)
        assert got["ret"] == XDP_PASS and len(got["rules"]) == 702
        assert got["stats"]["walk_limit"] == 0


def test_goto_and_nested_return(dut):
    w, links = dut
    text = """*filter
:INPUT ACCEPT [0:0]
:FORWARD ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:A - [0:0]
:B - [0:0]
:C - [0:0]
-A INPUT -p tcp -j A
-A INPUT -p tcp -m tcp --dport 1:100 -j DROP
-A A -p tcp -m tcp --dport 10 -g B
-A A -p tcp -m tcp --dport 20 -j C
-A A -p tcp
-A B -p tcp -m tcp --sport 5 -j RETURN
-A B -j C
-A B -j DROP
-A C -p tcp -m tcp --dport 10 -j RETURN
-A C -j DROP
COMMIT
"""
    a, b = ip("10.9.0.2"), ip("10.9.0.1")
    cases = [("INPUT", Pkt(a, b, TCP, sport=s, dport=d, iif="va")) for s in (5, 6) for d in (10, 20, 30, 200)]
    check_against_reference(w, links, text, cases)


def test_truncated_l4_header_hotdrops_only_at_l4_match(dut):
    """xt_tcp drops a packet whose TCP header is cut short when a rule with a tcp match is
    reached; rules without one still match it normally."""
    w, links = dut
    text = """*filter
:INPUT ACCEPT [0:0]
:FORWARD ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
-A INPUT -s 10.9.0.7/32 -j ACCEPT
-A INPUT -p tcp -m tcp --dport 80 -j ACCEPT
COMMIT
"""
    r = w.call(op="load", rules=text)
    assert r.get("ok"), r
    idx, mac = links["va"]
    for src, want_drop in (("10.9.0.7", False), ("10.9.0.8", True)):
        frame = bytearray(build_frame(Pkt(ip(src), ip("10.9.0.1"), TCP, dport=80, iif="va"), mac))
        # cut the IP total length to 30: a 10-byte TCP header
        frame[16:18] = (30).to_bytes(2, "big")
        frame[24:26] = b"\0\0"
        hdr = bytes(frame[14:34])
        s = sum(int.from_bytes(hdr[i:i + 2], "big") for i in range(0, 20, 2))
        while s >> 16:
            s = (s & 0xFFFF) + (s >> 16)
        frame[24:26] = (~s & 0xFFFF).to_bytes(2, "big")
        got = w.call(op="run", prog="xdp", frame=bytes(frame).hex(), ifindex=idx)
        assert (got["ret"] == XDP_DROP) == want_drop, (src, got)
        if want_drop:
            assert got["rules"] == [] and got["chains"] == []


def test_bad_checksum_and_foreign_mac_are_left_to_the_kernel(dut):
    w, links = dut
    text = "*filter\n:INPUT DROP [0:0]\n:FORWARD DROP [0:0]\n:OUTPUT ACCEPT [0:0]\nCOMMIT\n"
    assert w.call(op="load", rules=text).get("ok")
    idx, mac = links["va"]
    good = build_frame(Pkt(ip("10.9.0.2"), ip("10.9.0.1"), UDP, iif="va"), mac)
    assert w.call(op="run", prog="xdp", frame=good.hex(), ifindex=idx)["ret"] == XDP_DROP
    bad = bytearray(good)
    bad[24] ^= 0xFF
    got = w.call(op="run", prog="xdp", frame=bytes(bad).hex(), ifindex=idx)
    assert got["ret"] == XDP_PASS and got["chains"] == []   # ip_rcv drops it, uncounted
    other = build_frame(Pkt(ip("10.9.0.2"), ip("10.9.0.1"), UDP, iif="va"), b"\x02\x11\x22\x33\x44\x55")
    got = w.call(op="run", prog="xdp", frame=other.hex(), ifindex=idx)
    assert got["ret"] == XDP_PASS and got["chains"] == []   # PACKET_OTHERHOST


# ---- the classifier fields of issue 5: length, ttl, tos/dscp, -f, tcpmss, pkttype, mac, addrtype --

HEAD = "*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n"
A, B, FWD_DST = ip("10.9.0.2"), ip("10.9.0.1"), ip("10.9.1.2")


def _each_hook(make) -> list[tuple[str, Pkt]]:
    """One packet per hook from make(**addressing)."""
    return [("INPUT", make(src=A, dst=B, iif="va")),
            ("FORWARD", make(src=A, dst=FWD_DST, iif="va", oif="vb")),
            ("OUTPUT", make(src=ip("10.9.1.1"), dst=FWD_DST, oif="vb"))]


def _pkt(proto=UDP, **kw) -> Pkt:
    src, dst = kw.pop("src"), kw.pop("dst")
    return Pkt(src, dst, proto, **kw)


def test_length_boundaries(dut):
    w, links = dut
    text = HEAD + ("-A INPUT -m length --length 28:60 -j DROP\n-A INPUT -m length ! --length 61:100\n"
                   "-A FORWARD -m length --length 61 -j DROP\n-A FORWARD -m length --length 0:27\n"
                   "-A OUTPUT -m length --length 100:65535 -j DROP\n-A OUTPUT -m length ! --length 28\nCOMMIT\n")
    cases = []
    for payload in (0, 1, 32, 33, 71, 72, 73, 200):   # UDP: IP length 28 + payload
        cases += _each_hook(lambda **a: _pkt(UDP, payload=payload, **a))
    check_against_reference(w, links, text, cases)


def test_ttl_edges(dut):
    """ttl 0/1/255 and the FORWARD decrement (the hook sees TTL - 1)."""
    w, links = dut
    text = HEAD + ("-A INPUT -m ttl --ttl-eq 0 -j DROP\n-A INPUT -m ttl --ttl-gt 254\n"
                   "-A INPUT -m ttl --ttl-lt 2 -j DROP\n-A INPUT -m ttl ! --ttl-eq 64\n"
                   "-A FORWARD -m ttl --ttl-eq 63 -j DROP\n-A FORWARD -m ttl --ttl-gt 253\n"
                   "-A FORWARD -m ttl --ttl-lt 2 -j DROP\n"
                   "-A OUTPUT -m ttl --ttl-eq 255 -j DROP\n-A OUTPUT -m ttl --ttl-lt 1 -j DROP\nCOMMIT\n")
    cases = []
    for ttl in (0, 1, 2, 3, 63, 64, 65, 254, 255):
        for hook, p in _each_hook(lambda **a: _pkt(UDP, ttl=ttl, **a)):
            if hook == "FORWARD" and ttl <= 1:
                continue   # ip_forward drops it before the hook (passed uncounted, see below)
            cases.append((hook, p))
    check_against_reference(w, links, text, cases)
    got = judge(w, links, "FORWARD", Pkt(A, FWD_DST, UDP, ttl=1, iif="va", oif="vb"))
    assert got["ret"] == XDP_PASS and got["rules"] == [] and got["chains"] == []


def test_tos_masks_and_dscp(dut):
    w, links = dut
    text = HEAD + ("-A INPUT -m tos --tos 0x10/0x3f -j DROP\n-A INPUT -m tos ! --tos 0x00/0xe0\n"
                   "-A INPUT -m tos --tos 0x03/0x01\n"            # value outside the mask: never matches
                   "-A INPUT -m dscp --dscp 0x2e -j DROP\n-A INPUT -m dscp ! --dscp 0x00\n"
                   "-A INPUT -m tos --tos 0x08/0xff -m dscp --dscp 0x02 -j DROP\n"
                   "-A FORWARD -m tos --tos 0xff/0xff -j DROP\n-A OUTPUT -m dscp --dscp 0x3f -j DROP\nCOMMIT\n")
    cases = []
    for tos in (0x00, 0x01, 0x03, 0x08, 0x10, 0x50, 0x90, 0xb8, 0xbb, 0xfc, 0xff):
        cases += _each_hook(lambda **a: _pkt(TCP, tos=tos, **a))
    check_against_reference(w, links, text, cases)


def test_fragments(dut):
    """-f matches non-first fragments only; ! -f everything else; port matches never match a
    non-first fragment."""
    w, links = dut
    text = HEAD + ("-A INPUT -p udp -m udp --dport 53 -j DROP\n-A INPUT -f -j DROP\n"
                   "-A FORWARD ! -f -p tcp -j DROP\n-A FORWARD -f\n"
                   "-A OUTPUT -f -p icmp -j DROP\n-A OUTPUT ! -f\nCOMMIT\n")
    cases = []
    for proto in (UDP, TCP, ICMP):
        for frag, mf in ((0, False), (0, True), (1, True), (185, False)):
            cases += _each_hook(lambda **a: _pkt(proto, dport=53, frag=frag, mf=mf, payload=16, **a))
    check_against_reference(w, links, text, cases)


MSS_OPTS = [
    b"", b"\x02\x04\x05\xb4", b"\x02\x04\x02\x18", b"\x02\x04\x00\x00", b"\x02\x04\xff\xff",
    b"\x01\x01\x02\x04\x05\x78",                    # NOP NOP MSS 1400
    b"\x00\x02\x04\x05\xb4",                        # EOL is skipped like a NOP by xt_tcpmss
    b"\x04\x02\x08\x0a" + bytes(8) + b"\x02\x04\x01\x00",  # SACK-perm, timestamps, MSS 256
    b"\x02\x03\x05\xb4",                             # MSS with a wrong length: not an MSS
    b"\x08\x00\x02\x04\x05\xb4",                    # length 0 counts as 1, then MSS
    b"\x08\x28" + bytes(38),                          # one 40-byte option, no MSS
    b"\x01" * 36 + b"\x02\x04\x04\x00",              # the MSS after 36 NOPs (40 bytes)
    b"\x01" * 39 + b"\x02",                            # kind 2 as the very last byte
]


def test_tcpmss_options_and_hotdrop(dut):
    w, links = dut
    text = HEAD + ("-A INPUT -p tcp -m tcpmss --mss 1:536 -j DROP\n-A INPUT -p tcp -m tcpmss ! --mss 1400:1460\n"
                   "-A INPUT -p tcp -m tcpmss --mss 0\n"
                   "-A FORWARD -p tcp -m tcpmss ! --mss 1460 -j DROP\n-A OUTPUT -p tcp -m tcpmss --mss 65535 -j DROP\n"
                   "COMMIT\n")
    cases = []
    for opts in MSS_OPTS:
        for flags in (0x02, 0x12, 0x10):
            cases += _each_hook(lambda **a: _pkt(TCP, tcp_opts=opts, flags=flags, **a))
    # malformed: data offset below 5, beyond the packet; a non-first fragment (its payload is
    # read as a TCP header); UDP is not looked at
    for doff, payload in ((4, 0), (0, 0), (15, 0), (15, 40), (6, 0)):
        cases += _each_hook(lambda **a: _pkt(TCP, tcp_doff=doff, payload=payload, **a))
    cases += _each_hook(lambda **a: _pkt(TCP, tcp_opts=b"\x02\x04\x01\x00", frag=3, **a))
    cases += _each_hook(lambda **a: _pkt(UDP, **a))
    check_against_reference(w, links, text, cases)


def test_pkttype(dut):
    """Receive: from the Ethernet destination; OUTPUT: always unicast (PACKET_HOST), even to a
    broadcast or multicast address."""
    w, links = dut
    text = HEAD + ("-A INPUT -m pkttype --pkt-type broadcast -j DROP\n-A INPUT -m pkttype ! --pkt-type unicast\n"
                   "-A INPUT -m pkttype --pkt-type multicast -j DROP\n"
                   "-A FORWARD -m pkttype ! --pkt-type unicast -j DROP\n"
                   "-A OUTPUT -m pkttype --pkt-type broadcast -j DROP\n-A OUTPUT -m pkttype --pkt-type multicast -j DROP\n"
                   "-A OUTPUT -m pkttype --pkt-type unicast\nCOMMIT\n")
    cases = []
    for l2 in ("host", "broadcast", "multicast"):
        for dst in ("10.9.0.1", "10.9.0.255", "255.255.255.255", "224.0.0.5"):
            cases.append(("INPUT", Pkt(A, ip(dst), UDP, iif="va", l2=l2)))
    cases.append(("FORWARD", Pkt(A, FWD_DST, UDP, iif="va", oif="vb")))
    for dst in ("10.9.1.2", "10.9.1.255", "255.255.255.255", "224.0.0.9"):
        cases.append(("OUTPUT", Pkt(ip("10.9.1.1"), ip(dst), UDP, oif="vb")))
    check_against_reference(w, links, text, cases)


def test_mac_source(dut):
    w, links = dut
    text = HEAD + ("-A INPUT -m mac --mac-source 02:00:00:00:00:aa -j DROP\n"
                   "-A INPUT -m mac ! --mac-source 02:00:00:00:00:bb\n"
                   "-A FORWARD -m mac ! --mac-source 02:00:00:00:00:bb -j DROP\n"
                   "-A FORWARD -m mac --mac-source 02:00:00:00:00:aa\nCOMMIT\n")
    cases = []
    for mac in ("02000000aa", "02000000bb", "02000000cc", "ffffffffff"):
        m = bytes.fromhex("00" + mac) if mac != "ffffffffff" else b"\xff" * 6
        cases.append(("INPUT", Pkt(A, B, TCP, iif="va", src_mac=m)))
        cases.append(("FORWARD", Pkt(A, FWD_DST, TCP, iif="va", oif="vb", src_mac=m)))
    check_against_reference(w, links, text, cases)


def test_mac_fails_closed_where_the_source_mac_is_gone(dut):
    """A forwarded packet judged at egress (it entered through an interface ebpfw does not
    judge) has lost its source MAC: a rule with -m mac that it reaches drops it, counted in
    the mac_unknown statistic; rules before it still count."""
    w, links = dut
    text = HEAD + "-A FORWARD -p udp\n-A FORWARD -m mac --mac-source 02:00:00:00:00:aa -j ACCEPT\nCOMMIT\n"
    assert w.call(op="load", rules=text).get("ok")
    p = Pkt(A, FWD_DST, TCP, iif="va", oif="vb")
    idx, mac = links["vb"]
    frame = build_frame(p, b"\x02\0\0\0\0\x09", mac).hex()
    got = w.call(op="run", prog="tc_egress", frame=frame, ifindex=idx, ingress_ifindex=links["va"][0])
    assert got["ret"] == TC_SHOT and got["rules"] == [] and got["chains"] == []
    assert got["stats"]["mac_unknown"] >= 1
    udp = build_frame(Pkt(A, FWD_DST, UDP, iif="va", oif="vb"), b"\x02\0\0\0\0\x09", mac).hex()
    got = w.call(op="run", prog="tc_egress", frame=udp, ifindex=idx, ingress_ifindex=links["va"][0])
    assert got["ret"] == TC_SHOT and [r[0] for r in got["rules"]] == [0]


ATYPE_SRCS = ["10.9.0.2", "10.9.0.1", "10.9.1.1", "10.9.0.255", "10.68.1.1", "10.68.5.1", "10.66.1.1",
              "127.0.0.5", "0.0.0.0", "255.255.255.255", "224.0.0.5", "192.0.2.1"]


def test_addrtype(dut):
    w, links = dut
    text = HEAD + ("-A INPUT -m addrtype --src-type LOCAL -j DROP\n"
                   "-A INPUT -m addrtype --src-type BROADCAST,MULTICAST\n"
                   "-A INPUT -m addrtype ! --src-type UNICAST --limit-iface-in\n"
                   "-A INPUT -m addrtype --src-type BLACKHOLE,UNREACHABLE,UNSPEC -j DROP\n"
                   "-A INPUT -m addrtype --dst-type LOCAL --limit-iface-in\n"
                   "-A INPUT -m addrtype --dst-type BROADCAST -j DROP\n"
                   "-A FORWARD -m addrtype --src-type LOCAL --limit-iface-out -j DROP\n"
                   "-A FORWARD -m addrtype ! --src-type UNICAST --dst-type UNICAST\n"
                   "-A FORWARD -m addrtype --src-type LOCAL --limit-iface-in\n"
                   "-A OUTPUT -m addrtype --dst-type MULTICAST -j DROP\n"
                   "-A OUTPUT -m addrtype --src-type LOCAL ! --dst-type LOCAL,BROADCAST --limit-iface-out\n"
                   "COMMIT\n")
    cases = []
    for s in ATYPE_SRCS:
        for d in ("10.9.0.1", "10.9.1.1", "10.9.0.255", "10.68.1.1", "224.0.0.5"):
            cases.append(("INPUT", Pkt(ip(s), ip(d), UDP, iif="va")))
        cases.append(("FORWARD", Pkt(ip(s), FWD_DST, UDP, iif="va", oif="vb")))
    for s in ("10.9.1.1", "10.9.0.1", "10.68.5.1"):
        for d in ("10.9.1.2", "10.9.1.255", "224.0.0.9", "10.66.1.1", "10.68.5.7"):
            cases.append(("OUTPUT", Pkt(ip(s), ip(d), UDP, oif="vb")))
    check_against_reference(w, links, text, cases)


# ---- property test: random rulesets and packets against the reference --------------------------

ADDRS = ["10.9.0.2", "10.9.0.5", "10.9.0.130", "10.9.1.2", "10.9.0.1", "10.9.1.1"]
NETS = ["10.9.0.0/24", "10.9.0.0/25", "10.9.0.128/25", "10.9.0.5/32", "10.0.0.0/8", "10.9.1.0/24", "0.0.0.0/1"]


@st.composite
def rulesets(draw):
    nuser = draw(st.integers(0, 3))
    users = [f"U{i}" for i in range(nuser)]
    lines = ["*filter"]
    for c in ("INPUT", "FORWARD", "OUTPUT"):
        lines.append(f":{c} {draw(st.sampled_from(['ACCEPT', 'DROP']))} [0:0]")
    for u in users:
        lines.append(f":{u} - [0:0]")

    def rule(chain: str, idx: int) -> str:
        parts = [f"-A {chain}"]
        if draw(st.booleans()):
            parts.append(f"{draw(st.sampled_from(['', '! ']))}-s {draw(st.sampled_from(NETS))}")
        if draw(st.integers(0, 3)) == 0:
            parts.append(f"{draw(st.sampled_from(['', '! ']))}-d {draw(st.sampled_from(NETS))}")
        if chain != "OUTPUT" and draw(st.integers(0, 3)) == 0:
            parts.append(f"{draw(st.sampled_from(['', '! ']))}-i {draw(st.sampled_from(['va', 'vb', 'va+', 'x+', 'v+']))}")
        if chain != "INPUT" and draw(st.integers(0, 3)) == 0:
            parts.append(f"{draw(st.sampled_from(['', '! ']))}-o {draw(st.sampled_from(['va', 'vb', 'vb+']))}")
        proto = draw(st.sampled_from([None, "tcp", "udp", "icmp"]))
        if proto:
            parts.append(f"-p {proto}")
        if proto in ("tcp", "udp"):
            k = draw(st.integers(0, 3))
            if k == 1:
                lo = draw(st.integers(1, 100))
                hi = draw(st.integers(lo, 120))
                parts.append(f"-m {proto} {draw(st.sampled_from(['', '! ']))}--dport {lo}:{hi}")
            elif k == 2:
                ports = sorted(set(draw(st.lists(st.integers(1, 120), min_size=1, max_size=4))))
                kind = draw(st.sampled_from(["--sports", "--dports", "--ports"]))
                parts.append(f"-m multiport {draw(st.sampled_from(['', '! ']))}{kind} {','.join(map(str, ports))}")
            elif k == 3 and proto == "tcp":
                parts.append(f"-m tcp {draw(st.sampled_from(['', '! ']))}--tcp-flags SYN,ACK {draw(st.sampled_from(['SYN', 'ACK', 'SYN,ACK', 'NONE']))}")
        if proto == "icmp" and draw(st.booleans()):
            parts.append(f"-m icmp {draw(st.sampled_from(['', '! ']))}--icmp-type {draw(st.sampled_from(['8', '0', '3/3', '3', 'any']))}")
        if draw(st.integers(0, 5)) == 0:
            parts.append(f"-m iprange {draw(st.sampled_from(['', '! ']))}--src-range 10.9.0.1-10.9.0.100")
        if draw(st.integers(0, 4)) == 0:
            parts.append(recent_match(draw))
        later = [u for u in users if int(u[1:]) > (int(chain[1:]) if chain.startswith("U") else -1)]
        targets = ["ACCEPT", "DROP", "RETURN", ""] + [f"J:{u}" for u in later] + [f"G:{u}" for u in later]
        t = draw(st.sampled_from(targets))
        if t.startswith("J:"):
            parts.append(f"-j {t[2:]}")
        elif t.startswith("G:"):
            parts.append(f"-g {t[2:]}")
        elif t:
            parts.append(f"-j {t}")
        return " ".join(parts)

    for c in ["INPUT", "FORWARD", "OUTPUT"] + users:
        for i in range(draw(st.integers(0, 5))):
            lines.append(rule(c, i))
    lines.append("COMMIT")
    return "\n".join(lines) + "\n"


RECENT_NAMES = {"A": "255.255.255.255", "B": "255.255.255.0"}   # one --mask per --name


def recent_match(draw) -> str:
    """A -m recent match (always a rule's last: the datapath refuses it elsewhere); --seconds
    windows of an hour, so that the reference needs no clock."""
    name = draw(st.sampled_from(sorted(RECENT_NAMES)))
    cmd = draw(st.sampled_from(["set", "rcheck", "update", "remove"]))
    words = [f"{draw(st.sampled_from(['', '! ']))}--{cmd}"]
    if cmd in ("rcheck", "update"):
        if draw(st.booleans()):
            words.append("--seconds 3600" + (" --reap" if draw(st.booleans()) else ""))
        if draw(st.booleans()):
            words.append(f"--hitcount {draw(st.integers(1, 3))}")
        if draw(st.integers(0, 3)) == 0:
            words.append("--rttl")
    words.append(f"--name {name} --mask {RECENT_NAMES[name]}")
    if draw(st.integers(0, 3)) == 0:
        words.append("--rdest")
    return "-m recent " + " ".join(words)


def new_matches(draw, chain: str, proto) -> list[str]:
    """Options of the issue-5 fields, each with probability ~1/8 (tcpmss last: its hotdrop
    happens where the rule is reached, which the datapath decides after every field)."""
    neg = lambda: draw(st.sampled_from(["", "! "]))  # noqa: E731
    out = []
    if draw(st.integers(0, 7)) == 0:
        lo = draw(st.sampled_from([0, 28, 40, 41, 48, 60]))
        hi = draw(st.sampled_from([lo, lo + 8, 60, 100, 65535]))
        out.append(f"-m length {neg()}--length {lo}:{max(lo, hi)}")
    if draw(st.integers(0, 7)) == 0:
        mode = draw(st.sampled_from(["--ttl-eq", "! --ttl-eq", "--ttl-lt", "--ttl-gt"]))
        out.append(f"-m ttl {mode} {draw(st.sampled_from([0, 1, 63, 64, 254, 255]))}")
    if draw(st.integers(0, 7)) == 0:
        if draw(st.booleans()):
            v, m = draw(st.sampled_from([(0x10, 0x3f), (0, 0xe0), (0xb8, 0xff), (0x02, 0x03), (0x01, 0x00)]))
            out.append(f"-m tos {neg()}--tos 0x{v:02x}/0x{m:02x}")
        else:
            out.append(f"-m dscp {neg()}--dscp 0x{draw(st.sampled_from([0, 0x04, 0x2e, 0x3f])):02x}")
    if draw(st.integers(0, 7)) == 0:
        out.append(f"-m pkttype {neg()}--pkt-type {draw(st.sampled_from(['unicast', 'broadcast', 'multicast']))}")
    if chain in ("INPUT", "FORWARD") and draw(st.integers(0, 7)) == 0:
        out.append(f"-m mac {neg()}--mac-source {draw(st.sampled_from(['02:00:00:00:00:01', '02:00:00:00:00:02']))}")
    if draw(st.integers(0, 7)) == 0:
        types = ",".join(sorted(set(draw(st.lists(st.sampled_from(
            ["UNICAST", "LOCAL", "BROADCAST", "MULTICAST", "BLACKHOLE"]), min_size=1, max_size=2)))))
        side = draw(st.sampled_from(["--src-type", "--dst-type"]))
        limits = [""] + (["--limit-iface-in"] if chain in ("INPUT", "FORWARD") else []) \
            + (["--limit-iface-out"] if chain in ("FORWARD", "OUTPUT") else [])
        out.append(f"-m addrtype {neg()}{side} {types} {draw(st.sampled_from(limits))}".rstrip())
    if draw(st.integers(0, 9)) == 0:
        out.insert(0, draw(st.sampled_from(["-f", "! -f"])))
    if proto == "tcp" and draw(st.integers(0, 5)) == 0:
        lo = draw(st.sampled_from([0, 1, 536, 1400, 1460]))
        out.append(f"-m tcpmss {neg()}--mss {lo}:{draw(st.sampled_from([lo, 1460, 65535]))}")
    return out


@st.composite
def packets(draw):
    hook = draw(st.sampled_from(["INPUT", "FORWARD", "OUTPUT"]))
    proto = draw(st.sampled_from([TCP, UDP, ICMP]))
    src = ip(draw(st.sampled_from(ADDRS[:4])))
    if draw(st.integers(0, 5)) == 0:
        src = ip(draw(st.sampled_from(ATYPE_SRCS)))
    l2 = "host"
    if hook == "INPUT":
        dst, iif, oif = ip(draw(st.sampled_from(["10.9.0.1"] * 4 + ["10.9.0.255", "10.68.1.1", "224.0.0.5"]))), "va", ""
        l2 = draw(st.sampled_from(["host"] * 4 + ["broadcast", "multicast"]))
    elif hook == "FORWARD":
        dst, iif, oif = ip("10.9.1.2"), "va", "vb"
    else:
        src, dst, iif, oif = ip("10.9.1.1"), ip(draw(st.sampled_from(["10.9.1.2", "10.9.1.77", "10.9.1.255",
                                                                      "224.0.0.9"]))), "", "vb"
    frag, mf = draw(st.sampled_from([(0, False)] * 6 + [(0, True), (1, False), (20, True)]))
    return hook, Pkt(src, dst, proto, sport=draw(st.integers(1, 120)), dport=draw(st.integers(1, 120)),
                     flags=draw(st.sampled_from([0x02, 0x10, 0x12, 0x00])),
                     icmp_type=draw(st.sampled_from([0, 3, 8])), icmp_code=draw(st.sampled_from([0, 3])),
                     iif=iif, oif=oif, payload=draw(st.integers(0, 40)),
                     ttl=draw(st.sampled_from([64, 64, 2, 63, 65, 255] + ([0, 1] if hook != "FORWARD" else []))),
                     tos=draw(st.sampled_from([0, 0, 0x10, 0x12, 0xb8, 0xff])), frag=frag, mf=mf,
                     tcp_opts=draw(st.sampled_from(MSS_OPTS)) if proto == TCP else b"", l2=l2,
                     src_mac=draw(st.sampled_from([b"\x02\0\0\0\0\x01", b"\x02\0\0\0\0\x02"])))


@settings(max_examples=int(os.environ.get("EBPFW_DP_EXAMPLES", "60")), deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(text=rulesets(), pkts=st.lists(packets(), min_size=1, max_size=8), group=st.booleans())
def test_random_rulesets_match_reference(dut, text, pkts, group):
    from hypothesis import reject

    w, links = dut
    check_against_reference(w, links, text, pkts, group, known_difference=lambda hook, p: reject())


@pytest.mark.xfail(strict=True, reason="known difference (docs/CONFORMANCE.md): a packet an L4 match "
                   "hotdrops is not dropped when a later classifier match of the rule fails")
def test_hotdrop_before_a_later_field_match_is_a_known_difference(dut):
    w, links = dut
    text = HEAD + ("-A INPUT -p tcp -m tcp --dport 1 -m iprange ! --src-range 10.9.0.1-10.9.0.100 -j ACCEPT\n"
                   "COMMIT\n")
    # a TCP fragment at offset 8: xt_tcp drops it ("evil TCP offset=1 frag") before iprange runs
    p = Pkt(ip("10.9.0.2"), ip("10.9.0.1"), TCP, sport=1, dport=1, iif="va", frag=1)
    seen = []
    check_against_reference(w, links, text, [("INPUT", p)], known_difference=lambda h, q: seen.append(h))
    assert seen == ["INPUT"]          # the helper recognises the case the property test skips
