"""rulesets/ufw-like.rules: ufw's chain layout (stateless parts). cli = uplink, srv = LAN."""

from .common import (CLI, DUT_LAN, DUT_WAN, SRV, SRV_PUBLIC, Case, Connect, Listen, Send, Udp,
                     icmp, ruleset, tcp, udp)

NET = "203.0.113.7"


def build() -> Case:
    steps = [
        # ufw-before-input
        Send("cli", [icmp(NET, DUT_WAN, 3, 3), icmp(NET, DUT_WAN, 11), icmp(NET, DUT_WAN, 12),
                     icmp(NET, DUT_WAN, 8)], "icmp types ufw allows"),
        Send("cli", [icmp(NET, DUT_WAN, 13)], "icmp type ufw does not allow (policy)"),
        Send("srv", [udp("10.91.2.2", DUT_LAN, 68, sport=67)], "dhcp reply"),
        # ufw-user-input
        Connect("cli", DUT_WAN, 22, label="ssh"),
        Connect("srv", DUT_LAN, 443, label="https from the LAN"),
        Send("cli", [tcp(NET, DUT_WAN, 80)], "http"),
        Send("srv", [udp(SRV, DUT_LAN, 5353)], "mdns from the LAN"),
        Send("cli", [udp("198.51.100.99", DUT_WAN, 5353)], "mdns from elsewhere (policy)"),
        Send("cli", [tcp("203.0.113.44", DUT_WAN, 2222)], "limit-accept target"),
        Send("cli", [udp("203.0.113.44", DUT_WAN, 60500)], "mosh range via limit-accept's RETURN"),
        Send("cli", [udp(NET, DUT_WAN, 61001)], "just past the mosh range (policy)"),
        # ufw-after-input: noisy windows ports skip straight to the policy
        Send("cli", [udp(NET, DUT_WAN, 137), udp(NET, DUT_WAN, 138), tcp(NET, DUT_WAN, 139),
                     tcp(NET, DUT_WAN, 445), udp(NET, DUT_WAN, 67), udp(NET, DUT_WAN, 68)],
             "netbios, smb, dhcp"),
        # FORWARD
        Send("cli", [icmp(NET, SRV, 3, 1), icmp(NET, SRV, 11), icmp(NET, SRV, 12),
                     icmp(NET, SRV, 8)], "forwarded icmp"),
        Connect("srv", CLI, 80, label="LAN to uplink (route allow), SYN-ACK comes back (policy)"),
        Send("cli", [tcp(NET, SRV, 8080)], "route allow to 10.91.2.2:8080"),
        Send("cli", [tcp(NET, SRV, 8081)], "routed but not allowed (policy)"),
        # OUTPUT
        Connect("dut", SRV_PUBLIC, 25, label="smtp to the LAN relay (skip to policy: ACCEPT)"),
        Send("dut", [tcp(DUT_WAN, "203.0.113.25", 25)], "smtp out of the uplink"),
        Udp("dut", CLI, 53, label="udp out (track-output)"),
        Send("dut", [icmp(DUT_WAN, CLI, 8)], "ping out (policy)"),
    ]
    return Case(
        name="ufw-like", ruleset=ruleset("ufw-like.rules"), source="rulesets/ufw-like.rules",
        steps=steps,
        listen=[Listen("dut", "0.0.0.0", 22), Listen("dut", "0.0.0.0", 443),
                Listen("dut", "0.0.0.0", 2222), Listen("cli", CLI, 80)],
        expect_unhit={
            "ufw-before-input:1": "loopback traffic never crosses dut0/dut1, where ebpfw is attached",
            "ufw-before-output:1": "loopback traffic never crosses dut0/dut1, where ebpfw is attached",
            "ufw-skip-to-policy-forward:1": "no rule jumps to this chain (as in ufw's default layout)",
        },
    )
