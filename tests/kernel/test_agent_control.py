"""`ebpfw apply` while an agent runs: the CLI hands the ruleset to the agent over its control
socket (ebpfw.control), the agent applies it in its own process (where the last ruleset is kept
for incremental applies), and the CLI prints exactly what a direct apply prints, problems
included. EBPFW_NO_AGENT=1 applies directly.

Topology (made here, both veth ends inside the test's namespaces): CLIENT (pqc0) == (pq0) DUT.
Nothing is sent; what is enforced is read back with `ebpfw save`.
"""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import pytest

from netns import nsenter_argv, veth
from test_agent import EBPFW, START_TIMEOUT, AgentProc, Notify

pytestmark = pytest.mark.kernel

RULES = """*filter
:INPUT ACCEPT [0:0]
:FORWARD DROP [0:0]
:OUTPUT ACCEPT [0:0]
-A INPUT -p tcp -m tcp --dport 9090 -j DROP
-A INPUT -p udp -m udp --dport 53 -j ACCEPT
COMMIT
"""


def ebpfw(ns: str, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(nsenter_argv(ns) + [EBPFW, *args], capture_output=True, text=True, timeout=180,
                          env=dict(os.environ, **(env or {})))


def test_cli_apply_goes_through_the_agent(netns, ebpfw_env, tmp_path):
    client, dut = netns("pc"), netns("pc")
    veth(client, "pqc0", dut, "pq0", "10.202.1.2/24", "10.202.1.1/24")
    rules = tmp_path / "rules.v4"
    rules.write_text(RULES)
    config = tmp_path / "ebpfw.toml"
    config.write_text('ruleset = "rules.v4"\ninterfaces = ["pq*"]\non_stop = "keep"\n')
    notify = Notify(tmp_path / "notify.sock")
    agent = AgentProc(dut, config, tmp_path / "agent.log", notify)
    try:
        agent.start()
        sock = list(Path(ebpfw_env[1]).glob("*/agent.sock"))
        assert len(sock) == 1 and sock[0].stat().st_mode & 0o777 == 0o600

        edited = tmp_path / "edited.v4"
        edited.write_text(RULES.replace("--dport 53", "--dport 5353"))
        cp = ebpfw(dut, "apply", str(edited), "--iface", "pq0")
        assert cp.returncode == 0, cp.stderr
        assert f"(by the agent, pid {agent.proc.pid})" in cp.stdout
        assert "maps updated, programs kept" in cp.stdout
        assert f"applied {edited} (from ebpfw apply)" in agent.text()
        saved = ebpfw(dut, "save").stdout
        assert "--dport 5353" in saved and "--dport 53 " not in saved

        # a problem is printed as a direct apply prints it, and nothing changes
        broken = tmp_path / "broken.v4"
        broken.write_text(RULES.replace("--dport 9090", "--dport 99999"))
        cp = ebpfw(dut, "apply", str(broken), "--iface", "pq0")
        direct = ebpfw(dut, "apply", str(broken), "--iface", "pq0", env={"EBPFW_NO_AGENT": "1"})
        assert cp.returncode == direct.returncode == 1
        assert cp.stderr == direct.stderr and f"{broken}:5: " in cp.stderr
        assert ebpfw(dut, "save").stdout == saved

        # without the agent: the same apply, by the CLI itself
        cp = ebpfw(dut, "apply", str(rules), "--iface", "pq0", env={"EBPFW_NO_AGENT": "1"})
        assert cp.returncode == 0 and "by the agent" not in cp.stdout, cp.stdout + cp.stderr
        assert "--dport 53 " in ebpfw(dut, "save").stdout

        # the agent stops: its socket goes, and the CLI applies by itself again
        agent.signal(signal.SIGTERM)
        assert agent.wait(START_TIMEOUT) == 0
        assert not list(Path(ebpfw_env[1]).glob("*/agent.sock"))
        cp = ebpfw(dut, "apply", str(edited), "--iface", "pq0")
        assert cp.returncode == 0 and "by the agent" not in cp.stdout, cp.stdout + cp.stderr
    finally:
        agent.stop()
        notify.close()
        ebpfw(dut, "detach")
