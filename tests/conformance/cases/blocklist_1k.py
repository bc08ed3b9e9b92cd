"""rulesets/blocklist-1k.rules: 1000 source drops (800 /32, 200 /24) in one chain, consulted
from INPUT and FORWARD for traffic entering on dut0. Every entry is hit once, alternately by
a packet to the DUT and by one routed through it; a /24 entry is hit from a host inside it."""

from .common import (CLI, DUT_LAN, DUT_WAN, SRV, Case, Connect, Listen, Send, Udp,
                     chain_sources, chunks, host_in, ruleset, tcp, udp)


def build() -> Case:
    text = ruleset("blocklist-1k.rules")
    entries = chain_sources(text, "blocklist")
    packets = []
    for i, prefix in enumerate(entries):
        src = host_in(prefix, 77 + i)
        if i % 2:
            packets.append(tcp(src, DUT_WAN, 22, sport=1024 + i))
        else:
            packets.append(udp(src, SRV, 53, sport=1024 + i))
    steps = [Send("cli", group, f"blocked sources {k * 100 + 1}-{k * 100 + len(group)}")
             for k, group in enumerate(chunks(packets, 100))]
    steps += [
        Connect("cli", DUT_WAN, 22, label="ssh from an unlisted source"),
        Send("cli", [udp("203.0.113.77", DUT_WAN, 9999)], "unlisted source, closed port (policy)"),
        Send("cli", [tcp("203.0.113.77", SRV, 80)], "unlisted source routed to the LAN (policy)"),
        Connect("srv", CLI, 80, label="LAN to uplink"),
        Udp("dut", SRV, 514, label="to the LAN (OUTPUT 1)"),
        Send("dut", [udp(DUT_LAN, "198.51.100.10", 514)], "to elsewhere (OUTPUT policy)"),
    ]
    return Case(name="blocklist-1k", ruleset=text, source="rulesets/blocklist-1k.rules",
                steps=steps, listen=[Listen("dut", "0.0.0.0", 22), Listen("cli", CLI, 80)])
