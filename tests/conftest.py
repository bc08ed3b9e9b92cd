"""Shared pytest setup for every tier.

- `tests/` is put on sys.path, so tests write `from netns import veth, run_in, ...`.
- Tests under tests/kernel/ are marked `kernel` automatically; `kernel` tests are skipped
  (with the reason) when not running as root or when bcc cannot be imported by this
  interpreter. Everything else about the kernel is a real failure, not a skip.
- Fixtures: `netns` (namespace factory, every namespace deleted at teardown even on failure),
  `bpffs` (a private bpffs mount), `ebpfw_env` (EBPFW_BPFFS and EBPFW_STATE_DIR pointed at a
  private bpffs and a temp dir, so tests never touch /sys/fs/bpf or /var/lib/ebpfw).
"""

from __future__ import annotations

import functools
import os
import sys
import warnings
from pathlib import Path

import pytest

TESTS_DIR = Path(__file__).resolve().parent
if str(TESTS_DIR) not in sys.path:
    sys.path.insert(0, str(TESTS_DIR))

import netns as _netns  # noqa: E402  (needs the sys.path line above)


def pytest_configure(config):
    """A run stopped with SIGTERM (`timeout`, CI cancelling a job) must still delete its
    namespaces and stop its helpers: turn SIGTERM into the KeyboardInterrupt pytest already
    handles by tearing every fixture down (without this, pytest dies at once and leaves them)."""
    import signal

    def _stop(signum, frame):
        signal.signal(signal.SIGTERM, signal.SIG_DFL)   # a second SIGTERM kills for real
        raise KeyboardInterrupt(f"signal {signum}")

    if signal.getsignal(signal.SIGTERM) in (signal.SIG_DFL, None):
        signal.signal(signal.SIGTERM, _stop)


@functools.lru_cache(maxsize=1)
def _kernel_skip_reason() -> str | None:
    if os.geteuid() != 0:
        return "kernel test: needs root (loads BPF programs, creates network namespaces)"
    try:
        import bcc  # noqa: F401
    except Exception as exc:  # ImportError, or libbcc failing to load
        return (f"kernel test: bcc does not import in {sys.executable} ({exc}); "
                "use the venv built by `make setup` (.venv/bin/pytest)")
    return None


def pytest_collection_modifyitems(config, items):
    kernel_dir = TESTS_DIR / "kernel"
    for item in items:
        path = Path(str(getattr(item, "path", item.fspath)))
        if kernel_dir in path.parents:
            item.add_marker(pytest.mark.kernel)
        if item.get_closest_marker("kernel") is not None:
            reason = _kernel_skip_reason()
            if reason:
                item.add_marker(pytest.mark.skip(reason=reason))


def pytest_sessionfinish(session, exitstatus):
    left = _netns.delete_leftovers()
    if left:
        print(f"\nwarning: tests left network namespaces behind (now deleted): {left}", file=sys.stderr)


@pytest.fixture
def netns():
    """Factory: `ns = netns("pfx")` makes a namespace; `netns.pair()` two joined by a veth.
    Also `netns.veth/run/python/ifindex`. All namespaces are deleted at teardown."""
    factory = _netns.NetnsFactory()
    try:
        yield factory
    finally:
        left = factory.cleanup()
        if left:
            warnings.warn(f"could not delete network namespaces: {left}")


@pytest.fixture
def bpffs(tmp_path):
    """Path of a private bpffs mounted for this test (unmounted afterwards)."""
    with _netns.ns_bpffs(tmp_path) as path:
        yield path


@pytest.fixture
def ebpfw_env(bpffs, tmp_path, monkeypatch):
    """Point ebpfw's pin and state roots at private places; returns (bpffs, state_dir).
    Child processes inherit the variables through os.environ. Needs root (mounts a bpffs)."""
    state = tmp_path / "state"
    state.mkdir()
    monkeypatch.setenv("EBPFW_BPFFS", str(bpffs))
    monkeypatch.setenv("EBPFW_STATE_DIR", str(state))
    return bpffs, state
