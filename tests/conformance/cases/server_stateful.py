"""rulesets/server-stateful.rules: conntrack-based server (NEW / ESTABLISHED / RELATED /
INVALID). Crafted packets that must belong to a connection carry consistent sequence numbers."""

from .common import (CLI, CLI_ADMIN, DUT_LAN, DUT_WAN, SRV, Case, Connect, Listen, Send, Udp,
                     icmp, ruleset, tcp)

NET = "203.0.113.7"


def build() -> Case:
    steps = [
        Connect("cli", DUT_WAN, 22, src=CLI_ADMIN, label="ssh from the admin net: NEW then ESTABLISHED"),
        Connect("cli", DUT_WAN, 80, label="http: NEW then ESTABLISHED"),
        Send("cli", [icmp(NET, DUT_WAN, 8)], "echo request NEW (reply leaves by OUTPUT policy)"),
        Send("cli", [tcp(NET, DUT_WAN, 22)], "ssh SYN from the internet (policy)"),
        Send("cli", [tcp(NET, DUT_WAN, 80, flags="FS")], "SYN+FIN is INVALID"),
        # forwarding: only LAN -> uplink may start connections
        Connect("srv", CLI, 80, label="LAN to uplink: NEW, replies ESTABLISHED"),
        Udp("srv", CLI, 9999, label="closed port: the port unreachable is RELATED"),
        Send("cli", [tcp(NET, SRV, 80)], "uplink to LAN: NEW is not allowed (policy)"),
        Send("cli", [tcp(NET, SRV, 80, flags="FS")], "forwarded INVALID"),
        # a crafted handshake through the DUT, LAN side first
        Send("srv", [tcp(SRV, "203.0.113.80", 443, sport=41000, flags="S", seq=1000)], "crafted SYN out"),
        Send("cli", [tcp("203.0.113.80", SRV, 41000, sport=443, flags="SA", seq=5000, ack=1001)],
             "crafted SYN-ACK back (ESTABLISHED)"),
        Send("srv", [tcp(SRV, "203.0.113.80", 443, sport=41000, flags="A", seq=1001, ack=5001)],
             "crafted ACK"),
        # OUTPUT
        Send("dut", [tcp(DUT_WAN, NET, 80, flags="FS")], "host sends an INVALID segment"),
        Connect("dut", SRV, 25, label="smtp from the host: NEW dropped"),
        Send("dut", [icmp(DUT_LAN, SRV, 8)], "host ping (policy)"),
    ]
    return Case(name="server-stateful", ruleset=ruleset("server-stateful.rules"),
                source="rulesets/server-stateful.rules", steps=steps, stateful=True,
                listen=[Listen("dut", "0.0.0.0", 22), Listen("dut", "0.0.0.0", 80),
                        Listen("cli", CLI, 80)],
                expect_unhit={"INPUT:1": "loopback traffic never crosses dut0/dut1, where "
                                         "ebpfw is attached"})
