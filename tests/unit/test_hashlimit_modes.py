"""-m hashlimit byte rates, rate-match and htable-max: what ebpfw gives the datapath
(ebpfw.datapath.abi.hashlimit_table_config: a new bucket's numbers, the refill and cap, the
window) against the reference transcription of xt_hashlimit (tests/reference.py), the
kernel's constants for the usual HZ values, the count groups' bound, and the compiler's
refusals."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ebpfw.compiler import compile_plan
from ebpfw.datapath.abi import (
    HL_BYTES, HL_CFG, HL_RATE, HL_RING, hashlimit_cpj_bytes, hashlimit_credits_byte, hashlimit_group_runs,
    hashlimit_table_config, msecs_to_jiffies,
)
from ebpfw.errors import RulesetError
from ebpfw.iptables import parse_ruleset
from ebpfw.iptables.matches import hashlimit_bytes_to_cost
from ebpfw.ruleset import HashlimitMatch
from reference import UDP, HashlimitTable, Pkt

HEAD = "*filter\n:INPUT DROP [0:0]\n:FORWARD DROP [0:0]\n:OUTPUT ACCEPT [0:0]\n"
HZS = [100, 250, 300, 1000]


def _cfg(m: HashlimitMatch, hz: int) -> dict:
    from ebpfw.compiler.plan import HL_MODE_BITS, HlTable
    t = HlTable(name=m.name, avg=m.avg, burst=m.burst, mode=sum(HL_MODE_BITS[k] for k in m.mode),
                srcmask=m.srcmask, dstmask=m.dstmask, expire=m.expire, gcinterval=m.gcinterval, size=16,
                max=m.max or 128, bytes=m.bytes, rate_match=m.rate_match, interval=m.interval)
    names = ("credit cost cpj expire_j gc_j j0 srcmask dstmask spmask dpmask needports slots max name cap "
             "interval_j ccap mode gk").split()
    c = dict(zip(names, hashlimit_table_config(t, hz, 1000, 7)))
    HL_CFG.pack(*c.values())          # every field fits its C type
    return c


def test_credits_per_jiffy_bytes_is_the_32_bit_power_of_two():
    # POW2_BELOW32(0xFFFFFFFF / HZ): a bucket holds HZ * that, one second's worth
    assert {hz: hashlimit_cpj_bytes(hz).bit_length() - 1 for hz in HZS} == {100: 25, 250: 24, 300: 23, 1000: 22}
    assert hashlimit_credits_byte(0xFFFFFFFF, 250) == 250 * 2 ** 24 - 1


@given(st.integers(16, 32767 * 1024 * 1024), st.integers(0, 5000), st.sampled_from(HZS))
def test_byte_bucket_is_the_kernels(nbytes, burst, hz):
    m = HashlimitMatch(name="b", avg=hashlimit_bytes_to_cost(nbytes), expire=15000, burst=burst, bytes=True)
    c, ref = _cfg(m, hz), HashlimitTable(m, hz, j0=1000)
    e = ref.init(1000)
    assert c["mode"] == HL_BYTES
    assert (c["credit"], c["cap"], c["cost"]) == (e["credit"], e["credit_cap"], e["cost"])
    assert c["ccap"] == ref.cpjb * hz and c["cpj"] == ref.cpjb


@given(st.integers(1, 86_400 * 1_000_000), st.integers(0, 1_000_000), st.integers(1, 2 ** 31 - 1),
       st.booleans(), st.sampled_from(HZS))
def test_rate_match_window_is_the_kernels(avg, burst, interval, bytes_, hz):
    if bytes_:
        avg = (avg % 0xFFFFFFFF) + 1
    m = HashlimitMatch(name="r", avg=avg, expire=1000, burst=burst, bytes=bytes_, rate_match=True,
                       interval=interval)
    c, ref = _cfg(m, hz), HashlimitTable(m, hz, j0=1000)
    e = ref.init(1000)
    assert c["mode"] == HL_RATE | (HL_BYTES if bytes_ else 0)
    assert (c["credit"], c["cap"], c["cost"]) == (e["credit"], e["credit_cap"], e["cost"])
    assert c["interval_j"] == (interval * hz) & 0xFFFFFFFF      # u32 * HZ, as rateinfo_recalc computes it


def test_rate_match_windows_in_the_reference():
    """rateinfo_recalc's window: 5/sec, burst 1 (6 a window); a window over the rate fails the
    whole next one, a window within it does not."""
    m = HashlimitMatch(name="r", avg=200_000, expire=60000, burst=1, rate_match=True, interval=1)
    t = HashlimitTable(m, 250, j0=0)
    p = Pkt(1, 2, UDP)
    assert [t.match(p, 10, False) for _ in range(8)] == [True] * 6 + [False] * 2
    assert [t.match(p, 10 + 300, False) for _ in range(2)] == [False] * 2      # 8 * 250 > 300 * 5
    assert [t.match(p, 10 + 300 + 250, False) for _ in range(3)] == [True] * 3  # 2 * 250 <= 250 * 5


@given(st.integers(1, 0xFFFFFFFF), st.integers(1, 0xFFFFFFFF), st.sampled_from(HZS))
def test_count_groups_cover_every_live_bucket(expire_ms, gc_ms, hz):
    """A live bucket is freed by one of runs d+1 .. d+E+1 (E: the expiry in collector periods,
    rounded up): with gk runs per group they fall in at most EBPFW_HL_RING - 1 groups, so no two
    live groups share a slot of the count (and one is spare)."""
    expire_j, gc_j = msecs_to_jiffies(expire_ms, hz), msecs_to_jiffies(gc_ms, hz)
    gk = hashlimit_group_runs(expire_j, gc_j)
    e = -(-expire_j // gc_j)
    for d in (0, 1, gk - 1, gk, 2 * gk - 1, 12345):
        groups = {(n + gk - 1) // gk for n in (d + 1, d + e + 1)}
        assert max(groups) - min(groups) + 1 <= HL_RING - 1
    if e + 1 <= HL_RING - 2:
        assert gk == 1                                            # exact


def test_default_periods_are_exact_up_to_a_minute():
    # N/sec and N/min rates (expiry 1 s, 60 s) with the default collector (1 s): one run a group
    assert hashlimit_group_runs(msecs_to_jiffies(60000, 250), msecs_to_jiffies(1000, 250)) == 1
    assert hashlimit_group_runs(msecs_to_jiffies(3600000, 250), msecs_to_jiffies(1000, 250)) == 59


def _problems(rules: str) -> list[str]:
    with pytest.raises(RulesetError) as e:
        compile_plan(parse_ruleset(HEAD + rules + "COMMIT\n", "t.rules").table("filter"))
    return e.value.problems


def test_one_name_one_kind_of_rate():
    problems = _problems(
        "-A INPUT -p udp -m hashlimit --hashlimit-upto 10/sec --hashlimit-name t -j ACCEPT\n"
        "-A INPUT -p tcp -m hashlimit --hashlimit-upto 10kb/s --hashlimit-name t -j ACCEPT\n")
    assert len(problems) == 1 and problems[0].startswith("t.rules:6: hashlimit --hashlimit-name t with a byte rate, "
                                                         "but t.rules:5 makes the table with a packet rate")
    problems = _problems(
        "-A INPUT -p udp -m hashlimit --hashlimit-upto 10/sec --hashlimit-name t -j ACCEPT\n"
        "-A INPUT -p tcp -m hashlimit --hashlimit-upto 10/sec --hashlimit-rate-match --hashlimit-name t -j ACCEPT\n")
    assert "with a packet rate with --hashlimit-rate-match" in problems[0]


def test_the_table_max_is_the_kernels():
    plan = compile_plan(parse_ruleset(
        HEAD + "-A INPUT -p udp -m hashlimit --hashlimit-upto 10/sec --hashlimit-name a --hashlimit-htable-max 3 "
        "--hashlimit-htable-size 10 -j ACCEPT\n"
        "-A INPUT -p udp -m hashlimit --hashlimit-upto 10/sec --hashlimit-name b --hashlimit-htable-max 30 "
        "--hashlimit-htable-size 10 -j ACCEPT\n"
        "-A INPUT -p udp -m hashlimit --hashlimit-upto 10/sec --hashlimit-name c --hashlimit-htable-size 10 "
        "-j ACCEPT\nCOMMIT\n", "t.rules").table("filter"))
    # htable_create: max below size is raised to it, 0 is 8 x size
    assert {t.name: t.max for t in plan.hl_tables} == {"a": 10, "b": 30, "c": 80}
