"""-j MARK, -m mark (and, with conntrack, -j CONNMARK and -m connmark) in the datapath:
BPF_PROG_TEST_RUN of the real TC programs against the reference interpreter
(tests/reference.py evaluate_marks): verdict, rule and policy counters, and the skb->mark the
program leaves on an accepted packet. The packet's starting mark is given in the test run's
context (at TC ingress the skb's mark, at TC egress the socket's SO_MARK).

Topology (made here): namespace mk<pid>... with veths `va` 10.8.0.1/24 and `vb` 10.8.1.1/24 to a
peer namespace; forwarding on; nothing is transmitted.
"""

from __future__ import annotations

import ipaddress
import json
import os
import random

import pytest

import netns as nsh
from dpclient import Worker
from ebpfw.iptables import parse_ruleset
from reference import TCP, UDP, Pkt, build_frame, evaluate_marks

pytestmark = pytest.mark.kernel

TC_OK, TC_SHOT = 0, 2
XDP_DROP, XDP_PASS = 1, 2
HEAD = "*filter\n:INPUT {0} [0:0]\n:FORWARD DROP [0:0]\n:OUTPUT {1} [0:0]\n"


def ip(s: str) -> int:
    return int(ipaddress.IPv4Address(s))


def _topology(factory):
    d, peer = factory(f"mk{os.getpid()}d"), factory(f"mk{os.getpid()}p")
    nsh.veth(d, "va", peer, "pa", "10.8.0.1/24", "10.8.0.2/24")
    nsh.veth(d, "vb", peer, "pb", "10.8.1.1/24", "10.8.1.2/24")
    nsh.run_in(d, "sysctl -qw net.ipv4.ip_forward=1")
    nsh.run_in(d, "ip neigh replace 10.8.1.2 lladdr 02:00:00:00:01:02 dev vb nud permanent")
    info = json.loads(nsh.run_in(d, "ip -j link show").stdout)
    return d, {l["ifname"]: (l["ifindex"], bytes.fromhex(l["address"].replace(":", ""))) for l in info}


@pytest.fixture(scope="module")
def dut():
    factory = nsh.NetnsFactory()
    try:
        d, links = _topology(factory)
        w = Worker(d, env={"EBPFW_GROUP_MIN": "2", "EBPFW_TEST_CT": "1"})
        yield w, links
        w.close()
    finally:
        factory.cleanup()


def run(w: Worker, links: dict, hook: str, p: Pkt, prog: str | None = None) -> dict:
    if hook in ("INPUT", "FORWARD"):
        idx, mac = links[p.iif]
        prog = prog or "tc_ingress"
        return w.call(op="run", prog=prog, frame=build_frame(p, mac).hex(), ifindex=idx, mark=p.mark)
    idx, mac = links[p.oif]
    return w.call(op="run", prog="tc_egress", frame=build_frame(p, b"\x02\0\0\0\0\x09", mac).hex(),
                  ifindex=idx, ingress_ifindex=0, mark=p.mark)


def load(w: Worker, text: str, group: bool = True) -> dict:
    r = w.call(op="load", rules=text, group=group)
    assert "error" not in r, r["error"]
    return r


def check(w: Worker, links: dict, text: str, cases: list[tuple[str, Pkt]], group: bool = True,
          prog: str | None = None) -> None:
    """Every case judged by the program as by the reference: verdict, counters, final mark."""
    r = load(w, text, group)
    table = parse_ruleset(text, "t.rules").table("filter")
    index = {tuple(rc): i for i, rc in enumerate(r["rule_chain"])}
    for hook, p in cases:
        verdict, counted, policy, after = evaluate_marks(table, hook, p)
        got = run(w, links, hook, p, prog)
        assert "error" not in got, got
        where = f"{hook} {p}\n{text}"
        if prog == "xdp":
            assert (got["ret"] == XDP_DROP) == (verdict == "DROP"), f"verdict: reference {verdict}, ret {got['ret']}: {where}"
        else:
            assert (got["ret"] == TC_SHOT) == (verdict == "DROP"), f"verdict: reference {verdict}, ret {got['ret']}: {where}"
        merged: dict[int, list[int]] = {}
        for c in counted:
            i = index[c]
            merged.setdefault(i, [i, 0, 0])
            merged[i][1] += 1
            merged[i][2] += p.ip_len
        assert sorted(got["rules"]) == sorted(merged.values()), f"rule counters: {where}"
        want_chains = [[r["chains"].index(policy), 1, p.ip_len]] if policy else []
        assert got["chains"] == want_chains, f"policy counters: {where}"
        if prog != "xdp" and verdict == "ACCEPT":
            assert got["mark"] == after.mark, f"mark left on the skb: {got['mark']:#x}, reference {after.mark:#x}: {where}"


# one chain marks, later rules (in another chain and in the calling chain) match the mark
MARK_THEN_MATCH = HEAD.format("DROP", "ACCEPT") + """:classify - [0:0]
-A INPUT -j classify
-A INPUT -m mark --mark 0x1/0xf -p tcp -m tcp --dport 22 -j ACCEPT
-A INPUT -m mark --mark 0x2/0xf -j ACCEPT
-A INPUT -m mark ! --mark 0x0/0xf0 -j ACCEPT
-A INPUT -m mark --mark 0x100/0xff -j ACCEPT
-A classify -s 10.8.0.2/32 -j MARK --set-xmark 0x1/0xf
-A classify -p udp -j MARK --or-mark 0x2
-A classify -p udp -m mark --mark 0x3/0x3 -j MARK --xor-mark 0x30
-A classify -m mark --mark 0x30/0x30 -j RETURN
-A classify -p tcp -m tcp --dport 80 -j MARK --and-mark 0xffffff00
-A classify -p tcp -m tcp --dport 80 -j MARK --set-mark 0x2
COMMIT
"""


def test_mark_then_match_in_later_rules(dut):
    w, links = dut
    cases = []
    for src in ("10.8.0.2", "10.8.0.7"):
        for proto, dport in ((TCP, 22), (TCP, 80), (TCP, 443), (UDP, 53)):
            for mark in (0, 0x1, 0x2, 0x10, 0x3, 0x100, 0xfffffff0):
                cases.append(("INPUT", Pkt(ip(src), ip("10.8.0.1"), proto=proto, dport=dport, iif="va", mark=mark)))
    check(w, links, MARK_THEN_MATCH, cases)
    check(w, links, MARK_THEN_MATCH, cases, group=False)


OUTPUT_SO_MARK = HEAD.format("ACCEPT", "DROP") + """-A OUTPUT -m mark --mark 0x0 -j ACCEPT
-A OUTPUT -m mark --mark 0x10/0xf0 -j MARK --set-mark 0x7/0xf
-A OUTPUT -m mark --mark 0x17 -j ACCEPT
-A OUTPUT -m mark ! --mark 0x20/0x20 -j DROP
-A OUTPUT -j MARK --and-mark 0xff
COMMIT
"""


def test_output_sees_the_socket_mark(dut):
    """A locally generated packet carries its socket's mark (SO_MARK) into OUTPUT."""
    w, links = dut
    cases = [("OUTPUT", Pkt(ip("10.8.0.1"), ip("10.8.0.2"), proto=UDP, oif="va", mark=m))
             for m in (0, 0x10, 0x11, 0x117, 0x20, 0x1234520, 0xffffffff)]
    check(w, links, OUTPUT_SO_MARK, cases)


def test_mark_before_a_hotdrop_match_refuses_first(dut):
    """-m mark before -m tcp: a packet with a cut-short TCP header and another mark does not
    match (xt_mark runs first), with the mark the tcp match hotdrops it."""
    w, links = dut
    text = HEAD.format("ACCEPT", "ACCEPT") + """-A INPUT -p tcp -m mark --mark 0x5 -m tcp --dport 22 -j ACCEPT
-A INPUT -p tcp -m tcp --dport 23 -m mark --mark 0x6 -j ACCEPT
COMMIT
"""
    load(w, text)
    trunc = Pkt(ip("10.8.0.2"), ip("10.8.0.1"), proto=TCP, dport=22, iif="va")
    frame = bytearray(build_frame(trunc, links["va"][1]))
    # IP total length 30: the TCP header is cut after 10 bytes
    frame[16:18] = (30).to_bytes(2, "big")
    frame[24:26] = b"\0\0"
    s = sum(int.from_bytes(frame[14 + i:16 + i], "big") for i in range(0, 20, 2))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    frame[24:26] = (~s & 0xFFFF).to_bytes(2, "big")
    idx = links["va"][0]
    for mark, dropped in ((0x5, True), (0x7, True), (0x1, True)):
        # rule 1 (mark first): 0x5 reaches -m tcp and hotdrops; others skip rule 1 but rule 2
        # (tcp first) hotdrops every cut-short TCP packet
        got = w.call(op="run", prog="tc_ingress", frame=bytes(frame).hex(), ifindex=idx, mark=mark)
        assert (got["ret"] == TC_SHOT) == dropped
    only_mark_first = HEAD.format("ACCEPT", "ACCEPT") + """-A INPUT -p tcp -m mark --mark 0x5 -m tcp --dport 22 -j ACCEPT
COMMIT
"""
    load(w, only_mark_first)
    before = w.call(op="run", prog="tc_ingress", frame=bytes(frame).hex(), ifindex=idx, mark=0x7)
    assert before["ret"] == TC_OK and before["rules"] == []          # xt_mark said no first
    hot = w.call(op="run", prog="tc_ingress", frame=bytes(frame).hex(), ifindex=idx, mark=0x5)
    assert hot["ret"] == TC_SHOT and hot["rules"] == []              # then xt_tcp hotdropped


def test_xdp_program_sees_mark_zero(dut):
    """The XDP program (used only for rulesets without skb marks) judges with mark 0."""
    w, links = dut
    cases = [("INPUT", Pkt(ip("10.8.0.2"), ip("10.8.0.1"), proto=TCP, dport=d, iif="va")) for d in (22, 80, 443)]
    check(w, links, MARK_THEN_MATCH, cases, prog="xdp")


def _random_ruleset(rng: random.Random) -> str:
    lines = []
    chains = ["INPUT", "c1", "c2"]
    for chain in chains:
        for _ in range(rng.randint(2, 7)):
            cond = ""
            if rng.random() < 0.6:
                v, m = rng.choice([(1, 1), (2, 3), (0, 0xF0), (0x10, 0x10), (5, 0xFFFFFFFF), (0, 0xFFFFFFFF), (4, 3)])
                cond += f" -m mark {'! ' if rng.random() < 0.3 else ''}--mark {v:#x}/{m:#x}"
            if rng.random() < 0.3:
                cond = f" -p tcp -m tcp --dport {rng.choice([22, 80])}" + cond if rng.random() < 0.5 else \
                    cond + f" -p udp -m udp --dport {rng.choice([53, 123])}"
            tgt = rng.choice(["MARK --set-xmark {v:#x}/{m:#x}", "MARK --or-mark {v:#x}", "MARK --xor-mark {v:#x}",
                              "MARK --and-mark {m:#x}", "ACCEPT", "DROP", "RETURN", "", "c1", "c2"])
            tgt = tgt.format(v=rng.choice([0, 1, 2, 0x10, 0x30, 5]), m=rng.choice([1, 3, 0xF0, 0xFFFFFFFF, 0]))
            if tgt in chains and chains.index(tgt) <= chains.index(chain):
                tgt = "MARK --xor-mark 0x1"
            if tgt == "RETURN" and chain == "INPUT":
                tgt = ""
            lines.append(f"-A {chain}{cond}" + (f" -j {tgt}" if tgt else ""))
    return HEAD.format(rng.choice(["ACCEPT", "DROP"]), "ACCEPT") + ":c1 - [0:0]\n:c2 - [0:0]\n" + \
        "\n".join(lines) + "\nCOMMIT\n"


def test_random_mark_rulesets_against_reference(dut):
    w, links = dut
    rng = random.Random(5)
    for _ in range(25):
        text = _random_ruleset(rng)
        cases = []
        for _ in range(12):
            proto = rng.choice([TCP, UDP])
            cases.append(("INPUT", Pkt(ip("10.8.0.2"), ip("10.8.0.1"), proto=proto, dport=rng.choice([22, 53, 80, 123]),
                                       iif="va", mark=rng.choice([0, 1, 2, 3, 5, 0x10, 0x31, 0xFFFFFFFF]))))
        check(w, links, text, cases, group=rng.random() < 0.5)


# --- CONNMARK and -m connmark: the mark of the connection in ebpfw's conntrack table ---------

def _flow(p: Pkt) -> frozenset:
    return frozenset({(p.src, p.sport), (p.dst, p.dport)})


def check_flows(w: Worker, links: dict, text: str, seq: list[tuple[str, Pkt]]) -> dict:
    """Packets in order; the reference keeps every connection's mark the way netfilter does: a
    new connection starts at 0 and exists once its first packet is accepted, CONNMARK changes
    stay whatever the verdict. Compares verdicts, counters, skb marks and the table's marks."""
    assert "error" not in w.call(op="ct_flush")
    r = load(w, text)
    table = parse_ruleset(text, "t.rules").table("filter")
    index = {tuple(rc): i for i, rc in enumerate(r["rule_chain"])}
    flows: dict[frozenset, int] = {}
    for hook, p in seq:
        key = _flow(p)
        p.ctmark = flows.get(key, 0)
        verdict, counted, policy, after = evaluate_marks(table, hook, p)
        got = run(w, links, hook, p)
        where = f"{hook} {p}\n{text}"
        assert (got["ret"] == TC_SHOT) == (verdict == "DROP"), f"verdict: reference {verdict}: {where}"
        want = {}
        for c in counted:
            want.setdefault(index[c], [index[c], 0, 0])
            want[index[c]][1] += 1
            want[index[c]][2] += p.ip_len
        assert sorted(got["rules"]) == sorted(want.values()), f"rule counters: {where}"
        if verdict == "ACCEPT":
            assert got["mark"] == after.mark, f"skb mark {got['mark']:#x}, reference {after.mark:#x}: {where}"
        if key in flows or verdict == "ACCEPT":
            flows[key] = after.ctmark
    table_marks = {}
    for e in w.call(op="ct_list")["entries"]:
        k = frozenset({(ip(e["src"]), e["sport"]), (ip(e["dst"]), e["dport"])})
        table_marks[k] = e["mark"]
    assert table_marks == flows
    return flows


CONNMARK_RULES = HEAD.format("DROP", "ACCEPT") + """-A INPUT -m connmark --mark 0x1/0xf -j ACCEPT
-A INPUT -p udp -m udp --dport 53 -j CONNMARK --set-xmark 0x1/0xf
-A INPUT -p udp -m udp --dport 123 -j MARK --set-xmark 0x42/0xffffffff
-A INPUT -p udp -m udp --dport 123 -j CONNMARK --save-mark --nfmask 0xf0 --ctmask 0xf0
-A INPUT -m connmark --mark 0x40/0xf0 -j CONNMARK --restore-mark --nfmask 0xff00 --ctmask 0xf0
-A INPUT -m connmark --mark 0x40/0xf0 -j MARK --xor-mark 0x3000
-A INPUT -m connmark ! --mark 0x0 -j ACCEPT
-A INPUT -p udp -m udp --dport 7 -j ACCEPT
-A OUTPUT -p udp -m udp --sport 7 -j CONNMARK --or-mark 0x200
-A OUTPUT -m connmark --mark 0x200/0x200 -j MARK --set-xmark 0x9/0xf
COMMIT
"""


def test_connmark_follows_the_connection(dut):
    w, links = dut
    c, s = ip("10.8.0.2"), ip("10.8.0.1")
    seq = []
    for sport, dport in ((4000, 53), (4001, 123), (4002, 7), (4003, 9)):
        for n in range(3):
            seq.append(("INPUT", Pkt(c, s, proto=UDP, sport=sport, dport=dport, iif="va", mark=n)))
            # the reply direction sees (and changes) the same connection's mark
            seq.append(("OUTPUT", Pkt(s, c, proto=UDP, sport=dport, dport=sport, oif="va", mark=0x10 * n)))
    flows = check_flows(w, links, CONNMARK_RULES, seq)
    # what the reference says happened, spelled out: 53 marked 0x1, 123 saved 0x40, 7 or-marked
    # by its replies; 9 dropped in INPUT, its "reply" accepted by OUTPUT opened a connection
    assert flows == {frozenset({(c, 4000), (s, 53)}): 0x1, frozenset({(c, 4001), (s, 123)}): 0x40,
                     frozenset({(c, 4002), (s, 7)}): 0x200, frozenset({(c, 4003), (s, 9)}): 0}


def test_connmark_without_a_connection(dut):
    """An INVALID packet has no connection: -m connmark matches neither way, CONNMARK does nothing."""
    w, links = dut
    text = HEAD.format("ACCEPT", "ACCEPT") + """-A INPUT -p tcp -j CONNMARK --set-xmark 0x5/0xffffffff
-A INPUT -m connmark --mark 0x5 -j MARK --set-xmark 0x1/0xffffffff
-A INPUT -m connmark ! --mark 0x5 -j MARK --set-xmark 0x2/0xffffffff
COMMIT
"""
    load(w, text)
    assert "error" not in w.call(op="ct_flush")
    bad = Pkt(ip("10.8.0.2"), ip("10.8.0.1"), proto=TCP, flags=0x03, iif="va", mark=0x77)   # SYN+FIN: INVALID
    got = run(w, links, "INPUT", bad)
    assert got["ret"] == TC_OK and got["mark"] == 0x77 and [r[0] for r in got["rules"]] == [0]
    syn = Pkt(ip("10.8.0.2"), ip("10.8.0.1"), proto=TCP, flags=0x02, iif="va", mark=0x77)
    got = run(w, links, "INPUT", syn)
    assert got["ret"] == TC_OK and got["mark"] == 0x1 and [r[0] for r in got["rules"]] == [0, 1]
    assert [e["mark"] for e in w.call(op="ct_list")["entries"]] == [0x5]


def _icmp_error(outer_src: str, outer_dst: str, inner: bytes, dst_mac: bytes, src_mac: bytes) -> bytes:
    import struct

    def csum(b: bytes) -> int:
        if len(b) % 2:
            b += b"\0"
        s = sum(struct.unpack(f"!{len(b) // 2}H", b))
        while s >> 16:
            s = (s & 0xFFFF) + (s >> 16)
        return ~s & 0xFFFF
    icmp = struct.pack("!BBHI", 3, 3, 0, 0) + inner
    icmp = icmp[:2] + struct.pack("!H", csum(icmp)) + icmp[4:]
    hdr = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(icmp), 7, 0, 64, 1, 0,
                      ipaddress.IPv4Address(outer_src).packed, ipaddress.IPv4Address(outer_dst).packed)
    hdr = hdr[:10] + struct.pack("!H", csum(hdr)) + hdr[12:]
    return dst_mac + src_mac + b"\x08\x00" + hdr + icmp


def test_icmp_error_sees_the_related_connections_mark(dut):
    w, links = dut
    text = HEAD.format("DROP", "ACCEPT") + """-A INPUT -p icmp -m connmark --mark 0x5 -j ACCEPT
-A OUTPUT -p udp -m udp --dport 9999 -j CONNMARK --set-xmark 0x5/0xffffffff
COMMIT
"""
    load(w, text)
    assert "error" not in w.call(op="ct_flush")
    out = Pkt(ip("10.8.0.1"), ip("10.8.0.2"), proto=UDP, sport=5555, dport=9999, oif="va")
    assert run(w, links, "OUTPUT", out)["ret"] == TC_OK
    inner = build_frame(out, b"\0" * 6)[14:14 + 28]          # the quoted IP header + 8 bytes
    mac = links["va"][1]
    frame = _icmp_error("10.8.0.2", "10.8.0.1", inner, mac, b"\x02\0\0\0\0\x01")
    got = w.call(op="run", prog="tc_ingress", frame=frame.hex(), ifindex=links["va"][0])
    assert got["ret"] == TC_OK and [r[0] for r in got["rules"]] == [0]      # RELATED, mark 0x5
    other = _icmp_error("10.8.0.2", "10.8.0.1", build_frame(Pkt(ip("10.8.0.1"), ip("10.8.0.2"), proto=UDP,
                                                                    sport=5556, dport=9999), b"\0" * 6)[14:42],
                        mac, b"\x02\0\0\0\0\x01")
    got = w.call(op="run", prog="tc_ingress", frame=other.hex(), ifindex=links["va"][0])
    assert got["ret"] == TC_SHOT and got["rules"] == []                      # no such connection


def test_connmark_alone_works_at_xdp(dut):
    """-m connmark and CONNMARK --set-xmark need no skb: a ruleset with only those may run at XDP."""
    w, links = dut
    text = HEAD.format("DROP", "ACCEPT") + """-A INPUT -p udp -m connmark --mark 0x7 -j ACCEPT
-A INPUT -p udp -m udp --dport 53 -j CONNMARK --set-xmark 0x7/0xffffffff
-A INPUT -p udp -m udp --dport 53 -m connmark --mark 0x7 -j ACCEPT
COMMIT
"""
    load(w, text)
    assert "error" not in w.call(op="ct_flush")
    idx, mac = links["va"]
    first = Pkt(ip("10.8.0.2"), ip("10.8.0.1"), proto=UDP, sport=4444, dport=53, iif="va")
    got = w.call(op="run", prog="xdp", frame=build_frame(first, mac).hex(), ifindex=idx)
    assert got["ret"] == XDP_PASS and [r[0] for r in got["rules"]] == [1, 2]   # marked, then matched
    got = w.call(op="run", prog="xdp", frame=build_frame(first, mac).hex(), ifindex=idx)
    assert got["ret"] == XDP_PASS and [r[0] for r in got["rules"]] == [0]      # the connection's mark
    assert [e["mark"] for e in w.call(op="ct_list")["entries"]] == [7]
    other = Pkt(ip("10.8.0.2"), ip("10.8.0.1"), proto=UDP, sport=4445, dport=54, iif="va")
    got = w.call(op="run", prog="xdp", frame=build_frame(other, mac).hex(), ifindex=idx)
    assert got["ret"] == XDP_DROP and got["rules"] == []


def _random_connmark_ruleset(rng: random.Random) -> str:
    def cond() -> str:
        c = ""
        if rng.random() < 0.4:
            c += f" -m mark {'! ' if rng.random() < 0.3 else ''}--mark {rng.choice([0, 1, 2, 0x10]):#x}/{rng.choice([0xf, 0xff, 0x1]):#x}"
        if rng.random() < 0.5:
            c += f" -m connmark {'! ' if rng.random() < 0.3 else ''}--mark {rng.choice([0, 1, 2, 0x10]):#x}/{rng.choice([0xf, 0xff, 0x3]):#x}"
        if rng.random() < 0.3:
            c = f" -p udp -m udp --dport {rng.choice([53, 123])}" + c
        return c

    def target() -> str:
        v, m = rng.choice([0, 1, 2, 0x10, 0x11]), rng.choice([0xf, 0xff, 0xffffffff, 0x3])
        return rng.choice([f"MARK --set-xmark {v:#x}/{m:#x}", f"CONNMARK --set-xmark {v:#x}/{m:#x}",
                           f"CONNMARK --save-mark --nfmask {m:#x} --ctmask {rng.choice([0xf, 0xffffffff]):#x}",
                           f"CONNMARK --restore-mark --nfmask {rng.choice([0xf, 0xffffffff]):#x} --ctmask {m:#x}",
                           "ACCEPT", "DROP", "RETURN", "sub", ""])

    lines = []
    for chain in ("INPUT", "OUTPUT", "sub"):
        for _ in range(rng.randint(2, 6)):
            t = target()
            if (t == "RETURN" and chain != "sub") or (t == "sub" and chain == "sub"):
                t = "CONNMARK --set-xmark 0x1/0x1"
            lines.append(f"-A {chain}{cond()}" + (f" -j {t}" if t else ""))
    return (HEAD.format(rng.choice(["ACCEPT", "DROP"]), rng.choice(["ACCEPT", "DROP"])) + ":sub - [0:0]\n"
            + "\n".join(lines) + "\nCOMMIT\n")


def test_random_connmark_rulesets_against_reference(dut):
    """Random MARK/CONNMARK/-m mark/-m connmark rulesets over UDP flows in both directions: the
    verdicts, counters, skb marks and every connection's mark agree with the reference."""
    w, links = dut
    rng = random.Random(11)
    c, s = ip("10.8.0.2"), ip("10.8.0.1")
    for _ in range(20):
        text = _random_connmark_ruleset(rng)
        seq = []
        for _ in range(14):
            sport, dport = rng.choice([(4000, 53), (4001, 123), (4002, 9)])
            if rng.random() < 0.6:
                seq.append(("INPUT", Pkt(c, s, proto=UDP, sport=sport, dport=dport, iif="va",
                                         mark=rng.choice([0, 1, 0x10, 0x12]))))
            else:
                seq.append(("OUTPUT", Pkt(s, c, proto=UDP, sport=dport, dport=sport, oif="va",
                                          mark=rng.choice([0, 2, 0x11]))))
        check_flows(w, links, text, seq)


def test_later_fragments_belong_to_the_first_fragments_connection(dut):
    """ebpfw judges fragments one by one (no reassembly); a later fragment gets the first one's
    conntrack label and, for -m connmark / CONNMARK, its connection."""
    w, links = dut
    text = HEAD.format("DROP", "ACCEPT") + """-A INPUT -m connmark --mark 0x7 -j ACCEPT
-A INPUT -p udp -m udp --dport 53 -j CONNMARK --set-xmark 0x7/0xffffffff
-A INPUT -p udp -m udp --dport 53 -j ACCEPT
COMMIT
"""
    load(w, text)
    assert "error" not in w.call(op="ct_flush")
    first = Pkt(ip("10.8.0.2"), ip("10.8.0.1"), proto=UDP, sport=4100, dport=53, iif="va", mf=True, payload=40)
    got = run(w, links, "INPUT", first)
    assert got["ret"] == TC_OK and [r[0] for r in got["rules"]] == [1, 2]
    later = Pkt(ip("10.8.0.2"), ip("10.8.0.1"), proto=UDP, sport=4100, dport=53, iif="va", frag=6, payload=16)
    got = run(w, links, "INPUT", later)
    assert got["ret"] == TC_OK and [r[0] for r in got["rules"]] == [0]      # the connection's mark 0x7
    alone = Pkt(ip("10.8.0.3"), ip("10.8.0.1"), proto=UDP, sport=4100, dport=53, iif="va", frag=6, payload=16)
    got = run(w, links, "INPUT", alone)
    assert got["ret"] == TC_SHOT and got["rules"] == []      # no first fragment seen: no connection
