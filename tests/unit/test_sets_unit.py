"""-m set compile rules and the set key layout (ebpfw/sets.py, programs/ebpfw.c ebpfw_set_key)."""

from __future__ import annotations

import pytest

from ebpfw.compiler import compile_plan
from ebpfw.compiler.plan import RF_SET
from ebpfw.errors import RulesetError
from ebpfw.iptables import parse_ruleset
from ebpfw.ipset import parse_ipsets
from ebpfw.sets import _entry_of, element_key

SETS = parse_ipsets("""create a hash:ip family inet hashsize 1024 maxelem 65536
create n hash:net,port family inet hashsize 1024 maxelem 65536
add n 10.1.0.0/16,udp:53
create p bitmap:port range 1-100
add p 80
""", "s")
HEAD = "*filter\n:INPUT DROP [0:0]\n:FORWARD DROP [0:0]\n:OUTPUT ACCEPT [0:0]\n"


def plan(rule: str, sets=SETS):
    return compile_plan(parse_ruleset(HEAD + rule + "\nCOMMIT\n", "r").table("filter"), sets=sets)


def test_set_rule_compiles_to_a_per_rule_check():
    p = plan("-A INPUT -m set ! --match-set n dst,src -j ACCEPT")
    assert p.setm == {0: ("n", 2, 0, 1, 1)} and p.rule_flags[0] & RF_SET
    assert p.group_entries == {}          # never grouped


@pytest.mark.parametrize("rule,msg", [
    ("-A INPUT -m set --match-set nope src", "'nope' is not known"),
    ("-A INPUT -m set --match-set n src", "2 dimensions"),
    ("-A INPUT -m set --match-set a src -m set --match-set p dst", "more than one -m set"),
])
def test_set_rule_refusals_name_the_line(rule, msg):
    with pytest.raises(RulesetError) as exc:
        plan(rule)
    assert any(p.startswith("r:5: ") and msg in p for p in exc.value.problems), exc.value.problems


def test_no_sets_loaded_refuses():
    with pytest.raises(RulesetError) as exc:
        plan("-A INPUT -m set --match-set a src", sets={})
    assert "none loaded" in exc.value.problems[0]


def test_key_layout_round_trips():
    for name in ("n", "p"):
        st = SETS[name]
        for e in st.entries:
            k = element_key(7, st.type, e)
            assert k[4:8] == (7).to_bytes(4, "big")
            got = _entry_of(st.type, k)
            assert (got.addr or 0, got.prefixlen if st.type != "bitmap:port" else 32, got.port) == \
                (e.addr or 0, e.prefixlen, e.port)
    e = SETS["n"].entries[0]
    k = element_key(1, "hash:net,port", e)
    assert int.from_bytes(k[:4], "little") == 64 + 16 and k[8:12] == ((17 << 16) | 53).to_bytes(4, "big")


def test_set_before_hotdropping_matches_is_judged_first():
    from ebpfw.compiler.plan import RF_SETFIRST
    first = plan("-A INPUT -p tcp -m set --match-set a src -m tcp --dport 1")
    after = plan("-A INPUT -p tcp -m tcp --dport 1 -m set --match-set a src")
    assert first.rule_flags[0] & RF_SETFIRST and not after.rule_flags[0] & RF_SETFIRST
