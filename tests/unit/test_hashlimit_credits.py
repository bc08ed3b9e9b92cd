"""-m hashlimit arithmetic and compilation: ebpfw's numbers for the BPF tables (ebpfw.datapath.abi)
against the reference transcription of xt_hashlimit (tests/reference.py), the kernel's constants,
and the compiler's choices (which rule configures a shared table, what is refused)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ebpfw.check import check_ruleset
from ebpfw.compiler import compile_plan
from ebpfw.compiler.plan import RF_HASHLIMIT
from ebpfw.datapath.abi import (
    HL_CAP_MAX, hashlimit_cpj, hashlimit_credits, hashlimit_default_size, hashlimit_overflows, hashlimit_size_max,
    msecs_to_jiffies, shape_for,
)
from ebpfw.errors import RulesetError
from ebpfw.iptables import parse_ruleset
from ebpfw.ruleset import HashlimitMatch
from reference import UDP, HashlimitTable, Hashlimits, Hotdrop, Pkt

HEAD = "*filter\n:INPUT DROP [0:0]\n:FORWARD DROP [0:0]\n:OUTPUT ACCEPT [0:0]\n"


def test_credits_per_jiffy_is_the_64_bit_power_of_two():
    # POW2_BELOW64(0xFFFFFFFFFFFFFFFF / (HZ*86400)) for the usual HZ values
    assert {hz: hashlimit_cpj(hz).bit_length() - 1 for hz in (100, 250, 300, 1000)} == \
        {100: 40, 250: 39, 300: 39, 1000: 37}
    # user2credits(1 s) = HZ jiffies' worth of credits, rounded down by the integer division
    assert hashlimit_credits(1_000_000, 250) == 1_000_000 * (250 * 2**39 // 1_000_000)


@given(st.integers(1, 86_400_000_000), st.integers(1, 10_000), st.sampled_from([100, 250, 300, 1000]))
def test_credits_and_overflow_match_the_reference(avg, burst, hz):
    m = HashlimitMatch(name="x", avg=avg, burst=burst, expire=1000)
    ref = HashlimitTable(m, hz, j0=0)
    assert hashlimit_cpj(hz) == ref.cpj
    assert hashlimit_credits(avg, hz) == ref.credits(avg)
    assert hashlimit_credits(avg * burst, hz) == ref.credits(avg * burst)
    assert hashlimit_overflows(avg, burst, hz) == (ref.credits(avg * burst) < ref.credits(avg))


def test_overflow_is_what_the_kernel_refuses():
    # 1/day (86400e6 us) with burst 2 wraps the u64 product at HZ=250: the kernel says ERANGE
    assert hashlimit_overflows(86_400_000_000, 2, 250)
    assert not hashlimit_overflows(86_400_000_000, 1, 250)
    assert not hashlimit_overflows(1_000_000, 10_000, 250)
    assert hashlimit_overflows(1000, 0, 250)


def test_msecs_to_jiffies_rounds_up():
    assert [msecs_to_jiffies(ms, 250) for ms in (0, 1, 4, 5, 1000)] == [0, 1, 1, 2, 250]
    assert msecs_to_jiffies(7, 1000) == 7 and msecs_to_jiffies(1, 100) == 1 and msecs_to_jiffies(10, 300) == 3


def test_size_and_max_as_htable_create_settles_them():
    assert hashlimit_default_size(24 * 1024 * 1024) == 8192            # more than 1 GiB of RAM
    assert hashlimit_default_size(512 * 1024) == 512 * 1024 * 1024 // 16384 // 8
    assert hashlimit_default_size(1024) == 16
    assert hashlimit_size_max(100, 0) == (100, 800)
    assert hashlimit_size_max(100, 50) == (100, 100)
    assert hashlimit_size_max(2_000_000, 2_000_000) == (1048576, 1048576)


def test_reference_bucket_burst_refill_and_collector():
    m = HashlimitMatch(name="x", avg=250_000, burst=3, expire=1000, mode=("srcip",))   # 4/sec
    t = HashlimitTable(m, 250, j0=1000)
    a = Pkt(0x0A000001, 0x0A000063, UDP)
    b = Pkt(0x0A000002, 0x0A000063, UDP)
    assert [t.match(a, 1000, False) for _ in range(4)] == [True, True, True, False]
    assert t.match(b, 1000, False)                         # its own bucket
    assert not t.match(a, 1000 + 62, False)                # 62 jiffies: a token is 62.5 of them
    assert t.match(a, 1000 + 63, False)
    # idle past expire (250 jiffies) and a collector run (every 250 jiffies from j0): freed, full again
    assert t.match(a, 1000 + 63 + 600, False) and len(t.entries) == 1
    assert t.entries[(0x0A000001, 0, 0, 0)]["credit"] == t.credits(750_000) - t.credits(250_000)


def test_reference_ports_of_a_short_packet_hotdrop():
    m = HashlimitMatch(name="x", avg=1000, expire=1000, mode=("dstport",))
    with pytest.raises(Hotdrop):
        HashlimitTable(m, 250, 0).match(Pkt(1, 2, 50, payload=2), 0, False)    # ESP without its SPI
    assert HashlimitTable(m, 250, 0).key(Pkt(1, 2, 47)) == (0, 0, 0, 0)         # GRE: no ports


def _plan(body: str):
    rs = parse_ruleset(HEAD + body + "COMMIT\n", "p.rules")
    check_ruleset(rs)
    return compile_plan(rs.table("filter"))


def test_shared_name_takes_the_first_rule_in_the_kernels_order():
    # the user chain comes first in the file, but the kernel checks INPUT's rules first
    plan = _plan(":AAA - [0:0]\n"
                 "-A AAA -m hashlimit --hashlimit-upto 1/hour --hashlimit-name t -j ACCEPT\n"
                 "-A INPUT -p udp -m hashlimit --hashlimit-above 5/sec --hashlimit-mode srcip,dstport "
                 "--hashlimit-srcmask 24 --hashlimit-name t -j DROP\n"
                 "-A INPUT -m hashlimit --hashlimit-upto 2/sec --hashlimit-name other -j ACCEPT\n")
    assert [t.name for t in plan.hl_tables] == ["t", "other"]
    t = plan.hl_tables[0]
    assert (t.avg, t.mode, t.srcmask, t.expire, t.gcinterval) == (200_000, 4 | 2, 24, 1000, 1000)
    # rule numbers: INPUT 0, 1, then AAA 2; each rule keeps its own --hashlimit-above
    assert plan.hashlimits == {0: (0, True), 1: (1, False), 2: (0, False)}
    assert all(plan.rule_flags[r] & RF_HASHLIMIT for r in (0, 1, 2))
    shape = shape_for(plan, 2)
    # the LRU map of buckets: twice the tables' htable-max, at most HL_CAP_MAX (preallocated)
    assert "hashlimit" in shape.fields and shape.hl_cap == min(2 * 2 * t.max, HL_CAP_MAX)
    one = _plan("-A INPUT -m hashlimit --hashlimit-upto 1/s --hashlimit-name a -j ACCEPT\n")
    assert shape_for(one, 2).hl_cap == 2 * one.hl_tables[0].max


@pytest.mark.parametrize("body,what", [
    ("-A INPUT -m hashlimit --hashlimit-upto 1/s --hashlimit-name x -p udp -m udp --dport 1 -j ACCEPT\n",
     "last match"),
    ("-A INPUT -m hashlimit --hashlimit-upto 1/day --hashlimit-burst 2 --hashlimit-name x -j ACCEPT\n", "overflow"),
    ("-A INPUT -m hashlimit --hashlimit-upto 1/s --hashlimit-name .. -j ACCEPT\n", "xt_check_proc_name"),
])
def test_refused_with_file_and_line(body, what):
    rs = parse_ruleset(HEAD + body + "COMMIT\n", "p.rules")
    with pytest.raises(RulesetError) as exc:
        compile_plan(rs.table("filter"))
    assert any(p.startswith("p.rules:5: ") and what in p for p in exc.value.problems), exc.value.problems


def test_too_many_tables_refused():
    body = "".join(f"-A INPUT -m hashlimit --hashlimit-upto 1/s --hashlimit-name n{i} -j ACCEPT\n" for i in range(65))
    with pytest.raises(RulesetError) as exc:
        compile_plan(parse_ruleset(HEAD + body + "COMMIT\n", "p.rules").table("filter"))
    assert any("at most 64" in p for p in exc.value.problems)


def test_reference_state_makes_tables_in_check_order():
    rs = parse_ruleset(HEAD + ":AAA - [0:0]\n"
                       "-A AAA -m hashlimit --hashlimit-upto 1/hour --hashlimit-name t -j ACCEPT\n"
                       "-A INPUT -m hashlimit --hashlimit-upto 5/sec --hashlimit-name t -j ACCEPT\n"
                       "COMMIT\n", "p.rules")
    hl = Hashlimits(250).prepare(rs.table("filter"))
    assert hl.tables["t"].avg == 200_000


def test_connlimit_before_other_matches_refused_with_its_reason():
    rs = parse_ruleset(HEAD + "-A INPUT -p tcp -m connlimit --connlimit-above 2 -m tcp --syn -j DROP\nCOMMIT\n", "p.rules")
    with pytest.raises(RulesetError) as exc:
        compile_plan(rs.table("filter"))
    assert any(p.startswith("p.rules:5: -m connlimit before other matches") and "xt_connlimit" in p
               for p in exc.value.problems), exc.value.problems
    ok = parse_ruleset(HEAD + "-A INPUT -p tcp -m tcp --syn -m connlimit --connlimit-above 2 -j DROP\nCOMMIT\n", "p.rules")
    plan = compile_plan(ok.table("filter"))
    assert plan.connlimits[0].limit == 2 and plan.ct is not None
