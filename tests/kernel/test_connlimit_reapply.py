"""-m connlimit lists across applies, with a real connection held open: the agent's re-apply of
the enforced ruleset (an interface changed: counters kept, compare-and-swap on the applied
state) keeps the lists, as iptables' rules would not have been touched; a new `ebpfw apply`
(iptables-restore) starts them empty."""

from __future__ import annotations

import subprocess
import sys

import pytest

from netns import nsenter_argv, run_in, veth
from test_cli_kernel import ebpfw, ok
from test_connlimit_iptables import SERVER

pytestmark = pytest.mark.kernel

RULES = """*filter
:INPUT ACCEPT [0:0]
:FORWARD DROP [0:0]
:OUTPUT ACCEPT [0:0]
-A INPUT -p tcp -m tcp --dport 5001 --tcp-flags FIN,SYN,RST,ACK SYN -m connlimit --connlimit-above 1 --connlimit-mask 32 --connlimit-saddr -j REJECT --reject-with tcp-reset
COMMIT
"""

CLIENT = """
import socket, sys
held = []
for line in sys.stdin:
    s = socket.socket()
    s.settimeout(5)
    try:
        s.connect((sys.argv[1], 5001))
        held.append(s)
        print("ok", flush=True)
    except ConnectionRefusedError:
        print("refused", flush=True)
"""

AGENT_LIKE = """
import sys
from ebpfw import api
cur = api.status()
text = open(sys.argv[1]).read()
res = api.apply(text, sys.argv[1], [sys.argv[2]], mode="xdp-generic", counters=True,
                expect_applied_at=cur["applied_at"])
print(res["recompiled"])
"""


def test_agent_reapply_keeps_the_lists_a_new_apply_empties_them(netns, ebpfw_env, tmp_path):
    client, dut = netns("eclimc"), netns("eclimd")
    veth(client, client + "c", dut, dut + "d", "10.204.1.2/24", "10.204.1.1/24")
    run_in(client, ["ping", "-c", "1", "-W", "1", "10.204.1.1"], check=False)
    rules = tmp_path / "r.v4"
    rules.write_text(RULES)
    server = subprocess.Popen(nsenter_argv(dut) + [sys.executable, "-c", SERVER, "10.204.1.1"],
                              stdout=subprocess.PIPE, text=True)
    cli = subprocess.Popen(nsenter_argv(client) + [sys.executable, "-c", CLIENT, "10.204.1.1"],
                           stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)

    def connect() -> str:
        cli.stdin.write("go\n")
        cli.stdin.flush()
        return cli.stdout.readline().strip()
    try:
        assert server.stdout.readline().strip() == "ready"
        ok(ebpfw(dut, "apply", str(rules), "--iface", dut + "d", "--mode", "xdp-generic"))
        assert connect() == "ok"                      # held open: the list holds it
        again = run_in(dut, [sys.executable, "-c", AGENT_LIKE, str(rules), dut + "d"]).stdout.split()
        assert again == ["False"]                     # maps only: the lists were carried over
        assert connect() == "refused"                 # 2 > 1: the held one still counts
        ok(ebpfw(dut, "apply", str(rules), "--iface", dut + "d", "--mode", "xdp-generic"))
        assert connect() == "ok"                      # a new apply: empty lists, 1
        assert connect() == "refused"
    finally:
        cli.kill()
        cli.wait(timeout=10)
        server.kill()
        server.wait(timeout=10)
        ebpfw(dut, "detach", timeout=60)
