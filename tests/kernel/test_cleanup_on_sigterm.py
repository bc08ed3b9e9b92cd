"""A test run stopped with SIGTERM (timeout(1), a CI job cancelled) deletes the namespaces its
tests created: tests/conftest.py turns SIGTERM into the KeyboardInterrupt pytest tears fixtures
down for. Without it pytest dies at once and the namespaces stay behind."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.kernel

INNER = '''
import time
from pathlib import Path

def test_holds_a_namespace(netns):
    name = netns("stm")
    Path({marker!r}).write_text(name)
    time.sleep(120)
'''


def test_sigterm_still_deletes_the_run_s_namespaces(tmp_path):
    tests_dir = Path(__file__).resolve().parents[1]
    marker = tmp_path / "ns-name"
    inner = tests_dir / "kernel" / f"_sigterm_inner_{os.getpid()}_test.py"
    inner.write_text(INNER.format(marker=str(marker)))
    try:
        proc = subprocess.Popen([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(inner)],
                                cwd=tests_dir.parent, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while not marker.exists() and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.1)
        assert marker.exists(), proc.communicate(timeout=30)[0].decode()
        name = marker.read_text()
        assert Path("/run/netns", name).exists()
        proc.send_signal(signal.SIGTERM)
        out = proc.communicate(timeout=60)[0].decode()
        assert not Path("/run/netns", name).exists(), f"namespace {name} left behind:\n{out}"
    finally:
        if proc.poll() is None:
            proc.kill()
        inner.unlink(missing_ok=True)
        if marker.exists() and Path("/run/netns", marker.read_text()).exists():
            subprocess.run(["ip", "netns", "del", marker.read_text()], check=False)
