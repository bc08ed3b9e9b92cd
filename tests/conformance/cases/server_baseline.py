"""rulesets/server-baseline.rules: stateless hardened server (ssh from the admin net,
http/https, icmp by type, drop the rest)."""

from .common import (CLI, CLI_ADMIN, DUT_LAN, DUT_WAN, SRV, Case, Connect, Listen, Send, Udp,
                     icmp, ruleset, tcp, udp)

INTERNET = "203.0.113.7"


def build() -> Case:
    steps = [
        # INPUT 2-5: bogus tcp flag combinations
        Send("cli", [tcp(INTERNET, DUT_WAN, 80, flags="FS")], "syn+fin"),
        Send("cli", [tcp(INTERNET, DUT_WAN, 22, flags="SR")], "syn+rst"),
        Send("cli", [tcp(INTERNET, DUT_WAN, 80, flags="")], "null scan"),
        Send("cli", [tcp(INTERNET, DUT_WAN, 80, flags="FSRPAU")], "xmas scan"),
        # INPUT 6-8: ssh
        Send("cli", [tcp(CLI_ADMIN, DUT_WAN, 22)], "ssh SYN from the admin net"),
        Connect("cli", DUT_WAN, 22, src=CLI_ADMIN, label="real ssh handshake from the admin net"),
        Connect("srv", DUT_LAN, 22, label="ssh from the LAN"),
        Send("cli", [tcp(SRV, DUT_WAN, 22)], "LAN source spoofed on the uplink"),
        Send("cli", [tcp(INTERNET, DUT_WAN, 22), tcp(INTERNET, DUT_LAN, 22)], "ssh from the internet"),
        # INPUT 9: web
        Connect("cli", DUT_WAN, 443, label="https handshake"),
        Send("cli", [tcp(INTERNET, DUT_WAN, 80, flags="S"), tcp(INTERNET, DUT_WAN, 80, flags="PA",
                                                               payload=b"GET / HTTP/1.0\r\n\r\n")],
             "http SYN and data"),
        # INPUT 10: return traffic of outgoing https
        Send("cli", [tcp("203.0.113.20", DUT_WAN, 51000, sport=443, flags="A"),
                     tcp("203.0.113.20", DUT_WAN, 51000, sport=443, flags="PA", payload=b"x" * 100)],
             "https replies (ACK)"),
        Send("cli", [tcp("203.0.113.20", DUT_WAN, 51000, sport=443, flags="SA")],
             "SYN-ACK from 443 is not a reply here"),
        # INPUT 11-13: udp
        Send("cli", [udp("203.0.113.53", DUT_WAN, 40001, sport=53)], "dns reply"),
        Send("cli", [udp("203.0.113.53", DUT_WAN, 53, sport=53)], "dns to a low port"),
        Send("cli", [udp("203.0.113.123", DUT_WAN, 123, sport=123)], "ntp"),
        Udp("srv", DUT_LAN, 161, label="snmp from the LAN"),
        Send("cli", [udp(INTERNET, DUT_WAN, 161)], "snmp from the internet"),
        # INPUT 14-18: icmp by type
        Send("cli", [icmp(INTERNET, DUT_WAN, 8)], "echo request"),
        Send("cli", [icmp(INTERNET, DUT_WAN, 0)], "echo reply"),
        Send("cli", [icmp(INTERNET, DUT_WAN, 3, 1), icmp(INTERNET, DUT_WAN, 3, 4)], "unreachables"),
        Send("cli", [icmp(INTERNET, DUT_WAN, 11, 0)], "ttl exceeded"),
        Send("cli", [icmp(INTERNET, DUT_WAN, 11, 1), icmp(INTERNET, DUT_WAN, 13)],
             "reassembly time exceeded, timestamp"),
        # INPUT policy
        Send("cli", [udp(INTERNET, DUT_WAN, 9999), tcp(INTERNET, DUT_WAN, 8080)], "closed ports"),
        # FORWARD policy: this host does not route
        Send("cli", [tcp(INTERNET, SRV, 80)], "forwarding attempt"),
        Send("srv", [udp(SRV, CLI, 53)], "forwarding attempt from the LAN"),
        # OUTPUT
        Connect("dut", SRV, 25, label="outgoing smtp is blocked"),
        Send("dut", [tcp(DUT_WAN, "203.0.113.25", 587)], "submission port"),
        Udp("dut", SRV, 514, label="syslog to the LAN"),
        Send("dut", [icmp(DUT_LAN, SRV, 5, 1)], "redirect"),
        Send("dut", [udp(DUT_WAN, CLI, 514)], "syslog to the uplink: only the policy"),
    ]
    return Case(
        name="server-baseline",
        ruleset=ruleset("server-baseline.rules"),
        source="rulesets/server-baseline.rules",
        steps=steps,
        listen=[Listen("dut", "0.0.0.0", 22), Listen("dut", "0.0.0.0", 443)],
        expect_unhit={
            "INPUT:1": "loopback traffic never crosses dut0/dut1, where ebpfw is attached",
            "OUTPUT:1": "loopback traffic never crosses dut0/dut1, where ebpfw is attached",
        },
    )
