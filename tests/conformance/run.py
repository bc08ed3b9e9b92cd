"""Run conformance cases outside pytest and print one report per case.

    sudo .venv/bin/python -m tests.conformance.run                 # every corpus case
    sudo .venv/bin/python -m tests.conformance.run router ufw_like --mode tc
    sudo .venv/bin/python -m tests.conformance.run --iptables-only --steps server_baseline

Exit status: 0 when every case matches (or, with --iptables-only, reaches every rule),
1 when one does not, 2 on a usage or setup error.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from .cases import CASE_MODULES, EXTRA_CASES, load_case
from .harness import (EbpfwSide, ImportRefused, IptablesSide, compare, coverage_report,
                      ebpfw_unavailable, render_report, run_case)
from .topology import Topology


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="conformance", description=__doc__.splitlines()[0])
    ap.add_argument("cases", nargs="*", help=f"case modules (default: all of {CASE_MODULES})")
    ap.add_argument("--mode", default=None, help="ebpfw apply --mode (default: auto)")
    ap.add_argument("--iptables", choices=["legacy", "nft"], default=None,
                    help="reference backend (default: legacy)")
    ap.add_argument("--iptables-only", action="store_true",
                    help="only play the scripts under iptables and check their coverage")
    ap.add_argument("--steps", action="store_true",
                    help="print every step with what it hit and what was delivered")
    args = ap.parse_args(argv)
    modules = args.cases or CASE_MODULES
    unknown = [m for m in modules if m not in CASE_MODULES + EXTRA_CASES]
    if unknown:
        print(f"unknown case(s) {unknown}; known: {CASE_MODULES + EXTRA_CASES}", file=sys.stderr)
        return 2
    if not args.iptables_only:
        reason = ebpfw_unavailable()
        if reason:
            print(f"ebpfw side unavailable: {reason} (use --iptables-only)", file=sys.stderr)
            return 2

    failed = 0
    topo_i = Topology("i").create()
    topo_e = None
    base = Path(tempfile.mkdtemp(prefix="ebpfw-conformance-"))
    mounted = False
    try:
        ipt = IptablesSide(topo_i, args.iptables)
        ebp = None
        if not args.iptables_only:
            (base / "bpffs").mkdir()
            (base / "state").mkdir()
            subprocess.run(["mount", "-t", "bpf", "bpf", str(base / "bpffs")], check=True)
            mounted = True
            topo_e = Topology("e").create()
            ebp = EbpfwSide(topo_e, base / "bpffs", base / "state", args.mode)
        for module in modules:
            case = load_case(module)
            ref = run_case(ipt, case)
            # only the corpus promises to reach every rule; inline cases probe one behaviour
            missing = coverage_report(case, ref) if module in CASE_MODULES else []
            if args.steps:
                for rec in ref.steps:
                    print(f"{rec.label}\n    hits: {rec.hits}\n    seen: {rec.deliveries}"
                          + (f"\n    notes: {rec.notes}" if rec.notes else ""))
            if missing:
                failed += 1
                print(f"== {case.name}: the script misses under iptables:\n  "
                      + "\n  ".join(missing))
            if ebp is None:
                if not missing:
                    print(render_report(case, ref, None, []))
                continue
            try:
                got = run_case(ebp, case, stepwise=False)
            except ImportRefused as exc:
                failed += 1
                print(f"== {case.name}: ebpfw import refused it:\n{exc}")
                continue
            diffs = compare(case, ref, got)
            if diffs:
                failed += 1
                got = run_case(ebp, case, stepwise=True)
                diffs = compare(case, ref, got) or diffs
            print(render_report(case, ref, got, diffs))
        if ebp is not None:
            ebp.unload()
    finally:
        topo_i.destroy()
        if topo_e is not None:
            topo_e.destroy()
        if mounted:
            subprocess.run(["umount", "-l", str(base / "bpffs")], check=False)
        shutil.rmtree(base, ignore_errors=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
