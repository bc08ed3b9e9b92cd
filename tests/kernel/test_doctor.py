"""`ebpfw doctor` tells the truth about this machine (root, bcc, headers, bpffs, hooks,
foreign firewall rules), checked inside namespaces made here."""

from __future__ import annotations

import json
import os

import pytest

from ebpfw import doctor

pytestmark = pytest.mark.kernel

RUN = """
import json, dataclasses, sys
from ebpfw.doctor import run_checks
print(json.dumps([dataclasses.asdict(c) for c in run_checks(live=LIVE)]))
"""


def _by_name(checks):
    return {c["name"]: c for c in checks}


def test_doctor_on_this_machine(netns, ebpfw_env):
    ns = netns("dr")
    checks = _by_name(json.loads(netns.python(ns, RUN.replace("LIVE", "True"), timeout=120).stdout))
    assert checks["privileges"]["ok"] and "root" in checks["privileges"]["detail"]
    assert checks["btf"]["ok"] == os.path.exists("/sys/kernel/btf/vmlinux")
    assert checks["bcc"]["ok"]
    assert checks["kernel headers"]["ok"]  # bcc compiled the probe, so they are there
    assert checks["bpffs"]["ok"] and str(ebpfw_env[0]) in checks["bpffs"]["detail"]
    for hook in ("xdp native (veth)", "xdp generic", "tc clsact + bpf"):
        assert checks[hook]["ok"], checks[hook]
    assert checks["other firewalls"] == {"name": "other firewalls", "ok": True, "warning": False, "fix": "",
                                         "detail": "no iptables or nftables rules in this network namespace"}
    # the probe namespace is gone
    assert not [n for n in os.listdir("/run/netns") if n.startswith("ebpfwdoc")]


def test_doctor_sees_iptables_rules_in_its_namespace(netns):
    ns = netns("di")
    netns.run(ns, ["iptables", "-A", "INPUT", "-p", "tcp", "--dport", "22", "-j", "ACCEPT"])
    checks = _by_name(json.loads(netns.python(ns, RUN.replace("LIVE", "False")).stdout))
    c = checks["other firewalls"]
    assert c["ok"] and c["warning"]
    assert "1 rule(s) in iptables-save" in c["detail"] and "still apply" in c["detail"]
    assert "xdp generic" not in checks  # live=False skips the probe


def test_headers_check_fails_for_a_missing_modules_dir(tmp_path):
    c = doctor.check_headers(tmp_path / "nonexistent")
    assert not c.ok
    assert c.fix.startswith(f"mkdir -p {tmp_path / 'nonexistent'} && ln -sfn /usr/src/linux-headers-")


def test_headers_check_matches_what_bcc_uses():
    c = doctor.check_headers()
    build = f"/lib/modules/{os.uname().release}/build"
    assert c.ok == os.path.exists(f"{build}/include/generated/autoconf.h")


def test_bpffs_check_on_a_plain_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("EBPFW_BPFFS", str(tmp_path))
    c = doctor.check_bpffs()
    assert not c.ok and c.fix == f"mount -t bpf bpf {tmp_path}"
