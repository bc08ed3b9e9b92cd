"""Differential conformance on the ruleset corpus (rulesets/*.rules + cases/*.py).

test_script_reaches_everything: under real iptables, the case's script hits every rule and
    every built-in policy (minus what the case declares unreachable, with the reason).
test_ebpfw_matches_iptables: the same ruleset and script under ebpfw give the same per-rule
    and per-policy counters (packets and bytes) and the same deliveries. Skipped with the
    reason while the ebpfw CLI is missing; cases whose ruleset `ebpfw import` refuses (e.g.
    conntrack before it is supported) are xfailed with the import error.
"""

from __future__ import annotations

import os

import pytest

from .cases import CASE_MODULES, EXTRA_CASES, load_case
from .cases.common import RULESETS
from .harness import ImportRefused, SideError, compare, coverage_report, render_report, run_case

STEPWISE_ON_FAILURE = os.environ.get("CONFORMANCE_STEPWISE_REPLAY", "1") != "0"

pytestmark = [pytest.mark.kernel, pytest.mark.timeout(600)]


def _iptables_run(case, iptables_side, iptables_runs):
    if case.name not in iptables_runs:
        iptables_runs[case.name] = run_case(iptables_side, case)
    return iptables_runs[case.name]


@pytest.mark.parametrize("module", CASE_MODULES)
def test_script_reaches_everything(module, iptables_side, iptables_runs):
    case = load_case(module)
    ref = _iptables_run(case, iptables_side, iptables_runs)
    missing = coverage_report(case, ref)
    assert not missing, (f"{case.name}: the script never reaches these rules/policies under "
                         "iptables:\n  " + "\n  ".join(missing))
    stale = [k for k in case.expect_unhit if k not in ref.final.counters()]
    assert not stale, f"{case.name}: expect_unhit names keys that do not exist: {stale}"


# `make test` covers every case under the default hook choice and three representative ones
# under TC; the slow tier runs every case under tc, xdp and xdp-generic too
# (CONFORMANCE_MODE still overrides "default").
TC_IN_MAKE_TEST = ("router", "blocklist_1k", "ufw_stateful")


def _case_modes():
    for module in CASE_MODULES:
        yield pytest.param(module, "default", id=f"{module}-default")
        for mode in ("tc", "xdp", "xdp-generic"):
            fast = mode == "tc" and module in TC_IN_MAKE_TEST
            yield pytest.param(module, mode, id=f"{module}-{mode}",
                               marks=() if fast else pytest.mark.slow)


@pytest.mark.parametrize("module,mode", list(_case_modes()))
def test_ebpfw_matches_iptables(module, mode, iptables_side, ebpfw_side, iptables_runs):
    _compare_case(load_case(module), mode, iptables_side, ebpfw_side, iptables_runs)


@pytest.mark.parametrize("name", EXTRA_CASES)
def test_ebpfw_matches_iptables_extra(name, iptables_side, ebpfw_side, iptables_runs):
    """Cases outside the corpus (inline rulesets): fragments. A case with `known_difference`
    must differ (xfail with the reason); when it stops differing the test fails, so the
    documentation of that difference gets removed."""
    case = load_case(name)
    try:
        _compare_case(case, "default", iptables_side, ebpfw_side, iptables_runs)
    except (AssertionError, SideError) as exc:
        if case.known_difference:
            pytest.xfail(f"known difference: {case.known_difference}")
        raise exc
    assert not case.known_difference, (
        f"{case.name} now matches iptables: remove its known_difference and the entry in "
        "docs/CONFORMANCE.md")


def _compare_case(case, mode, iptables_side, ebpfw_side, iptables_runs) -> None:
    ebpfw_side.mode = ebpfw_side.default_mode if mode == "default" else mode
    try:
        ebpfw_side.import_ruleset(case.ruleset, case.sets)
    except ImportRefused as exc:
        if case.stateful:
            first = str(exc).splitlines()
            pytest.xfail(f"ebpfw import refuses this stateful ruleset yet ({len(first)} lines): "
                         f"{first[0] if first else ''}")
        raise AssertionError(f"ebpfw import refused {case.source}:\n{exc}") from None
    ref = _iptables_run(case, iptables_side, iptables_runs)
    got = run_case(ebpfw_side, case, stepwise=False)
    diffs = compare(case, ref, got)
    if diffs and STEPWISE_ON_FAILURE and not case.known_difference:
        # replay with a counter snapshot after every step, to show which steps hit the rule
        got = run_case(ebpfw_side, case, stepwise=True)
        diffs = compare(case, ref, got)
    report = render_report(case, ref, got, diffs)
    if mode != "default":
        report = report.replace(f"== {case.name}", f"== {case.name} [--mode {mode}]", 1)
    print(report)
    if os.environ.get("CONFORMANCE_REPORT"):
        with open(os.environ["CONFORMANCE_REPORT"], "a") as f:
            f.write(report + "\n")
    assert not diffs, report


def _rule_lines(text: str) -> list[str]:
    out = []
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        if line.startswith("[") and "] " in line:
            line = line.split("] ", 1)[1]
        out.append(line)
    return out


def test_every_ruleset_has_a_case():
    """Each rulesets/*.rules file is exercised by exactly one case module."""
    sources = {load_case(m).source for m in CASE_MODULES}
    files = {f"rulesets/{p.name}" for p in RULESETS.glob("*.rules")}
    assert files - sources == set(), f"rulesets without a conformance case: {files - sources}"
    assert sources - files == set(), f"cases naming missing rulesets: {sources - files}"


@pytest.mark.parametrize("module", CASE_MODULES)
def test_corpus_is_canonical_iptables_save(module, iptables_side):
    """The corpus is what iptables-save prints: restoring and saving it gives the same rules."""
    case = load_case(module)
    iptables_side.load(case.ruleset)
    saved = iptables_side.topo.in_dut([f"{iptables_side.cmd}-save", "-t", "filter"]).stdout
    assert _rule_lines(saved) == _rule_lines(case.ruleset)
