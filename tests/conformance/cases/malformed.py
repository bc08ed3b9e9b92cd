"""Header layouts a parser can get wrong (inline rulesets): IPv4 options (a longer IP header
moves the transport header) and transport headers cut short. iptables' tcp, udp, icmp and
multiport matches drop a packet whose header they cannot read ("hotdrop": dropped at once, no
counter moves), but only when such a match is evaluated for it; rules that look at the IP
header alone match it normally."""

from scapy.layers.inet import ICMP, IP, TCP, UDP, IPOption_NOP, IPOption_RR
from scapy.packet import Raw

from .common import DUT_WAN, SRV, Case, Send

NET = "203.0.113.7"

RULES = """*filter
:INPUT ACCEPT [0:0]
:FORWARD ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
-A INPUT -s 198.51.100.99/32 -j ACCEPT
-A INPUT -p tcp -m tcp --dport 22 -j ACCEPT
-A INPUT -p udp -m multiport --dports 53,5353 -j ACCEPT
-A INPUT -p icmp -m icmp --icmp-type 8 -j ACCEPT
-A INPUT -p tcp -j DROP
-A FORWARD -s 198.51.100.99/32 -j ACCEPT
-A FORWARD -p tcp -m tcp --dport 22 -j DROP
-A FORWARD -p udp -m udp --dport 53 -j ACCEPT
-A FORWARD -p icmp -m icmp --icmp-type 8 -j DROP
-A FORWARD -p tcp -m tcp --tcp-flags SYN,ACK SYN -j ACCEPT
-A FORWARD -p tcp -j DROP
-A FORWARD -p udp -j DROP
COMMIT
"""


def _cut(ip: IP, l4: bytes, keep: int) -> IP:
    return ip / Raw(l4[:keep])


def build_ip_options() -> Case:
    nops = [IPOption_NOP()] * 4
    rr = [IPOption_RR(routers=["0.0.0.0"] * 2)]
    steps = [
        Send("cli", [IP(src=NET, dst=SRV, options=nops) / TCP(sport=1000, dport=22, flags="S")],
             "tcp/22 with 4 bytes of NOP options (forward)"),
        Send("cli", [IP(src=NET, dst=SRV, options=nops) / TCP(sport=22, dport=1000, flags="S")],
             "sport 22: ports read at the wrong offset would see dport 22"),
        Send("cli", [IP(src=NET, dst=SRV, options=rr) / UDP(sport=1000, dport=53) / Raw(b"q")],
             "udp/53 with a record-route option (forward)"),
        Send("cli", [IP(src=NET, dst=SRV, options=nops) / ICMP(type=8) / Raw(b"p" * 8)],
             "ping with options (forward)"),
        Send("cli", [IP(src=NET, dst=DUT_WAN, options=nops) / TCP(sport=1000, dport=22, flags="S")],
             "tcp/22 with options to the DUT"),
        Send("cli", [IP(src=NET, dst=DUT_WAN, options=nops) / UDP(sport=1000, dport=5353)
                     / Raw(b"q")], "udp/5353 with options to the DUT"),
    ]
    return Case(name="ip-options", ruleset=RULES, source="(inline)", steps=steps)


def build_truncated() -> Case:
    tcp = bytes(TCP(sport=1000, dport=22, flags="S"))
    udp = bytes(UDP(sport=1000, dport=53, len=8, chksum=0))
    icmp = bytes(ICMP(type=8, id=1, seq=1))
    odd = IP(src="198.51.100.99", dst=SRV, proto=6)
    steps = [
        Send("cli", [_cut(IP(src=NET, dst=SRV, proto=6), tcp, 12)], "tcp header cut at 12 bytes (forward)"),
        Send("cli", [_cut(IP(src=NET, dst=SRV, proto=17), udp, 4)], "udp header cut at 4 bytes (forward)"),
        Send("cli", [_cut(IP(src=NET, dst=SRV, proto=1), icmp, 4)], "icmp header cut at 4 bytes (forward)"),
        Send("cli", [_cut(odd, tcp, 12)], "cut tcp from a source an earlier rule accepts"),
        Send("cli", [_cut(IP(src=NET, dst=DUT_WAN, proto=6), tcp, 12)], "cut tcp to the DUT"),
        Send("cli", [_cut(IP(src=NET, dst=DUT_WAN, proto=17), udp, 2)], "cut udp to the DUT"),
        Send("cli", [_cut(IP(src=NET, dst=DUT_WAN, proto=1), icmp, 2)], "cut icmp to the DUT"),
    ]
    return Case(name="truncated-headers", ruleset=RULES, source="(inline)", steps=steps)
