"""Parser unit tests (no root): every option, its normalisation, its exact error text,
file structure errors, multi-error collection, and round trips on the shared corpus."""

from __future__ import annotations

import dataclasses

import pytest

from ebpfw.errors import RulesetError
from ebpfw.iptables import counters_of, parse_ruleset, save_ruleset
from ebpfw.iptables.tokenize import TokenizeError, save_string, tokenize
from ebpfw.ruleset import (
    CT_ESTABLISHED, CT_INVALID, CT_NEW, CT_RELATED, CT_UNTRACKED, AddrtypeMatch, CommentMatch,
    ConnlimitMatch, ConnmarkTarget, ConntrackMatch, Counters, DscpMatch, HashlimitMatch, IcmpMatch,
    IfaceMatch, IpMatch, IprangeMatch, LengthMatch, LimitMatch, LogTarget, MacMatch, MarkTarget,
    MultiportMatch, Net, PkttypeMatch, Pos, RecentMatch, RejectTarget, Rule, Ruleset, SetMatch, Target,
    TcpMatch, TcpmssMatch, TosMatch, TtlMatch, UdpMatch,
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


# the match extensions beyond the core: fragment -> the typed match (rule has no -p unless given)
LOCAL, BCAST, MCAST = 1 << 2, 1 << 3, 1 << 5
EXT_IR_CASES = [
    ("-m limit", LimitMatch(avg=12_000_000)),                          # default 3/hour
    ("-m limit --limit 10/sec", LimitMatch(avg=1000)),
    ("-m limit --limit 60/m --limit-burst 7", LimitMatch(avg=10_000, burst=7)),
    ("-m limit --limit 2/DAY --limit-burst 0x10", LimitMatch(avg=432_000_000, burst=16)),
    ("-m limit --limit 3", LimitMatch(avg=3333)),
    ("-m hashlimit --hashlimit-upto 10/sec --hashlimit-name a",
     HashlimitMatch(name="a", avg=100_000, expire=1000)),
    ("-m hashlimit --hashlimit-above 60/minute --hashlimit-burst 20 --hashlimit-mode dstport,srcip "
     "--hashlimit-name b", HashlimitMatch(name="b", avg=1_000_000, expire=60_000, burst=20, above=True,
                                          mode=("srcip", "dstport"))),
    ("-m hashlimit ! --hashlimit-upto 5/hour --hashlimit-mode dstip|srcport --hashlimit-name c "
     "--hashlimit-htable-expire 30000 --hashlimit-srcmask 24 --hashlimit-dstmask 0",
     HashlimitMatch(name="c", avg=720_000_000, expire=30_000, above=True, mode=("srcport", "dstip"),
                    srcmask=24, dstmask=0)),
    ("-m hashlimit ! --hashlimit-above 1/s --hashlimit-name d", HashlimitMatch("d", 1_000_000, 1000)),
    ("-m hashlimit --hashlimit 100 --hashlimit-name e", HashlimitMatch("e", 10_000, 1000)),
    ("-m set --match-set blk src", SetMatch("blk", ("src",))),
    ("-m set ! --set svc dst,src,dst", SetMatch("svc", ("dst", "src", "dst"), invert=True)),
    ("-m recent --set", RecentMatch("set")),
    ("-m recent --name ssh --rcheck --seconds 60 --hitcount 4 --rttl --rdest",
     RecentMatch("rcheck", name="ssh", seconds=60, hitcount=4, rttl=True, side="dest")),
    ("-m recent ! --update --seconds 10 --reap --mask 255.0.255.0 --rsource",
     RecentMatch("update", invert=True, seconds=10, reap=True, mask=0xFF00FF00)),
    ("-m recent --remove --name x", RecentMatch("remove", name="x")),
    ("-m addrtype --src-type local", AddrtypeMatch(src=LOCAL)),
    ("-m addrtype ! --dst-type BROADCAST,multicast --limit-iface-in",
     AddrtypeMatch(dst=BCAST | MCAST, dst_invert=True, limit_iface_in=True)),
    ("-m addrtype ! --src-type UNSPEC --dst-type XRESOLVE --limit-iface-out",
     AddrtypeMatch(src=1, src_invert=True, dst=1 << 11, limit_iface_out=True)),
    ("-m pkttype --pkt-type unicast", PkttypeMatch("unicast")),
    ("-m pkttype ! --pkt-type BCAST", PkttypeMatch("broadcast", invert=True)),
    ("-m pkttype --pkt-type host", PkttypeMatch("unicast")),
    ("-m pkttype --pkt-type otherhost", PkttypeMatch("otherhost")),
    ("-m mac --mac-source 00:11:22:AA:bb:Cc", MacMatch(bytes.fromhex("001122aabbcc"))),
    ("-m mac ! --mac-source 0:1:2:3:4:5", MacMatch(bytes(range(6)), invert=True)),
    ("-m length --length 100", LengthMatch(100, 100)),
    ("-m length ! --length 100:200", LengthMatch(100, 200, invert=True)),
    ("-m length --length :0x40", LengthMatch(0, 64)),
    ("-m length --length 1000:", LengthMatch(1000, 65535)),
    ("-m ttl --ttl-eq 64", TtlMatch("eq", 64)),
    ("-m ttl ! --ttl-eq 64", TtlMatch("ne", 64)),
    ("-m ttl --ttl-gt 0x10", TtlMatch("gt", 16)),
    ("-m ttl --ttl-lt 2", TtlMatch("lt", 2)),
    ("-m tos --tos 0x10", TosMatch(0x10, 0xFF)),
    ("-m tos ! --tos 8/0x0c", TosMatch(8, 0x0C, invert=True)),
    ("-m tos --tos minimize-DELAY", TosMatch(0x10, 0x3F)),
    ("-m tos --tos 0xfc/3", TosMatch(0xFC, 3)),
    ("-m dscp --dscp 10", DscpMatch(10)),
    ("-m dscp ! --dscp 0x2e", DscpMatch(46, invert=True)),
    ("-m dscp --dscp-class ef", DscpMatch(46)),
    ("-m dscp ! --dscp-class AF41", DscpMatch(0x22, invert=True)),
    ("-p tcp -m tcpmss --mss 1400:1500", TcpmssMatch(1400, 1500)),
    ("-p tcp -m tcpmss ! --mss 536", TcpmssMatch(536, 536, invert=True)),
    ("-m connlimit --connlimit-above 10", ConnlimitMatch(10)),
    ("-m connlimit --connlimit-upto 5 --connlimit-mask 24 --connlimit-daddr",
     ConnlimitMatch(5, above=False, mask=24, daddr=True)),
    ("-m connlimit ! --connlimit-above 3 --connlimit-saddr", ConnlimitMatch(3, above=False)),
    ("-m connlimit ! --connlimit-upto 3 --connlimit-mask 255.255.0.0", ConnlimitMatch(3, mask=16)),
]


@pytest.mark.parametrize("fragment,match", EXT_IR_CASES, ids=[c[0][:60] for c in EXT_IR_CASES])
def test_extension_ir(fragment, match):
    assert one_rule(fragment).matches[-1] == match


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
    ("-j REJECT", Target("REJECT", ext=RejectTarget("icmp-port-unreachable"))),
    ("-j REJECT --reject-with icmp-net-unreachable", Target("REJECT", ext=RejectTarget("icmp-net-unreachable"))),
    ("-j REJECT --reject-with host-unreach", Target("REJECT", ext=RejectTarget("icmp-host-unreachable"))),
    ("-j REJECT --reject-with proto-unreach", Target("REJECT", ext=RejectTarget("icmp-proto-unreachable"))),
    ("-j REJECT --reject-with Port", Target("REJECT", ext=RejectTarget("icmp-port-unreachable"))),
    ("-j REJECT --reject-with ICMP-NET-PROHIB", Target("REJECT", ext=RejectTarget("icmp-net-prohibited"))),
    ("-j REJECT --reject-with host-prohib", Target("REJECT", ext=RejectTarget("icmp-host-prohibited"))),
    ("-j REJECT --reject-with admin", Target("REJECT", ext=RejectTarget("icmp-admin-prohibited"))),
    ("-j REJECT --reject-with icmp", Target("REJECT", ext=RejectTarget("icmp-net-unreachable"))),
    ("-p tcp -j REJECT --reject-with tcp-rst", Target("REJECT", ext=RejectTarget("tcp-reset"))),
    ("-j LOG", Target("LOG", ext=LogTarget())),
    ('-j LOG --log-prefix "a b: " --log-level debug', Target("LOG", ext=LogTarget("a b: ", 7))),
    ("-j LOG --log-level 0x2 --log-tcp-sequence --log-tcp-options --log-ip-options --log-uid --log-macdecode",
     Target("LOG", ext=LogTarget(level=2, tcp_sequence=True, tcp_options=True, ip_options=True, uid=True,
                                 macdecode=True))),
    ("-j LOG --log-level panic", Target("LOG", ext=LogTarget(level=0))),
    ("-j MARK --set-mark 1", Target("MARK", ext=MarkTarget(1, 0xFFFFFFFF))),
    ("-j MARK --set-mark 0x10/0xf", Target("MARK", ext=MarkTarget(0x10, 0x1F))),
    ("-j MARK --set-xmark 5/7", Target("MARK", ext=MarkTarget(5, 7))),
    ("-j MARK --and-mark 0xf0", Target("MARK", ext=MarkTarget(0, 0xFFFFFF0F))),
    ("-j MARK --or-mark 3", Target("MARK", ext=MarkTarget(3, 3))),
    ("-j MARK --xor-mark 3", Target("MARK", ext=MarkTarget(3, 0))),
    ("-j CONNMARK --set-mark 1", Target("CONNMARK", ext=ConnmarkTarget("set", 1, 0xFFFFFFFF))),
    ("-j CONNMARK --set-mark 5 --mask 3", Target("CONNMARK", ext=ConnmarkTarget("set", 5, 3))),
    ("-j CONNMARK --and-mark 7", Target("CONNMARK", ext=ConnmarkTarget("set", 0, 0xFFFFFFF8))),
    ("-j CONNMARK --save-mark", Target("CONNMARK", ext=ConnmarkTarget("save"))),
    ("-j CONNMARK --restore-mark --mask 0xff", Target("CONNMARK", ext=ConnmarkTarget("restore", 0, 0xFF, 0xFF))),
    ("-j CONNMARK --save-mark --nfmask 0xf --ctmask 0xf0", Target("CONNMARK", ext=ConnmarkTarget("save", 0, 0xF0, 0xF))),
    ("-j CONNMARK --restore-mark --nfmask 0xf", Target("CONNMARK", ext=ConnmarkTarget("restore", 0, 0xFFFFFFFF, 0xF))),
    ("-j LOG -m comment --comment x --log-level 1", Target("LOG", ext=LogTarget(level=1))),
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
    # extensions (iptables-save 1.8.9's text for the same input, both backends)
    ("-m limit --limit 60/minute --limit-burst 5", "-m limit --limit 1/sec"),
    ("-m limit --limit 7/minute", "-m limit --limit 7/min"),
    ("-m limit", "-m limit --limit 3/hour"),
    ("-m limit --limit 5000/s --limit-burst 6", "-m limit --limit 5000/sec --limit-burst 6"),
    ("-m hashlimit --hashlimit-upto 10/sec --hashlimit-name a",
     "-m hashlimit --hashlimit-upto 10/sec --hashlimit-burst 5 --hashlimit-name a"),
    ("-m hashlimit --hashlimit-above 60/minute --hashlimit-mode dstport,srcip --hashlimit-name b",
     "-m hashlimit --hashlimit-above 1/sec --hashlimit-burst 5 --hashlimit-mode srcip,dstport --hashlimit-name b "
     "--hashlimit-htable-expire 60000"),
    ("-m hashlimit ! --hashlimit-upto 5/hour --hashlimit-name c --hashlimit-htable-expire 3600000 "
     "--hashlimit-srcmask 24 --hashlimit-dstmask 32",
     "-m hashlimit --hashlimit-above 5/hour --hashlimit-burst 5 --hashlimit-name c --hashlimit-srcmask 24"),
    ("-m set --set blk src,dst", "-m set --match-set blk src,dst"),
    ("-m recent --set", "-m recent --set --name DEFAULT --mask 255.255.255.255 --rsource"),
    ("-m recent --rdest --hitcount 2 --rttl --seconds 9 ! --update --reap --name x",
     "-m recent ! --update --seconds 9 --reap --hitcount 2 --rttl --name x --mask 255.255.255.255 --rdest"),
    ("-m recent --rcheck --mask 10.1.2.3", "-m recent --rcheck --name DEFAULT --mask 10.1.2.3 --rsource"),
    ("-m addrtype --limit-iface-in ! --dst-type multicast,UNSPEC --src-type local",
     "-m addrtype --src-type LOCAL ! --dst-type UNSPEC,MULTICAST --limit-iface-in"),
    ("-m pkttype --pkt-type MCAST", "-m pkttype --pkt-type multicast"),
    ("-m mac --mac-source A:b:C:d:E:f", "-m mac --mac-source 0a:0b:0c:0d:0e:0f"),
    ("-m length --length 5:5", "-m length --length 5"),
    ("-m length --length :500", "-m length --length 0:500"),
    ("-m ttl ! --ttl-eq 1", "-m ttl ! --ttl-eq 1"),
    ("-m ttl --ttl-lt 0x10", "-m ttl --ttl-lt 16"),
    ("-m tos --tos Normal-Service", "-m tos --tos 0x00/0x3f"),
    ("-m tos --tos 16", "-m tos --tos 0x10/0xff"),
    ("-m dscp --dscp-class cs0", "-m dscp --dscp 0x00"),
    ("-m dscp --dscp 63", "-m dscp --dscp 0x3f"),
    ("-p tcp -m tcpmss --mss 536:536", "-p tcp -m tcpmss --mss 536"),
    ("-p tcp -m tcpmss --mss :500", "-p tcp -m tcpmss --mss 0:500"),
    ("-p tcp -m tcpmss --mss 0x10:", "-p tcp -m tcpmss --mss 16:65535"),
    ("-m connlimit --connlimit-above 0x10", "-m connlimit --connlimit-above 16 --connlimit-mask 32 "
     "--connlimit-saddr"),
    ("-m connlimit ! --connlimit-above 3", "-m connlimit --connlimit-upto 3 --connlimit-mask 32 --connlimit-saddr"),
    ("-j REJECT", "-j REJECT --reject-with icmp-port-unreachable"),
    ("-j REJECT --reject-with net-prohib", "-j REJECT --reject-with icmp-net-prohibited"),
    ("-j LOG --log-level 4", "-j LOG"),
    ("-j LOG --log-level warning --log-uid --log-prefix 'x'", "-j LOG --log-prefix \"\\'x\\'\" --log-uid"),
    ("-j LOG --log-macdecode --log-level error", "-j LOG --log-level 3 --log-macdecode"),
    ("-j MARK --set-mark 0x10/0xff", "-j MARK --set-xmark 0x10/0xff"),
    ("-j MARK --and-mark 0", "-j MARK --set-xmark 0x0/0xffffffff"),
    ("-j CONNMARK --save-mark", "-j CONNMARK --save-mark --nfmask 0xffffffff --ctmask 0xffffffff"),
    ("-j CONNMARK --or-mark 1", "-j CONNMARK --set-xmark 0x1/0x1"),
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
     "connlimit, connmark, conntrack, dscp, hashlimit, icmp, iprange, length, limit, mac, mark, multiport, "
     "pkttype, recent, set, state, tcp, tcpmss, tos, ttl, udp, found '-m owner'"),
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
    # extensions
    ("-m limit ! --limit 3/sec", "'!' before '--limit', expected '--limit' without '!', found '! --limit'"),
    ("-m limit --limit 0/day", "bad rate in --limit, expected a positive number of packets, e.g. 10/sec, "
     "found '0/day'"),
    ("-m limit --limit 1/days", "bad rate unit in --limit, expected N/sec, N/minute, N/hour or N/day, found "
     "'1/days'"),
    ("-m limit --limit 10001/s", "rate too fast in --limit, expected at most 10000 packets per second, "
     "found '10001/s'"),
    ("-m limit --limit-burst 10001", "bad burst in --limit-burst, expected a number 0-10000, found '10001'"),
    ("-m hashlimit --hashlimit-name x", "match 'hashlimit' needs a rate, expected --hashlimit-upto RATE or "
     "--hashlimit-above RATE, found '-m hashlimit without one'"),
    ("-m hashlimit --hashlimit-upto 1/s", "match 'hashlimit' needs --hashlimit-name, expected "
     "--hashlimit-name NAME, found '-m hashlimit without it'"),
    ("-m hashlimit --hashlimit-upto 1/s --hashlimit-above 2/s", "options '--hashlimit-upto' and "
     "'--hashlimit-above' exclude each other in one 'hashlimit' match, expected one of them (or a second "
     "-m hashlimit), found '--hashlimit-above'"),
    ("-m hashlimit --hashlimit-upto 15b/s --hashlimit-name x", "byte rate too low in --hashlimit-upto, "
     "expected at least 16b/s (iptables-save prints a slower rate as 0b/s, which iptables cannot read back), "
     "found '15b/s'"),
    ("-m hashlimit --hashlimit-upto 1/s --hashlimit-name x --hashlimit-mode none", "unknown key in "
     "--hashlimit-mode, expected a comma list of srcip, srcport, dstip, dstport, found 'none'"),
    ("-m hashlimit --hashlimit-upto 1/s --hashlimit-name x --hashlimit-htable-gcinterval 0", "bad collector "
     "interval (ms; the kernel refuses 0) in --hashlimit-htable-gcinterval, expected a number 1-4294967295, "
     "found '0'"),
    ("-m hashlimit --hashlimit-upto 1/s --hashlimit-name x --hashlimit-srcmask 33", "bad prefix length in "
     "--hashlimit-srcmask, expected a number 0-32, found '33'"),
    ("-m hashlimit --hashlimit-upto 1/s --hashlimit-name 'a b'", "bad table name in --hashlimit-name, "
     "expected 1-254 characters without white space, quotes or '/', found ''a'"),
    ("-m set", "match 'set' needs --match-set, expected --match-set NAME src|dst[,...], found '-m set alone'"),
    ("-m set --match-set blk source", "bad direction list in --match-set, expected a comma list of src and "
     "dst, e.g. src,dst, found 'source'"),
    ("-m set --match-set blk src,src,src,src,src,src,src", "too many directions in --match-set, expected at "
     "most 6 of src/dst, found 'src,src,src,src,src,src,src'"),
    ("-m set --match-set " + "n" * 32 + " src", "bad set name in --match-set, expected 1-31 characters "
     "without white space, quotes or '/', found '" + "n" * 32 + "'"),
    ("-m set --match-set blk src --return-nomatch", "option '--return-nomatch' of match 'set' is not "
     "supported yet, expected only --match-set, --set, found '--return-nomatch'"),
    ("-m recent --name x", "match 'recent' needs a command, expected --set, --rcheck, --update or --remove, "
     "found '-m recent without one'"),
    ("-m recent --rcheck --update", "options '--rcheck' and '--update' exclude each other in one 'recent' "
     "match, expected one of them (or a second -m recent), found '--update'"),
    ("-m recent --set --rttl", "option '--rttl' cannot be used with --set, expected --rttl with --rcheck or "
     "--update, found '--rttl'"),
    ("-m recent --rcheck --reap", "option '--reap' of match 'recent' needs --seconds, expected --seconds N "
     "with --reap, found '--reap'"),
    ("-m recent --rcheck ! --rdest", "'!' before '--rdest', expected '--rdest' without '!', found '! --rdest'"),
    ("-m recent --rcheck --name a/b", "bad list name in --name, expected 1-199 characters without white "
     "space, quotes or '/', found 'a/b'"),
    ("-m recent --rcheck --seconds 0", "bad number of seconds in --seconds, expected a number 1-4294967295, "
     "found '0'"),
    ("-m addrtype", "match 'addrtype' needs --src-type or --dst-type, expected --src-type or --dst-type "
     "TYPES, found '-m addrtype without them'"),
    ("-m addrtype --src-type LOCAL,HOME", "unknown address type in --src-type, expected a comma list of "
     "UNSPEC, UNICAST, LOCAL, BROADCAST, ANYCAST, MULTICAST, BLACKHOLE, UNREACHABLE, PROHIBIT, THROW, NAT, "
     "XRESOLVE, found 'HOME'"),
    ("-m addrtype --src-type LOCAL --limit-iface-in --limit-iface-out", "options '--limit-iface-in' and "
     "'--limit-iface-out' exclude each other, expected one of them, found '--limit-iface-out'"),
    ("-m pkttype", "match 'pkttype' needs --pkt-type, expected --pkt-type TYPE, found '-m pkttype alone'"),
    ("-m pkttype --pkt-type outgoing", "unknown packet type in --pkt-type, expected unicast, broadcast, "
     "multicast or otherhost, found 'outgoing'"),
    ("-m mac --mac-source 00-11-22-33-44-55", "invalid MAC address in --mac-source, expected six hex bytes "
     "such as 00:11:22:aa:bb:cc, found '00-11-22-33-44-55'"),
    ("-m mac --mac-source 00:11:22:33:44", "invalid MAC address in --mac-source, expected six hex bytes "
     "such as 00:11:22:aa:bb:cc, found '00:11:22:33:44'"),
    ("-m length --length 200:100", "reversed range in --length would never match, expected MIN:MAX with "
     "MIN <= MAX, found '200:100'"),
    ("-m length --length 70000", "bad range in --length, expected N or MIN:MAX with numbers 0-65535, found "
     "'70000'"),
    ("-m ttl --ttl-eq 256", "bad TTL in --ttl-eq, expected a number 0-255, found '256'"),
    ("-m ttl ! --ttl-gt 3", "'!' before '--ttl-gt', expected '--ttl-gt' without '!', found '! --ttl-gt'"),
    ("-m ttl --ttl-gt 3 --ttl-lt 9", "options '--ttl-gt' and '--ttl-lt' exclude each other in one 'ttl' "
     "match, expected one of them (or a second -m ttl), found '--ttl-lt'"),
    ("-m tos --tos 0x100", "bad TOS in --tos, expected VALUE[/MASK] with numbers 0-255, or Minimize-Delay, "
     "Maximize-Throughput, Maximize-Reliability, Minimize-Cost, Normal-Service, found '0x100'"),
    ("-m dscp --dscp 64", "bad DSCP in --dscp, expected a number 0-63, found '64'"),
    ("-m dscp --dscp-class XX", "unknown DSCP class in --dscp-class, expected one of CS0, CS1, CS2, CS3, "
     "CS4, CS5, CS6, CS7, BE, AF11, AF12, AF13, AF21, AF22, AF23, AF31, AF32, AF33, AF41, AF42, AF43, EF, "
     "found 'XX'"),
    ("-m dscp --dscp 1 --dscp-class EF", "options '--dscp' and '--dscp-class' exclude each other in one "
     "'dscp' match, expected one of them (or a second -m dscp), found '--dscp-class'"),
    ("-m tcpmss --mss 5", "match 'tcpmss' needs -p tcp (iptables refuses it otherwise), expected '-p tcp' "
     "(not inverted) in the rule, found 'no -p'"),
    ("-p tcp -m tcpmss --mss 5:4", "reversed range in --mss would never match, expected MIN:MAX with MIN <= "
     "MAX, found '5:4'"),
    ("-m connlimit --connlimit-mask 24", "match 'connlimit' needs a limit, expected --connlimit-above N or "
     "--connlimit-upto N, found '-m connlimit without one'"),
    ("-m connlimit --connlimit-above 1 --connlimit-mask 33", "bad mask in --connlimit-mask, expected a "
     "prefix length 0-32 or a mask such as 255.255.255.0, found '33'"),
    ("-m connlimit --connlimit-above 1 --connlimit-mask 255.0.255.0", "bad mask in --connlimit-mask, "
     "expected a prefix length 0-32 or a mask such as 255.255.255.0, found '255.0.255.0'"),
    ("-j REJECT --reject-with echo-reply", "--reject-with echo-reply is no longer supported by iptables "
     "(--reject-with), expected one of icmp-net-unreachable, icmp-host-unreachable, icmp-proto-unreachable, "
     "icmp-port-unreachable, icmp-net-prohibited, icmp-host-prohibited, tcp-reset, icmp-admin-prohibited, "
     "found 'echo-reply'"),
    ("-j REJECT --reject-with nope", "unknown reject type in --reject-with, expected one of "
     "icmp-net-unreachable, icmp-host-unreachable, icmp-proto-unreachable, icmp-port-unreachable, "
     "icmp-net-prohibited, icmp-host-prohibited, tcp-reset, icmp-admin-prohibited, found 'nope'"),
    ("-j REJECT ! --reject-with tcp-reset", "'!' before '--reject-with', expected '--reject-with' without "
     "'!', found '! --reject-with'"),
    ("--reject-with tcp-reset -j REJECT", "option '--reject-with' without a target that takes it, expected "
     "-j REJECT before it, found '--reject-with'"),
    ("-j REJECT --reject-with tcp-reset --reject-with icmp", "option '--reject-with' given twice in one "
     "'REJECT' target, expected one of them, found '--reject-with'"),
    ("-j LOG --log-level 8", "unknown log level in --log-level, expected 0-7 or one of emerg, panic, alert, "
     "crit, error, warning, notice, info, debug (lower case), found '8'"),
    ("-j LOG --log-level WARNING", "unknown log level in --log-level, expected 0-7 or one of emerg, panic, "
     "alert, crit, error, warning, notice, info, debug (lower case), found 'WARNING'"),
    ("-j LOG --log-prefix 123456789012345678901234567890", "log prefix longer than 29 bytes in --log-prefix "
     "(iptables would cut it), expected at most 29 bytes, found '123456789012345678901234567890'"),
    ('-j LOG --log-prefix ""', "empty --log-prefix, expected at least one character (or no --log-prefix), "
     "found '\"\"'"),
    ("-j MARK", "target 'MARK' needs an operation, expected --set-xmark, --set-mark, --and-mark, --or-mark or "
     "--xor-mark, found '-j MARK alone'"),
    ("-j MARK --set-mark 1 --or-mark 2", "options '--set-mark' and '--or-mark' exclude each other in one "
     "'MARK' target, expected one of them, found '--or-mark'"),
    ("-j MARK --set-mark 0x100000000", "bad value in --set-mark, expected a number 0-0xffffffff, found "
     "'0x100000000'"),
    ("-j CONNMARK", "target 'CONNMARK' needs an operation, expected --set-xmark, --set-mark, --and-mark, "
     "--or-mark, --xor-mark, --save-mark or --restore-mark, found '-j CONNMARK alone'"),
    ("-j CONNMARK --save-mark --left-shift-mark 2", "option '--left-shift-mark' of 'CONNMARK' target is not "
     "supported yet, expected only --set-xmark, --set-mark, --and-mark, --or-mark, --xor-mark, --save-mark, "
     "--restore-mark, --mask, --nfmask, --ctmask, found '--left-shift-mark'"),
    ("-j CONNMARK --set-xmark 1 --nfmask 2", "option '--nfmask' only goes with --save-mark or --restore-mark, "
     "expected --save-mark or --restore-mark before it, found '--set-xmark'"),
    ("-j CONNMARK --save-mark --mask 1 --ctmask 2", "option '--mask' together with --nfmask/--ctmask "
     "(iptables applies them in command-line order), expected either --mask or --nfmask/--ctmask, found "
     "'--mask'"),
    ("-j NOTRACK", "target 'NOTRACK' is only valid in the raw table (the kernel refuses it in filter), "
     "expected ACCEPT, DROP, RETURN, REJECT, LOG, MARK, CONNMARK or a user-defined chain, found '-j NOTRACK'"),
    ("-j CT --notrack", "target 'CT' is only valid in the raw table (the kernel refuses it in filter: \"CT "
     "target: only valid in raw table, not filter\"), expected ACCEPT, DROP, RETURN, REJECT, LOG, MARK, "
     "CONNMARK or a user-defined chain, found '-j CT'"),
    ("-j DNAT --to-destination 1.1.1.1", "target 'DNAT' is only valid in the nat table (the kernel refuses "
     "it in filter) and ebpfw enforces only the filter and raw tables, expected ACCEPT, DROP, RETURN, REJECT, LOG, "
     "MARK, CONNMARK or a user-defined chain, found '-j DNAT'"),
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
     ["t.rules:1: table 'nat' is not supported by ebpfw yet, expected '*filter' or '*raw', found '*nat'"]),
    ("*mangle\nCOMMIT\n*raw\nCOMMIT\n*security\nCOMMIT\n",
     ["t.rules:1: table 'mangle' is not supported by ebpfw yet, expected '*filter' or '*raw', found '*mangle'",
      "t.rules:5: table 'security' is not supported by ebpfw yet, expected '*filter' or '*raw', found "
      "'*security'"]),
    ("*bogus\nCOMMIT\n", ["t.rules:1: unknown table 'bogus', expected '*filter' or '*raw', found '*bogus'"]),
    ("*filter\nCOMMIT\n*filter\nCOMMIT\n",
     ["t.rules:3: table 'filter' appears twice, expected one section per table, found '*filter'"]),
    ("*filter\n*nat\nCOMMIT\n",
     ["t.rules:1: table 'filter' is never committed, expected 'COMMIT' before the next table, found "
      "'*nat'",
      "t.rules:2: table 'nat' is not supported by ebpfw yet, expected '*filter' or '*raw', found '*nat'"]),
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
