"""Checks of the benchmark's own pieces that need no root: the ruleset generator and the report.

    .venv/bin/pytest bench/test_bench.py

(The kernel-side correctness of every measured point is checked by testrun.py itself: verdict,
last-rule counter, walk-limit statistic.)
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent
sys.path[:0] = [str(BENCH.parent), str(BENCH)]

from gen_rules import FIELD_RULES, generate  # noqa: E402

from ebpfw.check import check_ruleset  # noqa: E402
from ebpfw.compiler import compile_plan  # noqa: E402
from ebpfw.datapath import shape_for  # noqa: E402
from ebpfw.iptables import parse_ruleset  # noqa: E402


def rules_of(text: str) -> list[str]:
    return [l for l in text.splitlines() if l.startswith("-A ")]


def plan_of(text: str):
    rs = parse_ruleset(text, "bench.rules")
    check_ruleset(rs)
    return compile_plan(rs.table("filter"), ["lo", "d0"])


@pytest.mark.parametrize("shape", ["mixed", "blocklist"])
@pytest.mark.parametrize("n", [1, 2, 10, 1000])
def test_generated_rulesets_have_n_rules_accept_last_and_compile(shape, n):
    text = generate(shape, n)
    rules = rules_of(text)
    assert len(rules) == n
    assert rules[-1].endswith("--dport 9000 -j ACCEPT")
    assert "-s 10.10.0.0/16" in rules[-1]
    assert ":INPUT DROP" in text
    assert plan_of(text).nrules == n


def test_generation_is_deterministic_and_seeded():
    assert generate("mixed", 500) == generate("mixed", 500)
    assert generate("mixed", 500, seed=2) != generate("mixed", 500)


def test_no_earlier_mixed_rule_is_the_accept_rule():
    rules = rules_of(generate("mixed", 3000))
    last = rules[-1]
    assert last not in rules[:-1]
    # every earlier rule either targets another port, protocol, interface, address or sport
    for r in rules[:-1]:
        misses = ("-p tcp" in r or "-p icmp" in r or "--sport" in r or "-d 10.200." in r
                  or ("--dport" in r and "--dport 9000 " not in r + " ")
                  or any(f"-i {i} " in r for i in ("lo", "wg0", "eth+", "br-lan"))
                  or any(f"-s {p}" in r for p in ("192.168.", "172.", "10.64.", "100.64.")))
        assert misses, r


@pytest.mark.parametrize("shape", ["mixed", "blocklist"])
def test_change_edits_exactly_one_rule_and_keeps_the_shape(shape):
    n, k = 2000, 1000
    base, changed = generate(shape, n), generate(shape, n, change=k)
    a, b = rules_of(base), rules_of(changed)
    diff = [i for i, (x, y) in enumerate(zip(a, b)) if x != y]
    assert diff == [k - 1]
    assert shape_for(plan_of(base), 2).fits(shape_for(plan_of(changed), 2))


@pytest.mark.parametrize("shape", sorted(FIELD_RULES))
def test_field_rulesets_are_one_rule(shape):
    text = generate(shape, 1)
    assert len(rules_of(text)) == 1
    assert plan_of(text).nrules == 1
    with pytest.raises(ValueError):
        generate(shape, 2)


def test_report_shows_failures_and_targets(tmp_path):
    points = [
        {"shape": "mixed", "n": 10, "ns": 100, "trivial_ns": 20, "kmem_bytes": 2 << 20},
        {"shape": "mixed", "n": 10000, "ns": 250, "trivial_ns": 20, "kmem_bytes": 3 << 20},
        {"shape": "mixed", "n": 100000, "error": "memcg limit 10 GiB reached (OOM kill)"},
    ]
    (tmp_path / "testrun.json").write_text(json.dumps(points))
    out = subprocess.run([sys.executable, str(BENCH / "report.py"), str(tmp_path)], capture_output=True,
                         text=True, check=True).stdout
    assert "fails: memcg limit 10 GiB reached (OOM kill)" in out
    assert "| N=10k ≤ 300 ns | **met** |" in out            # 250 ns
    assert "| N=10k ≤ 3× N=10 | **met** |" in out           # 2.5x
    assert "| N=100k ≤ 2× N=10k | **NOT met** |" in out     # failed point
    assert "| N=10 ≤ 5× trivial XDP_PASS | **met** |" in out  # 5.0x
