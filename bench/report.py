#!/usr/bin/env python3
"""Markdown report of one bench run: report.py RESULTS_DIR  (reads testrun.json, update.json,
env.json and the kit's kit/report.md if present). Prints to stdout."""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path


def _load(p: Path):
    try:
        return json.loads(p.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def _num(xs):
    """Median of the numeric samples (wall seconds or {"wall":..} records); None if none."""
    if isinstance(xs, (int, float)):
        return xs
    if isinstance(xs, (dict, str)):
        xs = [xs]
    vals = []
    for x in xs or []:
        if isinstance(x, dict):
            x = x.get("wall")
        if isinstance(x, (int, float)):
            vals.append(x)
    return statistics.median(vals) if vals else None


def _cpu(xs):
    if isinstance(xs, (dict, str)):
        xs = [xs]
    vals = [x["cpu"] for x in (xs or []) if isinstance(x, dict) and isinstance(x.get("cpu"), (int, float))]
    return statistics.median(vals) if vals else None


def _fail(xs):
    for x in (xs if isinstance(xs, list) else [xs]):
        if isinstance(x, str):
            return x
    return None


def ms(x) -> str:
    return "–" if x is None else f"{x * 1000:.0f} ms" if x < 10 else f"{x:.1f} s"


def mib(b) -> str:
    if b is None:
        return "–"
    return f"{b / (1 << 20):.1f} MiB" if b >= 1 << 20 else f"{b / 1024:.0f} KiB"


def verdict(ok: bool | None) -> str:
    return "n/a" if ok is None else ("**met**" if ok else "**NOT met**")


def testrun_section(tr: list) -> tuple[list[str], dict]:
    out = ["## 1. Per-packet cost: full XDP ingress program, BPF_PROG_TEST_RUN", "",
           "Matching rule last; 64-byte UDP frame to a local address (INPUT), ctx.ingress_ifindex = d0. "
           "`×pass` = ebpfw / trivial XDP_PASS measured alternately in the same process; "
           "kmem = memcg kernel memory still charged after the applying process exited (pinned maps and "
           "programs), marginal per rule = (kmem(N) − kmem(1)) / (N − 1); "
           "`×N=10` = ebpfw / ebpfw at N=10 of the same shape. Medians of the runs.", "",
           "| shape | N | ebpfw ns/pkt | XDP_PASS ns | ×pass | ×N=10 | cold apply | kmem | kmem/rule (marginal) | "
           "map memlock | xlated / jited B | verified insns | status |",
           "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    by = {(r["shape"], r["n"]): r for r in tr}
    fields = [r for r in tr if r["shape"].startswith("f-")]
    tr = [r for r in tr if not r["shape"].startswith("f-")]
    for r in tr:
        ns, tn = r.get("ns"), r.get("trivial_ns")
        base = by.get((r["shape"], 10), {}).get("ns")
        prog = r.get("prog") or {}
        kmem = r.get("kmem_bytes")
        k1 = by.get((r["shape"], 1), {}).get("kmem_bytes")
        per_rule = (kmem - k1) / (r["n"] - 1) if kmem and k1 and r["n"] > 1 else None
        err = r.get("error")
        status = f"fails: {err}" if err else "ok (XDP_PASS, rule N counted every packet)"
        out.append("| {} | {:,} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |".format(
            r["shape"], r["n"], ns if ns is not None else "–", tn if tn is not None else "–",
            f"{ns / tn:.1f}" if ns and tn else "–", f"{ns / base:.1f}" if ns and base else "–",
            ms(r.get("apply_cold_s")), mib(kmem), f"{per_rule:,.0f} B" if per_rule is not None else "–",
            mib(r.get("memlock_bytes")),
            f"{prog.get('bytes_xlated', '–')} / {prog.get('bytes_jited', '–')}" if prog else "–",
            f"{prog.get('verified_insns'):,}" if prog.get("verified_insns") else "–", status))
    if fields:
        none = by.get(("f-none", 1), {}).get("ns")
        out += ["", "Fixed cost per field: one ACCEPT rule matching on that field only (N=1), "
                "`+ns` = over the rule with no match (`-j ACCEPT` alone, which still parses, checks the "
                "checksum, looks up the local-address table and walks one rule). f-fwd is f-src in the "
                "FORWARD chain for a packet routed to 10.0.1.2: it adds bpf_fib_lookup.", "",
                "| ruleset | ns/pkt | XDP_PASS ns | +ns vs no field | status |", "|---|---:|---:|---:|---|"]
        for r in fields:
            ns = r.get("ns")
            out.append(f"| {r['shape']} | {ns if ns is not None else '–'} | {r.get('trivial_ns', '–')} | "
                       f"{ns - none if ns is not None and none is not None else '–'} | "
                       f"{'fails: ' + r['error'] if r.get('error') else 'ok'} |")
    big = [r for r in tr if r["n"] >= 1000 and r.get("phases")]
    if big:
        labels = ["parse+check", "compile", "canonical text", "bcc compile+verifier+maps", "write slot",
                  "write host", "pin", "attach", "state file"]
        for r in big:
            for k in r["phases"]:
                if k not in labels:
                    labels.append(k)
        out += ["", "Where a cold apply spends its time (wall seconds per stage of `ebpfw.api.apply`; "
                "a stage that never ended is missing):", "",
                "| shape | N | " + " | ".join(labels) + " | total |", "|---|---:|" + "---:|" * (len(labels) + 1)]
        for r in big:
            ph = r["phases"]
            out.append(f"| {r['shape']} | {r['n']:,} | " + " | ".join(
                f"{ph[k]:.2f}" if k in ph else "–" for k in labels) + f" | {ms(r.get('apply_cold_s'))} |")
    # targets
    facts = {}
    for shape in ("mixed", "blocklist"):
        g = lambda n: (by.get((shape, n)) or {})  # noqa: E731
        ok = lambda n: g(n).get("ns") is not None and not g(n).get("error")  # noqa: E731
        t10k = (g(10000).get("ns") <= 300) if ok(10000) else (False if (shape, 10000) in by else None)
        r10k = (g(10000)["ns"] <= 3 * g(10)["ns"]) if ok(10000) and ok(10) else (
            False if (shape, 10000) in by else None)
        r100k = (g(100000)["ns"] <= 2 * g(10000)["ns"]) if ok(100000) and ok(10000) else (
            False if (shape, 100000) in by else None)
        r10 = (g(10)["ns"] <= 5 * g(10)["trivial_ns"]) if ok(10) else (False if (shape, 10) in by else None)
        facts[shape] = (t10k, r10k, r100k, r10)
    out += ["", "| target | mixed | blocklist |", "|---|---|---|"]
    names = ("N=10k ≤ 300 ns", "N=10k ≤ 3× N=10", "N=100k ≤ 2× N=10k", "N=10 ≤ 5× trivial XDP_PASS")
    for i, name in enumerate(names):
        out.append(f"| {name} | {verdict(facts['mixed'][i])} | {verdict(facts['blocklist'][i])} |")
    return out, facts


def update_section(u: dict) -> list[str]:
    out = ["", f"## 3. Updates ({u['shape']} ruleset, N={u['n']:,}; one-rule change = rule {u['k']:,} edited)", ""]
    e = u.get("ebpfw") or {}
    if e.get("error"):
        out.append(f"ebpfw: fails: {e['error']}")
    same = _num(e.get("same"))
    out += ["| what | wall (median) | CPU (median) | note |", "|---|---:|---:|---|",
            f"| ebpfw apply, cold (parse + compile + bcc + verifier + attach) | {ms(_num(e.get('cold')))} | {ms(_cpu(e.get('cold')))} | first apply in a fresh namespace |",
            f"| ebpfw apply, identical ruleset (library) | {ms(same)} | {ms(_cpu(e.get('same')))} | target ≤ 500 ms: {verdict(same <= 0.5 if same is not None else None)} |",
            f"| ebpfw apply, one rule changed (library) | {ms(_num(e.get('one_rule')))} | {ms(_cpu(e.get('one_rule')))} | maps rewritten, programs kept: {not e.get('warm_recompiled', True)} |",
            f"| ebpfw apply, one rule changed (CLI, process spawn included) | {ms(_num(u.get('cli_one_rule')))} | {ms(_cpu(u.get('cli_one_rule')))} | {_fail(u.get('cli_one_rule')) or ''} |",
            f"| `ebpfw --version` (CLI floor: interpreter + imports) | {ms(_num(u.get('cli_floor')))} | {ms(_cpu(u.get('cli_floor')))} | |"]
    for be, r in (u.get("peers") or {}).items():
        for op, label in (("load", "load into an empty namespace"), ("replace_-R", "replace one rule in place"),
                          ("restore_full", "full restore of the changed file")):
            v = r.get(op)
            if v is None:
                continue
            out.append(f"| {be}: {label} | {ms(_num(v))} | {ms(_cpu(v))} | {_fail(v) or ''} |")
    ch = u.get("check") or {}
    if ch:
        out += ["", "Compiler only, `ebpfw check FILE` (parse + check + compile, CLI wall time):", "",
                "| ruleset | wall | CPU |", "|---|---:|---:|"]
        for k, v in ch.items():
            out.append(f"| {k} | {_fail(v) or ms(_num(v))} | {ms(_cpu(v))} |")
    if e.get("profile"):
        out += ["", "<details><summary>cProfile of one one-rule library apply</summary>", "", "```",
                e["profile"].strip(), "```", "</details>"]
    return out


def _kit_input_tables(txt: str) -> str:
    """The kit's report without its own title, its headings one level down."""
    out = []
    for line in txt.splitlines():
        if line.startswith("## ebpfw bench report"):
            continue
        out.append("#" + line if line.startswith("### ") else line)
    return "\n".join(out).strip()


def main() -> int:
    d = Path(sys.argv[1])
    env = _load(d / "env.json") or {}
    lines = ["# ebpfw benchmark report", ""]
    if env:
        lines += [f"Machine: {env.get('nproc')} CPUs ({env.get('cpu')}), kernel {env.get('kernel')}, "
                  f"load average at start {env.get('loadavg_start')} / end {env.get('loadavg_end')}; "
                  f"ebpfw commit {env.get('commit')}" + (f" plus {env['dirty_files']} uncommitted file(s) in ebpfw/ and programs/"
                  if env.get("dirty_files") else "") + " (a snapshot taken at the start measured throughout); "
                  f"command `{env.get('command')}`; started {env.get('date')}, took {env.get('runtime_s', '?')} s.", ""]
    tr = _load(d / "testrun.json")
    if tr:
        sec, _ = testrun_section(tr)
        lines += sec
    lines += ["", "## 2. Throughput with real packets (shared kit, section A)", ""]
    for name, what in (("kit", "the kit's own rulesets (N−1 `-s 172.16.x.y/32 -p udp --dport 9000 -j DROP`, "
                        "then the accept rule)"),
                       ("kit-mixed", "ebpfw's mixed ruleset (`KIT_RULES=mixed`; nft-linear = "
                        "iptables-restore-translate of it)")):
        rep = d / name / "report.md"
        skipped = d / f"{name}.skipped"
        if rep.exists():
            lines += [f"### {name}: {what}", "", f"(full kit report: `{name}/report.md`)", ""]
            lines.append(_kit_input_tables(rep.read_text()))
            lines.append("")
        elif skipped.exists():
            lines.append(f"{name}: not measured in this run: {skipped.read_text().strip()}")
    u = _load(d / "update.json")
    if u:
        lines += update_section(u)
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
