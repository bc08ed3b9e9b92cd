"""The raw table: parse, canonical save (with counters), check, compile (no root)."""

from __future__ import annotations

import pytest

from ebpfw.check import check_ruleset
from ebpfw.compiler import compile_plan
from ebpfw.compiler.plan import ACT
from ebpfw.errors import RulesetError
from ebpfw.iptables import parse_ruleset, save_ruleset
from ebpfw.iptables.save import counters_of
from ebpfw.ruleset import Counters, CtTarget, Target, chain_key

DNS = """*raw
:PREROUTING ACCEPT [10:600]
:OUTPUT DROP [0:0]
:CHK - [0:0]
[1:60] -A PREROUTING -p udp --dport 53 -j NOTRACK
-A PREROUTING -p udp -m udp --dport 54 -j CT --notrack
-A PREROUTING -s 10.0.0.1 -j DROP
-A PREROUTING -j CHK
-A CHK -s 10.0.0.2 -j RETURN
-A CHK -g CHK2
:CHK2 - [0:0]
-A OUTPUT -p udp --sport 53 -j NOTRACK
COMMIT
*filter
:INPUT DROP [0:0]
:FORWARD ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
[5:300] -A INPUT -m conntrack --ctstate UNTRACKED -j ACCEPT
-A INPUT -m state --state RELATED,ESTABLISHED -j ACCEPT
COMMIT
"""

CANONICAL = """*raw
:PREROUTING ACCEPT [10:600]
:OUTPUT DROP [0:0]
:CHK - [0:0]
:CHK2 - [0:0]
[1:60] -A PREROUTING -p udp -m udp --dport 53 -j NOTRACK
[0:0] -A PREROUTING -p udp -m udp --dport 54 -j CT --notrack
[0:0] -A PREROUTING -s 10.0.0.1/32 -j DROP
[0:0] -A PREROUTING -j CHK
[0:0] -A OUTPUT -p udp -m udp --sport 53 -j NOTRACK
[0:0] -A CHK -s 10.0.0.2/32 -j RETURN
[0:0] -A CHK -g CHK2
COMMIT
*filter
:INPUT DROP [0:0]
:FORWARD ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
[5:300] -A INPUT -m conntrack --ctstate UNTRACKED -j ACCEPT
[0:0] -A INPUT -m state --state RELATED,ESTABLISHED -j ACCEPT
COMMIT
"""


def problems(text: str) -> list[str]:
    with pytest.raises(RulesetError) as exc:
        rs = parse_ruleset(text, "r.rules")
        check_ruleset(rs, allow_conntrack=True)
        compile_plan(rs.table("filter") or parse_ruleset("*filter\nCOMMIT\n").table("filter"), raw=rs.table("raw"))
    return exc.value.problems


def test_parse_and_save_with_counters_round_trip():
    rs = parse_ruleset(DNS, "r.rules")
    assert [t.name for t in rs.tables] == ["raw", "filter"], "tables keep file order"
    raw = rs.table("raw")
    assert [c.name for c in raw.chains] == ["PREROUTING", "OUTPUT", "CHK", "CHK2"]
    pre = raw.chain("PREROUTING")
    assert pre.counters == Counters(10, 600) and raw.chain("OUTPUT").policy == "DROP"
    assert pre.rules[0].target == Target("NOTRACK") and pre.rules[0].counters == Counters(1, 60)
    assert pre.rules[1].target == Target("CT", ext=CtTarget())
    text = save_ruleset(rs, counters=counters_of(rs))
    assert text == CANONICAL
    again = parse_ruleset(text, "r.rules")
    assert save_ruleset(again, counters=counters_of(again)) == text
    assert save_ruleset(again) == save_ruleset(rs)


def test_counters_are_keyed_per_table():
    """raw OUTPUT and filter OUTPUT are different chains: their counters never mix."""
    rs = parse_ruleset(DNS, "r.rules")
    cnt = counters_of(rs)
    assert cnt[("OUTPUT", None)] == Counters(0, 0)
    assert cnt[(chain_key("raw", "PREROUTING"), 0)] == Counters(1, 60)
    cnt[(chain_key("raw", "OUTPUT"), None)] = Counters(7, 70)
    cnt[("OUTPUT", None)] = Counters(3, 30)
    text = save_ruleset(rs, counters=cnt)
    assert ":OUTPUT DROP [7:70]" in text and ":OUTPUT ACCEPT [3:30]" in text


def test_raw_only_file_creates_builtins():
    rs = parse_ruleset("*raw\n-A PREROUTING -j NOTRACK\nCOMMIT\n", "r.rules")
    assert save_ruleset(rs) == ("*raw\n:PREROUTING ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n"
                                "-A PREROUTING -j NOTRACK\nCOMMIT\n")


@pytest.mark.parametrize("line,message", [
    ("-A PREROUTING -j CT", "r.rules:2: -j CT without --notrack is not supported by ebpfw (it attaches a conntrack "
     "template: zones, helpers, event masks and timeout policies, which ebpfw's connection tracking does not "
     "have), expected '-j CT --notrack' (or -j NOTRACK), found '-j CT'"),
    ("-A PREROUTING -j CT --notrack --zone 1", "r.rules:2: option '--zone' of 'CT' target is not supported yet "
     "(ebpfw enforces only CT --notrack: its connection tracking has no zones, helpers, event masks or timeout "
     "policies), expected only --notrack, found '--zone'"),
    ("-A PREROUTING -j CT --helper ftp --notrack", "r.rules:2: option '--helper' of 'CT' target is not supported "
     "yet (ebpfw enforces only CT --notrack: its connection tracking has no zones, helpers, event masks or "
     "timeout policies), expected only --notrack, found '--helper'"),
    ("-A OUTPUT -p tcp -j REJECT", "r.rules:2: target 'REJECT' is only valid in the filter table (the kernel "
     "refuses it in raw: \"REJECT target: only valid in filter table, not raw\"), expected ACCEPT, DROP, RETURN, "
     "NOTRACK, CT --notrack, LOG, MARK, CONNMARK or a user-defined chain, found '-j REJECT'"),
    ("-A PREROUTING -j DNAT --to 1.2.3.4", "r.rules:2: target 'DNAT' is only valid in the nat table (the kernel "
     "refuses it in raw) and ebpfw enforces only the filter and raw tables, expected ACCEPT, DROP, RETURN, "
     "NOTRACK, CT --notrack, LOG, MARK, CONNMARK or a user-defined chain, found '-j DNAT'"),
    ("-A PREROUTING -o eth0", "r.rules:2: -o in chain PREROUTING (iptables refuses it: no output interface "
     "there), expected no -o in PREROUTING, found '-o eth0'"),
    ("-A OUTPUT -i eth0", "r.rules:2: -i in chain OUTPUT (iptables refuses it: no input interface there), "
     "expected no -i in OUTPUT, found '-i eth0'"),
    ("-A PREROUTING -j INPUT", "r.rules:2: jump to undefined chain 'INPUT', expected ACCEPT, DROP, RETURN or a "
     "chain declared with ':INPUT - [0:0]', found '-j INPUT'"),
])
def test_refused_by_parser_or_check(line, message):
    assert problems(f"*raw\n{line}\nCOMMIT\n") == [message]


@pytest.mark.parametrize("line,start", [
    ("-A PREROUTING -m recent --set", "r.rules:2: match 'recent' in the raw table is not supported"),
])
def test_refused_by_compiler(line, start):
    (p,) = [p for p in problems(f"*raw\n{line}\nCOMMIT\n") if "raw table" in p]
    assert p.startswith(start), p


def test_compile_numbers_raw_after_filter():
    rs = parse_ruleset(DNS, "r.rules")
    plan = compile_plan(rs.table("filter"), raw=rs.table("raw"))
    assert plan.chain_names == ["INPUT", "FORWARD", "OUTPUT", "raw PREROUTING", "raw OUTPUT", "raw CHK", "raw CHK2"]
    assert plan.raw_chains == (3, 4)
    assert plan.chain_ranges[3] == (2, 6) and plan.chain_ranges[4] == (6, 7)
    assert plan.chain_policy[3] == ACT["ACCEPT"] and plan.chain_policy[4] == ACT["DROP"]
    assert plan.rule_chain[2:] == [("raw PREROUTING", 0), ("raw PREROUTING", 1), ("raw PREROUTING", 2),
                                   ("raw PREROUTING", 3), ("raw OUTPUT", 0), ("raw CHK", 0), ("raw CHK", 1)]
    kinds = plan.rule_kind[2:]
    assert kinds == [ACT["NOTRACK"], ACT["NOTRACK"], ACT["DROP"], ACT["JUMP"], ACT["NOTRACK"], ACT["RETURN"],
                     ACT["GOTO"]]
    assert plan.rule_arg[5] == 5 and plan.rule_arg[8] == 6, "jumps name the raw chains' ids"
    assert "raw" in plan.actions and plan.summary()["raw"] == [3, 4]


def test_no_raw_table_compiles_as_before():
    rs = parse_ruleset(DNS[DNS.index("*filter"):], "r.rules")
    plan = compile_plan(rs.table("filter"), raw=rs.table("raw"))
    before = compile_plan(rs.table("filter"))
    assert plan.raw_chains is None and "raw" not in plan.actions
    assert plan.chain_names == before.chain_names == ["INPUT", "FORWARD", "OUTPUT"]
    assert plan.vectors == before.vectors


def test_same_user_chain_name_in_both_tables():
    text = ("*raw\n:X - [0:0]\n-A PREROUTING -j X\n-A X -j NOTRACK\nCOMMIT\n"
            "*filter\n:X - [0:0]\n-A INPUT -j X\n-A X -j DROP\nCOMMIT\n")
    rs = parse_ruleset(text, "r.rules")
    check_ruleset(rs, allow_conntrack=True)
    plan = compile_plan(rs.table("filter"), raw=rs.table("raw"))
    assert plan.chain_names == ["INPUT", "FORWARD", "OUTPUT", "X", "raw PREROUTING", "raw OUTPUT", "raw X"]
    assert plan.rule_arg[0] == 3 and plan.rule_arg[2] == 6


def test_marks_in_raw_compile_and_need_tc():
    """MARK, CONNMARK, -m mark and -m connmark are enforced in raw too; MARK and -m mark need an
    skb (TC), like in filter."""
    text = ("*raw\n-A PREROUTING -p udp -j MARK --set-mark 5\n-A PREROUTING -m connmark --mark 1\n"
            "-A OUTPUT -j CONNMARK --set-mark 2\nCOMMIT\n*filter\n-A INPUT -m mark --mark 5\nCOMMIT\n")
    rs = parse_ruleset(text, "r.rules")
    check_ruleset(rs, allow_conntrack=True)
    plan = compile_plan(rs.table("filter"), raw=rs.table("raw"))
    assert plan.skb_mark_rule.startswith("r.rules:2: -t raw -A PREROUTING -p udp -j MARK --set-xmark 0x5/0xffffffff")
    assert sorted(plan.marks) == [0, 1, 2, 3] and plan.ct is not None     # connmark turns tracking on


def test_log_line_of_raw_prerouting_judged_at_egress():
    """A forwarded packet whose ingress ebpfw does not judge gets raw PREROUTING at egress (hook 3):
    its LOG line shows the TTL before ip_forward's decrement, IN= and no OUT=, as PREROUTING does."""
    import struct
    from ebpfw.datapath.abi import LOG_CAP, LOG_CFG, LOG_EV
    from ebpfw.log import format_event
    udp = struct.pack("!HHHH", 5, 53, 12, 0) + b"abcd"
    ip = struct.pack("!BBHHHBBH", 0x45, 0, 32, 7, 0, 63, 17, 0) + bytes([10, 0, 0, 1, 10, 0, 0, 2]) + udp
    frame = bytes(12) + b"\x08\x00" + ip
    cfg = LOG_CFG.pack(b"p: ", 4, 0, 0, 0)
    ev = LOG_EV.pack(1, 0, 3, 0, len(frame), 3, 0, len(frame), 1, 0, 0, cfg, frame.ljust(LOG_CAP, b"\0"))
    line = format_event(ev, {3: "va"})
    assert line.startswith("p: IN=va OUT= MAC=") and " TTL=64 " in line, line


def test_conntrack_in_raw_is_judged_in_the_walk():
    """A raw rule's conntrack/state match is not in the vectors: its flags say which of the states
    raw can see (INVALID before NOTRACK, UNTRACKED after, RELATED for a REJECT answer) it holds for."""
    from ebpfw.compiler.plan import RF_CT_INV_OK, RF_CT_REL_OK, RF_CT_UNT_OK, RF_RAWCT
    text = ("*raw\n-A PREROUTING -m conntrack --ctstate INVALID\n-A PREROUTING -m state ! --state INVALID\n"
            "-A PREROUTING -m state --state UNTRACKED,RELATED\n-A PREROUTING -m conntrack --ctstate NEW\n"
            "COMMIT\n*filter\n-A INPUT -m conntrack --ctstate NEW\nCOMMIT\n")
    rs = parse_ruleset(text, "r.rules")
    check_ruleset(rs, allow_conntrack=True)
    plan = compile_plan(rs.table("filter"), raw=rs.table("raw"))
    mask = RF_RAWCT | RF_CT_INV_OK | RF_CT_UNT_OK | RF_CT_REL_OK
    assert [f & mask for f in plan.rule_flags] == [
        0, RF_RAWCT | RF_CT_INV_OK, RF_RAWCT | RF_CT_UNT_OK | RF_CT_REL_OK, RF_RAWCT | RF_CT_UNT_OK | RF_CT_REL_OK,
        RF_RAWCT]
    # in the vectors the raw rules pass every state: only the filter rule has a ct atom
    assert plan.ct is not None and all(plan.vectors[c] & 0b11110 == 0b11110 for c in plan.ct)
