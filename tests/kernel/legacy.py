"""The skeleton of a differential test against the kernel's own netfilter (iptables-legacy).

The same ruleset judges the same traffic twice in a DUT namespace: first loaded with
iptables-legacy-restore (the reference), then, iptables flushed, with `ebpfw apply`. Each run
returns the per-rule counters (`iptables-legacy-save -c` / `ebpfw save --counters`, parsed by
test_cli_kernel.counters) and whatever the test's `traffic` and `collect` callables return, so
a test only says what to send, what else to read, and what must be equal."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

import pytest

from netns import run_in
from test_cli_kernel import counters, ebpfw, ok

needs_legacy = pytest.mark.skipif(
    subprocess.run(["which", "iptables-legacy-restore"], capture_output=True).returncode != 0,
    reason="iptables-legacy not installed")


@dataclass
class Run:
    counters: dict            # rule line / ":CHAIN" -> (packets, bytes)
    traffic: Any = None       # what traffic() returned
    collected: Any = None     # what collect() returned (read before the rules go away)
    applied: Optional[subprocess.CompletedProcess] = None   # ebpfw apply's result (ebpfw runs only)


def under_iptables(dut: str, rules: str, traffic: Callable[[], Any],
                   collect: Optional[Callable[[], Any]] = None, table: str = "filter") -> Run:
    """RULES loaded with iptables-legacy-restore in DUT while `traffic()` runs; the counters of
    TABLE and `collect()` are read before the table is flushed and its user chains deleted."""
    run_in(dut, ["iptables-legacy-restore"], input=rules)
    try:
        out = traffic()
        got = counters(run_in(dut, ["iptables-legacy-save", "-c", "-t", table]).stdout)
        extra = collect() if collect else None
    finally:
        run_in(dut, ["iptables-legacy", "-t", table, "-F"], check=False)
        run_in(dut, ["iptables-legacy", "-t", table, "-X"], check=False)
    return Run(got, out, extra)


def under_ebpfw(dut: str, rules: str, tmp_path: Path, traffic: Callable[[], Any], *apply_args: str,
                collect: Optional[Callable[[], Any]] = None) -> Run:
    """RULES applied by ebpfw in DUT (`apply_args`: --iface, --mode, ...) while `traffic()` runs;
    `save --counters` and `collect()` are read before the datapath is detached."""
    path = rules_file(tmp_path)
    path.write_text(rules)
    try:
        res = ok(ebpfw(dut, "apply", str(path), *apply_args))
        out = traffic()
        got = counters(ok(ebpfw(dut, "save", "--counters")).stdout)
        extra = collect() if collect else None
    finally:
        ebpfw(dut, "detach", timeout=60)
    return Run(got, out, extra, res)


def rules_file(tmp_path: Path) -> Path:
    """Where under_ebpfw writes the ruleset it applies (for a collect() that re-applies it)."""
    return tmp_path / "differential.rules"


def rule_lines(rules: str) -> list[str]:
    """The `-A ...` lines of an iptables-save text, in order (the keys of Run.counters)."""
    return [line for line in rules.splitlines() if line.startswith("-A ")]
