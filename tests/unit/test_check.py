"""check_ruleset unit tests (no root): each refusal with its exact FILE:LINE text, several
problems at once, and the whole corpus passing (conntrack allowed) or failing only on
what the datapath cannot do yet."""

from __future__ import annotations

import pytest

from ebpfw.check import chain_hooks, check_ruleset
from ebpfw.errors import RulesetError
from ebpfw.iptables import parse_ruleset
from ebpfw.ruleset import (
    Chain, ConnmarkTarget, ConntrackMatch, IcmpMatch, IfaceMatch, IpMatch, LogTarget, MarkTarget, Net, Pos,
    RejectTarget, Rule, Ruleset, Table, Target, TcpMatch,
)
from test_iptables_oracle import CORPUS, EXT_CORPUS

HEAD = ("*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n"
        ":a - [0:0]\n:b - [0:0]\n:c - [0:0]\n")          # rules start on line 8


def check_text(rules: str, **kw) -> list[str]:
    rs = parse_ruleset(HEAD + rules + "COMMIT\n", "c.rules")
    with pytest.raises(RulesetError) as exc:
        check_ruleset(rs, **kw)
    return exc.value.problems


def passes(rules: str, **kw) -> None:
    check_ruleset(parse_ruleset(HEAD + rules + "COMMIT\n", "c.rules"), **kw)


CASES = [
    ("-A OUTPUT -i eth0 -j DROP\n",
     "c.rules:8: -i in chain OUTPUT (iptables refuses it: no input interface there), expected no -i in "
     "OUTPUT, found '-i eth0'"),
    ("-A INPUT ! -o eth+ -j DROP\n",
     "c.rules:8: -o in chain INPUT (iptables refuses it: no output interface there), expected no -o in "
     "INPUT, found '-o eth+'"),
    ("-A INPUT -p tcp ! --tcp-option 4 -j DROP\n",
     "c.rules:8: option '--tcp-option' is not supported yet, expected a tcp match without --tcp-option, "
     "found '! --tcp-option 4'"),
    ("-A INPUT -m conntrack --ctstate NEW -j DROP\n",
     "c.rules:8: match 'conntrack' is not supported yet (connection tracking is not enabled in this "
     "ebpfw), expected a rule without conntrack or state matches, found '-m conntrack'"),
    ("-A INPUT -m state --state NEW -j DROP\n",
     "c.rules:8: match 'state' is not supported yet (connection tracking is not enabled in this ebpfw), "
     "expected a rule without conntrack or state matches, found '-m state'"),
    ("-A a -j a\n",
     "c.rules:8: jump from chain 'a' to 'a' makes a loop (a -> a), iptables refuses loops too, expected "
     "a jump graph without loops, found '-A a -j a'"),
    ("-A INPUT -j a\n-A a -j b\n-A b -g c\n-A c -p tcp -j a\n",
     "c.rules:11: jump from chain 'c' to 'a' makes a loop (a -> b -> c -> a), iptables refuses loops "
     "too, expected a jump graph without loops, found '-A c -p tcp -j a'"),
]


@pytest.mark.parametrize("rules,message", CASES, ids=[c[0].strip()[:40] for c in CASES])
def test_refusals(rules, message):
    assert check_text(rules) == [message]


ALLOWED = [
    "-A INPUT -j a\n-A a -j b\n-A a -j c\n-A b -j c\n-A c -j RETURN\n",   # a diamond is no loop
    "-A OUTPUT -o eth0 -j ACCEPT\n-A INPUT -i eth0 -j ACCEPT\n-A FORWARD -i a -o b -j DROP\n",
    "-A a -i eth0 -j RETURN\n-A OUTPUT -j a\n",          # iptables only checks built-in chains
    "-A INPUT -j RETURN\n-A a -j RETURN\n-A b\n",
    "-A INPUT -p tcp --dport 22 --syn -j ACCEPT\n",
]


@pytest.mark.parametrize("rules", ALLOWED)
def test_allowed(rules):
    passes(rules)


def test_conntrack_allowed_by_keyword():
    passes("-A INPUT -m conntrack --ctstate NEW -m state ! --state INVALID -j DROP\n", allow_conntrack=True)


def test_every_problem_reported_in_line_order():
    problems = check_text("-A c -j a\n-A OUTPUT -i x\n-A a -j b\n-A INPUT -p tcp --tcp-option 4 -m state --state NEW\n"
                          "-A b -j c\n")
    assert [p.split(":")[1] for p in problems] == ["8", "9", "11", "11"]
    assert "makes a loop (a -> b -> c -> a)" in problems[0]      # one loop, reported once


def test_message_counts_problems():
    with pytest.raises(RulesetError) as exc:
        check_ruleset(parse_ruleset(HEAD + "-A INPUT -p tcp --tcp-option 4\n-A INPUT -p tcp ! --tcp-option 5\nCOMMIT\n", "n.rules"))
    assert str(exc.value) == "2 problems in n.rules"
    with pytest.raises(RulesetError) as exc:
        check_ruleset(parse_ruleset(HEAD + "-A INPUT -p tcp --tcp-option 4\nCOMMIT\n", "n.rules"))
    assert str(exc.value) == "1 problem in n.rules"


# --- IR not made by the parser -------------------------------------------------------------
P = Pos("ir", 1)


def ir(*chains: Chain, name: str = "filter") -> Ruleset:
    return Ruleset((Table(name, chains, Pos("ir", 1)),))


def builtin(name: str, *rules: Rule, policy="ACCEPT", line: int = 2) -> Chain:
    return Chain(name, policy, tuple(rules), Pos("ir", line))


def r(target: Target, line: int, ip: IpMatch = IpMatch(), matches=()) -> Rule:
    return Rule(ip, tuple(matches), target, Pos("ir", line))


def problems_ir(rs: Ruleset, **kw) -> list[str]:
    with pytest.raises(RulesetError) as exc:
        check_ruleset(rs, **kw)
    return exc.value.problems


def test_other_table_refused():
    assert problems_ir(ir(name="nat")) == [
        "ir:1: table 'nat' is not supported by ebpfw yet, expected '*filter' or '*raw', found '*nat'"]


def test_policies_and_names():
    rs = ir(builtin("INPUT", policy=None), builtin("FORWARD", policy="RETURN", line=3),
            Chain("u", "ACCEPT", (), Pos("ir", 4)), Chain("-bad", None, (), Pos("ir", 5)),
            Chain("u", None, (), Pos("ir", 6)))
    assert problems_ir(rs) == [
        "ir:2: built-in chain 'INPUT' needs a policy, expected ACCEPT or DROP, found '-'",
        "ir:3: built-in chain 'FORWARD' needs a policy, expected ACCEPT or DROP, found 'RETURN'",
        "ir:4: user-defined chain 'u' cannot have a policy, expected '-', found 'ACCEPT'",
        "ir:5: invalid chain name: chain name starting with '-', expected a valid iptables chain name, "
        "found '-bad'",
        "ir:6: chain 'u' defined twice (first at ir:4), expected one chain per name, found 'u'",
    ]


def test_jump_targets():
    rs = ir(builtin("INPUT", r(Target("JUMP", "nowhere"), 3), r(Target("GOTO", "OUTPUT"), 4),
                    r(Target("JUMP", None), 5)),
            builtin("OUTPUT", line=6))
    assert problems_ir(rs) == [
        "ir:3: -j target chain 'nowhere' is not defined, expected a chain declared with "
        "':nowhere - [0:0]', found '-j nowhere'",
        "ir:4: -g to built-in chain 'OUTPUT', expected a user-defined chain, found '-g OUTPUT'",
        "ir:5: -j target chain 'None' is not defined, expected a chain declared with ':None - [0:0]', "
        "found '-j None'",
    ]


def test_ir_consistency():
    rs = ir(builtin("INPUT",
                    r(Target("ACCEPT"), 3, IpMatch(src=Net(0x0A000001, 0xFF000000))),
                    r(Target("ACCEPT"), 4, IpMatch(proto=17), (TcpMatch(dport=(1, 1)),)),
                    r(Target("ACCEPT"), 5, IpMatch(iface_out=IfaceMatch("x")))))
    assert problems_ir(rs) == [
        "ir:3: address in -s has bits outside its mask, expected a masked address (the parser masks it), "
        "found '-A INPUT -s 10.0.0.1/8 -j ACCEPT'",
        "ir:4: match 'tcp' needs -p tcp, expected '-p tcp' (not inverted) in the rule, found "
        "'-A INPUT -p udp -m tcp --dport 1 -j ACCEPT'",
        "ir:5: -o in chain INPUT (iptables refuses it: no output interface there), expected no -o in "
        "INPUT, found '-o x'",
    ]


def test_deep_chain_nesting_no_recursion_limit():
    n = 3000
    chains = [builtin("INPUT", r(Target("JUMP", "c0"), 2))]
    for i in range(n):
        nxt = Target("JUMP", f"c{i + 1}") if i + 1 < n else Target("JUMP", "c0")
        chains.append(Chain(f"c{i}", None, (r(nxt, 10 + i),), Pos("ir", 10 + i)))
    problems = problems_ir(ir(*chains))
    assert len(problems) == 1 and problems[0].startswith(f"ir:{10 + n - 1}: jump from chain 'c{n - 1}' to 'c0'")
    check_ruleset(ir(*chains[:-1], Chain(f"c{n - 1}", None, (r(Target("RETURN"), 5),), P)))


def test_unprintable_ir_matches():
    rs = ir(builtin("INPUT", r(Target("ACCEPT"), 3, IpMatch(proto=1), (IcmpMatch(3, 1, 5),)),
                    r(Target("ACCEPT"), 4, matches=(ConntrackMatch(None),))))
    assert problems_ir(rs, allow_conntrack=True) == [
        "ir:3: ICMP code range 1-5 has no iptables form, expected one code or all codes (0-255), found "
        "'-A INPUT -p icmp -m icmp --icmp-type 3/1 -j ACCEPT'",
        "ir:4: match 'conntrack' without states, expected at least one state, found "
        "'-A INPUT -m conntrack -j ACCEPT'",
    ]


def test_conntrack_ir_allowed():
    rs = ir(builtin("INPUT", r(Target("ACCEPT"), 3, matches=(ConntrackMatch(2),))))
    assert len(problems_ir(rs)) == 1
    check_ruleset(rs, allow_conntrack=True)


# --- the realistic corpus ----------------------------------------------------------------------
UNSUPPORTED_IN_CORPUS: dict[str, int] = {}      # (-f and ! -f in "noncanonical" are enforced now)


CORE_CORPUS = [c for c in CORPUS if c not in EXT_CORPUS]


@pytest.mark.parametrize("name,text", CORE_CORPUS, ids=[n for n, _ in CORE_CORPUS])
def test_corpus_checks(name, text):
    rs = parse_ruleset(text, name)
    expected = UNSUPPORTED_IN_CORPUS.get(name, 0)
    if expected:
        with pytest.raises(RulesetError) as exc:
            check_ruleset(rs, allow_conntrack=True)
        assert len(exc.value.problems) == expected, exc.value.problems
    else:
        check_ruleset(rs, allow_conntrack=True)


# --- the extensions: what iptables/the kernel refuse, and the datapath's refusals ----------------
def datapath_only(problems: list[str]) -> bool:
    return all("is not supported by the datapath yet" in p for p in problems)


def check_problems(rules: str) -> list[str]:
    try:
        check_ruleset(parse_ruleset(HEAD + rules + "COMMIT\n", "c.rules"), allow_conntrack=True)
    except RulesetError as exc:
        return exc.problems
    return []


EXT_CASES = [
    ("-A INPUT -j REJECT --reject-with tcp-reset\n",
     "c.rules:8: REJECT --reject-with tcp-reset needs -p tcp (the kernel refuses it otherwise), expected "
     "'-p tcp' (not inverted) in the rule, found '-A INPUT -j REJECT --reject-with tcp-reset'"),
    ("-A INPUT ! -p tcp -j REJECT --reject-with tcp-rst\n",
     "c.rules:8: REJECT --reject-with tcp-reset needs -p tcp (the kernel refuses it otherwise), expected "
     "'-p tcp' (not inverted) in the rule, found '-A INPUT ! -p tcp -j REJECT --reject-with tcp-reset'"),
    ("-A OUTPUT -m mac --mac-source 00:11:22:33:44:55\n",
     "c.rules:8: match 'mac' in a rule reached from chain OUTPUT (the kernel allows it only in INPUT and "
     "FORWARD: locally sent packets have no source MAC yet), expected -m mac only in rules reached from "
     "INPUT or FORWARD, found '-A OUTPUT -m mac --mac-source 00:11:22:33:44:55'"),
    ("-A a -m mac --mac-source 00:11:22:33:44:55\n-A INPUT -j a\n-A OUTPUT -g b\n-A b -j a\n",
     "c.rules:8: match 'mac' in a rule reached from chain OUTPUT (the kernel allows it only in INPUT and "
     "FORWARD: locally sent packets have no source MAC yet), expected -m mac only in rules reached from "
     "INPUT or FORWARD, found '-A a -m mac --mac-source 00:11:22:33:44:55'"),
    ("-A OUTPUT -m addrtype --src-type LOCAL --limit-iface-in\n",
     "c.rules:8: addrtype --limit-iface-in in a rule reached from chain OUTPUT (the kernel refuses it: "
     "there is no input interface), expected --limit-iface-in only in INPUT and FORWARD, found "
     "'-A OUTPUT -m addrtype --src-type LOCAL --limit-iface-in'"),
    ("-A c -m addrtype --dst-type LOCAL --limit-iface-out\n-A INPUT -j c\n",
     "c.rules:8: addrtype --limit-iface-out in a rule reached from chain INPUT (the kernel refuses it: "
     "there is no output interface), expected --limit-iface-out only in FORWARD and OUTPUT, found "
     "'-A c -m addrtype --dst-type LOCAL --limit-iface-out'"),
    ("-A INPUT -m recent --set --seconds 5\n",
     "c.rules:8: recent --set with --seconds, --hitcount, --reap or --rttl (the kernel refuses it), "
     "expected those options only with --rcheck or --update, found "
     "'-A INPUT -m recent --set --seconds 5 --name DEFAULT --mask 255.255.255.255 --rsource'"),
    ("-A INPUT -m recent --rcheck --hitcount 65536\n",
     "c.rules:8: recent --hitcount above 65535 (the kernel refuses it: XT_RECENT_MAX_NSTAMPS), expected "
     "--hitcount 1-65535, found '-A INPUT -m recent --rcheck --hitcount 65536 --name DEFAULT --mask "
     "255.255.255.255 --rsource'"),
    ("-A INPUT -m limit --limit 1/day\n",
     "c.rules:8: limit rate and burst overflow the kernel's token bucket (xt_limit: \"Overflow, try "
     "lower\"), expected a higher rate or a smaller --limit-burst (>= 1), found "
     "'-A INPUT -m limit --limit 1/day'"),
    ("-A INPUT -m limit --limit 1/hour --limit-burst 1194\n",
     "c.rules:8: limit rate and burst overflow the kernel's token bucket (xt_limit: \"Overflow, try "
     "lower\"), expected a higher rate or a smaller --limit-burst (>= 1), found "
     "'-A INPUT -m limit --limit 1/hour --limit-burst 1194'"),
    ("-A INPUT -m limit --limit-burst 0\n",
     "c.rules:8: limit rate and burst overflow the kernel's token bucket (xt_limit: \"Overflow, try "
     "lower\"), expected a higher rate or a smaller --limit-burst (>= 1), found "
     "'-A INPUT -m limit --limit 3/hour --limit-burst 0'"),
    ("-A INPUT -m hashlimit --hashlimit-upto 1/day --hashlimit-burst 2 --hashlimit-name x\n",
     "c.rules:8: hashlimit rate and burst overflow the kernel's token bucket (xt_hashlimit: \"overflow, "
     "try lower\"), expected a higher rate or a smaller --hashlimit-burst, found '-A INPUT -m hashlimit "
     "--hashlimit-upto 1/day --hashlimit-burst 2 --hashlimit-name x'"),
    ("-A INPUT -m hashlimit --hashlimit-upto 1/s --hashlimit-name x --hashlimit-htable-expire 0\n",
     "c.rules:8: hashlimit --hashlimit-htable-expire 0 or a mask over 32 (the kernel refuses it), expected "
     "an expiry > 0 ms and masks 0-32, found '-A INPUT -m hashlimit --hashlimit-upto 1/sec "
     "--hashlimit-burst 5 --hashlimit-name x --hashlimit-htable-expire 0'"),
]


@pytest.mark.parametrize("rules,message", EXT_CASES, ids=[c[0].strip()[:50] for c in EXT_CASES])
def test_extension_refusals(rules, message):
    problems = check_problems(rules)
    assert message in problems
    assert datapath_only([p for p in problems if p != message]), problems


EXT_ALLOWED = [
    "-A INPUT -p tcp -j REJECT --reject-with tcp-reset\n",
    "-A INPUT -m mac --mac-source 00:11:22:33:44:55\n-A FORWARD -j a\n-A a -m mac --mac-source 0:0:0:0:0:1\n",
    "-A b -m mac --mac-source 00:11:22:33:44:55\n",               # reached from nowhere: not checked
    "-A FORWARD -m addrtype --src-type LOCAL --limit-iface-in\n-A FORWARD -m addrtype --src-type LOCAL "
    "--limit-iface-out\n",
    "-A INPUT -m limit --limit 1/day --limit-burst 1\n-A INPUT -m limit --limit 1/hour --limit-burst 1193\n",
    "-A INPUT -m hashlimit --hashlimit-upto 2/day --hashlimit-burst 3 --hashlimit-name x\n",
    "-A INPUT -m recent --rcheck --seconds 5 --reap --hitcount 3 --rttl\n",
]


@pytest.mark.parametrize("rules", EXT_ALLOWED)
def test_extension_allowed_by_iptables(rules):
    assert datapath_only(check_problems(rules)), check_problems(rules)


def test_reject_and_log_are_enforced_by_the_datapath():
    rs = ir(builtin("INPUT", r(Target("REJECT", ext=RejectTarget()), 3, IpMatch(proto=6)),
                    r(Target("LOG", ext=LogTarget()), 4)))
    check_ruleset(rs)


def test_mark_and_connmark_are_enforced_by_the_datapath():
    rs = ir(builtin("INPUT", r(Target("MARK", ext=MarkTarget(1)), 3, IpMatch(proto=6)),
                    r(Target("CONNMARK", ext=ConnmarkTarget("save")), 4)))
    check_ruleset(rs, allow_conntrack=True)
    # CONNMARK works on the connection: only with connection tracking
    assert problems_ir(rs) == ["ir:4: target 'CONNMARK' is not supported yet (connection tracking is not "
                               "enabled in this ebpfw), expected a rule without -j CONNMARK, found '-j CONNMARK'"]


def test_extension_target_ir_consistency():
    rs = ir(builtin("INPUT", r(Target("MARK"), 3), r(Target("REJECT", ext=LogTarget()), 4),
                    r(Target("LOG", ext=LogTarget(level=9)), 5), r(Target("MARK", ext=MarkTarget(1 << 32)), 6),
                    r(Target("REJECT", ext=RejectTarget("icmp-echo-reply")), 7)))
    problems = [p for p in problems_ir(rs) if "by the datapath yet" not in p]
    assert problems == [
        "ir:3: target 'MARK' without its options, expected a MarkTarget in Target.ext, found '-A INPUT -j MARK'",
        "ir:4: target 'REJECT' without its options, expected a RejectTarget in Target.ext, found '-A INPUT ...'",
        "ir:5: LOG options out of range, expected --log-level 0-7 and a one-line --log-prefix of at most 29 "
        "bytes, found '-A INPUT -j LOG --log-level 9'",
        "ir:6: MARK value or mask out of range, expected 32-bit values, found "
        "'-A INPUT -j MARK --set-xmark 0x100000000/0xffffffff'",
        "ir:7: unknown reject type 'icmp-echo-reply', expected one of icmp-net-unreachable, "
        "icmp-host-unreachable, icmp-proto-unreachable, icmp-port-unreachable, icmp-net-prohibited, "
        "icmp-host-prohibited, tcp-reset, icmp-admin-prohibited, found "
        "'-A INPUT -j REJECT --reject-with icmp-echo-reply'",
    ]


def test_chain_hooks():
    rs = parse_ruleset(HEAD + "-A INPUT -j a\n-A a -g b\n-A OUTPUT -j b\n-A b -j RETURN\nCOMMIT\n", "h")
    t = rs.tables[0]
    hooks = chain_hooks({c.name: c for c in t.chains}, ("INPUT", "FORWARD", "OUTPUT"))
    assert hooks == {"INPUT": {"INPUT"}, "FORWARD": {"FORWARD"}, "OUTPUT": {"OUTPUT"}, "a": {"INPUT"},
                     "b": {"INPUT", "OUTPUT"}, "c": set()}


@pytest.mark.parametrize("name,text", EXT_CORPUS, ids=[n for n, _ in EXT_CORPUS])
def test_extension_corpus_checks_only_datapath(name, text):
    """The extension corpus is what iptables accepts: check refuses only what the datapath lacks."""
    assert datapath_only(check_problems_text(text))


def check_problems_text(text: str) -> list[str]:
    try:
        check_ruleset(parse_ruleset(text, "x"), allow_conntrack=True)
    except RulesetError as exc:
        return exc.problems
    return []


# --- the compiler refuses every new IR type with the rule's FILE:LINE (no crash) --------------------
COMPILE_CASES = [
    "-p tcp -m limit --limit 1/s -m tcp --dport 1", "-m limit -m limit", "-p tcp -m hashlimit --hashlimit-upto 1/s --hashlimit-name x -m tcp --dport 1",
    "-m set --match-set a src", "-p tcp -m recent --set -m tcp --dport 1", "-m recent --rcheck --hitcount 33",
    "-p tcp -m connlimit --connlimit-above 2 -m tcp --dport 1", "-m connlimit --connlimit-upto 961",
]
# enforced as classifier fields (tests/kernel/test_datapath.py checks their semantics)
COMPILE_OK_CASES = [
    "-m addrtype --src-type LOCAL", "-m pkttype --pkt-type unicast", "-m mac --mac-source 0:1:2:3:4:5",
    "-m length --length 5", "-m ttl --ttl-eq 3", "-m tos --tos 1", "-m dscp --dscp 1",
    "-p tcp -m tcpmss --mss 5", "-f", "! -f", "-p tcp -m tcp --dport 22 -m recent --update --seconds 30 --hitcount 6",
    "-m connlimit --connlimit-above 2",
]
COMPILE_TARGET_CASES = ["-j MARK --set-mark 1", "-j CONNMARK --save-mark"]


def _compile_refuses(fragment: str) -> None:
    from ebpfw.compiler import compile_plan
    rs = parse_ruleset(HEAD + "-A INPUT -j ACCEPT\n" + f"-A INPUT {fragment}\nCOMMIT\n", "p.rules")
    with pytest.raises(RulesetError) as exc:
        compile_plan(rs.table("filter"))
    assert any(p.startswith("p.rules:9: ") for p in exc.value.problems), exc.value.problems


@pytest.mark.parametrize("fragment", COMPILE_CASES)
def test_compiler_refuses_new_matches(fragment):
    _compile_refuses(fragment)


@pytest.mark.parametrize("fragment", COMPILE_OK_CASES)
def test_compiler_enforces_field_matches(fragment):
    from ebpfw.compiler import compile_plan
    rs = parse_ruleset(HEAD + "-A INPUT -j ACCEPT\n" + f"-A INPUT {fragment}\nCOMMIT\n", "p.rules")
    check_ruleset(rs)
    plan = compile_plan(rs.table("filter"))
    assert plan.vectors[0] == 0b11 and len(plan.fields) >= 1


@pytest.mark.parametrize("fragment", COMPILE_TARGET_CASES)
def test_compiler_encodes_mark_targets(fragment):
    from ebpfw.compiler import compile_plan
    from ebpfw.compiler.plan import ACT
    rs = parse_ruleset(HEAD + "-A INPUT -j ACCEPT\n" + f"-A INPUT {fragment}\nCOMMIT\n", "p.rules")
    plan = compile_plan(rs.table("filter"))
    kind = fragment.split()[1]
    assert plan.rule_kind[1] == ACT[kind] and 1 in plan.marks and "mark" in plan.actions
    # both read or write the packet's mark: the ruleset's ingress must run at TC
    assert plan.skb_mark_rule == "p.rules:9: " + {
        "MARK": "-A INPUT -j MARK --set-xmark 0x1/0xffffffff",
        "CONNMARK": "-A INPUT -j CONNMARK --save-mark --nfmask 0xffffffff --ctmask 0xffffffff"}[kind]


def test_compiler_encodes_reject_and_log():
    from ebpfw.compiler import compile_plan
    from ebpfw.compiler.plan import ACT, REJ_TCP_RESET
    rs = parse_ruleset(HEAD + "-A INPUT -p tcp -j REJECT --reject-with tcp-reset\n"
                       "-A INPUT -j LOG --log-prefix \"x: \" --log-level 6\n"
                       "-A INPUT -j REJECT --reject-with icmp-admin-prohibited\n-A INPUT -j REJECT\nCOMMIT\n",
                       "p.rules")
    plan = compile_plan(rs.table("filter"))
    assert plan.rule_kind == [ACT["REJECT"], ACT["LOG"], ACT["REJECT"], ACT["REJECT"]]
    assert plan.rule_arg == [REJ_TCP_RESET, 0, 13, 3]
    assert plan.log[1].prefix == "x: " and plan.log[1].level == 6
    assert plan.actions == ["reject", "log"]


def test_compiler_refuses_log_uid():
    from ebpfw.compiler import compile_plan
    rs = parse_ruleset(HEAD + "-A INPUT -j LOG --log-uid\nCOMMIT\n", "p.rules")
    with pytest.raises(RulesetError) as exc:
        compile_plan(rs.table("filter"))
    assert exc.value.problems[0].startswith("p.rules:8: LOG --log-uid is not supported by the datapath")


def test_sets_checked_against_the_set_file():
    from ebpfw.ipset import parse_ipsets
    sets = parse_ipsets("create blk hash:ip\ncreate svc hash:ip,port\n", "s.sets")
    rs = parse_ruleset(HEAD + "-A INPUT -m set --match-set blk src\n-A INPUT -m set --match-set nope src\n"
                       "-A INPUT -m set ! --match-set svc dst\n-A INPUT -m set --match-set svc dst,dst\n"
                       "COMMIT\n", "c.rules")
    with pytest.raises(RulesetError) as exc:
        check_ruleset(rs, sets=sets)
    problems = [p for p in exc.value.problems if "by the datapath" not in p]
    assert problems == [
        "c.rules:9: set 'nope' does not exist (iptables-restore refuses the rule), expected a set created in "
        "the set file: blk, svc, found '-A INPUT -m set --match-set nope src'",
        "c.rules:10: set 'svc' is hash:ip,port (2 dimensions) but --match-set gives 1: the rule never "
        "matches, expected 2 directions such as src,dst, found '-A INPUT -m set ! --match-set svc dst'",
    ]
    check_ruleset(parse_ruleset(HEAD + "-A INPUT -m set --match-set nope src\nCOMMIT\n", "c.rules"))  # no sets


def test_hand_built_rate_zero_refused():
    from ebpfw.ruleset import HashlimitMatch, LimitMatch
    rs = ir(builtin("INPUT", r(Target("ACCEPT"), 3, matches=(LimitMatch(0),)),
                    r(Target("ACCEPT"), 4, matches=(HashlimitMatch("x", 0, 1000),))))
    assert problems_ir(rs) == [
        "ir:3: LimitMatch with avg 0, expected a positive time between packets (as the parser computes from "
        "N/unit), found 'avg=0'",
        "ir:4: HashlimitMatch with avg 0, expected a positive time between packets (as the parser computes "
        "from N/unit), found 'avg=0'"]
