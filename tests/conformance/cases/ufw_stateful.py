"""rulesets/ufw-stateful.rules: ufw's layout with its conntrack rules. The ufw-like script,
plus traffic whose verdict depends on connection state."""

from . import ufw_like
from .common import (CLI, DUT_WAN, SRV, Case, Connect, Send, Udp, icmp, ruleset, tcp)

NET = "203.0.113.7"


def build() -> Case:
    base = ufw_like.build()
    steps = list(base.steps) + [
        Send("cli", [tcp(NET, DUT_WAN, 22, flags="FS")], "SYN+FIN: INVALID, logging-deny then DROP"),
        Send("cli", [tcp(NET, DUT_WAN, 22, sport=41000, flags="A", seq=7000, ack=9000)],
             "stray ACK to the host (conntrack picks it up mid-stream)"),
        Udp("srv", CLI, 9999, label="LAN udp out; the port unreachable back is RELATED"),
        # a forwarded connection, crafted on both sides, with its teardown
        Send("srv", [tcp(SRV, NET, 443, sport=42000, flags="S", seq=100)], "LAN SYN out"),
        Send("cli", [tcp(NET, SRV, 42000, sport=443, flags="SA", seq=900, ack=101)], "SYN-ACK in"),
        Send("srv", [tcp(SRV, NET, 443, sport=42000, flags="A", seq=101, ack=901)], "ACK out"),
        Send("cli", [tcp(NET, SRV, 42000, sport=443, flags="FA", seq=901, ack=101)], "FIN in"),
        Send("srv", [tcp(SRV, NET, 443, sport=42000, flags="FA", seq=101, ack=902)], "FIN out"),
        Send("cli", [tcp(NET, SRV, 42000, sport=443, flags="A", seq=902, ack=102)], "last ACK in"),
        Send("cli", [tcp(NET, SRV, 42000, sport=443, flags="PA", seq=902, ack=102,
                         payload=b"late")], "data after the close"),
        Send("cli", [icmp(NET, SRV, 3, 1)], "unreachable quoting nothing we know"),
        Connect("dut", CLI, 80, label="host opens a connection (track-output NEW)"),
    ]
    return Case(name="ufw-stateful", ruleset=ruleset("ufw-stateful.rules"),
                source="rulesets/ufw-stateful.rules", steps=steps, listen=base.listen,
                stateful=True, expect_unhit={**base.expect_unhit, **DEAD_ICMP})


# Under conntrack an ICMP error is RELATED (accepted by rule 2) or, quoting no known flow,
# INVALID (dropped by rules 3-4): ufw's per-type accepts for errors are dead code.
DEAD_ICMP = {f"ufw-before-input:{n}": "ICMP errors are RELATED or INVALID before this rule"
             for n in (5, 6, 7)}
