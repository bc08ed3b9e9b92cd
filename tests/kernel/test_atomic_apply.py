"""Atomic re-apply under traffic: while UDP packets stream into the DUT, two rulesets are applied
in turn (rules-only changes: the inactive slot is rewritten, then the control map flips). Both
rulesets accept the stream, but they are built so that a packet judged by a MIX of the two
(one ruleset's vectors with the other's rule actions, in either direction) is dropped. Every
packet sent must reach the DUT's UDP layer: none was judged by half of one ruleset and half of
the other, and none by neither.

Topology (made here): namespaces CLI and DUT joined by one veth; ebpfw on the DUT's end (XDP).
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time

import pytest

from netns import nsenter_argv, run_in, veth

pytestmark = pytest.mark.kernel

HEAD = "*filter\n:INPUT DROP [0:0]\n:FORWARD DROP [0:0]\n:OUTPUT ACCEPT [0:0]\n"
# rule 0 / rule 1 swap roles between A and B: the stream (dport 9000) matches rule 0 in A and
# rule 1 in B, and the other rule of each ruleset drops it.
RULES_A = HEAD + "-A INPUT -p udp -m udp --dport 9000 -j ACCEPT\n-A INPUT -p udp -j DROP\nCOMMIT\n"
RULES_B = HEAD + "-A INPUT -p udp -m udp --dport 9001 -j DROP\n-A INPUT -p udp -m udp --dport 9000 -j ACCEPT\nCOMMIT\n"
PACKETS = 20000


def udp_mib(ns: str) -> dict[str, int]:
    out = run_in(ns, ["cat", "/proc/net/snmp"]).stdout.splitlines()
    names, values = [l.split() for l in out if l.startswith("Udp:")][:2]
    return dict(zip(names[1:], map(int, values[1:])))


def test_reapply_under_traffic_never_mixes_rulesets(netns, ebpfw_env, tmp_path):
    cli, dut = netns("at"), netns("at")
    veth(cli, "c0", dut, "d0", "10.93.0.2/24", "10.93.0.1/24")
    for ns in (cli, dut):
        run_in(ns, "sysctl -qw net.ipv6.conf.all.disable_ipv6=1")
    mac = json.loads(run_in(dut, "ip -j link show d0").stdout)[0]["address"]
    run_in(cli, f"ip neigh replace 10.93.0.1 lladdr {mac} dev c0 nud permanent")
    (tmp_path / "a.rules").write_text(RULES_A)
    (tmp_path / "b.rules").write_text(RULES_B)
    applier = subprocess.Popen(
        nsenter_argv(dut) + [sys.executable, "-c", textwrap.dedent(f"""
            import sys, time
            from ebpfw import api
            a, b = open("{tmp_path / 'a.rules'}").read(), open("{tmp_path / 'b.rules'}").read()
            api.apply(a, "a.rules", ["d0"], "xdp")
            print("ready", flush=True)
            n, recompiled, deadline = 0, 0, time.monotonic() + 60
            while sys.stdin.readline().strip() == "go" and time.monotonic() < deadline:
                r = api.apply(b if n % 2 == 0 else a, "x", ["d0"], "xdp")
                recompiled += r["recompiled"]
                n += 1
                print(n, recompiled, flush=True)
            """)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert applier.stdout.readline().strip() == "ready"
        before = udp_mib(dut)
        # the sender streams in the background while the applier flips back and forth
        sender = subprocess.Popen(nsenter_argv(cli) + [sys.executable, "-c", textwrap.dedent(f"""
            import socket, time
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            deadline = time.monotonic() + 30
            for i in range({PACKETS}):
                s.sendto(b"x" * 32, ("10.93.0.1", 9000))
                if i % 200 == 199:
                    time.sleep(0.002)
                if time.monotonic() > deadline:
                    break
            print(i + 1)
            """)], stdout=subprocess.PIPE, text=True)
        flips = 0
        while sender.poll() is None and flips < 200:
            applier.stdin.write("go\n")
            applier.stdin.flush()
            flips, recompiled = map(int, applier.stdout.readline().split())
        sent = int(sender.communicate(timeout=60)[0])
        time.sleep(0.2)
        after = udp_mib(dut)
    finally:
        applier.stdin.close()
        applier.wait(timeout=30)
    delivered = sum(after[k] - before[k] for k in ("InDatagrams", "NoPorts", "RcvbufErrors"))
    assert sent == PACKETS
    assert flips >= 4, "too few re-applies happened while the stream ran"
    assert recompiled == 0, "re-applies of the same shape must rewrite maps only"
    assert delivered == sent, f"{sent - delivered} of {sent} packets were dropped during {flips} re-applies"
