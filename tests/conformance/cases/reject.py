"""REJECT (inline ruleset): every IPv4 --reject-with, in INPUT, FORWARD and OUTPUT. The answers
(ICMP errors, TCP resets) are packets too: their delivery and their pass through OUTPUT are
compared like everything else. Several rejections in a row check the ICMP rate limit (this
topology sets icmp_ratemask=0, so the kernel does not limit)."""

from scapy.layers.inet import IP
from scapy.packet import Raw

from .common import CLI, DUT_WAN, SRV, Case, Connect, Send, Udp, icmp, tcp, udp

NET = "203.0.113.7"

RULES = """*filter
:INPUT ACCEPT [0:0]
:FORWARD ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
-A INPUT -p tcp -m tcp --dport 23 -j REJECT --reject-with tcp-reset
-A INPUT -p udp -m udp --dport 69 -j REJECT --reject-with icmp-port-unreachable
-A INPUT -p tcp -m tcp --dport 25 -j REJECT --reject-with icmp-host-prohibited
-A INPUT -p icmp -m icmp --icmp-type 13 -j REJECT --reject-with icmp-admin-prohibited
-A INPUT -p udp -m udp --dport 70 -j REJECT --reject-with icmp-net-prohibited
-A FORWARD -p tcp -m tcp --dport 23 -j REJECT --reject-with tcp-reset
-A FORWARD -p udp -m udp --dport 69 -j REJECT --reject-with icmp-net-unreachable
-A FORWARD -p udp -m udp --dport 70 -j REJECT --reject-with icmp-host-unreachable
-A FORWARD -p 47 -j REJECT --reject-with icmp-proto-unreachable
-A OUTPUT -p udp -m udp --dport 514 -j REJECT --reject-with icmp-port-unreachable
-A OUTPUT -p tcp -m tcp --dport 25 -j REJECT --reject-with tcp-reset
COMMIT
"""


def build() -> Case:
    gre = IP(src=NET, dst=SRV, proto=47) / Raw(b"\x00\x00\x08\x00" + b"\x00" * 20)
    steps = [
        Send("cli", [tcp(NET, DUT_WAN, 23)], "telnet to the host: tcp-reset"),
        Send("cli", [tcp(NET, DUT_WAN, 23, flags="A", seq=5, ack=7)], "ACK to telnet: reset"),
        Send("cli", [tcp(NET, DUT_WAN, 23, flags="R")], "RST to telnet: never answered"),
        Send("cli", [udp(NET, DUT_WAN, 69)] * 3, "tftp three times: port unreachable each"),
        Send("cli", [tcp(NET, DUT_WAN, 25)], "smtp: host prohibited"),
        Send("cli", [icmp(NET, DUT_WAN, 13)], "timestamp: admin prohibited"),
        Send("cli", [icmp(NET, DUT_WAN, 3, 3)], "an icmp error is never answered"),
        Send("cli", [udp(NET, DUT_WAN, 70)], "net prohibited"),
        Send("cli", [tcp(NET, SRV, 23)], "forwarded telnet: tcp-reset"),
        Send("cli", [udp(NET, SRV, 69), udp(NET, SRV, 70)], "forwarded udp: net / host unreachable"),
        Send("cli", [gre], "forwarded gre: protocol unreachable"),
        Send("srv", [udp(SRV, CLI, 69)], "from the LAN side"),
        Connect("cli", SRV, 23, label="real telnet through the router: refused"),
        Udp("dut", SRV, 514, label="host syslog: rejected in OUTPUT"),
        Connect("dut", SRV, 25, label="host smtp: reset in OUTPUT"),
    ]
    return Case(name="reject", ruleset=RULES, source="(inline)", steps=steps,
                known_difference=KNOWN)


KNOWN = ("the answers to packets rejected in OUTPUT (steps 14, 15) enter lo unjudged and the ICMP "
         "error comes from the rejected packet's destination; iptables answers from the host's own "
         "address and its answer passes OUTPUT (-o lo) and INPUT (-i lo), which count it: ebpfw "
         "does not see lo. Answers to INPUT and FORWARD are judged by OUTPUT on both sides")


OUTPUT_RULES = """*filter
:INPUT ACCEPT [0:0]
:FORWARD ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
-A INPUT -p tcp -m tcp --dport 23 -j REJECT --reject-with tcp-reset
-A INPUT -p tcp -m tcp --dport 24 -j REJECT --reject-with tcp-reset
-A INPUT -p udp -m udp --dport 69 -j REJECT --reject-with icmp-port-unreachable
-A INPUT -p udp -m udp --dport 70 -j REJECT --reject-with icmp-host-prohibited
-A FORWARD -p tcp -m tcp --dport 23 -j REJECT --reject-with tcp-reset
-A FORWARD -p udp -m udp --dport 5000 -m conntrack --ctstate ESTABLISHED -m length --length 100:1500 -j REJECT --reject-with icmp-admin-prohibited
-A FORWARD -p udp -m udp --dport 69 -j REJECT --reject-with icmp-net-unreachable
-A OUTPUT -p tcp -m tcp --tcp-flags RST RST -m conntrack --ctstate RELATED
-A OUTPUT -p tcp -m tcp --tcp-flags RST RST -m conntrack ! --ctstate RELATED
-A OUTPUT -p tcp -m tcp --sport 24 -j DROP
-A OUTPUT -p icmp -m conntrack --ctstate INVALID
-A OUTPUT -p icmp -m conntrack --ctstate RELATED
-A OUTPUT -p icmp -m icmp --icmp-type 3/10 -j DROP
-A OUTPUT -o dut0 -p icmp -m icmp --icmp-type 3/13
-A OUTPUT -m conntrack --ctstate NEW
COMMIT
"""


def build_output_judged() -> Case:
    """The answers to INPUT and FORWARD pass OUTPUT, as the kernel sends them through LOCAL_OUT:
    counted by OUTPUT's rules and policy, dropped by an OUTPUT DROP, with the conntrack state
    the kernel gives them (a reset: RELATED, nf_conntrack_attach; an ICMP error: RELATED to a
    tracked connection it quotes, else INVALID). Compared strictly."""
    steps = [
        Send("cli", [tcp(NET, DUT_WAN, 23)], "telnet to the host: reset, RELATED in OUTPUT"),
        Send("cli", [tcp(NET, DUT_WAN, 24, flags="A", seq=9, ack=77)], "port 24: the reset is dropped by OUTPUT"),
        Send("cli", [udp(NET, DUT_WAN, 69)], "tftp: port unreachable, INVALID in OUTPUT (nothing tracked)"),
        Send("cli", [udp(NET, DUT_WAN, 70)], "host prohibited: dropped by OUTPUT"),
        Send("cli", [tcp(NET, SRV, 23)], "forwarded telnet: reset through OUTPUT"),
        Send("cli", [udp(NET, SRV, 69)], "forwarded tftp: net unreachable through OUTPUT"),
        Send("cli", [udp(NET, SRV, 5000, sport=41000)], "a udp flow through the router"),
        Send("srv", [udp(SRV, NET, 41000, sport=5000)], "its reply: ESTABLISHED"),
        Send("cli", [udp(NET, SRV, 5000, sport=41000, payload=b"x" * 120)],
             "a long datagram of the flow: admin prohibited, RELATED in OUTPUT, out of dut0"),
    ]
    return Case(name="reject-output-judged", ruleset=OUTPUT_RULES, source="(inline)", steps=steps)
