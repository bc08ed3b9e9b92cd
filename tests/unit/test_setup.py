"""scripts/setup.sh and the CI entry point: valid shell, and idempotent (a second run on a
ready machine changes nothing: no apt-get, no pip, no links)."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("script", ["scripts/setup.sh", ".ci/run"])
def test_shell_syntax_and_mode(script):
    path = REPO / script
    assert os.access(path, os.X_OK), f"{script} is not executable"
    assert path.read_text().startswith("#!/bin/bash\n")
    proc = subprocess.run(["bash", "-n", str(path)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_ci_runs_make_test():
    text = (REPO / ".ci/run").read_text()
    assert "set -euo pipefail" in text and text.rstrip().endswith("exec make test")


@pytest.mark.skipif(os.geteuid() != 0, reason="setup.sh installs packages and links headers: needs root")
def test_setup_is_a_quick_no_op_when_ready():
    first = subprocess.run([str(REPO / "scripts/setup.sh")], capture_output=True, text=True, timeout=900)
    assert first.returncode == 0, first.stdout + first.stderr
    t0 = time.monotonic()
    again = subprocess.run([str(REPO / "scripts/setup.sh")], capture_output=True, text=True, timeout=300)
    elapsed = time.monotonic() - t0
    assert again.returncode == 0, again.stdout + again.stderr
    assert again.stdout == "setup: ok\n", again.stdout  # nothing installed, linked or pip-installed
    assert elapsed < 15, f"setup.sh took {elapsed:.1f} s on a ready machine"
