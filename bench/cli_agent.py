#!/usr/bin/env python3
"""One-rule updates through the CLI while `ebpfw agent` runs (it takes the apply over its
control socket and applies incrementally), against the CLI applying by itself.

    cli_agent.py [--n 10000] [--reps 6] [--out DIR]

In a fresh sandbox (benchlib.Sandbox, private bpffs and state directory): the mixed ruleset
of N rules and the same with rule N/2 edited (bench/gen_rules.py --change), an agent
configuration enforcing the first on d0 (XDP), `ebpfw agent` started in the DUT namespace and
waited for (sd_notify READY=1 on a socket of ours); then `ebpfw apply FILE --iface d0 --mode
xdp` alternating between the two files, `reps` times through the agent and `reps` times with
EBPFW_NO_AGENT=1. Every time is wall and CPU (user+sys of the CLI process: the agent's own CPU
is not in it, its log has its apply times), process spawn included. Output: cli_agent.json.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchlib as B  # noqa: E402
from gen_rules import generate  # noqa: E402

EBPFW = str(B.ROOT / ".venv" / "bin" / "ebpfw")


def timed(sb: B.Sandbox, argv, env_extra: dict | None = None) -> dict | str:
    env = dict(sb.env(), **(env_extra or {}))
    r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.monotonic()
    cp = subprocess.run(["nsenter", f"--net=/run/netns/{sb.dut}", *argv], capture_output=True, text=True,
                        timeout=300, env=env)
    dt = time.monotonic() - t0
    r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    if cp.returncode != 0:
        return f"fails: {(cp.stderr or cp.stdout).strip()[-300:]}"
    return {"wall": dt, "cpu": (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime),
            "agent": "by the agent" in cp.stdout}


def main() -> int:
    ap = argparse.ArgumentParser(description="ebpfw CLI one-rule updates with and without the agent")
    ap.add_argument("--n", type=int, default=10000)
    ap.add_argument("--reps", type=int, default=6)
    ap.add_argument("--out")
    a = ap.parse_args()
    B.exit_on_term()
    out = Path(a.out) if a.out else B.results_dir()
    out.mkdir(parents=True, exist_ok=True)
    res: dict = {"n": a.n, "reps": a.reps}
    with B.Sandbox("cag") as sb:
        base, changed = sb.tmp / "base.rules", sb.tmp / "changed.rules"
        base.write_text(generate("mixed", a.n))
        changed.write_text(generate("mixed", a.n, change=a.n // 2))
        config = sb.tmp / "ebpfw.toml"
        config.write_text(f'ruleset = "{base}"\ninterfaces = ["d0"]\nmode = "xdp"\non_stop = "keep"\n')
        notify_path = sb.tmp / "notify.sock"
        notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        notify.bind(str(notify_path))
        notify.settimeout(240)
        log = open(sb.tmp / "agent.log", "w")
        agent = subprocess.Popen(["nsenter", f"--net=/run/netns/{sb.dut}", EBPFW, "agent", "--config", str(config)],
                                 stdout=log, stderr=log, env=dict(sb.env(), NOTIFY_SOCKET=str(notify_path)),
                                 start_new_session=True)
        try:
            deadline = time.monotonic() + 240
            while time.monotonic() < deadline:
                if b"READY=1" in notify.recv(4096):
                    break
            with_agent, direct = [], []
            for i in range(a.reps):
                with_agent.append(timed(sb, [EBPFW, "apply", str(changed if i % 2 == 0 else base),
                                             "--iface", "d0", "--mode", "xdp"]))
            for i in range(a.reps):
                direct.append(timed(sb, [EBPFW, "apply", str(changed if i % 2 == 0 else base),
                                         "--iface", "d0", "--mode", "xdp"], {"EBPFW_NO_AGENT": "1"}))
            res["cli_agent_one_rule"] = with_agent
            res["cli_direct_one_rule"] = direct
        finally:
            os.killpg(agent.pid, signal.SIGTERM)
            try:
                agent.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(agent.pid, signal.SIGKILL)
                agent.wait(timeout=30)
            log.close()
            notify.close()
        text = (sb.tmp / "agent.log").read_text()
        res["agent_apply_seconds"] = [float(x) for x in re.findall(r"\(from ebpfw apply\).*?([0-9.]+) s$", text, re.M)]
    B.write_json(out / "cli_agent.json", res)
    print(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
