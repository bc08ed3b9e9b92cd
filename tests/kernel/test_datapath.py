"""Datapath tests: BPF_PROG_TEST_RUN of the real programs, loaded into the running kernel,
against the reference interpreter (tests/reference.py), packet by packet: the verdict, which
rule counters moved (packets and bytes = IP length) and which policy counter moved.

Topology (all made here): namespace DUT with veths `va` (10.9.0.1/24) and `vb` (10.9.1.1/24),
their peers in namespace PEER; forwarding on in DUT; 10.9.1.2 has a permanent neighbour
entry so FORWARD lookups resolve. Nothing is sent anywhere: test runs do not transmit.
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
from reference import ICMP, TCP, UDP, Pkt, build_frame, evaluate

pytestmark = pytest.mark.kernel

XDP_DROP, XDP_PASS = 1, 2
TC_OK, TC_SHOT = 0, 2
WORKER = Path(__file__).with_name("dp_worker.py")
REPO = Path(__file__).resolve().parents[2]


def ip(s: str) -> int:
    return int(ipaddress.IPv4Address(s))


class Worker:
    def __init__(self, ns: str):
        # groups from two rules on, so that small test rulesets exercise the hash groups too
        env = dict(os.environ, PYTHONPATH=str(REPO), EBPFW_GROUP_MIN="2")
        self.p = subprocess.Popen(nsh.nsenter_argv(ns) + [sys.executable, str(WORKER)], stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE, text=True, env=env)

    def call(self, **req) -> dict:
        self.p.stdin.write(json.dumps(req) + "\n")
        self.p.stdin.flush()
        line = self.p.stdout.readline()
        if not line:
            raise RuntimeError("datapath worker died")
        return json.loads(line)

    def close(self) -> None:
        self.p.stdin.close()
        self.p.wait(timeout=10)


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
        info = json.loads(nsh.run_in(d, "ip -j link show").stdout)
        links = {l["ifname"]: (l["ifindex"], bytes.fromhex(l["address"].replace(":", ""))) for l in info}
        w = Worker(d)
        yield w, links
        w.close()
    finally:
        factory.cleanup()


def judge(w: Worker, links: dict, hook: str, p: Pkt) -> dict:
    """Run p through the program for `hook` and return the worker's answer."""
    if hook in ("INPUT", "FORWARD"):
        idx, mac = links[p.iif]
        return w.call(op="run", prog="xdp", frame=build_frame(p, mac).hex(), ifindex=idx)
    idx, mac = links[p.oif]
    return w.call(op="run", prog="tc_egress", frame=build_frame(p, b"\x02\0\0\0\0\x09", mac).hex(),
                  ifindex=idx, ingress_ifindex=0)


def check_against_reference(w: Worker, links: dict, text: str, cases: list[tuple[str, Pkt]],
                            group: bool = True) -> None:
    r = w.call(op="load", rules=text, group=group)
    assert "error" not in r, r.get("error")
    table = parse_ruleset(text, "t.rules").table("filter")
    rule_index = {tuple(rc): i for i, rc in enumerate(r["rule_chain"])}
    for hook, p in cases:
        verdict, counted, policy = evaluate(table, hook, p)
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


@st.composite
def packets(draw):
    hook = draw(st.sampled_from(["INPUT", "FORWARD", "OUTPUT"]))
    proto = draw(st.sampled_from([TCP, UDP, ICMP]))
    src = ip(draw(st.sampled_from(ADDRS[:4])))
    if hook == "INPUT":
        dst, iif, oif = ip("10.9.0.1"), "va", ""
    elif hook == "FORWARD":
        dst, iif, oif = ip("10.9.1.2"), "va", "vb"
    else:
        src, dst, iif, oif = ip("10.9.1.1"), ip(draw(st.sampled_from(["10.9.1.2", "10.9.1.77"]))), "", "vb"
    return hook, Pkt(src, dst, proto, sport=draw(st.integers(1, 120)), dport=draw(st.integers(1, 120)),
                     flags=draw(st.sampled_from([0x02, 0x10, 0x12, 0x00])),
                     icmp_type=draw(st.sampled_from([0, 3, 8])), icmp_code=draw(st.sampled_from([0, 3])),
                     iif=iif, oif=oif, payload=draw(st.integers(0, 40)))


@settings(max_examples=int(os.environ.get("EBPFW_DP_EXAMPLES", "60")), deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(text=rulesets(), pkts=st.lists(packets(), min_size=1, max_size=8), group=st.booleans())
def test_random_rulesets_match_reference(dut, text, pkts, group):
    w, links = dut
    check_against_reference(w, links, text, pkts, group)
