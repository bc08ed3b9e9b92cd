"""-m connlimit (inline ruleset) in FORWARD, with crafted SYNs: the harness's real connections
end with an abortive close (a RST ends the connection, which then no longer counts), so the
held-open connections here are forwarded SYNs that the server side never answers (crafted
packets are dropped by the endpoints): each stays a tracked SYN_SENT connection, confirmed
when the DUT forwards it. Each step is far more than 2 jiffies after the last, so a refused
connection (never confirmed) is evicted by the next walk on either side, whichever CPU added it.

FORWARD port 80: --connlimit-above 2 per source: 2 forwarded, the 3rd dropped; another source
counts apart; a RST from the client kills one connection (no reply seen), the next SYN is
forwarded, the one after dropped again. Port 81: --connlimit-mask 24 groups two sources of one
/24. Port 82: --connlimit-upto 1 --connlimit-daddr -j ACCEPT, counted per destination."""

from .common import CLI, CLI_PUBLIC, SRV, SRV_PUBLIC, Case, Send, tcp

NEIGHBOUR = "10.91.1.77"   # the client's /24; crafted, only ever forwarded (never answered)

RULES = """*filter
:INPUT ACCEPT [0:0]
:FORWARD ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
-A FORWARD -p tcp -m tcp --dport 80 --tcp-flags FIN,SYN,RST,ACK SYN -m connlimit --connlimit-above 2 --connlimit-mask 32 --connlimit-saddr -j DROP
-A FORWARD -p tcp -m tcp --dport 81 --tcp-flags FIN,SYN,RST,ACK SYN -m connlimit --connlimit-above 1 --connlimit-mask 24 --connlimit-saddr -j DROP
-A FORWARD -p tcp -m tcp --dport 82 --tcp-flags FIN,SYN,RST,ACK SYN -m connlimit --connlimit-upto 1 --connlimit-mask 32 --connlimit-daddr -j ACCEPT
-A FORWARD -p tcp -m tcp --dport 82 -j DROP
COMMIT
"""


def build() -> Case:
    steps = [
        Send("cli", [tcp(CLI, SRV, 80, sport=41001)], "1st connection of a source: forwarded"),
        Send("cli", [tcp(CLI, SRV, 80, sport=41002)], "2nd: forwarded"),
        Send("cli", [tcp(CLI, SRV, 80, sport=41003)], "3rd: above 2, dropped"),
        Send("cli", [tcp(CLI_PUBLIC, SRV, 80, sport=41001)], "another source: a list of its own"),
        Send("cli", [tcp(CLI, SRV, 80, sport=41002)], "a retransmitted SYN: listed once, forwarded"),
        Send("cli", [tcp(CLI, SRV, 80, sport=41001, flags="R")], "RST before any reply: the connection ends"),
        Send("cli", [tcp(CLI, SRV, 80, sport=41004)], "the ended and the dropped ones evicted: forwarded"),
        Send("cli", [tcp(CLI, SRV, 80, sport=41005)], "above 2 again: dropped"),
        Send("cli", [tcp(CLI, SRV, 81, sport=42001)], "/24 group: 1st forwarded"),
        Send("cli", [tcp(NEIGHBOUR, SRV, 81, sport=42002)], "same /24, other address: dropped"),
        Send("cli", [tcp(CLI, SRV, 82, sport=43001)], "per destination: 1st accepted"),
        Send("cli", [tcp(CLI_PUBLIC, SRV, 82, sport=43002)], "same destination, other source: dropped"),
        Send("cli", [tcp(CLI, SRV_PUBLIC, 82, sport=43003)], "another destination: accepted"),
    ]
    return Case(name="connlimit", ruleset=RULES, source="(inline)", steps=steps)
