"""-m hashlimit in the datapath: BPF_PROG_TEST_RUN of the real programs against the reference
transcription of xt_hashlimit (tests/reference.py: Hashlimits), packet by packet.

The datapath's clock is the kernel's jiffies (bpf_jiffies64), which a test cannot set; so the
reference is driven by the jiffies the datapath used: after every packet the most recent
`prev` of the buckets is the jiffies of that packet (rateinfo_init and rateinfo_recalc both
leave prev = now), and the tables' creation jiffies (the collector's start) is read back from
the config. With the same clock the verdicts, the rule counters and at the end every bucket's
credit must be equal.
"""

from __future__ import annotations

import os
import random
import time

import pytest

from ebpfw.datapath.abi import host_hz
from ebpfw.iptables import parse_ruleset
from reference import TCP, UDP, Hashlimits, Pkt, build_frame, evaluate
from test_datapath import TC_SHOT, XDP_DROP, dut, ip, judge  # noqa: F401  (dut is the shared fixture)

pytestmark = pytest.mark.kernel

RULES = """*filter
:INPUT DROP [0:0]
:FORWARD DROP [0:0]
:OUTPUT ACCEPT [0:0]
:ZZZ - [0:0]
-A INPUT -p udp -m udp --dport 5000 -m hashlimit --hashlimit-upto 4/sec --hashlimit-burst 3 --hashlimit-mode srcip --hashlimit-name hla -j ACCEPT
-A INPUT -p udp -m udp --dport 5000 -j DROP
-A INPUT -p udp -m udp --dport 6000:6010 -m hashlimit --hashlimit-above 2/sec --hashlimit-burst 2 --hashlimit-mode srcip,dstport --hashlimit-srcmask 24 --hashlimit-name hlb -j DROP
-A INPUT -p udp -m udp --dport 7000 -j ZZZ
-A INPUT -p tcp -m hashlimit --hashlimit-upto 1/hour --hashlimit-burst 2 --hashlimit-name hlnone -j ACCEPT
-A INPUT -p tcp -j DROP
-A INPUT -p 50 -m hashlimit --hashlimit-upto 10/sec --hashlimit-mode dstip,srcport --hashlimit-name hlesp -m comment --comment "ESP: the SPI is the port pair" -j ACCEPT
-A INPUT -j ACCEPT
-A ZZZ -m hashlimit --hashlimit-upto 1/hour --hashlimit-burst 1 --hashlimit-name hla -j ACCEPT
-A ZZZ -j DROP
-A OUTPUT -p udp -m udp --dport 9000 -m hashlimit --hashlimit-upto 3/sec --hashlimit-burst 2 --hashlimit-mode dstip --hashlimit-dstmask 31 --hashlimit-name hlout -j ACCEPT
-A OUTPUT -p udp -m udp --dport 9000 -j DROP
-A FORWARD -i va -o vb -p udp -m hashlimit --hashlimit-upto 5/sec --hashlimit-burst 2 --hashlimit-mode srcip,srcport --hashlimit-name hlfwd -j ACCEPT
COMMIT
"""
SOURCES = ["10.9.0.2", "10.9.0.3", "10.9.0.4", "10.9.7.5", "10.9.7.6"]


def _now(w) -> tuple[int, list]:
    got = w.call(op="hl_list")
    assert "error" not in got, got
    return max((e["prev"] for e in got["entries"]), default=0), got["entries"]


def _packets(rnd: random.Random, n: int) -> list[tuple[str, Pkt]]:
    out = []
    for _ in range(n):
        src = ip(rnd.choice(SOURCES))
        kind = rnd.random()
        if kind < 0.1:
            # sent by the host (TC egress): one bucket per destination pair (--hashlimit-dstmask 31)
            out.append(("OUTPUT", Pkt(ip("10.9.0.1"), src, UDP, dport=9000, oif="va")))
            continue
        if kind < 0.2:
            # routed through (FORWARD, judged at XDP ingress): one bucket per source and source port
            out.append(("FORWARD", Pkt(src, ip("10.9.1.2"), UDP, sport=rnd.choice([3000, 3001]), dport=53,
                                       iif="va", oif="vb")))
            continue
        if kind < 0.45:
            p = Pkt(src, ip("10.9.0.1"), UDP, sport=rnd.randrange(1024, 1030), dport=5000, iif="va")
        elif kind < 0.7:
            p = Pkt(src, ip("10.9.0.1"), UDP, sport=4000, dport=rnd.choice([6000, 6001, 6010]), iif="va")
        elif kind < 0.8:
            p = Pkt(src, ip("10.9.0.1"), UDP, dport=7000, iif="va")
        elif kind < 0.9:
            p = Pkt(src, ip("10.9.0.1"), TCP, dport=rnd.choice([22, 80]), iif="va")
        else:
            # ESP with (payload >= 4: the SPI is the key's ports) or without (hotdrop) its header
            p = Pkt(src, ip("10.9.0.1"), 50, payload=rnd.choice([0, 8]), iif="va")
        out.append(("INPUT", p))
    return out


def _run(w, links, table, hl: Hashlimits, rule_index: dict, packets: list[tuple[str, Pkt]]) -> list[bool]:
    passed = []
    for hook, p in packets:
        got = judge(w, links, hook, p)
        assert "error" not in got, got
        hl.now, _ = _now(w)
        verdict, counted, _ = evaluate(table, hook, p, hl=hl)
        where = f"{hook} {p} at jiffies {hl.now}"
        drop = got["ret"] == (TC_SHOT if hook == "OUTPUT" else XDP_DROP)
        assert drop == (verdict == "DROP"), f"verdict differs for {where}"
        assert sorted(r[0] for r in got["rules"]) == sorted(rule_index[c] for c in counted), \
            f"rule counters differ for {where}"
        passed.append(verdict != "DROP")
    return passed


def _check_buckets(w, hl: Hashlimits) -> int:
    """Every bucket the reference has is in the datapath with the same numbers; the datapath's
    other buckets are ones the kernel's collector has freed (they restart when seen again)."""
    _, entries = _now(w)
    ref = {}
    for name, t in hl.tables.items():
        t.gc(hl.now)
        for (src, dst, sport, dport), e in t.entries.items():
            ref[(name, src, dst, sport, dport)] = (e["credit"], e["credit_cap"], e["cost"], e["prev"])
    got = {}
    for e in entries:
        k = (e["table"], ip(e["src"]), ip(e["dst"]), e["sport"], e["dport"])
        got[k] = (e["credit"], e["credit_cap"], e["cost"], e["prev"])
        if k not in ref:
            t = hl.tables[e["table"]]
            run = t.j0 + t.gc_j
            while run < e["expires"]:
                run += t.gc_j
            assert run <= hl.now, f"bucket {k} missing from the reference"
    assert {k: v for k, v in got.items() if k in ref} == ref
    return len(ref)


EMPTY = "*filter\n:INPUT ACCEPT [0:0]\n:FORWARD DROP [0:0]\n:OUTPUT ACCEPT [0:0]\nCOMMIT\n"


def load_fresh(w, text: str) -> dict:
    """Load `text` with new hashlimit tables: two rulesets without hashlimit first, so that
    neither slot holds a table any more (a name the active ruleset uses is kept by an apply)."""
    for _ in range(2):
        assert "error" not in w.call(op="load", rules=EMPTY)
    r = w.call(op="load", rules=text)
    assert "error" not in r, r.get("error")
    return r


def test_hashlimit_matches_reference(dut):
    w, links = dut
    r = load_fresh(w, RULES)
    table = parse_ruleset(RULES, "t.rules").table("filter")
    rule_index = {tuple(rc): i for i, rc in enumerate(r["rule_chain"])}
    hl = Hashlimits(host_hz()).prepare(table, j0=w.call(op="hl_list")["j0"])
    # the shared name: ZZZ's rule uses INPUT's first rule's table (4/sec, burst 3, per source)
    assert hl.tables["hla"].burst == 3 and hl.tables["hla"].mode == {"srcip"}
    rnd = random.Random(5)
    passed = _run(w, links, table, hl, rule_index, _packets(rnd, 140))
    assert 10 < sum(passed) < 110, "the bursts should both pass and exhaust buckets"
    assert _check_buckets(w, hl) >= 10
    time.sleep(0.3)      # about one token of 4/sec back, none of 2/sec or 1/hour
    _run(w, links, table, hl, rule_index, _packets(rnd, 40))
    _check_buckets(w, hl)
    time.sleep(2.2)      # expire 1000 ms, collector every 1000 ms: idle buckets are freed
    _run(w, links, table, hl, rule_index, _packets(rnd, 40))
    _check_buckets(w, hl)


def test_hashlimit_burst_then_refill_per_source(dut):
    """Plain behaviour with real time: each source has its own bucket of 3, one token every 250 ms."""
    w, links = dut
    load_fresh(w, RULES)

    def send(src: str) -> bool:
        got = judge(w, links, "INPUT", Pkt(ip(src), ip("10.9.0.1"), UDP, dport=5000, iif="va"))
        return got["ret"] != XDP_DROP

    t0 = time.monotonic()
    first = [[send(s) for _ in range(4)] for s in SOURCES[:3]]
    assert time.monotonic() - t0 < 0.2, "too slow to test a 4/sec bucket"
    assert first == [[True, True, True, False]] * 3
    time.sleep(0.3)
    assert [send(SOURCES[0]), send(SOURCES[0])] == [True, False]
    assert send(SOURCES[3])     # a new source starts full


def test_hashlimit_reapply_keeps_named_tables(dut):
    """As iptables-restore, where the new rules find the tables the old rules still hold: a
    name the active ruleset uses keeps its buckets and its first config across an apply (a
    changed rate does not take effect); a name no ruleset holds any more starts afresh."""
    w, links = dut

    def three() -> list[bool]:
        return [judge(w, links, "INPUT", Pkt(ip("10.9.0.9"), ip("10.9.0.1"), TCP, dport=22, iif="va"))["ret"]
                != XDP_DROP for _ in range(3)]

    load_fresh(w, RULES)
    assert three() == [True, True, False]           # 1/hour, burst 2
    assert "error" not in w.call(op="load", rules=RULES)
    assert three() == [False] * 3                   # the same bucket, still empty
    more = RULES.replace("--hashlimit-upto 1/hour --hashlimit-burst 2 --hashlimit-name hlnone",
                         "--hashlimit-upto 1/hour --hashlimit-burst 5 --hashlimit-name hlnone")
    assert "error" not in w.call(op="load", rules=more)
    assert three() == [False] * 3                   # the table keeps burst 2 and its bucket
    load_fresh(w, more)
    assert three() == [True] * 3                    # a new table: burst 5


def test_hashlimit_not_last_is_refused(dut):
    w, _ = dut
    text = RULES.replace("-p tcp -m hashlimit --hashlimit-upto 1/hour --hashlimit-burst 2 --hashlimit-name hlnone",
                         "-m hashlimit --hashlimit-upto 1/hour --hashlimit-burst 2 --hashlimit-name hlnone -p tcp "
                         "-m tcp --dport 22")
    r = w.call(op="load", rules=text)
    assert "test.rules:10:" in r.get("error", ""), r
    assert "last match" in r["error"]


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two CPUs")
def test_hashlimit_two_cpus_take_exactly_the_burst(dut):
    """Both CPUs hammer one bucket at once (1/min, burst 2000: no token comes back during the
    test): exactly 2000 packets pass, none lost or doubled by a racing update. (Without the
    bucket's lock, some updates race and more pass.)"""
    w, links = dut
    text = RULES.replace("-A INPUT -p udp -m udp --dport 5000 -m hashlimit --hashlimit-upto 4/sec --hashlimit-burst 3",
                         "-A INPUT -p udp -m udp --dport 5000 -m hashlimit --hashlimit-upto 1/min --hashlimit-burst 2000")
    load_fresh(w, text)
    idx, mac = links["va"]
    frame = build_frame(Pkt(ip("10.9.0.2"), ip("10.9.0.1"), UDP, dport=5000, iif="va"), mac)
    cpus = sorted(os.sched_getaffinity(0))[:2]
    got = w.call(op="run_cpus", frame=frame.hex(), ifindex=idx, repeat=20000, cpus=cpus)
    assert "error" not in got, got
    assert got["rules"][0][0] == 2000 and got["rules"][1][0] == 38000, got["rules"][:2]
