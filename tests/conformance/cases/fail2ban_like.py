"""rulesets/fail2ban-like.rules: fail2ban jails f2b-sshd (40 bans) and f2b-nginx-http-auth."""

from .common import (CLI, DUT_WAN, SRV, Case, Connect, Listen, Send, Udp, chain_sources,
                     chunks, ruleset, tcp, udp)


def build() -> Case:
    text = ruleset("fail2ban-like.rules")
    ssh_bans = [s.split("/")[0] for s in chain_sources(text, "f2b-sshd")]
    web_bans = [s.split("/")[0] for s in chain_sources(text, "f2b-nginx-http-auth")]
    steps = []
    for i, group in enumerate(chunks(ssh_bans, 10)):
        steps.append(Send("cli", [tcp(a, DUT_WAN, 22, sport=50000 + j) for j, a in enumerate(group)],
                          f"banned ssh clients, group {i + 1}"))
    steps += [
        Send("cli", [tcp(a, DUT_WAN, 443 if j % 2 else 80) for j, a in enumerate(web_bans)],
             "banned web clients"),
        Connect("cli", DUT_WAN, 22, label="ssh from an unbanned client (RETURN, policy)"),
        Connect("cli", DUT_WAN, 443, label="https from an unbanned client"),
        Send("cli", [tcp(ssh_bans[0], DUT_WAN, 80)], "a host banned for ssh may still use the web"),
        Send("cli", [tcp("203.0.113.9", DUT_WAN, 3306)], "mysql from the uplink"),
        Send("srv", [tcp(SRV, "10.91.2.1", 3306)], "mysql from the LAN"),
        Udp("srv", CLI, 5000, label="LAN to uplink (FORWARD 1), port unreachable back (policy)"),
        Send("cli", [udp(ssh_bans[1], SRV, 22)], "forwarded traffic is not jailed"),
        Udp("dut", CLI, 25, label="udp/25 out of the uplink"),
        Udp("dut", SRV, 25, label="udp/25 to the LAN (policy)"),
    ]
    return Case(name="fail2ban-like", ruleset=text, source="rulesets/fail2ban-like.rules",
                steps=steps, listen=[Listen("dut", "0.0.0.0", 22), Listen("dut", "0.0.0.0", 443),
                                     Listen("dut", "0.0.0.0", 3306)])
