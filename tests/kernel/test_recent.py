"""-m recent in the datapath: BPF_PROG_TEST_RUN of the real programs against the reference
model of xt_recent (tests/reference.py RecentTables), packet by packet, with the lists read back
from the datapath and compared entry by entry (address, TTL, number of stamps, LRU order).

Times: the datapath stamps with the kernel's jiffies; the reference is driven with the same
clock (jiffies read from /proc/timer_list is not available everywhere, so the tests that depend
on --seconds use windows far longer than the test, or real sleeps with wide margins).
"""

from __future__ import annotations

import ipaddress
import os
import time

import pytest

from ebpfw.iptables import parse_ruleset
from reference import TCP, UDP, Pkt, RecentTables, evaluate
from test_datapath import DUT_HOST, TC_SHOT, XDP_DROP, dut, ip, judge  # noqa: F401  (dut is the shared fixture)

pytestmark = pytest.mark.kernel

UFW_LIKE = """*filter
:INPUT DROP [0:0]
:FORWARD DROP [0:0]
:OUTPUT ACCEPT [0:0]
:LIMIT - [0:0]
-A INPUT -p tcp -m tcp --dport 22 -m recent --set --name DEFAULT --mask 255.255.255.255 --rsource
-A INPUT -p tcp -m tcp --dport 22 -m recent --update --seconds 30 --hitcount 6 --name DEFAULT --mask 255.255.255.255 --rsource -j LIMIT
-A INPUT -p tcp -m tcp --dport 22 -j ACCEPT
-A INPUT -p udp -m recent --rcheck --name DEFAULT -j ACCEPT
-A LIMIT -j DROP
COMMIT
"""


def load(w, text: str) -> dict:
    r = w.call(op="load", rules=text)
    assert "error" not in r, r.get("error")
    return r


def run_case(w, links, text: str, cases: list, model: RecentTables) -> None:
    """Each (hook, packet) through the datapath and the reference with the shared model."""
    table = parse_ruleset(text, "t.rules").table("filter")
    model.prepare(table)
    r = w.call(op="load", rules=text)
    assert "error" not in r, r.get("error")
    rule_index = {tuple(rc): i for i, rc in enumerate(r["rule_chain"])}
    for n, (hook, p) in enumerate(cases):
        verdict, counted, policy = evaluate(table, hook, p, DUT_HOST, recent=model, now=0)
        got = judge(w, links, hook, p)
        assert "error" not in got, got
        drop = got["ret"] == (TC_SHOT if hook == "OUTPUT" else XDP_DROP)
        assert drop == (verdict == "DROP"), f"packet {n}: verdict {verdict}, datapath ret {got['ret']} for {p}"
        want: dict = {}
        for c in counted:
            i = rule_index[c]
            want[i] = [i, want.get(i, [i, 0, 0])[1] + 1, want.get(i, [i, 0, 0])[2] + p.ip_len]
        assert sorted(got["rules"]) == sorted(want.values()), f"packet {n}: rule counters differ for {p}"


def compare_lists(w, model: RecentTables) -> None:
    for name, entries in model.tables.items():
        got = w.call(op="recent_list", name=name)
        assert "error" not in got, got
        mine = [(e["addr"], e["ttl"], len(e["stamps"])) for e in got["entries"]]
        want = [(str(ipaddress.IPv4Address(e.addr)), e.ttl, len(e.stamps)) for e in model.ordered(name)]
        assert mine == want, f"list {name}: datapath {mine}, reference {want}"


def fresh(w) -> RecentTables:
    w.call(op="recent_reset")
    return RecentTables(list_tot=100, hz=250)


def test_ufw_limit_burst(dut):
    """ufw's limit: the 7th new connection within 30 s from one source goes to LIMIT (dropped);
    another source is unaffected; an address in the list is accepted by the udp rcheck rule."""
    w, links = dut
    model = fresh(w)
    a, b, me = ip("10.9.0.2"), ip("10.9.0.5"), ip("10.9.0.1")
    cases = [("INPUT", Pkt(a, me, TCP, dport=22, iif="va")) for _ in range(8)]
    cases += [("INPUT", Pkt(b, me, TCP, dport=22, iif="va")) for _ in range(3)]
    cases += [("INPUT", Pkt(a, me, UDP, dport=53, iif="va")), ("INPUT", Pkt(ip("10.9.0.9"), me, UDP, iif="va"))]
    run_case(w, links, UFW_LIKE, cases, model)
    compare_lists(w, model)
    got = w.call(op="recent_list", name="DEFAULT")
    assert [e["addr"] for e in got["entries"]] == ["10.9.0.2", "10.9.0.5"]
    # every packet of a is stamped by --set; from the 6th on --update matches and stamps again
    assert len(got["entries"][0]["stamps"]) == 8 + 3
    assert len(got["entries"][1]["stamps"]) == 3


def test_options_against_reference(dut):
    """--rdest, --mask, --rttl, --remove, ! and --reap, checked packet by packet."""
    w, links = dut
    model = fresh(w)
    text = """*filter
:INPUT ACCEPT [0:0]
:FORWARD ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
-A INPUT -p udp -m udp --dport 1 -m recent --set --name net --mask 255.255.255.0
-A INPUT -p udp -m udp --dport 2 -m recent --rcheck --name net --mask 255.255.255.0 -j DROP
-A INPUT -p udp -m udp --dport 3 -m recent --set --name ttl
-A INPUT -p udp -m udp --dport 4 -m recent --rcheck --rttl --name ttl -j DROP
-A INPUT -p udp -m udp --dport 5 -m recent --remove --name ttl
-A INPUT -p udp -m udp --dport 6 -m recent ! --rcheck --name ttl -j DROP
-A INPUT -p udp -m udp --dport 7 -m recent ! --update --seconds 3600 --hitcount 2 --name ttl -j DROP
-A INPUT -p udp -m udp --dport 8 -m recent --rcheck --seconds 3600 --reap --name ttl -j DROP
-A OUTPUT -p udp -m udp --dport 9 -m recent --set --rdest --name out
-A OUTPUT -p udp -m udp --dport 10 -m recent --rcheck --rdest --rttl --name out -j DROP
-A FORWARD -p udp -m udp --dport 11 -m recent --set --name fwd
-A FORWARD -p udp -m udp --dport 12 -m recent --rcheck --rttl --name fwd -j DROP
COMMIT
"""
    me, a, a2, c = ip("10.9.0.1"), ip("10.9.0.2"), ip("10.9.0.77"), ip("10.9.0.3")
    far = ip("10.9.1.2")

    def u(src, dport, ttl=64, hook="INPUT"):
        if hook == "OUTPUT":
            return hook, Pkt(ip("10.9.1.1"), src, UDP, dport=dport, ttl=ttl, oif="vb")
        if hook == "FORWARD":
            return hook, Pkt(src, far, UDP, dport=dport, ttl=ttl, iif="va", oif="vb")
        return hook, Pkt(src, me, UDP, dport=dport, ttl=ttl, iif="va")

    cases = [u(a, 2), u(a, 1), u(a2, 2), u(c, 2),              # mask: a /24 covers a2 (and c)
             u(a, 3, ttl=64), u(a, 4, ttl=63), u(a, 4, ttl=64),  # rttl: only the same TTL
             u(a, 6), u(c, 6),                                   # ! --rcheck
             u(a, 7), u(a, 7), u(a, 7),                          # ! --update --hitcount 2
             u(a, 5), u(a, 4), u(a, 6),                          # remove, then gone
             u(c, 3), u(a, 3), u(c, 8), u(a, 8),                 # reap: nothing older than an hour
             u(far, 9, hook="OUTPUT"), u(far, 10, ttl=64, hook="OUTPUT"), u(far, 10, ttl=63, hook="OUTPUT"),
             u(a, 11, ttl=64, hook="FORWARD"), u(a, 12, ttl=64, hook="FORWARD"), u(a, 12, ttl=9, hook="FORWARD")]
    run_case(w, links, text, cases, model)
    compare_lists(w, model)


def test_full_table_evicts_oldest(dut):
    """ip_list_tot addresses fill a list; the next --set evicts the least recently touched."""
    w, links = dut
    model = fresh(w)
    text = """*filter
:INPUT ACCEPT [0:0]
:FORWARD ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
-A INPUT -p udp -m udp --dport 1 -m recent --set --name full
-A INPUT -p udp -m udp --dport 2 -m recent --rcheck --name full -j DROP
COMMIT
"""
    me = ip("10.9.0.1")
    src = [ip("10.20.0.0") + i for i in range(101)]
    cases = [("INPUT", Pkt(s, me, UDP, dport=1, iif="va")) for s in src[:100]]
    # touch the first one again (moves it to the tail), then one more address evicts src[1]
    cases += [("INPUT", Pkt(src[0], me, UDP, dport=1, iif="va")), ("INPUT", Pkt(src[100], me, UDP, dport=1, iif="va"))]
    cases += [("INPUT", Pkt(s, me, UDP, dport=2, iif="va")) for s in (src[0], src[1], src[2], src[100])]
    run_case(w, links, text, cases, model)
    compare_lists(w, model)
    got = w.call(op="recent_list", name="full")
    assert len(got["entries"]) == 100
    assert "10.20.0.1" not in [e["addr"] for e in got["entries"]]


def test_lists_survive_reapply_with_same_name(dut):
    """A new ruleset that still names a list keeps it; one that does not drops it."""
    w, links = dut
    fresh(w)
    me, a = ip("10.9.0.1"), ip("10.9.0.2")
    load(w, UFW_LIKE)
    for _ in range(3):
        judge(w, links, "INPUT", Pkt(a, me, TCP, dport=22, iif="va"))
    other = UFW_LIKE.replace("-j ACCEPT\n-A INPUT -p udp", "-j ACCEPT\n-A INPUT -p icmp -j ACCEPT\n-A INPUT -p udp")
    load(w, other)
    got = w.call(op="recent_list", name="DEFAULT")
    assert [(e["addr"], len(e["stamps"])) for e in got["entries"]] == [("10.9.0.2", 3)]
    load(w, UFW_LIKE.replace("DEFAULT", "other").replace("-m recent --rcheck --name other", "-m recent --rcheck --name x"))
    assert "error" in w.call(op="recent_list", name="DEFAULT")


def test_seconds_window_expires(dut):
    """--seconds 1: after more than a second (plus a jiffy) the address no longer counts."""
    w, links = dut
    fresh(w)
    text = """*filter
:INPUT ACCEPT [0:0]
:FORWARD ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
-A INPUT -p udp -m udp --dport 1 -m recent --set --name win
-A INPUT -p udp -m udp --dport 2 -m recent --rcheck --seconds 1 --name win -j DROP
COMMIT
"""
    load(w, text)
    me, a = ip("10.9.0.1"), ip("10.9.0.2")

    def dropped(dport: int) -> bool:
        got = judge(w, links, "INPUT", Pkt(a, me, UDP, dport=dport, iif="va"))
        return got["ret"] == XDP_DROP

    t0 = time.monotonic()
    assert not dropped(1)
    hit = dropped(2)
    if time.monotonic() - t0 < 0.8:
        assert hit
    time.sleep(1.3)
    assert not dropped(2)


def test_refused_placements(dut):
    w, _ = dut
    cases = {
        "-A INPUT -m recent --set -p tcp -m tcp --dport 22\n": "last match",
        "-A INPUT -m recent --rcheck --hitcount 40\n": "--hitcount 1-32",
        "-A INPUT -m recent --set --name a\n-A INPUT -m recent --rcheck --name a --mask 255.0.0.0\n": "one --mask per --name",
    }
    for rules, why in cases.items():
        text = "*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n" + rules + "COMMIT\n"
        r = w.call(op="load", rules=text)
        assert "error" in r and why in r["error"] and "test.rules:" in r["error"], r


# ---- property test: random rulesets made of -m recent rules, long packet sequences ----------

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from test_datapath import recent_match  # noqa: E402


@st.composite
def recent_rulesets(draw):
    lines = ["*filter", ":INPUT ACCEPT [0:0]", ":FORWARD ACCEPT [0:0]", ":OUTPUT ACCEPT [0:0]", ":U - [0:0]"]
    for chain in ("INPUT", "U"):
        for _ in range(draw(st.integers(1, 5))):
            parts = [f"-A {chain}"]
            proto = draw(st.sampled_from(["", "tcp", "udp"]))
            if proto:
                parts.append(f"-p {proto}")
                if draw(st.booleans()):
                    parts.append(f"-m {proto} --dport {draw(st.sampled_from(['1', '2', '1:2']))}")
            parts.append(recent_match(draw))
            targets = ["ACCEPT", "DROP", "RETURN", ""] + (["U"] if chain == "INPUT" else [])
            t = draw(st.sampled_from(targets))
            if t:
                parts.append(f"-j {t}")
            lines.append(" ".join(parts))
    lines.append("COMMIT")
    return "\n".join(lines) + "\n"


SOURCES = ["10.9.0.2", "10.9.0.3", "10.9.0.200"]


@st.composite
def recent_packets(draw):
    return "INPUT", Pkt(ip(draw(st.sampled_from(SOURCES))), ip("10.9.0.1"), draw(st.sampled_from([TCP, UDP])),
                        dport=draw(st.sampled_from([1, 2, 3])), ttl=draw(st.sampled_from([64, 64, 63])), iif="va")


@settings(max_examples=int(os.environ.get("EBPFW_DP_EXAMPLES", "60")), deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(text=recent_rulesets(), pkts=st.lists(recent_packets(), min_size=1, max_size=24))
def test_random_recent_rulesets_match_reference(dut, text, pkts):
    w, links = dut
    model = fresh(w)
    run_case(w, links, text, pkts, model)
    compare_lists(w, model)


def test_many_recent_rules_in_one_walk_fail_closed(dut):
    """Each recent rule a packet reaches costs two tail calls (the recent program, then the
    continuation) of the kernel's 33 per packet: a packet that reaches more recent rules than
    that allows is dropped and counted as walk_limit, never let through unjudged."""
    w, links = dut
    fresh(w)
    few = "".join(f"-A INPUT -p udp -m recent ! --rcheck --name n{i}\n" for i in range(10))
    many = "".join(f"-A INPUT -p udp -m recent ! --rcheck --name n{i % 4}\n" for i in range(20))
    head = "*filter\n:INPUT DROP [0:0]\n:FORWARD DROP [0:0]\n:OUTPUT ACCEPT [0:0]\n"
    p = Pkt(ip("10.9.0.2"), ip("10.9.0.1"), UDP, dport=5, iif="va")
    load(w, head + few + "-A INPUT -p udp -j ACCEPT\nCOMMIT\n")
    got = judge(w, links, "INPUT", p)
    assert got["ret"] != XDP_DROP and sorted(r[0] for r in got["rules"]) == list(range(11)), got
    load(w, head + many + "-A INPUT -p udp -j ACCEPT\nCOMMIT\n")
    before = got["stats"]["walk_limit"]
    got = judge(w, links, "INPUT", p)
    assert got["ret"] == XDP_DROP
    assert got["stats"]["walk_limit"] == before + 1
