"""Parser unit tests (no root): every option, its normalisation, its exact error text,
file structure errors, multi-error collection, and round trips on the shared corpus."""

from __future__ import annotations

import dataclasses

import pytest

from ebpfw.errors import RulesetError
from ebpfw.iptables import counters_of, parse_ruleset, save_ruleset
from ebpfw.iptables.tokenize import TokenizeError, save_string, tokenize
from ebpfw.ruleset import (
    CT_ESTABLISHED, CT_INVALID, CT_NEW, CT_RELATED, CT_UNTRACKED, CommentMatch, ConntrackMatch,
    Counters, IcmpMatch, IfaceMatch, IpMatch, IprangeMatch, MultiportMatch, Net, Pos, Rule,
    Ruleset, Target, TcpMatch, UdpMatch,
)
from test_iptables_oracle import CORPUS

HEAD = ("*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n"
        ":user - [0:0]\n")          # the rule under test is on line 6


def one_rule(fragment: str) -> Rule:
    rs = parse_ruleset(HEAD + f"-A INPUT {fragment}\nCOMMIT\n", "t.rules")
    (rule,) = rs.table("filter").chain("INPUT").rules
    return rule


def canonical(fragment: str) -> str:
    rs = parse_ruleset(HEAD + f"-A INPUT {fragment}\nCOMMIT\n", "t.rules")
    line = [ln for ln in save_ruleset(rs).splitlines() if ln.startswith("-A INPUT")][0]
    return line[len("-A INPUT"):].strip()


def problems_of(text: str, filename: str = "t.rules") -> list[str]:
    with pytest.raises(RulesetError) as exc:
        parse_ruleset(text, filename)
    return exc.value.problems


def strip_pos(obj):
    """The same IR with every Pos replaced, so rulesets from different texts compare."""
    if isinstance(obj, Pos):
        return Pos("", 0)
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return dataclasses.replace(obj, **{f.name: strip_pos(getattr(obj, f.name))
                                           for f in dataclasses.fields(obj) if f.init})
    if isinstance(obj, tuple):
        return tuple(strip_pos(x) for x in obj)
    return obj


# --- the IR each option produces -------------------------------------------------------------
IP = 0x0A000000  # 10.0.0.0
IR_CASES = [
    ("-s 10.1.2.3/8", IpMatch(src=Net(IP, 0xFF000000)), ()),
    ("! -s 10.0.0.1", IpMatch(src=Net(0x0A000001, 0xFFFFFFFF), src_invert=True), ()),
    ("--source 10.0.5.6/255.0.255.0", IpMatch(src=Net(0x0A000500, 0xFF00FF00)), ()),
    ("-d 192.168.1.7/24", IpMatch(dst=Net(0xC0A80100, 0xFFFFFF00)), ()),
    ("--dst 1.2.3.4", IpMatch(dst=Net(0x01020304, 0xFFFFFFFF)), ()),
    ("-s 0.0.0.0/0", IpMatch(), ()),
    ("-d 1.2.3.4/0", IpMatch(), ()),
    ("! -s 0.0.0.0/0", IpMatch(src=Net(0, 0), src_invert=True), ()),
    ("-i eth0", IpMatch(iface_in=IfaceMatch("eth0")), ()),
    ("! -i eth+", IpMatch(iface_in=IfaceMatch("eth+", True)), ()),
    ("-i +", IpMatch(), ()),
    ("-p tcp", IpMatch(proto=6), ()),
    ("-p TCP", IpMatch(proto=6), ()),
    ("-p 17", IpMatch(proto=17), ()),
    ("! -p icmp", IpMatch(proto=1, proto_invert=True), ()),
    ("-p all", IpMatch(), ()),
    ("-p 0", IpMatch(), ()),
    ("-p gre", IpMatch(proto=47), ()),
    ("-f", IpMatch(fragment=True), ()),
    ("! -f", IpMatch(fragment=False), ()),
    ("-p tcp --dport 22", IpMatch(proto=6), (TcpMatch(dport=(22, 22)),)),
    ("-p tcp -m tcp ! --sport 1024: --dport :1023", IpMatch(proto=6),
     (TcpMatch(sport=(1024, 65535), sport_invert=True, dport=(0, 1023)),)),
    ("-p tcp --dport ssh", IpMatch(proto=6), (TcpMatch(dport=(22, 22)),)),
    ("-p tcp --dport 0x16", IpMatch(proto=6), (TcpMatch(dport=(22, 22)),)),
    ("-p tcp --dport 026", IpMatch(proto=6), (TcpMatch(dport=(22, 22)),)),
    ("-p tcp --dport 0:65535", IpMatch(proto=6), (TcpMatch(),)),
    ("-p tcp ! --dport 0:65535", IpMatch(proto=6), (TcpMatch(dport=(0, 65535), dport_invert=True),)),
    ("-p tcp --syn", IpMatch(proto=6), (TcpMatch(flags=(0x17, 0x02)),)),
    ("-p tcp ! --syn", IpMatch(proto=6), (TcpMatch(flags=(0x17, 0x02), flags_invert=True),)),
    ("-p tcp --tcp-flags ALL NONE", IpMatch(proto=6), (TcpMatch(flags=(0x3F, 0)),)),
    ("-p tcp --tcp-flags syn,ack,fin SYN", IpMatch(proto=6), (TcpMatch(flags=(0x13, 0x02)),)),
    ("-p tcp --tcp-flags NONE NONE", IpMatch(proto=6), (TcpMatch(),)),
    ("-p tcp ! --tcp-option 2", IpMatch(proto=6), (TcpMatch(option=2, option_invert=True),)),
    ("-p udp --sport 53", IpMatch(proto=17), (UdpMatch(sport=(53, 53)),)),
    ("-p udp -m udp ! --dport ntp", IpMatch(proto=17), (UdpMatch(dport=(123, 123), dport_invert=True),)),
    ("-p icmp --icmp-type echo-request", IpMatch(proto=1), (IcmpMatch(8),)),
    ("-p icmp --icmp-type PING", IpMatch(proto=1), (IcmpMatch(8),)),
    ("-p icmp --icmp-type port-unr", IpMatch(proto=1), (IcmpMatch(3, 3, 3),)),
    ("-p icmp --icmp-type 3/4", IpMatch(proto=1), (IcmpMatch(3, 4, 4),)),
    ("-p icmp --icmp-type any", IpMatch(proto=1), (IcmpMatch(255),)),
    ("-p icmp --icmp-type 255/3", IpMatch(proto=1), (IcmpMatch(255),)),
    ("-p icmp ! --icmp-type 0", IpMatch(proto=1), (IcmpMatch(0, invert=True),)),
    ("-p tcp -m multiport --dports 80,443,8000:8100", IpMatch(proto=6),
     (MultiportMatch("dports", ((80, 80), (443, 443), (8000, 8100))),)),
    ("-p udp -m multiport ! --source-ports domain", IpMatch(proto=17),
     (MultiportMatch("sports", ((53, 53),), invert=True),)),
    ("-p tcp -m multiport --ports 1:2", IpMatch(proto=6), (MultiportMatch("ports", ((1, 2),)),)),
    ("-m iprange --src-range 10.0.0.1-10.0.0.9 ! --dst-range 10.0.0.5", IpMatch(),
     (IprangeMatch(src=(0x0A000001, 0x0A000009), dst=(0x0A000005, 0x0A000005), dst_invert=True),)),
    ('-m comment --comment "a \\"b\\" c"', IpMatch(), (CommentMatch('a "b" c'),)),
    ("-m comment --comment ''", IpMatch(), (CommentMatch("''"),)),
    ('-m comment --comment "!"', IpMatch(), (CommentMatch("!"),)),
    ("-m comment --comment -x", IpMatch(), (CommentMatch("-x"),)),
    ("-m conntrack --ctstate established,related", IpMatch(),
     (ConntrackMatch(CT_ESTABLISHED | CT_RELATED),)),
    ("-m conntrack ! --ctstate INVALID,NEW,UNTRACKED", IpMatch(),
     (ConntrackMatch(CT_INVALID | CT_NEW | CT_UNTRACKED, states_invert=True),)),
    ("-m state --state NEW", IpMatch(), (ConntrackMatch(CT_NEW, module="state"),)),
    # implicit match placed where iptables places it: after matches loaded before it
    ("-p tcp -m comment --comment x --dport 1", IpMatch(proto=6),
     (CommentMatch("x"), TcpMatch(dport=(1, 1)))),
    # --sport after an explicit second -m tcp goes to the newest one
    ("-p tcp -m tcp --dport 1 -m tcp --sport 2", IpMatch(proto=6),
     (TcpMatch(dport=(1, 1)), TcpMatch(sport=(2, 2)))),
]


@pytest.mark.parametrize("fragment,ip,matches", IR_CASES, ids=[c[0] for c in IR_CASES])
def test_option_ir(fragment, ip, matches):
    rule = one_rule(fragment)
    assert rule.ip == ip
    assert rule.matches == matches
    assert rule.pos == Pos("t.rules", 6)


TARGET_CASES = [
    ("-j ACCEPT", Target("ACCEPT")), ("-j DROP", Target("DROP")), ("-j RETURN", Target("RETURN")),
    ("-j user", Target("JUMP", "user")), ("--jump user", Target("JUMP", "user")),
    ("-g user", Target("GOTO", "user")), ("--goto user", Target("GOTO", "user")),
    ("", Target("NONE")), ("-p tcp", Target("NONE")),
]


@pytest.mark.parametrize("fragment,target", TARGET_CASES, ids=[c[0] or "none" for c in TARGET_CASES])
def test_targets(fragment, target):
    assert one_rule(fragment).target == target


# --- canonical text (what iptables-save prints for the same input) ---------------------------
CANONICAL_CASES = [
    ("-s 10.1.2.3/8 -p tcp --dport 22 -j ACCEPT", "-s 10.0.0.0/8 -p tcp -m tcp --dport 22 -j ACCEPT"),
    ("-d 10.0.0.1", "-d 10.0.0.1/32"),
    ("-s 10.1.2.3/255.0.255.0", "-s 10.0.2.0/255.0.255.0"),
    ("-s 10.1.2.3/255.255.0.0", "-s 10.1.0.0/16"),
    ("-j ACCEPT -p udp -o eth1 -i eth0 -d 2.2.2.2 -s 1.1.1.1",
     "-s 1.1.1.1/32 -d 2.2.2.2/32 -i eth0 -o eth1 -p udp -j ACCEPT"),
    ("! -p tcp -f", "! -p tcp -f"),
    ("-p 6", "-p tcp"),
    ("-p 47", "-p gre"),
    ("-p 200", "-p 200"),
    ("-p tcp --tcp-flags SYN SYN --dport 3 --sport 4",
     "-p tcp -m tcp --sport 4 --dport 3 --tcp-flags SYN SYN"),
    ("-p tcp --syn", "-p tcp -m tcp --tcp-flags FIN,SYN,RST,ACK SYN"),
    ("-p tcp --tcp-flags ALL ALL", "-p tcp -m tcp --tcp-flags FIN,SYN,RST,PSH,ACK,URG FIN,SYN,RST,PSH,ACK,URG"),
    ("-p tcp --tcp-flags ALL NONE", "-p tcp -m tcp --tcp-flags FIN,SYN,RST,PSH,ACK,URG NONE"),
    ("-p tcp --dport 80:80", "-p tcp -m tcp --dport 80"),
    ("-p tcp --dport 1024:", "-p tcp -m tcp --dport 1024:65535"),
    ("-p tcp --dport :80", "-p tcp -m tcp --dport 0:80"),
    ("-p tcp --dport 0:65535", "-p tcp -m tcp"),
    ("-p tcp --tcp-option 5", "-p tcp -m tcp --tcp-option 5"),
    ("-m tcp -p tcp --dport 2", "-p tcp -m tcp --dport 2"),
    ("-p icmp --icmp-type echo-request", "-p icmp -m icmp --icmp-type 8"),
    ("-p icmp --icmp-type port-unreachable", "-p icmp -m icmp --icmp-type 3/3"),
    ("-p icmp --icmp-type network-unreachable", "-p icmp -m icmp --icmp-type 3/0"),
    ("-p icmp --icmp-type 255/9", "-p icmp -m icmp --icmp-type any"),
    ("-p udp -m multiport --destination-ports 53,1000:2000",
     "-p udp -m multiport --dports 53,1000:2000"),
    ("-p tcp -m multiport --dports ssh,http:https", "-p tcp -m multiport --dports 22,80:443"),
    ("-p tcp -m multiport ! --ports 5,1", "-p tcp -m multiport ! --ports 5,1"),
    ("-m iprange --dst-range 10.0.0.5", "-m iprange --dst-range 10.0.0.5-10.0.0.5"),
    ("! -m iprange --src-range 1.1.1.1-1.1.1.2".replace("! -m", "-m"),
     "-m iprange --src-range 1.1.1.1-1.1.1.2"),
    ("-m comment --comment nospace", "-m comment --comment nospace"),
    ("-m comment --comment 'q'", "-m comment --comment \"\\'q\\'\""),
    ('-m comment --comment "a\\\\b"', '-m comment --comment "a\\\\b"'),
    ('-m comment --comment ""', '-m comment --comment ""'),
    ("-m state --state NEW,INVALID", "-m state --state INVALID,NEW"),
    ("-m conntrack --ctstate UNTRACKED,NEW,INVALID,RELATED,ESTABLISHED",
     "-m conntrack --ctstate INVALID,NEW,RELATED,ESTABLISHED,UNTRACKED"),
    ("-j ACCEPT -m comment --comment x", "-m comment --comment x -j ACCEPT"),
    ("-g user", "-g user"),
    ("-i +", ""),
    ("! -i +", "! -i +"),
]


@pytest.mark.parametrize("fragment,expected", CANONICAL_CASES, ids=[c[0] for c in CANONICAL_CASES])
def test_canonical_text(fragment, expected):
    assert canonical(fragment) == expected


# --- refused options: the exact FILE:LINE message -----------------------------------------
NEGATIVE_CASES = [
    ("-s 1.2.3.4,5.6.7.8", "address list in -s (iptables would make one rule per address), expected one "
     "address or network per rule; write one rule per address, found '1.2.3.4,5.6.7.8'"),
    ("-s localhost", "host name in -s (ebpfw does no DNS lookups), expected an IPv4 address such as "
     "192.0.2.1 or 10.0.0.0/8, found 'localhost'"),
    ("-d 10.1.2", "invalid address in -d, expected an IPv4 address such as 192.0.2.1 or 10.0.0.0/8, "
     "found '10.1.2'"),
    ("-s 010.0.0.1", "invalid address in -s, expected an IPv4 address such as 192.0.2.1 or 10.0.0.0/8, "
     "found '010.0.0.1'"),
    ("-s 1.2.3.256/8", "invalid address in -s, expected an IPv4 address such as 192.0.2.1 or "
     "10.0.0.0/8, found '1.2.3.256/8'"),
    ("-s 1.2.3.4/255.0.0.256", "invalid mask in -s, expected a prefix length 0-32 or a dotted mask, "
     "found '1.2.3.4/255.0.0.256'"),
    ("-s 10.0.0.0/33", "invalid mask in -s, expected a prefix length 0-32 or a dotted mask, "
     "found '10.0.0.0/33'"),
    ("-s 1.1.1.1 -s 2.2.2.2", "option '-s' given twice, expected one -s and one -d per rule, found '-s'"),
    ("-s", "option '-s' needs an address, expected '-s VALUE', found 'end of line'"),
    ("-s ! 1.1.1.1", "'!' after option '-s', expected '! -s VALUE' (the '!' goes first), found '-s !'"),
    ("-i abcdefghijklmnop", "interface name in -i too long, expected at most 15 characters (IFNAMSIZ), "
     "found 'abcdefghijklmnop'"),
    ("-o a/b", "interface name in -o can never match (the kernel does not allow '/' or white space in "
     "names), expected an interface name such as eth0 or eth+, found 'a/b'"),
    ("-p foo", "unknown protocol, expected tcp, udp, icmp, all, a number 0-255 or a name from "
     "/etc/protocols, found 'foo'"),
    ("! -p all", "'! -p all' would never match (iptables refuses it too), expected a protocol other "
     "than all/0, found '! -p all'"),
    ("-p 256", "unknown protocol, expected tcp, udp, icmp, all, a number 0-255 or a name from "
     "/etc/protocols, found '256'"),
    ("-f -f", "option '-f' given twice, expected one -f per rule, found '-f'"),
    ("-m owner --uid-owner 0", "match 'owner' is not supported yet, expected one of addrtype, comment, "
     "connlimit, conntrack, dscp, hashlimit, icmp, iprange, length, limit, mac, multiport, pkttype, recent, "
     "set, state, tcp, tcpmss, tos, ttl, udp, found '-m owner'"),
    ("! -m tcp", "'!' before -m, expected '-m NAME ! --option VALUE', found '! -m tcp'"),
    ("-j NFLOG --nflog-group 1", "target 'NFLOG' is not supported yet, expected ACCEPT, DROP, RETURN, "
     "REJECT, LOG, MARK, CONNMARK or a user-defined chain, found '-j NFLOG'"),
    ("-j TEE --gateway 1.1.1.1", "target 'TEE' is not supported yet, expected ACCEPT, DROP, RETURN, "
     "REJECT, LOG, MARK, CONNMARK or a user-defined chain, found '-j TEE'"),
    ("-j nosuch", "jump to undefined chain 'nosuch', expected ACCEPT, DROP, RETURN or a chain declared "
     "with ':nosuch - [0:0]', found '-j nosuch'"),
    ("-j OUTPUT", "jump to built-in chain 'OUTPUT', expected ACCEPT, DROP, RETURN or a user-defined "
     "chain, found '-j OUTPUT'"),
    ("-g ACCEPT", "goto target 'ACCEPT' is not a user-defined chain, expected '-g CHAIN' with a chain "
     "declared as ':CHAIN - [0:0]', found '-g ACCEPT'"),
    ("-j ACCEPT -j DROP", "more than one -j/-g, expected one target per rule, found '-j DROP'"),
    ("! -j ACCEPT", "'!' before -j, expected '-j TARGET', found '! -j ACCEPT'"),
    ("--dport 22", "option '--dport' without a match that takes it, expected -p tcp, -p udp, -m tcp or "
     "-m udp before it, found '--dport'"),
    ("-p udp --syn", "option '--syn' without a match that takes it, expected -p tcp or -m tcp before "
     "it, found '--syn'"),
    ("! -p tcp --dport 1", "option '--dport' without a match that takes it, expected -p tcp, -p udp, "
     "-m tcp or -m udp before it, found '--dport'"),
    ("-p tcp --dport 22 --destination-port 23", "options '--dport' and '--destination-port' exclude "
     "each other in one 'tcp' match, expected one of them (or a second -m tcp), found "
     "'--destination-port'"),
    ("-p tcp --dport 22 --dport 23", "option '--dport' given twice in one 'tcp' match, expected one of "
     "them (or a second -m tcp), found '--dport'"),
    ("-p tcp --syn --tcp-flags SYN SYN", "options '--syn' and '--tcp-flags' exclude each other in one "
     "'tcp' match, expected one of them (or a second -m tcp), found '--tcp-flags'"),
    ("-p tcp --dport 70000", "invalid port in --dport, expected a number 0-65535 or a tcp service name "
     "from /etc/services, found '70000'"),
    ("-p udp --sport nosuchservice", "invalid port in --sport, expected a number 0-65535 or a udp "
     "service name from /etc/services, found 'nosuchservice'"),
    ("-p tcp --dport 2000:1000", "reversed port range in --dport, expected LOW:HIGH with LOW <= HIGH, "
     "found '2000:1000'"),
    ("-p tcp --tcp-flags SYN,FOO SYN", "unknown TCP flag in --tcp-flags, expected a comma list of FIN, "
     "SYN, RST, PSH, ACK, URG, ALL, NONE, found 'SYN,FOO'"),
    ("-p tcp --tcp-flags SYN", "option '--tcp-flags' needs an argument, expected '--tcp-flags VALUE', "
     "found 'end of line'"),
    ("-p tcp --tcp-option 0", "bad TCP option number in --tcp-option, expected a number 1-255, found '0'"),
    ("-p udp -m tcp --dport 1", "match 'tcp' needs -p tcp (iptables refuses it otherwise), expected "
     "'-p tcp' (not inverted) in the rule, found '-p udp'"),
    ("! -p tcp -m tcp --dport 1", "match 'tcp' needs -p tcp (iptables refuses it otherwise), expected "
     "'-p tcp' (not inverted) in the rule, found '! -p tcp'"),
    ("-m udp --dport 1", "match 'udp' needs -p udp (iptables refuses it otherwise), expected '-p udp' "
     "(not inverted) in the rule, found 'no -p'"),
    ("-p tcp -m icmp --icmp-type 8", "match 'icmp' needs -p icmp (iptables refuses it otherwise), "
     "expected '-p icmp' (not inverted) in the rule, found '-p tcp'"),
    ("-p icmp --icmp-type echo", "ambiguous ICMP type in --icmp-type, expected one of echo-reply, "
     "echo-request, found 'echo'"),
    ("-p icmp --icmp-type nosuch", "unknown ICMP type in --icmp-type, expected a name from `iptables -p "
     "icmp -h` (e.g. echo-request) or a number, found 'nosuch'"),
    ("-p icmp --icmp-type 3/256", "invalid ICMP type in --icmp-type, expected TYPE or TYPE/CODE with "
     "numbers 0-255, or a name from `iptables -p icmp -h`, found '3/256'"),
    ("-p icmp -m icmp", "match 'icmp' needs --icmp-type, expected --icmp-type TYPE[/CODE], found "
     "'-m icmp alone'"),
    ("-m multiport --dports 80", "match 'multiport' needs -p tcp or -p udp before it, expected -p tcp "
     "or -p udp (not inverted) before -m multiport, found 'no -p'"),
    ("-p sctp -m multiport --dports 80", "multiport on -p sctp is not supported yet (the datapath reads "
     "ports of tcp and udp only), expected -p tcp or -p udp, found '-p sctp'"),
    ("-p tcp -m multiport --dports 1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16", "too many ports in "
     "--dports, expected at most 15 ports (a range counts as two), found "
     "'1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16'"),
    ("-p tcp -m multiport --dports 1,2,3,4,5,6,7,8,9,10,11,12,13,14,15:16", "too many ports in --dports, "
     "expected at most 15 ports (a range counts as two), found '1,2,3,4,5,6,7,8,9,10,11,12,13,14,15:16'"),
    ("-p tcp -m multiport --dports 5:5", "invalid port range in --dports, expected LOW:HIGH with LOW < "
     "HIGH (as iptables' multiport), found '5:5'"),
    ("-p tcp -m multiport --dports 80 --sports 80", "options '--dports' and '--sports' exclude each "
     "other in one 'multiport' match, expected one of them (or a second -m multiport), found '--sports'"),
    ("-p tcp -m multiport", "match 'multiport' needs an option, expected --sports, --dports or --ports, "
     "found '-m multiport alone'"),
    ("-m iprange", "match 'iprange' needs an option, expected --src-range or --dst-range, found "
     "'-m iprange alone'"),
    ("-m iprange --src-range 10.0.0.9-10.0.0.1", "reversed address range in --src-range would never "
     "match, expected FIRST-LAST with FIRST <= LAST, found '10.0.0.9-10.0.0.1'"),
    ("-m iprange --dst-range 10.0.0.1-x", "invalid address in --dst-range, expected a dotted-quad IPv4 "
     "address, found 'x'"),
    ("-m comment", "match 'comment' needs --comment, expected --comment \"TEXT\", found '-m comment alone'"),
    ("-m comment ! --comment x", "'!' before '--comment', expected '--comment' without '!', found "
     "'! --comment'"),
    ('-m comment --comment "open', "unterminated double quote, expected a closing \", found '\"open'"),
    ("-m comment --comment " + "x" * 256, "comment too long in --comment, expected at most 255 bytes, "
     "found '" + "x" * 40 + "...'"),
    ("-m conntrack --ctstate NEW,FOO", "unknown conntrack state in --ctstate, expected a comma list of "
     "INVALID, NEW, RELATED, ESTABLISHED, UNTRACKED, found 'FOO'"),
    ("-m conntrack --ctstate DNAT", "conntrack state DNAT in --ctstate is not supported yet, expected "
     "INVALID, NEW, RELATED, ESTABLISHED or UNTRACKED, found 'DNAT'"),
    ("-m conntrack --ctproto tcp", "option '--ctproto' of match 'conntrack' is not supported yet, "
     "expected only --ctstate, found '--ctproto'"),
    ("-m conntrack --ctorigsrc 1.1.1.1", "option '--ctorigsrc' of match 'conntrack' is not supported "
     "yet, expected only --ctstate, found '--ctorigsrc'"),
    ("-m conntrack", "match 'conntrack' needs --ctstate, expected --ctstate STATE[,STATE...], found "
     "'-m conntrack alone'"),
    ("-m state --state NEW --state INVALID", "option '--state' given twice in one 'state' match, "
     "expected one of them (or a second -m state), found '--state'"),
    ("-m state", "match 'state' needs --state, expected --state STATE[,STATE...], found '-m state alone'"),
    ("--bogus", "unknown option, expected an option of iptables or of a match loaded with -m before it, "
     "found '--bogus'"),
    ("-x", "unknown option, expected an option of iptables (-s -d -i -o -p -f -m -j -g) or of a loaded "
     "match, found '-x'"),
    ("foo", "unexpected word, expected an option such as -s, -p, -m or -j, found 'foo'"),
    ("! ! -s 1.1.1.1", "'!' twice, expected one '!' before an option, found '! !'"),
    ("-p tcp --dport ! 22", "'!' after option '--dport', expected '! --dport VALUE' (the '!' goes first), "
     "found '--dport !'"),
    ("-i !", "'!' after option '-i', expected '! -i VALUE' (the '!' goes first), found '-i !'"),
    ("-s 1.1.1.1 !", "'!' at the end of the rule, expected an option after '!', found '!'"),
    ("-c 1 x", "malformed counters, expected '-c PACKETS BYTES' with decimal numbers, found '1 x'"),
]


@pytest.mark.parametrize("fragment,message", NEGATIVE_CASES, ids=[c[0][:50] for c in NEGATIVE_CASES])
def test_refused_option(fragment, message):
    problems = problems_of(HEAD + f"-A INPUT {fragment}\nCOMMIT\n")
    assert problems == [f"t.rules:6: {message}"]


# --- file structure ----------------------------------------------------------------------
STRUCTURE_CASES = [
    ("*filter\n:INPUT ACCEPT [0:0]\n-A INPUT -j ACCEPT\n",
     ["t.rules:1: table 'filter' is never committed, expected 'COMMIT' before the end of the file, "
      "found 'end of file'"]),
    ("*filter\n-A nosuch -j ACCEPT\nCOMMIT\n",
     ["t.rules:2: rule for undeclared chain 'nosuch', expected a ':nosuch - [0:0]' line in table "
      "'filter', found '-A nosuch'"]),
    ("*filter\n:a - [0:0]\n:a - [0:0]\nCOMMIT\n",
     ["t.rules:3: chain 'a' declared twice (first at line 2), expected one ':CHAIN' line per chain, "
      "found ':a - [0:0]'"]),
    ("*filter\nhello world\nCOMMIT\n",
     ["t.rules:2: unrecognised line, expected ':CHAIN POLICY [p:b]', '-A CHAIN ...', 'COMMIT' or a "
      "'#' comment, found 'hello world'"]),
    ("-A INPUT -j ACCEPT\n",
     ["t.rules:1: line outside a table, expected a table header such as '*filter' first, found "
      "'-A INPUT -j ACCEPT'"]),
    ("*nat\n:PREROUTING ACCEPT [0:0]\n-A PREROUTING -j DNAT --to 1.2.3.4\nCOMMIT\n",
     ["t.rules:1: table 'nat' is not supported by ebpfw yet, expected '*filter', found '*nat'"]),
    ("*mangle\nCOMMIT\n*raw\nCOMMIT\n*security\nCOMMIT\n",
     ["t.rules:1: table 'mangle' is not supported by ebpfw yet, expected '*filter', found '*mangle'",
      "t.rules:3: table 'raw' is not supported by ebpfw yet, expected '*filter', found '*raw'",
      "t.rules:5: table 'security' is not supported by ebpfw yet, expected '*filter', found "
      "'*security'"]),
    ("*bogus\nCOMMIT\n", ["t.rules:1: unknown table 'bogus', expected '*filter', found '*bogus'"]),
    ("*filter\nCOMMIT\n*filter\nCOMMIT\n",
     ["t.rules:3: table 'filter' appears twice, expected one section per table, found '*filter'"]),
    ("*filter\n*nat\nCOMMIT\n",
     ["t.rules:1: table 'filter' is never committed, expected 'COMMIT' before the next table, found "
      "'*nat'",
      "t.rules:2: table 'nat' is not supported by ebpfw yet, expected '*filter', found '*nat'"]),
    ("*filter\n:INPUT - [0:0]\nCOMMIT\n",
     ["t.rules:2: built-in chain 'INPUT' needs a policy, expected ACCEPT or DROP, found '-'"]),
    ("*filter\n:INPUT REJECT [0:0]\nCOMMIT\n",
     ["t.rules:2: built-in chain 'INPUT' needs a policy, expected ACCEPT or DROP, found 'REJECT'"]),
    ("*filter\n:mine ACCEPT [0:0]\nCOMMIT\n",
     ["t.rules:2: user-defined chain 'mine' cannot have a policy (built-in chains of table 'filter' "
      "are INPUT, FORWARD, OUTPUT), expected '-', found 'ACCEPT'"]),
    ("*filter\n:INPUT\nCOMMIT\n",
     ["t.rules:2: malformed chain line, expected ':CHAIN POLICY [PACKETS:BYTES]', found ':INPUT'"]),
    ("*filter\n:INPUT ACCEPT [1:x]\nCOMMIT\n",
     ["t.rules:2: malformed counters for chain 'INPUT', expected [PACKETS:BYTES], found '[1:x]'"]),
    ("*filter\n:" + "c" * 29 + " - [0:0]\nCOMMIT\n",
     ["t.rules:2: invalid chain name: chain name longer than 28 characters, expected at most 28 "
      "characters, not starting with '-' or '!', not a target name, found '" + "c" * 29 + "'"]),
    ("*filter\n:-x - [0:0]\n:REJECT - [0:0]\nCOMMIT\n",
     ["t.rules:2: invalid chain name: chain name starting with '-', expected at most 28 characters, "
      "not starting with '-' or '!', not a target name, found '-x'",
      "t.rules:3: invalid chain name: chain name that is a target name, expected at most 28 "
      "characters, not starting with '-' or '!', not a target name, found 'REJECT'"]),
    ("*filter\n-I INPUT -j ACCEPT\nCOMMIT\n",
     ["t.rules:2: command '-I' is not allowed in a ruleset file, expected '-A CHAIN ...', found '-I'"]),
    ("*filter\n[1:x] -A INPUT\nCOMMIT\n",
     ["t.rules:2: malformed rule counters, expected [PACKETS:BYTES] -A CHAIN ..., found '[1:x] -A INPUT'"]),
    ("*filter\n:mine ACCEPT [0:0]\n-A mine -j DROP\n-A INPUT -j mine\nCOMMIT\n",   # no cascade
     ["t.rules:2: user-defined chain 'mine' cannot have a policy (built-in chains of table 'filter' "
      "are INPUT, FORWARD, OUTPUT), expected '-', found 'ACCEPT'"]),
    ("*filter\n[1:2] -A INPUT -c 0 0\nCOMMIT\n",
     ["t.rules:2: counters given twice, expected either [p:b] or -c, found '-c'"]),
    ("*filter\n[1:2] -A INPUT -c 3 4\nCOMMIT\n",
     ["t.rules:2: counters given twice, expected either [p:b] or -c, found '-c'"]),
]


@pytest.mark.parametrize("text,expected", STRUCTURE_CASES, ids=[str(i) for i in range(len(STRUCTURE_CASES))])
def test_structure_errors(text, expected):
    assert problems_of(text) == expected


def test_all_problems_collected_in_line_order():
    text = ("# header\n*filter\n:INPUT ACCEPT [0:0]\n:INPUT DROP [0:0]\n"
            "-A INPUT -p tcp --dport 99999 -j ACCEPT\n"
            "-A INPUT -j ACCEPT\n"                         # fine
            "-A INPUT -m owner --uid-owner 0 -j ACCEPT\n"
            "-A missing -j DROP\n"
            "-A INPUT -j NFLOG\n"
            "COMMIT\n*nat\nCOMMIT\n")
    with pytest.raises(RulesetError) as exc:
        parse_ruleset(text, "multi.rules")
    err = exc.value
    assert str(err) == "6 problems in multi.rules"
    assert [p.split(":")[1] for p in err.problems] == ["4", "5", "7", "8", "9", "11"]
    assert all(p.startswith("multi.rules:") for p in err.problems)
    assert "target 'NFLOG' is not supported yet" in err.problems[4]
    assert "1 problem in x" == str(pytest.raises(RulesetError, parse_ruleset, "junk\n", "x").value)


def test_structure_accepted_forms():
    text = ("# comment\n\n   \n*filter\n"
            ":INPUT DROP\n"                          # counters are optional
            "  # indented comment\n"
            ":later - [0:0]\n"
            "-A INPUT -j later\n"
            "[5:300] -A later -j ACCEPT\n"
            "-A later -c 7 8\n"
            "COMMIT\r\n")
    rs = parse_ruleset(text, "ok.rules")
    (table,) = rs.tables
    assert table.pos == Pos("ok.rules", 4)
    assert [c.name for c in table.chains] == ["INPUT", "FORWARD", "OUTPUT", "later"]
    inp, fwd, out, later = table.chains
    assert (inp.policy, fwd.policy, out.policy, later.policy) == ("DROP", "ACCEPT", "ACCEPT", None)
    assert fwd.pos == table.pos                   # implicit built-ins point at the table line
    assert later.rules[0].counters == Counters(5, 300)
    assert later.rules[1].counters == Counters(7, 8) and later.rules[1].target == Target("NONE")
    assert inp.rules[0].pos == Pos("ok.rules", 8)


def test_chain_order_is_iptables_save_order():
    text = ("*filter\n:zeta - [0:0]\n:OUTPUT ACCEPT [0:0]\n:alpha - [0:0]\n:Zed - [0:0]\n"
            ":_x - [0:0]\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\nCOMMIT\n")
    names = [c.name for c in parse_ruleset(text).tables[0].chains]
    assert names == ["INPUT", "FORWARD", "OUTPUT", "Zed", "_x", "alpha", "zeta"]


def test_counters_parsed():
    rs = parse_ruleset(dict(CORPUS)["counters"], "c.rules")
    t = rs.tables[0]
    assert t.chain("INPUT").counters == Counters(1234, 567890)
    assert [r.counters for r in t.chain("INPUT").rules] == [Counters(10, 600), Counters(200, 30000),
                                                            Counters(0, 0)]


def test_empty_input_is_empty_ruleset():
    assert parse_ruleset("", "e") == Ruleset(())
    assert parse_ruleset("# nothing\n\n", "e") == Ruleset(())


def test_default_filename():
    assert problems_of("junk\n", "<stdin>")[0].startswith("<stdin>:1: line outside a table")
    with pytest.raises(RulesetError) as exc:
        parse_ruleset("junk\n")
    assert exc.value.problems[0].startswith("<stdin>:1:")


# --- round trips on the realistic corpus --------------------------------------------------
@pytest.mark.parametrize("name,text", CORPUS, ids=[n for n, _ in CORPUS])
def test_corpus_round_trip(name, text):
    rs = parse_ruleset(text, name)
    ctrs = counters_of(rs)
    saved = save_ruleset(rs, counters=ctrs)
    again = parse_ruleset(saved, name + ".saved")
    assert strip_pos(again) == strip_pos(rs)
    assert save_ruleset(again, counters=counters_of(again)) == saved
    plain = save_ruleset(rs)
    assert save_ruleset(parse_ruleset(plain)) == plain


def test_large_ruleset_is_fast():
    import time
    from test_iptables_oracle import generated
    text = generated(5000)
    start = time.perf_counter()
    rs = parse_ruleset(text, "big")
    save_ruleset(rs)
    assert sum(len(c.rules) for c in rs.tables[0].chains) > 5000
    assert time.perf_counter() - start < 5.0


# --- tokenizer ------------------------------------------------------------------------------
TOKEN_CASES = [
    ("-A INPUT  -j\tACCEPT", ["-A", "INPUT", "-j", "ACCEPT"]),
    ('--comment "a b"', ["--comment", "a b"]),
    ('--comment "say \\"hi\\""', ["--comment", 'say "hi"']),
    ('--comment "back\\\\slash"', ["--comment", "back\\slash"]),
    ('--comment ""', ["--comment", ""]),
    ("--comment 'single quoted'", ["--comment", "'single", "quoted'"]),
    ("a\\b", ["a\\b"]),                  # backslash is literal outside quotes
    ('ab"cd ef"', ["abcd ef"]),          # a quote may open inside a word...
    ('"a b"c', ["a b", "c"]),            # ...and the closing quote ends the word
    ("", []),
]


@pytest.mark.parametrize("line,words", TOKEN_CASES, ids=[c[0] or "empty" for c in TOKEN_CASES])
def test_tokenize(line, words):
    assert [t.text for t in tokenize(line)] == words


def test_tokenize_unterminated():
    with pytest.raises(TokenizeError):
        tokenize('--comment "open')


@pytest.mark.parametrize("value", ["plain", "", "a b", 'q"q', "b\\s", "it's", "tab\tx", "é", "-_09azAZ",
                                   "$x", "#x", "a,b"])
def test_save_string_round_trips(value):
    assert [t.text for t in tokenize(save_string(value))] == [value]
