"""-m set with live membership changes (inline ruleset, in the shape fail2ban's iptables-ipset
action and CrowdSec's firewall bouncer write): bans and unbans happen between packets, with
`ipset add/del/flush` under iptables and `ebpfw set add/del/flush` under ebpfw, and the
counters, the REJECT answers and the connections' outcomes must agree step by step. The
bouncer's blocklist is a hash:net set created with a timeout (as the bouncer creates it), with
an allowlisted `nomatch` /24 inside a blocklisted /15 and a ban inside that again; a rebuilt
list is swapped in and out (`ipset swap` / `ebpfw set swap`). (The
harness has no step that waits, so elements expiring mid-script are tested in
tests/kernel/test_sets_net_timeout_iptables.py.)"""

from ..packets import SetOp
from .common import CLI, CLI_ADMIN, CLI_PUBLIC, DUT_WAN, SRV, Case, Connect, Listen, Send, tcp, udp

# fail2ban (action.d/iptables-ipset.conf): -I INPUT -p tcp -m multiport --dports <port>
# -m set --match-set f2b-<jail> src -j REJECT --reject-with icmp-port-unreachable;
# CrowdSec's bouncer: -I INPUT -m set --match-set crowdsec-blacklists src -j DROP (FORWARD too),
# its set: ipset create crowdsec-blacklists hash:net timeout 300 (decisions carry their duration)
RULES = """*filter
:INPUT ACCEPT [0:0]
:FORWARD ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
-A INPUT -m set --match-set crowdsec-blacklists src -j DROP
-A INPUT -p tcp -m multiport --dports 22 -m set --match-set f2b-sshd src -j REJECT --reject-with icmp-port-unreachable
-A INPUT -p tcp -m multiport --dports 80,443 -m set --match-set f2b-nginx src -j REJECT --reject-with tcp-reset
-A INPUT -p tcp -m multiport --dports 22,80,443 -j ACCEPT
-A FORWARD -m set --match-set crowdsec-blacklists src -j DROP
-A FORWARD -m set --match-set lan-services dst,dst -j ACCEPT
COMMIT
"""

SETS = """create f2b-sshd hash:ip family inet hashsize 1024 maxelem 65536 bucketsize 12 initval 0x5a1c0e42
add f2b-sshd 203.0.113.66
create f2b-nginx hash:ip family inet hashsize 1024 maxelem 65536 bucketsize 12 initval 0x5a1c0e43
create crowdsec-blacklists hash:net family inet hashsize 1024 maxelem 65536 timeout 300 bucketsize 12 initval 0x5a1c0e44
add crowdsec-blacklists 198.18.0.0/15 timeout 3600
add crowdsec-blacklists 198.18.5.0/24 timeout 0 nomatch
create lan-services hash:ip,port family inet hashsize 1024 maxelem 65536 bucketsize 12 initval 0x5a1c0e45
add lan-services 10.91.2.2,udp:53
create crowdsec-blacklists-new hash:net family inet hashsize 1024 maxelem 65536 timeout 300 bucketsize 12 initval 0x5a1c0e46
add crowdsec-blacklists-new 203.0.113.0/24 timeout 3600
"""


def build() -> Case:
    steps = [
        Connect("cli", DUT_WAN, 22, label="ssh from the client: not banned, accepted"),
        Send("cli", [tcp("203.0.113.66", DUT_WAN, 22)], "ssh from a host banned at load: port unreachable"),
        SetOp("add", "f2b-sshd", CLI, "fail2ban bans the client"),
        Connect("cli", DUT_WAN, 22, label="ssh from the banned client: refused (ICMP port unreachable)"),
        Connect("cli", DUT_WAN, 80, label="the ssh ban does not cover http"),
        SetOp("add", "f2b-nginx", CLI_PUBLIC, "nginx jail bans another client address"),
        Connect("cli", DUT_WAN, 443, src=CLI_PUBLIC, label="https from it: reset"),
        Connect("cli", DUT_WAN, 443, src=CLI_ADMIN, label="https from an address not banned"),
        SetOp("del", "f2b-sshd", CLI, "fail2ban unbans the client"),
        Connect("cli", DUT_WAN, 22, label="ssh again: accepted"),
        Send("cli", [tcp("198.19.7.7", DUT_WAN, 22), udp("198.18.0.1", SRV, 53)],
             "blocklisted net at load: dropped in INPUT and FORWARD"),
        Send("cli", [tcp("198.18.5.5", DUT_WAN, 22), udp("198.18.5.5", SRV, 53)],
             "an allowlisted (nomatch) /24 inside the blocklisted /15: not dropped"),
        SetOp("add", "crowdsec-blacklists", "198.18.5.77", "the bouncer bans an address inside it (the "
              "set's default timeout)"),
        Send("cli", [tcp("198.18.5.77", DUT_WAN, 22), udp("198.18.5.77", SRV, 53), tcp("198.18.5.78", DUT_WAN, 22)],
             "the banned /32 is dropped (INPUT and FORWARD), its neighbour in the allowlist is not"),
        SetOp("add", "crowdsec-blacklists", "203.0.113.0/24", "the bouncer adds a /24"),
        Send("cli", [tcp("203.0.113.200", DUT_WAN, 80), udp("203.0.113.9", SRV, 53)],
             "sources in the new /24: dropped"),
        Send("cli", [udp("192.0.2.9", SRV, 53), udp("192.0.2.9", SRV, 54)],
             "LAN service by ip,port: only udp/53 to the server matches"),
        SetOp("del", "crowdsec-blacklists", "203.0.113.0/24", "and removes it"),
        Send("cli", [tcp("203.0.113.200", DUT_WAN, 80)], "the /24 is reachable again"),
        SetOp("flush", "f2b-nginx", "", "the nginx jail is flushed"),
        Connect("cli", DUT_WAN, 443, src=CLI_PUBLIC, label="https from the former ban: accepted"),
        # a bouncer that rebuilds its list in a second set and swaps it in (ipset swap)
        SetOp("swap", "crowdsec-blacklists", "crowdsec-blacklists-new", "the rebuilt blocklist is swapped in"),
        Send("cli", [tcp("203.0.113.200", DUT_WAN, 80), udp("198.19.7.7", SRV, 53), tcp("198.18.5.77", DUT_WAN, 22)],
             "the rules now read the rebuilt list: its /24 dropped, the old list's nets not"),
        SetOp("add", "crowdsec-blacklists", "198.51.100.7", "a ban goes to the set now named crowdsec-blacklists"),
        Send("cli", [tcp("198.51.100.7", DUT_WAN, 22)], "dropped"),
        SetOp("swap", "crowdsec-blacklists-new", "crowdsec-blacklists", "swapped back"),
        Send("cli", [tcp("198.51.100.7", DUT_WAN, 22), udp("198.19.7.7", SRV, 53)],
             "the old list again: the new ban is not in it, its /15 is"),
    ]
    return Case(name="sets-live", ruleset=RULES, sets=SETS, source="(inline)", steps=steps,
                listen=[Listen("dut", "0.0.0.0", 22), Listen("dut", "0.0.0.0", 80),
                        Listen("dut", "0.0.0.0", 443)])
