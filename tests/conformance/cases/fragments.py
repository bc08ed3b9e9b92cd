"""IP fragments (not a corpus file: the rulesets are inline). Forwarded fragments without
conntrack are seen one by one by both iptables and ebpfw: a non-first fragment has no ports, so
port matches fail and protocol-only rules match. Fragments for the DUT itself are reassembled
by the kernel before INPUT, and conntrack reassembles before FORWARD: iptables then sees one
datagram, which ebpfw at XDP/TC cannot (known differences, see docs/CONFORMANCE.md)."""

from scapy.layers.inet import IP, TCP, UDP, fragment
from scapy.packet import Raw

from .common import DUT_WAN, SRV, Case, Send

NET = "203.0.113.7"

FORWARD_RULES = """*filter
:INPUT ACCEPT [0:0]
:FORWARD ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
-A FORWARD -p udp -m udp --dport 53 -j ACCEPT
-A FORWARD -p udp -j ACCEPT
-A FORWARD -p tcp -m tcp --dport 22 -j DROP
-A FORWARD -p tcp -m tcp --tcp-flags SYN,ACK SYN -j DROP
-A FORWARD -p tcp -m multiport --dports 80,443 -j DROP
-A FORWARD -p tcp -j ACCEPT
COMMIT
"""


def _frags(pkt, size: int = 48) -> list:
    return fragment(pkt, size)


def build_forward() -> Case:
    udp = IP(src=NET, dst=SRV) / UDP(sport=1000, dport=53) / Raw(b"x" * 100)
    ssh = IP(src=NET, dst=SRV) / TCP(sport=1000, dport=22, flags="S") / Raw(b"y" * 100)
    web = IP(src=NET, dst=SRV) / TCP(sport=1000, dport=443, flags="A") / Raw(b"z" * 100)
    return Case(
        name="fragments-forward", ruleset=FORWARD_RULES, source="(inline)",
        steps=[Send("cli", _frags(udp), "udp datagram in three fragments"),
               Send("cli", _frags(udp)[1:], "only the non-first fragments"),
               Send("cli", _frags(ssh), "tcp SYN to port 22 in fragments"),
               Send("cli", _frags(web), "tcp to 443 in fragments"),
               Send("cli", [udp], "the same udp datagram whole"),
               Send("cli", _frags(ssh, 8)[:1], "tcp tinygram: 8-byte first fragment (hotdropped)"),
               Send("cli", _frags(ssh, 8)[2:], "tcp fragments from offset 16 on"),
               Send("cli", _frags(udp, 8)[:1], "udp header alone in the first fragment")])


def build_tcp_offset1() -> Case:
    ssh = IP(src=NET, dst=SRV) / TCP(sport=1000, dport=22, flags="S") / Raw(b"y" * 100)
    return Case(
        name="fragments-tcp-offset1", ruleset=FORWARD_RULES, source="(inline)",
        # iptables' tcp match drops a TCP fragment at offset 8 (fragoff 1, the flag-overwrite
        # attack: 'Dropping evil TCP offset=1 frag', hotdrop); ebpfw does the same
        steps=[Send("cli", _frags(ssh, 8)[1:2], "tcp fragment at offset 8 (fragoff 1)")])


def build_input() -> Case:
    rules = FORWARD_RULES.replace("-A FORWARD", "-A INPUT").replace("-A INPUT -p tcp -j ACCEPT",
                                                                     "-A INPUT -p tcp -j DROP")
    udp = IP(src=NET, dst=DUT_WAN) / UDP(sport=1000, dport=53) / Raw(b"x" * 100)
    return Case(
        name="fragments-input", ruleset=rules, source="(inline)",
        steps=[Send("cli", _frags(udp), "udp datagram to the DUT in three fragments"),
               Send("cli", _frags(udp)[1:], "non-first fragments only (never reassembled)")],
        known_difference="the kernel reassembles fragments for the host before INPUT, so "
                         "iptables counts one datagram; ebpfw sees each fragment at ingress")


def build_conntrack() -> Case:
    rules = FORWARD_RULES.replace("-A FORWARD -p udp -j ACCEPT",
                                  "-A FORWARD -m conntrack --ctstate NEW -p udp -j ACCEPT")
    udp = IP(src=NET, dst=SRV) / UDP(sport=1000, dport=5353) / Raw(b"x" * 100)
    return Case(
        name="fragments-conntrack", ruleset=rules, source="(inline)", stateful=True,
        steps=[Send("cli", _frags(udp), "udp datagram in fragments through conntrack")],
        known_difference="with conntrack the kernel reassembles before FORWARD (nf_defrag), "
                         "so iptables counts one datagram; ebpfw sees each fragment")
