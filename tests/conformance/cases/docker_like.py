"""rulesets/docker-like.rules: Docker's filter layout; docker0 = dut1 (srv side), uplink = dut0."""

from .common import (CLI, DUT_LAN, DUT_WAN, SRV, Case, Connect, Listen, Send, Udp, icmp,
                     ruleset, tcp, udp)

WEB, DB, DNS = "172.17.0.2", "172.17.0.3", "172.17.0.4"


def build() -> Case:
    steps = [
        Send("cli", [tcp("198.51.100.200", DUT_WAN, 2375)], "docker API from the uplink"),
        Send("srv", [tcp(SRV, DUT_LAN, 2375)], "docker API from the bridge (INPUT policy)"),
        # DOCKER-USER
        Send("cli", [tcp("203.0.113.50", WEB, 80)], "blocked customer range"),
        Connect("cli", WEB, 80, label="published web port (goto DOCKER-USER-WEB, falls off its end)"),
        Send("cli", [tcp("198.18.0.50", WEB, 80)], "range RETURNs from the goto chain to FORWARD"),
        Send("cli", [tcp("198.19.3.4", WEB, 80)], "rest of 198.18.0.0/15 dropped"),
        Send("cli", [tcp("192.0.2.10", DB, 5432)], "postgres from the allowed range"),
        Send("cli", [tcp("198.51.100.200", DB, 5432)], "postgres from elsewhere"),
        Send("cli", [udp("198.51.100.200", DNS, 53)], "published udp port"),
        # isolation
        Send("cli", [tcp("172.18.0.5", WEB, 80, sport=40001, flags="A")],
             "other bridge network to docker0: stage 2 drop"),
        Send("cli", [udp("172.18.0.5", CLI, 53)], "other bridge network leaving the uplink: hairpin"),
        # established-ish traffic back to containers, container egress, hairpin
        Send("cli", [tcp("198.51.100.200", WEB, 40000, sport=443, flags="A")], "reply to a container"),
        Connect("srv", CLI, 80, src=WEB, label="container to the uplink"),
        Send("srv", [icmp(WEB, CLI, 8)], "container ping out"),
        Send("srv", [tcp(WEB, "172.17.0.9", 8080)], "container to container through the host"),
        Send("cli", [tcp("198.51.100.200", WEB, 81)], "unpublished port (FORWARD policy)"),
        Send("cli", [icmp("198.51.100.200", DNS, 8)], "ping to a container (FORWARD policy)"),
        # OUTPUT
        Udp("dut", SRV, 53, label="host to the bridge network"),
    ]
    return Case(name="docker-like", ruleset=ruleset("docker-like.rules"),
                source="rulesets/docker-like.rules", steps=steps,
                listen=[Listen("srv", WEB, 80), Listen("cli", CLI, 80)])
