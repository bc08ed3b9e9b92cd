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


# --- byte rates, rate-match and --hashlimit-htable-max -----------------------------------

MODES = """*filter
:INPUT DROP [0:0]
:FORWARD DROP [0:0]
:OUTPUT ACCEPT [0:0]
-A INPUT -m hashlimit --hashlimit-upto 1/sec --hashlimit-name clk
-A INPUT -p udp -m udp --dport 5100 -m hashlimit --hashlimit-upto 2kb/s --hashlimit-burst 6kb --hashlimit-mode srcip --hashlimit-name hlby -j ACCEPT
-A INPUT -p udp -m udp --dport 5101 -m hashlimit --hashlimit-above 1kb/s --hashlimit-mode srcip --hashlimit-name hlbz -j DROP
-A INPUT -p udp -m udp --dport 5101 -j ACCEPT
-A INPUT -p udp -m udp --dport 5200 -m hashlimit --hashlimit-upto 4/sec --hashlimit-burst 2 --hashlimit-mode srcip --hashlimit-rate-match --hashlimit-name hlrm -j ACCEPT
-A INPUT -p udp -m udp --dport 5201 -m hashlimit --hashlimit-above 3kb/s --hashlimit-mode srcip --hashlimit-rate-match --hashlimit-name hlrb -j DROP
-A INPUT -p udp -m udp --dport 5201 -j ACCEPT
-A INPUT -p udp -m udp --dport 5202 -m hashlimit --hashlimit-upto 3/sec --hashlimit-burst 1 --hashlimit-mode srcip --hashlimit-rate-match --hashlimit-rate-interval 2 --hashlimit-name hlri -j ACCEPT
-A INPUT -p udp -m udp --dport 5300 -m hashlimit --hashlimit-upto 100/sec --hashlimit-mode srcip,srcport --hashlimit-name hlmax --hashlimit-htable-size 2 --hashlimit-htable-max 3 --hashlimit-htable-gcinterval 200 --hashlimit-htable-expire 300 -j ACCEPT
COMMIT
"""


def _clock(w, hl: Hashlimits) -> tuple[int, dict]:
    """The jiffies of the last packet: every INPUT packet first passes the `clk` rule, whose one
    bucket's expiry is then that packet's jiffies + its expiry. Its later hashlimit rule may be
    judged a jiffy later: a table whose newest bucket is newer than that has its own clock."""
    got = w.call(op="hl_list")
    assert "error" not in got, got
    newest: dict = {}
    for e in got["entries"]:
        newest[e["table"]] = max(newest.get(e["table"], 0), e["expires"] - hl.tables[e["table"]].expire_j)
    now = newest["clk"]
    return now, {t: j for t, j in newest.items() if j > now}


def _mode_packets(rnd: random.Random, n: int, ports=(5100, 5101, 5200, 5201, 5202, 5300)) -> list[Pkt]:
    out = []
    for _ in range(n):
        dport = rnd.choice(ports)
        src = ip(rnd.choice(SOURCES[:3]))
        sport = rnd.choice(range(3000, 3008)) if dport == 5300 else 4000
        out.append(Pkt(src, ip("10.9.0.1"), UDP, sport=sport, dport=dport, iif="va",
                       payload=rnd.choice([0, 1, 15, 16, 100, 500, 1000, 1400, rnd.randrange(0, 1450)])))
    return out


def _run_modes(w, links, table, hl: Hashlimits, rule_index: dict, packets: list[Pkt]) -> list[str]:
    verdicts = []
    for p in packets:
        got = judge(w, links, "INPUT", p)
        assert "error" not in got, got
        hl.now, hl.now_by = _clock(w, hl)
        verdict, counted, _ = evaluate(table, "INPUT", p, hl=hl)
        where = f"{p} (IP length {p.ip_len}) at jiffies {hl.now}"
        assert (got["ret"] == XDP_DROP) == (verdict == "DROP"), f"verdict differs for {where}"
        assert sorted(r[0] for r in got["rules"]) == sorted(rule_index[c] for c in counted), \
            f"rule counters differ for {where}: {got['rules']} vs {counted}"
        verdicts.append(verdict)
    return verdicts


def _check_mode_buckets(w, hl: Hashlimits) -> None:
    got = w.call(op="hl_list")
    for name, t in hl.tables.items():
        t.gc(hl.now)
        ref = {k: (e["credit"], e["credit_cap"], e["cost"], e["prev"], e["win"]) for k, e in t.entries.items()}
        mine = {}
        for e in got["entries"]:
            if e["table"] != name:
                continue
            k = (ip(e["src"]), ip(e["dst"]), e["sport"], e["dport"])
            # a bucket the collector has freed by now is not in the reference (it restarts when seen)
            run = t.j0 + t.gc_j
            while run < e["expires"]:
                run += t.gc_j
            if run <= hl.now:
                assert k not in ref
                continue
            mine[k] = (e["credit"], e["credit_cap"], e["cost"], e["prev"], e["win"])
        assert mine == ref, f"buckets of {name} differ"


def test_hashlimit_bytes_rate_match_and_max_match_reference(dut):
    """Byte rates (the cost is the IP length in 16-byte chunks, refills limited by the burst),
    rate-match (windows of --hashlimit-rate-interval), and a table of at most 3 buckets whose
    new keys are hotdropped until the collector frees some: verdicts, counters and every
    bucket's numbers equal to the reference's, packet by packet."""
    w, links = dut
    r = load_fresh(w, MODES)
    table = parse_ruleset(MODES, "t.rules").table("filter")
    rule_index = {tuple(rc): i for i, rc in enumerate(r["rule_chain"])}
    hl = Hashlimits(host_hz()).prepare(table, j0=w.call(op="hl_list")["j0"])
    assert hl.tables["hlmax"].max == 3 and hl.tables["hlby"].bytes and hl.tables["hlrm"].rate_match
    rnd = random.Random(11)
    seen = []
    for pause in (0, 0.15, 0.5, 1.1, 0.3, 1.3, 0.9):
        time.sleep(pause)
        seen += _run_modes(w, links, table, hl, rule_index, _mode_packets(rnd, 60))
        _check_mode_buckets(w, hl)
    assert "DROP" in seen and "ACCEPT" in seen


def test_hashlimit_htable_max_hotdrops_new_keys(dut):
    """Plain behaviour: the fourth source port of a table of 3 is hotdropped (counted by no
    rule), a known one still passes; once the collector freed the idle buckets new ones fit."""
    w, links = dut
    load_fresh(w, MODES)

    def send(sport: int) -> dict:
        got = judge(w, links, "INPUT", Pkt(ip(SOURCES[0]), ip("10.9.0.1"), UDP, sport=sport, dport=5300, iif="va"))
        assert "error" not in got, got
        return got

    for sport in (3000, 3001, 3002):
        assert send(sport)["ret"] != XDP_DROP
    full = send(3003)
    # hotdropped: no rule counts it but the first (the clock rule, no target, before it)
    assert full["ret"] == XDP_DROP and {rule for rule, *_ in full["rules"]} <= {0}, full["rules"]
    assert send(3001)["ret"] != XDP_DROP
    time.sleep(0.8)          # expire 300 ms, collector every 200 ms
    assert send(3003)["ret"] != XDP_DROP


def test_hashlimit_max_count_grouped_for_a_long_expiry(dut):
    """An expiry of 2000 ms with a collector every 10 ms spans 167 runs: the count is kept per
    group of 3 runs (abi.hashlimit_group_runs). Full at 2 buckets; a third key is hotdropped
    until the first two have expired and their group's runs have passed."""
    from ebpfw.datapath.abi import hashlimit_group_runs, msecs_to_jiffies
    hz = host_hz()
    assert hashlimit_group_runs(msecs_to_jiffies(2000, hz), msecs_to_jiffies(10, hz)) > 1
    text = MODES.replace("--hashlimit-htable-size 2 --hashlimit-htable-max 3 --hashlimit-htable-gcinterval 200 "
                         "--hashlimit-htable-expire 300",
                         "--hashlimit-htable-size 1 --hashlimit-htable-max 2 --hashlimit-htable-gcinterval 10 "
                         "--hashlimit-htable-expire 2000")
    assert text != MODES
    w, links = dut
    load_fresh(w, text)

    def passes(sport: int) -> bool:
        got = judge(w, links, "INPUT", Pkt(ip(SOURCES[1]), ip("10.9.0.1"), UDP, sport=sport, dport=5300, iif="va"))
        assert "error" not in got, got
        return got["ret"] != XDP_DROP

    t0 = time.monotonic()
    assert [passes(3000), passes(3001), passes(3002), passes(3000)] == [True, True, False, True]
    assert time.monotonic() - t0 < 1.5, "too slow to see the table full"
    time.sleep(2.5)          # 3000 and 3001 expired, freed, and their group passed
    assert [passes(3002), passes(3003), passes(3004)] == [True, True, False]


def test_hashlimit_kept_table_of_another_kind_is_refused(dut):
    """An apply keeps a table the enforced rules still name, with its config (as the kernel
    does); rules giving it another kind of rate would have the kernel run the kept byte buckets
    with the packet arithmetic: refused, the enforced rules stay."""
    w, links = dut
    load_fresh(w, MODES)
    packets = MODES.replace("--hashlimit-upto 2kb/s --hashlimit-burst 6kb --hashlimit-mode srcip --hashlimit-name hlby",
                            "--hashlimit-upto 2/sec --hashlimit-mode srcip --hashlimit-name hlby")
    assert packets != MODES
    r = w.call(op="load", rules=packets)
    assert "hashlimit table 'hlby' is in use with a byte rate, the new rules give it a packet rate" in \
        r.get("error", ""), r
    load_fresh(w, packets)      # once no ruleset holds the table, it is made anew


FRAG_RULES = """*filter
:INPUT DROP [0:0]
:FORWARD DROP [0:0]
:OUTPUT ACCEPT [0:0]
-A INPUT -p tcp -m hashlimit --hashlimit-upto 100/sec --hashlimit-burst 5 --hashlimit-mode srcip --hashlimit-name frag -j ACCEPT
COMMIT
"""


def test_tcp_fragment_at_offset_8_is_not_hotdropped_by_hashlimit(dut):
    """xt_tcp hotdrops a TCP fragment at offset 8 ("evil" fragment); xt_hashlimit does not: a
    rule with a hashlimit but no tcp match takes it like any packet (as the reference does)."""
    w, links = dut
    load_fresh(w, FRAG_RULES)
    p = Pkt(ip(SOURCES[0]), ip("10.9.0.1"), TCP, sport=1, dport=1, iif="va", frag=1)
    table = parse_ruleset(FRAG_RULES, "frag.rules").tables[0]
    verdict, counted, _ = evaluate(table, "INPUT", p, hl=Hashlimits(host_hz()).prepare(table, j0={"frag": 0}))
    assert verdict == "ACCEPT" and counted == [("INPUT", 0)], (verdict, counted)
    got = judge(w, links, "INPUT", p)
    assert got["ret"] != XDP_DROP, got
