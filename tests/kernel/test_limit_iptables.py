"""-m limit: differential against the kernel's xt_limit (iptables-legacy) with real packets.

The same ruleset judges the same UDP bursts twice in a DUT namespace: first loaded with
iptables-legacy-restore, then (iptables flushed) with `ebpfw apply`. Burst of 10 packets sent
back to back, a 0.6 s pause (1.2 tokens at 2/sec), then 3 more: the limit rule's and the
drop rule's packet counters must be equal (4 + 1 accepted, 6 + 2 dropped)."""

from __future__ import annotations

import sys
import time

import pytest

from legacy import needs_legacy, under_ebpfw, under_iptables
from netns import run_in, veth

pytestmark = pytest.mark.kernel

RULES = """*filter
:INPUT ACCEPT [0:0]
:FORWARD DROP [0:0]
:OUTPUT ACCEPT [0:0]
-A INPUT -p udp -m udp --dport 7000 -m limit --limit 2/sec --limit-burst 4 -j ACCEPT
-A INPUT -p udp -m udp --dport 7000 -j DROP
COMMIT
"""
LIMIT_RULE = "-A INPUT -p udp -m udp --dport 7000 -m limit --limit 2/sec --limit-burst 4 -j ACCEPT"
DROP_RULE = "-A INPUT -p udp -m udp --dport 7000 -j DROP"

SEND = """
import socket, sys, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for n in (10, 3):
    for _ in range(n):
        s.sendto(b"x", (sys.argv[1], 7000))
    time.sleep(0.6)
"""


def _send(client: str, addr: str) -> None:
    run_in(client, [sys.executable, "-c", SEND, addr], timeout=30)
    time.sleep(0.2)


@needs_legacy
def test_limit_matches_xt_limit(netns, ebpfw_env, tmp_path):
    client, dut = netns("lmc"), netns("lmd")
    veth(client, client + "c", dut, dut + "d", "10.202.1.2/24", "10.202.1.1/24")
    # warm the neighbour entries so the first burst is not held back by ARP
    run_in(client, ["ping", "-c", "1", "-W", "1", "10.202.1.1"], check=False)
    ref = under_iptables(dut, RULES, lambda: _send(client, "10.202.1.1")).counters
    got = under_ebpfw(dut, RULES, tmp_path, lambda: _send(client, "10.202.1.1"),
                      "--iface", dut + "d", "--mode", "xdp-generic").counters
    want = {k: ref[k][0] for k in (LIMIT_RULE, DROP_RULE)}
    assert want == {LIMIT_RULE: 5, DROP_RULE: 8}, ref      # the kernel did what the test expects
    assert {k: got[k][0] for k in (LIMIT_RULE, DROP_RULE)} == want, got
