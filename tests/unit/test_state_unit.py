"""ebpfw.state without root: path layout, JSON files, the apply lock across processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time

import pytest

from ebpfw import state
from ebpfw.errors import EbpfwError, StateError
from ebpfw.netlink.host import netns_key


@pytest.fixture
def state_root(tmp_path, monkeypatch):
    root = tmp_path / "state"
    monkeypatch.setenv("EBPFW_STATE_DIR", str(root))
    return root


def test_state_dir_is_keyed_by_netns(state_root):
    assert state.state_dir() == state_root / netns_key()
    assert not state.state_dir().exists()
    d = state.state_dir(create=True)
    assert d.is_dir() and (d.stat().st_mode & 0o777) == 0o700


def test_state_dir_default(monkeypatch):
    monkeypatch.delenv("EBPFW_STATE_DIR", raising=False)
    assert str(state.state_dir()) == f"/var/lib/ebpfw/{netns_key()}"


def test_bpffs_root_refuses_a_plain_directory(tmp_path, monkeypatch):
    monkeypatch.setenv("EBPFW_BPFFS", str(tmp_path))
    with pytest.raises(EbpfwError) as ei:
        state.bpffs_root()
    assert "is not a BPF filesystem" in str(ei.value)
    assert ei.value.hint == f"mount -t bpf bpf {tmp_path}"
    with pytest.raises(EbpfwError):
        state.pin_dir()


def test_bpffs_root_missing_path(tmp_path, monkeypatch):
    monkeypatch.setenv("EBPFW_BPFFS", str(tmp_path / "nope"))
    with pytest.raises(EbpfwError) as ei:
        state.bpffs_root()
    assert "not usable" in str(ei.value) and "mount -t bpf bpf" in ei.value.hint


def test_json_round_trip_and_atomic_write(state_root):
    assert state.read_json("applied.json") is None
    assert state.read_json("applied.json", default={}) == {}
    obj = {"ifaces": ["a", "b"], "slot": 1}
    path = state.write_json_atomic("applied.json", obj)
    assert path == state.state_dir() / "applied.json"
    assert state.read_json("applied.json") == obj
    state.write_json_atomic("applied.json", {"slot": 0})
    assert json.loads(path.read_text()) == {"slot": 0}
    assert sorted(p.name for p in path.parent.iterdir()) == ["applied.json"]  # no temp left


def test_corrupt_json_is_a_state_error(state_root):
    d = state.state_dir(create=True)
    (d / "applied.json").write_text('{"slot": 1,\n  oops}\n')
    with pytest.raises(StateError) as ei:
        state.read_json("applied.json")
    assert f"{d / 'applied.json'}:2: invalid JSON state file" in str(ei.value)
    assert "re-apply" in ei.value.hint


@pytest.mark.parametrize("bad", ["", "..", "a/b", "../x"])
def test_names_must_be_plain(state_root, bad):
    with pytest.raises(EbpfwError, match="expected a plain file name"):
        state.write_json_atomic(bad, {})


def test_unpin_missing_is_false(tmp_path):
    f = tmp_path / "x"
    f.write_text("")
    assert state.unpin(f) is True
    assert state.unpin(f) is False


HOLDER = """
import sys
from ebpfw.state import ApplyLock
with ApplyLock(timeout=5):
    print("locked", flush=True)
    sys.stdin.readline()
"""


def test_apply_lock_excludes_other_processes(state_root):
    child = subprocess.Popen([sys.executable, "-c", HOLDER], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True, env=dict(os.environ))
    try:
        assert child.stdout.readline().strip() == "locked"
        t0 = time.monotonic()
        with pytest.raises(EbpfwError) as ei:
            with state.ApplyLock(timeout=0.3):
                pass
        assert time.monotonic() - t0 >= 0.3
        assert str(ei.value) == f"another ebpfw apply is running (pid {child.pid})"
        child.stdin.write("\n")
        child.stdin.flush()
        assert child.wait(timeout=10) == 0
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    with state.ApplyLock(timeout=1) as lock:
        assert (state.state_dir() / "apply.lock").read_text().strip() == str(os.getpid())
        # a second lock in this same process is a different open file: it must wait too
        with pytest.raises(EbpfwError, match="another ebpfw apply is running"):
            state.ApplyLock(timeout=0.1).acquire()
    assert lock.fd is None
    with state.ApplyLock(timeout=0.1):
        pass


def test_apply_lock_waits_for_release(state_root):
    child = subprocess.Popen([sys.executable, "-c", HOLDER], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True, env=dict(os.environ))
    try:
        assert child.stdout.readline().strip() == "locked"
        # release after a short delay; the waiting lock must then succeed within its timeout
        def release():
            child.stdin.write("\n")
            child.stdin.flush()
        timer = threading.Timer(0.3, release)
        timer.start()
        t0 = time.monotonic()
        with state.ApplyLock(timeout=10):
            waited = time.monotonic() - t0
        assert 0.2 <= waited < 10
        timer.join()
    finally:
        if child.poll() is None:
            child.kill()
        child.wait()
