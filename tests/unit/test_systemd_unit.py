"""systemd/ebpfw.service: systemd-analyze accepts it, and it keeps its promises
(runs `ebpfw agent` with sd_notify, no detach on stop, SIGHUP on reload, ordered before the
network, hardening that leaves bcc its headers)."""

from __future__ import annotations

import configparser
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
UNIT = REPO / "systemd" / "ebpfw.service"
WRAPPER = "/usr/local/sbin/ebpfw"


def _unit() -> configparser.ConfigParser:
    cp = configparser.ConfigParser(strict=False, interpolation=None, delimiters=("=",))
    cp.optionxform = str
    cp.read_string(UNIT.read_text())
    return cp


def test_systemd_analyze_verify(tmp_path):
    tool = shutil.which("systemd-analyze")
    if tool is None:
        pytest.skip("systemd-analyze is not installed (scripts/setup.sh installs the systemd package)")
    text = UNIT.read_text()
    if not Path(WRAPPER).exists():
        # verify insists that ExecStart binaries exist; stand in an existing one
        text = text.replace(WRAPPER, "/bin/true")
    unit = tmp_path / "ebpfw.service"
    unit.write_text(text)
    proc = subprocess.run([tool, "verify", "--man=no", str(unit)], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "ebpfw.service" not in proc.stderr, proc.stderr  # no warnings about our unit


def test_unit_contract():
    u = _unit()
    svc, unit = u["Service"], u["Unit"]
    assert svc["Type"] == "notify" and svc["NotifyAccess"] == "main"
    assert svc["ExecStart"] == f"{WRAPPER} agent"
    assert svc["ExecReload"] == "/bin/kill -HUP $MAINPID"
    assert "ExecStop" not in svc  # stopping must not detach the firewall (on_stop decides)
    assert svc["Environment"] == "EBPFW_CONFIG=/etc/ebpfw/ebpfw.toml"
    assert svc["EnvironmentFile"] == "-/etc/default/ebpfw"
    assert svc["Restart"] == "on-abnormal"  # a bad configuration (exit 1) is not retried in a loop
    assert "network-pre.target" in unit["Before"] and "network-pre.target" in unit["Wants"]
    for other in ("iptables.service", "ip6tables.service", "netfilter-persistent.service"):
        assert other in unit["Conflicts"]
    caps = svc["CapabilityBoundingSet"].split()
    for cap in ("CAP_SYS_ADMIN", "CAP_BPF", "CAP_NET_ADMIN", "CAP_PERFMON"):
        assert cap in caps
    assert "/sys/fs/bpf" in svc["ReadWritePaths"]
    # bcc reads headers under /lib/modules (ProtectKernelModules hides it) and LLVM JITs
    for forbidden in ("ProtectKernelModules", "MemoryDenyWriteExecute", "InaccessiblePaths"):
        assert forbidden not in svc


def test_default_file_matches_unit():
    env = {}
    for line in (REPO / "systemd" / "ebpfw.default").read_text().splitlines():
        if line and not line.startswith("#"):
            k, v = line.split("=", 1)
            env[k] = v.strip('"')
    assert env == {"EBPFW_CONFIG": "/etc/ebpfw/ebpfw.toml"}
