"""rulesets/ufw-generated.rules: the filter table Debian's ufw really makes (regenerate it with
rulesets/ufw-generated.sh): default deny incoming, allow 80, 443 and DNS from a network,
`limit 22/tcp` (-m recent: --set, then --update --seconds 30 --hitcount 6 -j ufw-user-limit),
deny 23, deny a host, logging low. cli = uplink, srv = LAN.

The SSH burst: new connections from one address. The first five are under the limit and
accepted (ufw-user-limit-accept); at the sixth the list holds six times within 30 s, so
--update matches and ufw-user-limit logs and rejects it (icmp-port-unreachable), and so on.
A connection from another address is not limited. A case takes seconds, far inside the 30 s
window on either side.

Three cases share the script:
  build()              the corpus case (the ruleset file as ufw wrote it): five connections,
                       all under the limit; the limit rule and ufw-user-limit are reached by
                       the two cases below, since REJECT's answers are a known difference of
                       ebpfw (docs/CONFORMANCE.md, cases/reject.py) that would hide the rest
  build_limit_drop()   the same ruleset with ufw-user-limit's REJECT made DROP: eight
                       connections, every counter and delivery compared strictly
  build_limit_reject() the ruleset as ufw wrote it with the eight connections, compared
                       strictly: the resets of the 6th-8th pass OUTPUT on both sides"""

from .common import (CLI, DUT_LAN, DUT_WAN, SRV, Case, Connect, Listen, Send, Udp, icmp, ruleset,
                     tcp, udp)

NET = "203.0.113.7"
DNS_NET_HOST = "10.210.0.5"       # inside ufw's `allow from 10.210.0.0/24 ... port 53`
DENIED_HOST = "10.210.0.66"       # ufw's `deny from 10.210.0.66` (its last user rule)
SSH_BURST = 8
LIMIT_REJECT = "-A ufw-user-limit -j REJECT --reject-with icmp-port-unreachable"


def build() -> Case:
    return _case("ufw-generated", ruleset("ufw-generated.rules"), 5, {
        "ufw-user-input:5": "the 6th connection is in ufw_generated:build_limit_drop / build_limit_reject",
        "ufw-user-limit:1": "the 6th connection is in ufw_generated:build_limit_drop / build_limit_reject",
        "ufw-user-limit:2": "the 6th connection is in ufw_generated:build_limit_drop / build_limit_reject",
    })


def build_limit_drop() -> Case:
    text = ruleset("ufw-generated.rules")
    assert LIMIT_REJECT in text, "ufw's limit chain changed: update LIMIT_REJECT"
    # another list name too: a list lives on while consecutive rulesets name it (on both sides),
    # so each case starts with an empty one whatever ran just before
    text = text.replace(LIMIT_REJECT, "-A ufw-user-limit -j DROP").replace("--name DEFAULT", "--name ufw-drop")
    case = _case("ufw-generated-limit-drop", text, SSH_BURST, {})
    case.source = "(rulesets/ufw-generated.rules, ufw-user-limit's REJECT made DROP, list ufw-drop)"
    return case


def build_limit_reject() -> Case:
    case = _case("ufw-generated-limit-reject", ruleset("ufw-generated.rules"), SSH_BURST, {})
    case.source = "(rulesets/ufw-generated.rules)"
    return case


def _case(name: str, text: str, burst: int, unhit: dict) -> Case:
    steps = [
        # ufw-before-input
        Send("cli", [icmp(NET, DUT_WAN, 8)], "ping the host (icmp echo accepted)"),
        Send("cli", [icmp(NET, DUT_WAN, 13)], "icmp timestamp: not allowed, logged, policy"),
        Send("srv", [udp(SRV, DUT_LAN, 68, sport=67)], "dhcp reply"),
        Send("cli", [tcp(NET, DUT_WAN, 22, sport=41000 + i, flags="FS") for i in range(11)],
             "SYN+FIN: INVALID; ten under logging-deny's RETURN limit, the eleventh logged; DROP"),
        Send("cli", [udp(NET, "224.0.0.1", 9)], "all-hosts multicast: ufw-not-local returns, policy"),
        Send("cli", [udp(NET, "10.91.1.255", 9), udp(NET, "255.255.255.255", 9)],
             "broadcasts: not-local returns, after-input skips to the policy"),
        # ufw-user-input
        Connect("cli", DUT_WAN, 80, label="http (allow 80/tcp)"),
        Connect("srv", DUT_LAN, 443, label="https (allow 443/tcp)"),
        Send("cli", [udp(DNS_NET_HOST, DUT_WAN, 53)], "dns from the allowed network"),
        Send("cli", [udp(NET, DUT_WAN, 53)], "dns from elsewhere: logged, policy"),
    ]
    # limit 22/tcp: a burst of new SSH connections from one address
    steps += [Connect("cli", DUT_WAN, 22, label=f"ssh #{i + 1} from {CLI}") for i in range(burst)]
    steps += [
        Connect("srv", DUT_LAN, 22, label="ssh from the LAN: its own entry in the list"),
        Send("cli", [tcp(NET, DUT_WAN, 23)], "telnet (deny 23/tcp)"),
        Send("cli", [udp(DENIED_HOST, DUT_WAN, 9999)], "the denied host"),
        Send("cli", [tcp(DENIED_HOST, DUT_WAN, 80)], "the denied host on 80: allow 80 comes first"),
        # ufw-after-input: noisy windows and dhcp ports skip straight to the policy
        Send("cli", [udp(NET, DUT_WAN, 137), udp(NET, DUT_WAN, 138), tcp(NET, DUT_WAN, 139),
                     tcp(NET, DUT_WAN, 445), udp(NET, DUT_WAN, 67), udp(NET, DUT_WAN, 68)],
             "netbios, smb, dhcp"),
        # FORWARD (ufw routes nothing: everything not icmp or established is logged and dropped)
        Send("cli", [icmp(NET, SRV, 3, 1), icmp(NET, SRV, 11), icmp(NET, SRV, 12), icmp(NET, SRV, 8)],
             "forwarded icmp"),
        Send("srv", [icmp(SRV, NET, 8)], "LAN pings out: forwarded echo request"),
        Send("cli", [icmp(NET, SRV, 0)], "its echo reply: ESTABLISHED"),
        Send("cli", [tcp(NET, SRV, 8080)], "forwarded tcp: logged, policy"),
        # OUTPUT
        Connect("dut", CLI, 80, label="host opens a connection (track-output NEW)"),
        Udp("dut", CLI, 53, label="udp out (track-output NEW)"),
        Send("dut", [icmp(DUT_WAN, CLI, 8)], "ping out (policy ACCEPT)"),
    ]
    return Case(
        name=name, ruleset=text, source="rulesets/ufw-generated.rules",
        steps=steps, stateful=True,
        listen=[Listen("dut", "0.0.0.0", 22), Listen("dut", "0.0.0.0", 80), Listen("dut", "0.0.0.0", 443),
                Listen("cli", CLI, 80)],
        expect_unhit={
            "ufw-before-input:1": "loopback traffic never crosses dut0/dut1, where ebpfw is attached",
            "ufw-before-output:1": "loopback traffic never crosses dut0/dut1, where ebpfw is attached",
            **{f"ufw-before-input:{n}": "under conntrack an ICMP error is RELATED or INVALID before this rule"
               for n in (5, 6, 7)},
            "ufw-before-input:11": "the DUT joins no mDNS group: the kernel drops 224.0.0.251 before INPUT",
            "ufw-before-input:12": "the DUT joins no SSDP group: the kernel drops 239.255.255.250 before INPUT",
            "ufw-not-local:4": "what reaches INPUT is local, multicast or broadcast here",
            "ufw-not-local:5": "what reaches INPUT is local, multicast or broadcast here",
            "ufw-logging-allow:1": "ufw jumps to ufw-logging-allow only with logging medium or more",
            "ufw-skip-to-policy-forward:1": "no rule jumps to this chain (ufw's default layout)",
            "ufw-skip-to-policy-output:1": "no rule jumps to this chain (ufw's default layout)",
            **unhit,
        },
    )
