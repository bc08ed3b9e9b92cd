"""-m set in the datapath: BPF_PROG_TEST_RUN of rules naming sets of every supported type,
against the reference interpreter's ipset semantics (written here from the kernel's set types:
hash:ip/hash:net test the address, ,port types also (proto, port) from ip_set_get_ip4_port,
bitmap:port the TCP/UDP port), and live membership: an add or del is seen by the next packet."""

from __future__ import annotations

import pytest

from reference import ICMP, TCP, UDP, Pkt
from test_datapath import XDP_DROP, dut, ip, judge  # noqa: F401  (dut is the shared fixture)

pytestmark = pytest.mark.kernel

SETS = """create blk hash:ip family inet hashsize 1024 maxelem 65536
add blk 10.9.0.66
create nets hash:net family inet hashsize 1024 maxelem 65536
add nets 10.9.0.128/25
add nets 10.9.0.140/30
create svc hash:ip,port family inet hashsize 1024 maxelem 65536
add svc 10.9.0.1,tcp:22
add svc 10.9.0.1,udp:53
create nsvc hash:net,port family inet hashsize 1024 maxelem 65536
add nsvc 10.9.0.0/28,tcp:8080
create ports bitmap:port range 1000-2000
add ports 1234
"""

RULES = """*filter
:INPUT DROP [0:0]
:FORWARD DROP [0:0]
:OUTPUT ACCEPT [0:0]
-A INPUT -m set --match-set blk src -j DROP
-A INPUT -m set --match-set nets src -j DROP
-A INPUT -m set --match-set svc dst,dst -j ACCEPT
-A INPUT -m set --match-set nsvc src,dst -j ACCEPT
-A INPUT -p udp -m set --match-set ports dst -j ACCEPT
-A INPUT -p icmp -m set ! --match-set blk src -j ACCEPT
COMMIT
"""


def run(w, links, p) -> tuple[bool, list]:
    got = judge(w, links, "INPUT", p)
    assert "error" not in got, got
    return got["ret"] != XDP_DROP, sorted(r[0] for r in got["rules"])


def test_set_types_and_live_membership(dut):
    w, links = dut
    r = w.call(op="load", rules=RULES, sets=SETS)
    assert "error" not in r, r.get("error")
    me = ip("10.9.0.1")
    cases = [
        (Pkt(ip("10.9.0.66"), me, TCP, dport=22, iif="va"), (False, [0])),        # blk
        (Pkt(ip("10.9.0.200"), me, TCP, dport=22, iif="va"), (False, [1])),       # nets /25
        (Pkt(ip("10.9.0.2"), me, TCP, dport=22, iif="va"), (True, [2])),          # svc tcp:22
        (Pkt(ip("10.9.0.2"), me, UDP, dport=22, iif="va"), (False, [])),          # udp:22 not in svc
        (Pkt(ip("10.9.0.2"), me, UDP, dport=53, iif="va"), (True, [2])),          # svc udp:53
        (Pkt(ip("10.9.0.3"), me, TCP, dport=8080, iif="va"), (True, [3])),        # nsvc 10.9.0.0/28
        (Pkt(ip("10.9.0.30"), me, TCP, dport=8080, iif="va"), (False, [])),       # outside /28
        (Pkt(ip("10.9.0.2"), me, UDP, dport=1234, iif="va"), (True, [4])),        # bitmap:port
        (Pkt(ip("10.9.0.2"), me, UDP, dport=1235, iif="va"), (False, [])),
        (Pkt(ip("10.9.0.2"), me, ICMP, icmp_type=8, iif="va"), (True, [5])),      # ! blk
    ]
    for p, want in cases:
        assert run(w, links, p) == want, p
    # live: add the address, the next packet sees it; delete it, the next packet does not
    probe = Pkt(ip("10.9.0.77"), me, TCP, dport=22, iif="va")
    assert run(w, links, probe) == (True, [2])
    a = w.call(op="set_add", name="blk", element="10.9.0.77")
    assert a.get("n") == 1, a
    assert run(w, links, probe) == (False, [0])
    d = w.call(op="set_del", name="blk", element="10.9.0.77")
    assert d.get("n") == 1, d
    assert run(w, links, probe) == (True, [2])
    assert "add blk 10.9.0.66\n" in w.call(op="set_list", name="blk")["text"]
    # a re-load of the ruleset without sets keeps the live sets
    w.call(op="set_add", name="svc", element="10.9.0.1,tcp:23")
    r = w.call(op="load", rules=RULES)
    assert "error" not in r, r.get("error")
    assert run(w, links, Pkt(ip("10.9.0.2"), me, TCP, dport=23, iif="va")) == (True, [2])
    # the sets file is the declared content: loading it again drops the live addition
    r = w.call(op="load", rules=RULES, sets=SETS)
    assert run(w, links, Pkt(ip("10.9.0.2"), me, TCP, dport=23, iif="va")) == (False, [])
    # timing of one live add from a running process (reported; generous bound for a busy CI box)
    a = w.call(op="set_add", name="blk", element="10.9.0.99")
    print(f"live set add: {a['seconds'] * 1e3:.3f} ms")
    assert a["seconds"] < 0.05


def test_unknown_set_is_refused(dut):
    w, _ = dut
    r = w.call(op="load", rules=RULES.replace("--match-set blk src -j DROP", "--match-set nope src -j DROP"))
    assert "test.rules:5:" in r.get("error", "") and "'nope' is not known" in r["error"], r


def test_set_and_hotdrop_keep_the_rule_order(dut):
    """A TCP header cut short: xt_tcp hotdrops it, but only when iptables reaches the tcp match,
    i.e. when a set match before it holds (and whatever the set says when the set comes after)."""
    from reference import build_frame
    w, links = dut
    text = """*filter
:INPUT ACCEPT [0:0]
:FORWARD ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
-A INPUT -p tcp -m set --match-set blk src -m tcp --dport 80 -j ACCEPT
-A INPUT -s 10.9.0.9/32 -p tcp -m tcp --dport 81 -m set --match-set blk src -j ACCEPT
COMMIT
"""
    r = w.call(op="load", rules=text, sets=SETS)
    assert r.get("ok"), r
    idx, mac = links["va"]
    for src, dport, want_drop in (("10.9.0.66", 80, True), ("10.9.0.8", 80, False), ("10.9.0.9", 81, True)):
        frame = bytearray(build_frame(Pkt(ip(src), ip("10.9.0.1"), TCP, dport=dport, iif="va"), mac))
        frame[16:18] = (30).to_bytes(2, "big")          # IP total length 30: a 10-byte TCP header
        frame[24:26] = b"\0\0"
        s = sum(int.from_bytes(frame[14 + i:16 + i], "big") for i in range(0, 20, 2))
        while s >> 16:
            s = (s & 0xFFFF) + (s >> 16)
        frame[24:26] = (~s & 0xFFFF).to_bytes(2, "big")
        got = w.call(op="run", prog="xdp", frame=bytes(frame).hex(), ifindex=idx)
        assert (got["ret"] == XDP_DROP) == want_drop, (src, dport, got)
