"""Client side of tests/kernel/dp_worker.py: start the worker inside a test-made namespace and
talk JSON lines to it. One class for every datapath test module."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import netns as nsh

WORKER = Path(__file__).with_name("dp_worker.py")
REPO = Path(__file__).resolve().parents[2]


class Worker:
    """`env`: extra environment for the worker (e.g. EBPFW_TEST_CT=1); `strict`: a reply with
    an "error" fails the calling test at once instead of being returned."""

    def __init__(self, ns: str, env: dict | None = None, strict: bool = False):
        full_env = dict(os.environ, PYTHONPATH=str(REPO), **(env or {}))
        self.strict = strict
        self.p = subprocess.Popen(nsh.nsenter_argv(ns) + [sys.executable, str(WORKER)], stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE, text=True, env=full_env)

    def call(self, **req) -> dict:
        self.p.stdin.write(json.dumps(req) + "\n")
        self.p.stdin.flush()
        line = self.p.stdout.readline()
        if not line:
            raise RuntimeError("datapath worker died")
        out = json.loads(line)
        if self.strict:
            assert "error" not in out, out["error"]
        return out

    def close(self) -> None:
        self.p.stdin.close()
        self.p.wait(timeout=10)
