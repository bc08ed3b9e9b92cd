"""Fixtures for the conformance suite: one CLIENT--DUT--SERVER topology per side for the whole
session (rules are flushed and reloaded between cases), and a cache of iptables runs so the
reference side of a case is played once even when several tests need it.

Needs root (namespaces, iptables, bpffs). Every namespace, agent and bpffs mount made here is
removed at session end, also when tests fail.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import warnings
from pathlib import Path

import pytest

from .harness import EbpfwSide, IptablesSide, ebpfw_unavailable
from .topology import Topology


def _need_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("conformance: needs root (network namespaces, iptables, bpffs)")
    for tool in ("iptables-restore", "iptables-save", "nsenter", "ip"):
        if shutil.which(tool) is None:
            pytest.skip(f"conformance: {tool} not installed")


@pytest.fixture(scope="session")
def iptables_side():
    _need_root()
    topo = Topology("i").create()
    try:
        yield IptablesSide(topo)
    finally:
        left = topo.destroy()
        if left:
            warnings.warn(f"conformance: could not delete namespaces {left}")


@pytest.fixture(scope="session")
def ebpfw_side():
    _need_root()
    reason = ebpfw_unavailable()
    if reason:
        pytest.skip(f"ebpfw side: {reason}")
    base = Path(tempfile.mkdtemp(prefix="ebpfw-conformance-"))
    bpffs, state = base / "bpffs", base / "state"
    bpffs.mkdir()
    state.mkdir()
    subprocess.run(["mount", "-t", "bpf", "bpf", str(bpffs)], check=True)
    topo = None
    side = None
    try:
        topo = Topology("e").create()
        side = EbpfwSide(topo, bpffs, state)
        yield side
    finally:
        if side is not None:
            try:
                side.unload()
            except Exception as exc:
                warnings.warn(f"conformance: ebpfw detach failed: {exc}")
            shutil.rmtree(side.workdir, ignore_errors=True)   # the case files it imported
        if topo is not None:
            left = topo.destroy()
            if left:
                warnings.warn(f"conformance: could not delete namespaces {left}")
        subprocess.run(["umount", "-l", str(bpffs)], check=False)
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="session")
def iptables_runs():
    """case name -> RunResult of the iptables side (filled by the tests that need it)."""
    return {}
