"""rulesets/router.rules: stateless edge router; WAN = cli side (dut0), LAN = srv side (dut1)."""

from .common import (CLI, CLI_PUBLIC, DUT_LAN, DUT_WAN, SRV, SRV_CONTAINER, SRV_PUBLIC, Case,
                     Connect, Listen, Send, Udp, icmp, ruleset, tcp, udp)

WAN_HOST = "203.0.113.7"


def build() -> Case:
    steps = [
        # INPUT
        Connect("srv", DUT_LAN, 22, label="ssh from the LAN (mgmt 1)"),
        Send("srv", [tcp("192.168.50.5", DUT_LAN, 8443)], "admin range on the LAN side (mgmt 2)"),
        Send("srv", [tcp("192.168.50.21", DUT_LAN, 8443)], "just outside the admin range (mgmt 3)"),
        Send("cli", [tcp(WAN_HOST, DUT_WAN, 8443)], "management from the WAN (mgmt 3)"),
        Send("cli", [udp(WAN_HOST, DUT_WAN, 53)], "dns from the WAN"),
        Send("srv", [udp(SRV, DUT_LAN, 53)], "dns from the LAN (policy ACCEPT, port unreachable back)"),
        Send("cli", [udp(WAN_HOST, DUT_WAN, 161), udp(WAN_HOST, DUT_WAN, 162)], "snmp from the WAN"),
        Send("srv", [icmp(SRV, DUT_LAN, 8)], "ping from the LAN"),
        Send("cli", [icmp(WAN_HOST, DUT_WAN, 8)], "ping from the WAN"),
        Send("cli", [tcp(WAN_HOST, DUT_WAN, 80)], "SYN from the WAN"),
        Send("cli", [tcp(WAN_HOST, DUT_WAN, 80, flags="A")], "stray ACK from the WAN (policy)"),
        Send("cli", [udp(WAN_HOST, DUT_WAN, 9999)], "closed udp port: unreachable dropped in OUTPUT"),
        Send("cli", [tcp("192.168.1.1", DUT_WAN, 22)], "bogon source to the router"),
        # FORWARD: bogons from the WAN
        Send("cli", [tcp("192.168.1.1", SRV, 80), tcp("172.20.0.1", SRV, 80),
                     tcp("100.64.1.1", SRV, 80), tcp("198.18.0.1", SRV, 80),
                     tcp("10.91.2.77", SRV, 80)], "bogon sources"),
        Send("cli", [tcp(WAN_HOST, "203.0.113.99", 80)], "WAN hairpin"),
        # lan-out
        Connect("srv", CLI_PUBLIC, 443, src=SRV_CONTAINER, label="container to the web"),
        Send("srv", [udp(SRV_PUBLIC, CLI, 53)], "non-LAN source leaving (antispoof)"),
        Send("srv", [tcp(SRV, "203.0.113.25", 25), tcp(SRV, "203.0.113.25", 587)], "outgoing smtp"),
        Udp("srv", CLI_PUBLIC, 53, label="dns query out (unreachable comes back)"),
        Connect("srv", CLI, 80, label="LAN to a WAN web server"),
        Send("srv", [icmp(SRV, CLI, 8)], "ping out"),
        Send("srv", [icmp(SRV, CLI, 13)], "timestamp out (FORWARD policy)"),
        Send("srv", [udp(SRV, CLI, 9999)], "other udp out (FORWARD policy)"),
        # wan-in
        Send("cli", [tcp(WAN_HOST, SRV, 40000, sport=80, flags="A")], "reply ACK in"),
        Connect("cli", SRV, 443, label="port-forwarded https"),
        Send("cli", [tcp(WAN_HOST, SRV, 80)], "SYN to a LAN host"),
        Send("cli", [tcp(WAN_HOST, SRV_PUBLIC, 25)], "smtp to the public LAN range"),
        Send("cli", [udp("203.0.113.53", SRV, 5353, sport=53)], "dns reply in"),
        Send("cli", [udp(WAN_HOST, SRV, 9999)], "other udp in"),
        Send("cli", [icmp(WAN_HOST, SRV, 0), icmp(WAN_HOST, SRV, 3, 3), icmp(WAN_HOST, SRV, 11)],
             "icmp replies and errors in"),
        Send("cli", [udp(WAN_HOST, SRV, 53), icmp(WAN_HOST, SRV, 8)],
             "unmatched in wan-in: RETURN, then FORWARD policy"),
        # hairpin inside the LAN
        Send("srv", [tcp(SRV, "172.17.0.9", 80)], "LAN hairpin"),
        # OUTPUT
        Send("dut", [udp(DUT_LAN, SRV_PUBLIC, 514)], "router to a non-10.91 LAN address"),
        Udp("dut", CLI, 123, label="ntp to the WAN"),
        Send("dut", [icmp(DUT_WAN, CLI, 8)], "router ping to the WAN (policy)"),
    ]
    return Case(
        name="router",
        ruleset=ruleset("router.rules"),
        source="rulesets/router.rules",
        steps=steps,
        listen=[Listen("dut", "0.0.0.0", 22), Listen("dut", "0.0.0.0", 8443),
                Listen("cli", CLI_PUBLIC, 443), Listen("cli", CLI, 80),
                Listen("srv", SRV, 443)],
    )
