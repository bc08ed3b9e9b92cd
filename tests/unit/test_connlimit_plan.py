"""-m connlimit in the compiler: where it is enforced, what is refused (with FILE:LINE), and the
datapath shape it asks for."""

from __future__ import annotations

import pytest

from ebpfw.compiler import compile_plan
from ebpfw.compiler.plan import RF_CONNLIMIT
from ebpfw.datapath.abi import CLM, connlimit_conns, shape_for
from ebpfw.errors import RulesetError
from ebpfw.iptables import parse_ruleset

HEAD = "*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n"


def plan_of(rules: str):
    return compile_plan(parse_ruleset(HEAD + rules + "COMMIT\n", "c.rules").table("filter"))


def problems_of(text: str, raw: bool = False) -> list[str]:
    rs = parse_ruleset(text, "c.rules")
    with pytest.raises(RulesetError) as exc:
        compile_plan(rs.table("filter"), raw=rs.table("raw") if raw else None)
    return exc.value.problems


def test_last_match_is_enforced_and_turns_conntrack_on():
    plan = plan_of("-A INPUT -p tcp -m tcp --syn -m connlimit --connlimit-upto 3 --connlimit-mask 24 "
                   "--connlimit-daddr -m comment --comment x -j ACCEPT\n")
    assert plan.rule_flags[0] & RF_CONNLIMIT
    m = plan.connlimits[0]
    assert (m.limit, m.above, m.mask, m.daddr) == (3, False, 24, True)
    assert plan.ct is not None and plan.summary()["connlimit_rules"] == 1
    shape = shape_for(plan, 2)
    assert "connlimit" in shape.fields and "ct" in shape.fields and shape.cl_conns == 128
    assert "-DEBPFW_CL_CONNS=128" in shape.cflags()


def test_refusals_name_the_line():
    p = problems_of(HEAD + "-A INPUT -m connlimit --connlimit-above 1 -p tcp -m tcp --dport 1 -j DROP\n"
                    "-A INPUT -m connlimit --connlimit-above 961 -j DROP\nCOMMIT\n")
    assert any(x.startswith("c.rules:5: -m connlimit before other matches") for x in p), p
    assert any(x.startswith("c.rules:6: connlimit --connlimit-above 961") for x in p), p


def test_refused_in_the_raw_table():
    text = ("*raw\n:PREROUTING ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n"
            "-A PREROUTING -p tcp -m connlimit --connlimit-above 2 -j DROP\nCOMMIT\n" + HEAD + "COMMIT\n")
    p = problems_of(text, raw=True)
    assert any(x.startswith("c.rules:4: match 'connlimit' in the raw table") for x in p), p


@pytest.mark.parametrize("limits, conns", [([], 128), ([0, 2], 128), ([64], 128), ([65], 256), ([900], 1024),
                                           ([960], 1024)])
def test_list_capacity_follows_the_largest_limit(limits, conns):
    assert connlimit_conns(limits) == conns
    assert all(conns >= n + 64 for n in limits)


def test_rule_setting_layout():
    # mask (network order), limit, daddr, invert (--connlimit-upto)
    assert CLM.size == 12
    assert CLM.unpack(CLM.pack(b"\xff\xff\xff\x00", 7, 1, 1, 0)) == (b"\xff\xff\xff\x00", 7, 1, 1, 0)
