"""-m limit arithmetic: ebpfw's numbers for the BPF bucket (ebpfw.datapath.abi) against the
reference transcription of xt_limit (tests/reference.py), and the bucket's behaviour on a
simulated jiffies clock (the BPF code runs the same steps, see programs/ebpfw.c limit_pass)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from ebpfw.check import HZ_CPJ
from ebpfw.datapath.abi import LIMIT, credits_per_jiffy, host_hz, limit_credits, limit_entry
from reference import LimitBucket


def test_credits_per_jiffy_matches_the_kernel_constants():
    # CREDITS_PER_JIFFY for the usual HZ values (POW2_BELOW32(0xFFFFFFFF / (HZ*86400)))
    assert {hz: credits_per_jiffy(hz) for hz in (100, 250, 300, 1000)} == {100: 256, 250: 128, 300: 128, 1000: 32}
    assert 250 * credits_per_jiffy(250) == HZ_CPJ == 1000 * credits_per_jiffy(1000)


@given(st.integers(1, 0xFFFFFFFF), st.integers(1, 10000), st.sampled_from([100, 250, 300, 1000]))
def test_entry_is_what_limit_mt_check_leaves(avg, burst, hz):
    ref = LimitBucket(avg, burst, hz, jiffies=777)
    _, credit, prev, cap, cost, cpj, _, nsj = LIMIT.unpack(limit_entry(avg, burst, hz, 777 * (10**9 // hz)))
    assert (credit, cap, cost, cpj, prev, nsj) == (ref.credit, ref.credit_cap, ref.cost, ref.cpj, 777, 10**9 // hz)
    assert limit_credits(avg, hz) == ref.credits(avg)


def test_bucket_behaviour_3_per_minute_burst_5():
    # iptables' default: --limit 3/min (avg 200000 = 20 s) --limit-burst 5
    b = LimitBucket(200000, 5, 250)
    assert [b.match(0) for _ in range(6)] == [True] * 5 + [False]
    assert not b.match(20 * 250 - 1)     # one jiffy short of a token
    assert b.match(20 * 250)
    assert not b.match(20 * 250)
    assert [b.match(3600 * 250) for _ in range(6)] == [True] * 5 + [False]   # capped at burst


def test_host_hz_from_config_text():
    assert host_hz("# x\nCONFIG_HZ_250=y\nCONFIG_HZ=250\n") == 250


def _plan(fragment: str):
    from ebpfw.check import check_ruleset
    from ebpfw.compiler import compile_plan
    from ebpfw.iptables import parse_ruleset
    head = "*filter\n:INPUT DROP [0:0]\n:FORWARD DROP [0:0]\n:OUTPUT ACCEPT [0:0]\n-A INPUT -j ACCEPT\n"
    rs = parse_ruleset(head + f"-A INPUT {fragment}\nCOMMIT\n", "p.rules")
    check_ruleset(rs)
    return compile_plan(rs.table("filter"))


def test_compile_limit_last_match():
    from ebpfw.compiler.plan import RF_LIMIT
    from ebpfw.datapath.abi import shape_for
    plan = _plan("-p tcp -m tcp --dport 1 -m limit --limit 10/sec --limit-burst 7 -m comment --comment x -j ACCEPT")
    assert plan.limits[1].avg == 1000 and plan.limits[1].burst == 7
    assert plan.rule_flags[1] & RF_LIMIT and not plan.rule_flags[0] & RF_LIMIT
    assert "limit" in shape_for(plan, 2).fields
    assert "limit" not in shape_for(_plan("-p tcp -j ACCEPT"), 2).fields
