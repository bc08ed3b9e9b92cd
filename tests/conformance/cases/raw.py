"""The raw table (inline ruleset): NOTRACK and CT --notrack in PREROUTING and OUTPUT, a raw
DROP by source, a user chain with RETURN, and a stateful filter table that accepts UNTRACKED
packets and must not see the exempted flows as ESTABLISHED. Both tables' counters are compared
(the harness reads the raw table's chains as "raw CHAIN"). The kernel's own answers to exempted
packets (port unreachable from the DUT and from the server) carry no connection on either side.
REJECT answers pass raw OUTPUT: NOTRACK leaves them alone (they carry their original's connection,
nf_ct_attach), so the reset to a tracked SYN is RELATED and the one to an untracked SYN INVALID.
Conntrack matches inside raw see no connection (INVALID), UNTRACKED after a NOTRACK, and the
answers' states, which NOTRACK does not change."""

from .common import CLI_ADMIN, DUT_WAN, SRV, Case, Connect, Send, Udp, icmp, tcp, udp
from ..packets import Listen

NET = "203.0.113.7"
BLOCKED = "203.0.113.66"

RULES = f"""*raw
:PREROUTING ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:rawchk - [0:0]
-A PREROUTING -p udp -m udp --dport 53 -m conntrack --ctstate INVALID
-A PREROUTING -p udp -m udp --dport 53 -m conntrack ! --ctstate INVALID
-A PREROUTING -p udp -m udp --dport 53 -j NOTRACK
-A PREROUTING -p udp -m udp --dport 53 -m state --state UNTRACKED
-A PREROUTING -p udp -m udp --dport 53 -m state --state INVALID
-A PREROUTING -s {BLOCKED}/32 -j DROP
-A PREROUTING -p tcp -j rawchk
-A PREROUTING -p udp -m udp --dport 54 -j CT --notrack
-A PREROUTING -p tcp -m tcp --dport 24 -j NOTRACK
-A OUTPUT -p udp -m udp --sport 53 -j NOTRACK
-A OUTPUT -p tcp -m tcp --tcp-flags RST RST -m conntrack --ctstate RELATED
-A OUTPUT -p tcp -m tcp --tcp-flags RST RST -m conntrack --ctstate INVALID
-A OUTPUT -p tcp -m tcp --tcp-flags RST RST -j NOTRACK
-A OUTPUT -p tcp -m tcp --tcp-flags RST RST -m conntrack --ctstate RELATED,INVALID
-A OUTPUT -p tcp -m tcp --tcp-flags RST RST -m conntrack --ctstate UNTRACKED
-A OUTPUT -p udp -m udp --dport 514 -j NOTRACK
-A rawchk -s 192.168.50.0/24 -j RETURN
-A rawchk -p tcp -m tcp --dport 8080 -j NOTRACK
COMMIT
*filter
:INPUT DROP [0:0]
:FORWARD DROP [0:0]
:OUTPUT ACCEPT [0:0]
-A INPUT -p tcp -m tcp --dport 23 -j REJECT --reject-with tcp-reset
-A INPUT -p tcp -m tcp --dport 24 -j REJECT --reject-with tcp-reset
-A INPUT -m conntrack --ctstate UNTRACKED -j ACCEPT
-A INPUT -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT
-A INPUT -p tcp -m tcp --dport 22 -j ACCEPT
-A INPUT -p icmp -j ACCEPT
-A FORWARD -m state --state UNTRACKED -j ACCEPT
-A FORWARD -m state --state RELATED,ESTABLISHED -j ACCEPT
-A FORWARD -p tcp -m tcp --dport 80 -j ACCEPT
-A OUTPUT -m conntrack --ctstate UNTRACKED
-A OUTPUT -m conntrack --ctstate NEW
-A OUTPUT -m conntrack --ctstate ESTABLISHED
-A OUTPUT -m conntrack --ctstate INVALID
-A OUTPUT -m conntrack --ctstate RELATED
COMMIT
"""


def build() -> Case:
    steps = [
        Send("cli", [udp(NET, DUT_WAN, 53)] * 2, "dns to the host: untracked, answered port unreachable"),
        Send("cli", [udp(BLOCKED, DUT_WAN, 53), tcp(BLOCKED, DUT_WAN, 22)], "blocked source: dropped in raw"),
        Send("cli", [icmp(NET, DUT_WAN, 8)], "ping: tracked, NEW then its reply ESTABLISHED"),
        Connect("cli", DUT_WAN, 22, label="ssh from the internet: rawchk falls through, tracked"),
        Connect("cli", DUT_WAN, 22, src=CLI_ADMIN, label="ssh from the admin net: RETURN, tracked"),
        Connect("cli", DUT_WAN, 8080, label="8080: the SYN untracked, the SYN-ACK tracked (INVALID)"),
        Udp("dut", SRV, 514, label="host syslog: untracked in OUTPUT; the error back is not RELATED"),
        Udp("dut", SRV, 515, label="host lpd: tracked NEW; the error back is RELATED"),
        Send("cli", [udp(NET, SRV, 54)] * 2, "forwarded CT --notrack: accepted untracked"),
        Connect("cli", SRV, 80, label="forwarded web: tracked, NEW and ESTABLISHED"),
        Send("cli", [udp(NET, SRV, 55)], "forwarded udp, tracked NEW: FORWARD policy"),
        Send("cli", [tcp(NET, DUT_WAN, 23)], "telnet rejected: the reset is RELATED, raw's NOTRACK a no-op"),
        Send("cli", [tcp(NET, DUT_WAN, 24)], "an untracked SYN rejected: its reset is INVALID"),
    ]
    return Case(name="raw", ruleset=RULES, source="(inline)", steps=steps, stateful=True,
                listen=[Listen("dut", "0.0.0.0", 22), Listen("dut", "0.0.0.0", 8080), Listen("srv", SRV, 80)])


MARK_RULES = """*raw
:PREROUTING ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
-A PREROUTING -p udp -m udp --dport 54 -j MARK --set-xmark 0x5/0xffffffff
-A PREROUTING -m mark --mark 0x5 -j NOTRACK
-A PREROUTING -m connmark ! --mark 0x1
-A PREROUTING -p tcp -m tcp --dport 80 -j CONNMARK --set-xmark 0x7/0xffffffff
-A OUTPUT -p udp -m udp --dport 514 -j MARK --set-xmark 0x9/0xffffffff
COMMIT
*filter
:INPUT ACCEPT [0:0]
:FORWARD ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
-A INPUT -m conntrack --ctstate UNTRACKED
-A FORWARD -m mark --mark 0x5 -m state --state UNTRACKED
-A FORWARD -m connmark --mark 0x7
-A FORWARD -m conntrack --ctstate NEW
-A OUTPUT -m mark --mark 0x9 -m conntrack --ctstate NEW
COMMIT
"""


def build_marks() -> Case:
    """MARK, -m mark, -m connmark and CONNMARK in the raw table (the ruleset runs at TC ingress:
    MARK needs an skb). Raw has no connection yet: -m connmark never matches there, CONNMARK
    does nothing; the filter table sees raw's mark."""
    steps = [
        Send("cli", [udp(NET, SRV, 54)] * 2, "forwarded udp 54: marked and untracked in raw"),
        Connect("cli", SRV, 80, label="forwarded web: CONNMARK in raw is a no-op"),
        Udp("dut", SRV, 514, label="host syslog: marked in raw OUTPUT"),
    ]
    return Case(name="raw-marks", ruleset=MARK_RULES, source="(inline)", steps=steps, stateful=True,
                listen=[Listen("srv", SRV, 80)])
