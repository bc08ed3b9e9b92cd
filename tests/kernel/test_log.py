"""LOG end to end: `ebpfw apply` with -j LOG rules in a DUT namespace, real packets from a CLIENT
namespace, then `ebpfw log` prints one kernel-format line per packet that reached a LOG rule (the
walk goes on after LOG: the packets are still accepted or rejected by the later rules), and the
events are consumed. The line format itself is checked against nf_log_syslog's in
tests/unit/test_log_format.py (the kernel's own LOG lines are not visible from a namespace
unless net.netfilter.nf_log_all_netns is set for the whole host)."""

from __future__ import annotations

import json
import re

import pytest

from netns import run_in, veth
from test_cli_kernel import ebpfw, ok, ping, start_listener, tcp

pytestmark = pytest.mark.kernel

RULES = """*filter
:INPUT ACCEPT [0:0]
:FORWARD DROP [0:0]
:OUTPUT ACCEPT [0:0]
-A INPUT -p tcp -m tcp --dport 8080 --tcp-flags FIN,SYN,RST,ACK SYN -j LOG --log-prefix "syn8080: " --log-tcp-sequence
-A INPUT -p icmp -m icmp --icmp-type 8 -j LOG --log-prefix "ping: "
-A INPUT -p icmp -m icmp --icmp-type 8 -j REJECT --reject-with icmp-host-prohibited
COMMIT
"""


@pytest.mark.parametrize("mode", ["xdp-generic", "tc"])
def test_log_lines_for_real_packets(netns, ebpfw_env, tmp_path, mode):
    client, dut = netns("lgc"), netns("lgd")
    dev = dut + "d"
    veth(client, client + "c", dut, dev, "10.212.1.2/24", "10.212.1.1/24")
    listener = start_listener(dut, 8080)
    try:
        rules = tmp_path / "rules.v4"
        rules.write_text(RULES)
        ok(ebpfw(dut, "apply", str(rules), "--iface", dev, "--mode", mode))
        assert tcp(client, "10.212.1.1", 8080) == "open"            # LOG goes on to the policy
        assert not ping(client, "10.212.1.1")                        # logged, then rejected
        lines = ok(ebpfw(dut, "log")).stdout.splitlines()
        mac = r"MAC=([0-9a-f]{2}:){13}[0-9a-f]{2}  "
        syn = [l for l in lines if l.startswith("syn8080: ")]
        pings = [l for l in lines if l.startswith("ping: ")]
        assert len(syn) == 1 and len(pings) == 1, lines
        assert re.fullmatch(rf"syn8080: IN={dev} OUT= {mac}SRC=10\.212\.1\.2 DST=10\.212\.1\.1 LEN=60 TOS=0x00 "
                            r"PREC=0x00 TTL=64 ID=\d+ DF PROTO=TCP SPT=\d+ DPT=8080 SEQ=\d+ ACK=0 WINDOW=\d+ "
                            r"RES=0x00 SYN URGP=0 ", syn[0]), syn[0]
        assert re.fullmatch(rf"ping: IN={dev} OUT= {mac}SRC=10\.212\.1\.2 DST=10\.212\.1\.1 LEN=84 TOS=0x00 "
                            r"PREC=0x00 TTL=64 ID=\d+ DF PROTO=ICMP TYPE=8 CODE=0 ID=\d+ SEQ=1 ", pings[0]), pings[0]
        assert ok(ebpfw(dut, "log")).stdout == ""                   # consumed
        stats = json.loads(ok(ebpfw(dut, "show", "--json")).stdout)["stats"]
        assert stats["log_events"] == 2 and stats["log_lost"] == 0 and stats["reject_sent"] == 1
    finally:
        listener.kill()
        listener.wait(timeout=10)
        ebpfw(dut, "detach", timeout=60)


MARK_RULES = """*filter
:INPUT ACCEPT [0:0]
:FORWARD DROP [0:0]
:OUTPUT ACCEPT [0:0]
-A INPUT -p tcp -m tcp --dport 8080 --tcp-flags FIN,SYN,RST,ACK SYN -j LOG --log-prefix "before: "
-A INPUT -p tcp -m tcp --dport 8080 -j MARK --set-xmark 0x2a/0xffffffff
-A INPUT -p tcp -m tcp --dport 8080 --tcp-flags FIN,SYN,RST,ACK SYN -j LOG --log-prefix "after: "
COMMIT
"""


def test_log_prints_the_mark_as_the_log_rule_sees_it(netns, ebpfw_env, tmp_path):
    """nf_log ends the line with MARK=0x.. when the packet has a mark: a LOG rule before the
    MARK rule prints none, one after it prints the new mark (marks force TC ingress)."""
    client, dut = netns("lmc"), netns("lmd")
    dev = dut + "d"
    veth(client, client + "c", dut, dev, "10.213.1.2/24", "10.213.1.1/24")
    listener = start_listener(dut, 8080)
    try:
        rules = tmp_path / "rules.v4"
        rules.write_text(MARK_RULES)
        ok(ebpfw(dut, "apply", str(rules), "--iface", dev))
        assert tcp(client, "10.213.1.1", 8080) == "open"
        lines = ok(ebpfw(dut, "log")).stdout.splitlines()
        before = [l for l in lines if l.startswith("before: ")]
        after = [l for l in lines if l.startswith("after: ")]
        assert len(before) == 1 and len(after) == 1, lines
        assert "MARK=" not in before[0] and before[0].endswith("SYN URGP=0 "), before[0]
        assert after[0].endswith("SYN URGP=0 MARK=0x2a "), after[0]
    finally:
        listener.kill()
        listener.wait(timeout=10)
        ebpfw(dut, "detach", timeout=60)
