#!/usr/bin/env python3
"""Update latency: ebpfw (library and CLI) against iptables-nft, iptables-legacy and nft, all on
the same generated ruleset and in the same run.

    update.py [--n 10000] [--reps 5] [--check-sizes 10000,100000] [--out DIR]

ebpfw, in a fresh sandbox (benchlib.Sandbox):
  cold        first apply in the namespace: parse, compile, bcc compile + verifier, pin, attach
  same        apply of the identical ruleset again (shape unchanged: maps rewritten, no compile)
  one_rule    apply of the ruleset with rule N/2 changed, alternating with the original, so every
              apply is a one-rule change (library call inside one process: apply time only)
  cli_one_rule  the same through `ebpfw apply FILE --iface d0 --mode xdp` (process spawn,
              imports and file read included, like the iptables/nft rows)
  profile     cProfile of one one-rule library apply: the top functions by cumulative time
Peers, each in a fresh namespace, same rulesets (nft: iptables-restore-translate of them):
  load        iptables-{nft,legacy}-restore FILE, nft -f FILE (empty namespace)
  replace_-R  iptables -R INPUT N/2 <changed rule>;  nft replace rule ... handle H <changed rule>
  restore_full  a full restore of the changed file (what a "reload the whole file" tool does)
Compile only: `ebpfw check FILE` wall time for mixed/blocklist at --check-sizes (no kernel work).
Every command has a time limit; failures are recorded as results.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import pstats
import re
import resource
import shlex
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchlib as B  # noqa: E402
from gen_rules import generate  # noqa: E402

EBPFW = str(B.ROOT / ".venv" / "bin" / "ebpfw")


class _Clock:
    """Wall and CPU (user+sys of this process) time of a block."""

    def __enter__(self):
        self.r0 = resource.getrusage(resource.RUSAGE_SELF)
        self.t0 = time.monotonic()
        return self

    def __exit__(self, *exc):
        r1 = resource.getrusage(resource.RUSAGE_SELF)
        self.rec = {"wall": time.monotonic() - self.t0,
                    "cpu": (r1.ru_utime - self.r0.ru_utime) + (r1.ru_stime - self.r0.ru_stime)}


def worker(a: dict) -> dict:
    from ebpfw import api
    base = Path(a["base"]).read_text()
    changed = Path(a["changed"]).read_text()
    out: dict = {}
    try:
        with _Clock() as c:
            r = api.apply(base, "base.rules", ["d0"], "xdp")
    except Exception as exc:
        return {"error": f"cold apply: {type(exc).__name__}: {exc}"}
    out["cold"] = c.rec
    out["cold_recompiled"] = r["recompiled"]
    same, one, recompiled = [], [], []
    for _ in range(a["reps"]):
        with _Clock() as c:
            r = api.apply(base, "base.rules", ["d0"], "xdp")          # identical ruleset
        same.append(c.rec)
        recompiled.append(r["recompiled"])
        for text in (changed, base):                                 # one rule differs each time
            with _Clock() as c:
                r = api.apply(text, "x.rules", ["d0"], "xdp")
            one.append(c.rec)
            recompiled.append(r["recompiled"])
    out["same"] = same
    out["one_rule"] = one
    out["warm_recompiled"] = any(recompiled)
    prof = cProfile.Profile()
    prof.enable()
    api.apply(changed, "changed.rules", ["d0"], "xdp")
    prof.disable()
    s = io.StringIO()
    pstats.Stats(prof, stream=s).sort_stats("cumulative").print_stats(25)
    out["profile"] = s.getvalue()
    return out


def _timed(sb: B.Sandbox, ns: str, argv, timeout: float = 120.0) -> dict | str:
    """{"wall": s, "cpu": s (user+sys of the child)} or "fails: ..."."""
    r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.monotonic()
    try:
        cp = sb.ns_run(ns, argv, timeout=timeout, check=False)
    except TimeoutError as exc:
        return f"fails: {exc}"
    dt = time.monotonic() - t0
    r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    if cp.returncode != 0:
        last = (cp.stderr or cp.stdout).strip().splitlines()[-1:]
        return f"fails: {last[0] if last else 'exit ' + str(cp.returncode)}"
    return {"wall": dt, "cpu": (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)}


def _rule_of(text: str, k: int) -> str:
    """Rule K (1-based) of a generated single-chain ruleset, without '-A INPUT '."""
    rules = [l for l in text.splitlines() if l.startswith("-A INPUT ")]
    return rules[k - 1][len("-A INPUT "):]


def peers(base: Path, changed: Path, n: int, k: int, reps: int) -> dict:
    res: dict = {}
    rule_new = _rule_of(changed.read_text(), k)
    for be, restore, ipt in (("iptables-nft", "iptables-nft-restore", "iptables-nft"),
                             ("iptables-legacy", "iptables-legacy-restore", "iptables-legacy")):
        with B.Sandbox("upd") as sb:
            r = {"load": _timed(sb, sb.dut, [restore, str(base)])}
            rep, full = [], []
            for i in range(reps):
                rep.append(_timed(sb, sb.dut, [ipt, "-R", "INPUT", str(k), *shlex.split(rule_new)]))
                full.append(_timed(sb, sb.dut, [restore, str(changed if i % 2 == 0 else base)]))
            r["replace_-R"] = rep
            r["restore_full"] = full
            res[be] = r
        B.log(f"update peers {be}: load={r['load']}")
    # nft: translations of the same files
    tr = {}
    for name, f in (("base", base), ("changed", changed)):
        cp = B.run(["iptables-restore-translate", "-f", str(f)], timeout=120, check=False)
        if cp.returncode != 0:
            res["nft"] = {"load": f"fails: iptables-restore-translate: {cp.stderr.strip()[-200:]}"}
            return res
        p = f.with_suffix(".nft")
        p.write_text("flush ruleset\n" + cp.stdout)
        tr[name] = p
    cp = B.run(["iptables-translate", "-A", "INPUT", *shlex.split(rule_new)], check=False)
    m = re.match(r"nft '?add rule ip filter INPUT (.*?)'?$", cp.stdout.strip())
    with B.Sandbox("updn") as sb:
        r = {"load": _timed(sb, sb.dut, ["nft", "-f", str(tr["base"])])}
        rep, full = [], []
        if m:
            lst = sb.ns_run(sb.dut, ["nft", "-a", "list", "chain", "ip", "filter", "INPUT"], timeout=120).stdout
            handles = re.findall(r"# handle (\d+)", "\n".join(l for l in lst.splitlines() if " type filter" not in l))
            h = handles[k - 1] if len(handles) >= k else None
            for i in range(reps):
                if h is None:
                    rep.append("fails: rule handle not found")
                    break
                rep.append(_timed(sb, sb.dut, ["nft", "replace", "rule", "ip", "filter", "INPUT", "handle", h,
                                               *shlex.split(m.group(1))]))
        else:
            rep.append(f"fails: iptables-translate gave {cp.stdout.strip()!r}")
        for i in range(reps):
            full.append(_timed(sb, sb.dut, ["nft", "-f", str(tr["changed" if i % 2 == 0 else "base"])]))
        r["replace_-R"] = rep
        r["restore_full"] = full
        res["nft"] = r
    B.log(f"update peers nft: load={res['nft']['load']}")
    return res


def main() -> int:
    ap = argparse.ArgumentParser(description="ebpfw update-latency benchmark")
    ap.add_argument("--worker")
    ap.add_argument("--n", type=int, default=10000)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--check-sizes", default="10000,100000")
    ap.add_argument("--shape", default="mixed")
    ap.add_argument("--no-peers", action="store_true")
    ap.add_argument("--out")
    a = ap.parse_args()
    B.exit_on_term()
    if a.worker:
        print(json.dumps(worker(json.loads(a.worker))), flush=True)
        return 0
    out = Path(a.out) if a.out else B.results_dir()
    out.mkdir(parents=True, exist_ok=True)
    n, k = a.n, a.n // 2
    res: dict = {"n": n, "k": k, "shape": a.shape, "reps": a.reps}
    with B.Sandbox("upd") as sb:
        base = sb.tmp / "base.rules"
        changed = sb.tmp / "changed.rules"
        base.write_text(generate(a.shape, n))
        changed.write_text(generate(a.shape, n, change=k))
        B.log(f"update: ebpfw library, {a.shape} N={n}")
        try:
            res["ebpfw"] = sb.worker("update.py", {"base": str(base), "changed": str(changed), "reps": a.reps},
                                     timeout=300)
        except TimeoutError as exc:
            res["ebpfw"] = {"error": str(exc)}
        B.write_json(out / "update.json", res)  # partial results survive a stopped step
        B.log("update: ebpfw CLI")
        cli = []
        if "error" not in res["ebpfw"]:
            probe = B.run([EBPFW, "--help"], timeout=60, check=False)
            if probe.returncode != 0:
                cli = [f"fails: the ebpfw CLI does not run: {probe.stderr.strip()[-200:]}"]
            else:
                for i in range(a.reps):
                    f = changed if i % 2 == 0 else base
                    cli.append(_timed(sb, sb.dut, [EBPFW, "apply", str(f), "--iface", "d0", "--mode", "xdp"]))
            # the CLI's process floor: interpreter start + imports, no work
            res["cli_floor"] = [_timed(sb, sb.dut, [EBPFW, "--version"]) for _ in range(3)]
        res["cli_one_rule"] = cli
        # compile only, through the CLI (parse + check + compile, no kernel work)
        checks = {}
        for shape in ("mixed", "blocklist"):
            for cn in [int(x) for x in a.check_sizes.split(",") if x]:
                f = sb.tmp / f"check-{shape}-{cn}.rules"
                f.write_text(generate(shape, cn))
                B.log(f"update: ebpfw check {shape} N={cn}")
                checks[f"{shape}/{cn}"] = _timed(sb, sb.dut, [EBPFW, "check", str(f)], timeout=300)
                f.unlink()
        res["check"] = checks
        B.write_json(out / "update.json", res)
        if not a.no_peers:
            res["peers"] = peers(base, changed, n, k, a.reps)
    B.write_json(out / "update.json", res)
    return 0


if __name__ == "__main__":
    sys.exit(main())
