"""`ebpfw apply --confirm`, `ebpfw confirm` and `ebpfw diff` end to end, with the real console
script inside a DUT namespace and pings from a CLIENT namespace.

Topology (made here, both veth ends inside the test's namespaces, IPv6 off):
    CLIENT 10.202.1.2/24 (cf0) ==veth== (cf1) 10.202.1.1/24 DUT
Every wait is bounded; the rollback process a test started is killed at teardown if it is
still there (it is detached, so nothing else would)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from netns import nsenter_argv, run_in, veth

pytestmark = pytest.mark.kernel

_VENV_EBPFW = Path(sys.executable).parent / "ebpfw"
EBPFW = str(_VENV_EBPFW if _VENV_EBPFW.exists() else "/work/main/.venv/bin/ebpfw")
DUT_IP = "10.202.1.1"

OPEN = """# allows ping
*filter
:INPUT ACCEPT [0:0]
:FORWARD DROP [0:0]
:OUTPUT ACCEPT [0:0]
-A INPUT -p tcp -m tcp --dport 9090 -j DROP
COMMIT
"""
NO_PING = """*filter
:INPUT ACCEPT [0:0]
:FORWARD DROP [0:0]
:OUTPUT ACCEPT [0:0]
-A INPUT -p tcp -m tcp --dport 9090 -j DROP
-A INPUT -p icmp -m icmp --icmp-type 8 -j DROP
COMMIT
"""


def ebpfw(ns: str, *args: str, input: str | None = None, timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run(nsenter_argv(ns) + [EBPFW, *args], capture_output=True, text=True, input=input,
                          timeout=timeout, env=dict(os.environ))


def ok(p: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert p.returncode == 0, f"{p.args} -> {p.returncode}\nstdout:\n{p.stdout}\nstderr:\n{p.stderr}"
    return p


def ping(ns: str) -> bool:
    return run_in(ns, ["ping", "-n", "-q", "-c", "1", "-W", "1", DUT_IP], check=False, timeout=30).returncode == 0


def wait_until(cond, limit: float, step: float = 0.1) -> float | None:
    """Seconds until cond() held, or None if it did not within `limit`."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < limit:
        if cond():
            return time.monotonic() - t0
        time.sleep(step)
    return None


@pytest.fixture
def rig(netns, ebpfw_env, tmp_path):
    client, dut = netns("cfc"), netns("cfd")
    veth(client, "cf0", dut, "cf1", "10.202.1.2/24", f"{DUT_IP}/24")
    (tmp_path / "open.rules").write_text(OPEN)
    (tmp_path / "noping.rules").write_text(NO_PING)
    state_root = ebpfw_env[1]
    try:
        yield client, dut, tmp_path, state_root
    finally:
        for f in state_root.glob("*/rollback.*"):
            try:
                pid = json.loads(f.read_text()).get("rollback_pid")
            except (OSError, ValueError, AttributeError):
                continue
            if pid:
                try:
                    os.kill(int(pid), signal.SIGKILL)
                except ProcessLookupError:
                    pass
        ebpfw(dut, "detach", timeout=60)


def _pending(state_root: Path) -> list[Path]:
    return list(state_root.glob("*/rollback.json"))


def test_unconfirmed_apply_rolls_back(rig):
    client, dut, tmp, state_root = rig
    ok(ebpfw(dut, "apply", str(tmp / "open.rules"), "--iface", "cf1", "--mode", "tc"))
    assert ping(client)

    r = ok(ebpfw(dut, "apply", "--confirm", "2s", str(tmp / "noping.rules"), "--iface", "cf1"))
    t_applied = time.monotonic()
    assert "ebpfw confirm" in r.stdout and "open.rules comes back" in r.stdout, r.stdout
    assert not ping(client)                            # the trial ruleset is enforced
    back = wait_until(lambda: ping(client), limit=15)
    assert back is not None, [f.read_text() for f in state_root.glob("*/rollback.log")]
    took = time.monotonic() - t_applied
    assert 1.5 <= took <= 6, took                      # about 2 s after the apply, not before
    st = json.loads(ok(ebpfw(dut, "status", "--json")).stdout)
    assert st["source"].endswith("open.rules")
    assert [(i["name"], i["mode"]) for i in st["ifaces"]] == [("cf1", "tc")]   # the mode came back too
    assert "--icmp-type 8" not in ok(ebpfw(dut, "save")).stdout
    assert not _pending(state_root)
    log = next(state_root.glob("*/rollback.log")).read_text()
    assert "not confirmed within 2" in log and "restored" in log and "cf1" in log, log
    # nothing left to confirm, and the message says why
    r = ebpfw(dut, "confirm")
    assert r.returncode == 1 and "rolled back" in r.stderr, r.stderr


def test_confirmed_apply_stays(rig):
    client, dut, tmp, state_root = rig
    ok(ebpfw(dut, "apply", str(tmp / "open.rules"), "--iface", "cf1"))
    ok(ebpfw(dut, "apply", "--confirm", "2s", str(tmp / "noping.rules"), "--iface", "cf1"))
    pid = json.loads(_pending(state_root)[0].read_text())["rollback_pid"]
    r = ok(ebpfw(dut, "confirm"))
    assert "confirmed" in r.stdout and "noping.rules" in r.stdout
    assert wait_until(lambda: not Path(f"/proc/{pid}").exists(), limit=5) is not None  # the watcher left
    time.sleep(2.5)                                    # past the deadline
    assert not ping(client)
    assert "--icmp-type 8 -j DROP" in ok(ebpfw(dut, "save")).stdout
    r = ebpfw(dut, "confirm")
    assert r.returncode == 1 and "nothing to confirm" in r.stderr


def test_rollback_without_previous_ruleset_detaches(rig):
    client, dut, tmp, state_root = rig
    r = ok(ebpfw(dut, "apply", "--confirm", "1s", str(tmp / "noping.rules"), "--iface", "cf1"))
    assert "ebpfw detaches" in r.stdout
    assert not ping(client)
    assert wait_until(lambda: ping(client), limit=15) is not None
    assert json.loads(ok(ebpfw(dut, "status", "--json")).stdout) is None


def test_second_trial_returns_to_the_last_confirmed_ruleset(rig):
    client, dut, tmp, state_root = rig
    ok(ebpfw(dut, "apply", str(tmp / "open.rules"), "--iface", "cf1"))
    ok(ebpfw(dut, "apply", "--confirm", "30s", str(tmp / "noping.rules"), "--iface", "cf1"))
    first = json.loads(_pending(state_root)[0].read_text())["rollback_pid"]
    r = ok(ebpfw(dut, "apply", "--confirm", "2s", str(tmp / "noping.rules"), "--iface", "cf1"))
    assert "open.rules comes back" in r.stdout
    assert wait_until(lambda: not Path(f"/proc/{first}").exists(), limit=5) is not None  # superseded
    assert wait_until(lambda: ping(client), limit=15) is not None
    assert ok(ebpfw(dut, "status", "--json")).stdout.count("open.rules") >= 1


def test_refused_trial_changes_nothing(rig):
    client, dut, tmp, state_root = rig
    ok(ebpfw(dut, "apply", str(tmp / "noping.rules"), "--iface", "cf1"))
    bad = tmp / "bad.rules"
    bad.write_text(OPEN.replace("9090", "99999"))
    r = ebpfw(dut, "apply", "--confirm", "1s", str(bad), "--iface", "cf1")
    assert r.returncode == 1 and f"{bad}:6:" in r.stderr, r.stderr
    assert not _pending(state_root)
    r = ebpfw(dut, "apply", "--confirm", "soon", str(tmp / "open.rules"), "--iface", "cf1")
    assert r.returncode == 1 and "30s" in r.stderr
    time.sleep(1.5)
    assert not ping(client)                            # nothing rolled back or changed
    assert "--icmp-type 8 -j DROP" in ok(ebpfw(dut, "save")).stdout


def test_diff(rig):
    client, dut, tmp, state_root = rig
    r = ebpfw(dut, "diff", str(tmp / "open.rules"))
    assert r.returncode == 2 and "no ruleset is applied" in r.stderr
    ok(ebpfw(dut, "apply", str(tmp / "open.rules"), "--iface", "cf1"))
    # the same rules written differently (comments, counters, spacing, option order) are equal
    same = ("# a comment\n*filter\n:INPUT ACCEPT [12:34]\n:FORWARD DROP [0:0]\n:OUTPUT ACCEPT [0:0]\n"
            "-A INPUT  -p tcp --dport 9090 -j DROP\nCOMMIT\n")
    r = ebpfw(dut, "diff", "-", input=same)
    assert (r.returncode, r.stdout) == (0, ""), r.stderr
    r = ebpfw(dut, "diff", str(tmp / "noping.rules"))
    assert r.returncode == 1
    assert r.stdout.splitlines()[:2] == ["--- enforced", f"+++ {tmp / 'noping.rules'}"]
    assert "+-A INPUT -p icmp -m icmp --icmp-type 8 -j DROP" in r.stdout.splitlines()
    r = ebpfw(dut, "diff", "-", input="*filter\n-A NOPE -j ACCEPT\nCOMMIT\n")
    assert r.returncode == 2 and "<stdin>:2:" in r.stderr, r.stderr


def test_trial_replaced_by_a_plain_apply_is_not_rolled_back(rig):
    client, dut, tmp, state_root = rig
    ok(ebpfw(dut, "apply", str(tmp / "noping.rules"), "--iface", "cf1"))
    ok(ebpfw(dut, "apply", "--confirm", "3s", str(tmp / "open.rules"), "--iface", "cf1"))
    third = OPEN.replace("9090", "9091")
    ok(ebpfw(dut, "apply", "-", "--iface", "cf1", input=third))     # the admin's deliberate choice
    assert wait_until(lambda: not _pending(state_root) and not list(state_root.glob("*/rollback.running")),
                      limit=10) is not None
    time.sleep(0.5)
    assert "--dport 9091" in ok(ebpfw(dut, "save")).stdout
    assert ping(client)
    log = next(state_root.glob("*/rollback.log")).read_text()
    assert "not rolled back: the trial ruleset was replaced" in log, log
