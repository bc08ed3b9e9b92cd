"""Rulesets the property-based test found ebpfw mishandling, kept as fixed cases (inline).
A case carries `known_difference` while its bug is open; once fixed, the test fails and asks
for the mark to be removed, and the case stays as a regression test."""

from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.packet import Raw

from .common import Case, Send

# found by test_random_rulesets_match: `ebpfw apply` failed, the kernel refused
# ebpfw_xdp_cont with E2BIG ("Program too large (625 insns), at most 4096 insns");
# fixed by the tail-call datapath, kept as a regression test.
E2BIG_RULES = """*filter
:INPUT ACCEPT [0:0]
:FORWARD DROP [0:0]
:OUTPUT ACCEPT [0:0]
:U0 - [0:0]
:U1 - [0:0]
-A INPUT -p 47
-A FORWARD ! -s 10.91.2.2/32 -i cli0 ! -p icmp -j RETURN
-A OUTPUT -d 203.0.113.0/24 -p udp -m udp --dport 80:443 -j DROP
-A OUTPUT -s 10.91.1.1/32 -d 198.51.100.128/25 ! -p sctp -j DROP
-A OUTPUT ! -s 198.51.100.0/24 -p sctp -j DROP
-A OUTPUT -s 203.0.113.0/24 -p 47 -m iprange --dst-range 198.51.100.10-198.51.100.10 -j DROP
-A OUTPUT -d 172.17.0.0/16 ! -o cli0
-A U0 ! -d 0.0.0.0/0 -p udp -m multiport ! --sports 25,65535 -m iprange --dst-range 10.91.1.0-10.91.2.255 -j RETURN
-A U0 ! -s 10.91.1.2/32 -i dut1 ! -o dut+ -p tcp -m tcp ! --tcp-flags URG URG -j ACCEPT
COMMIT
"""


def build_e2big() -> Case:
    return Case(
        name="regression-e2big", ruleset=E2BIG_RULES, source="(inline)",
        steps=[Send("srv", [IP(src="198.51.100.200", dst="10.91.1.1") / UDP(sport=81, dport=53)
                            / Raw(b"hypothesis")]),
               Send("dut", [IP(dst="10.91.2.2") / ICMP(type=0, code=1) / Raw(b"\x00" * 28)]),
               Send("cli", [IP(src="203.0.113.150", dst="198.51.100.200")
                            / TCP(sport=0, dport=80, flags="P", seq=1000, window=1024)]),
               Send("dut", [IP(dst="203.0.113.7") / UDP(sport=443, dport=443) / Raw(b"x")])])
