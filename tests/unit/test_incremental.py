"""Incremental recompile (ebpfw.compiler.incremental) and one-line parsing: the result of
changing rules in place must equal a full compile of the changed ruleset, table for table and
class number for class number. Pure Python, no root."""

from __future__ import annotations

import os
import random
import sys
from pathlib import Path

import pytest

from ebpfw.compiler.incremental import recompile
from ebpfw.compiler.plan import compile_state
from ebpfw.errors import RulesetError
from ebpfw.iptables import parse_ruleset
from ebpfw.iptables.parse import parse_rule_line

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
from gen_rules import generate  # noqa: E402

IFS = {"d0": 2, "lo": 1, "eth0": 3, "wg0": 4}
SEED = int(os.environ.get("EBPFW_TEST_SEED", "1"))

# replacement rules of every kind the compiler groups or keeps in the vectors
POOL = [
    "-s 192.168.{a}.{b}/32 -j DROP",
    "-s 172.16.{a}.0/24 -p tcp -m tcp --dport 22 -j ACCEPT",
    "-s 172.16.{a}.0/24 -p tcp -m tcp --dport 22 -j DROP",
    "-p tcp -m tcp --dport {p} -j ACCEPT",
    "-p udp -m udp --dport {p} -j ACCEPT",
    "-p tcp -m multiport --dports 80,443,{p} -j ACCEPT",
    "-p icmp -m icmp --icmp-type 8 -j DROP",
    "-i eth+ -p udp -m udp --dport 9000 -j ACCEPT",
    "-i d0 -s 100.64.{a}.{b}/32 -j DROP",
    "-i wg0 -p udp -m udp --dport {p} -j ACCEPT",
    "-p tcp -m tcp --dport {p}:{q} -j ACCEPT",
    "! -s 10.{a}.0.0/16 -p udp -m udp --sport {p} -j DROP",
    "-d 10.200.{a}.{b}/32 -p udp -m udp --dport 9000 -j ACCEPT",
    "-p tcp -m tcp --tcp-flags SYN,ACK SYN -j DROP",
    "-m comment --comment \"x{a}\" -j RETURN",
    "-s 10.10.0.0/16 -p udp -m udp --sport 53 -j ACCEPT",
    "-p udp -m udp --dport {p} -m limit --limit 5/sec -j ACCEPT",
    "-p tcp -m tcp --dport {p} -j REJECT --reject-with tcp-reset",
    "-p udp -j LOG --log-prefix \"x{a} \"",
]


def _line(rng: random.Random, chain: str) -> str:
    p = rng.randrange(1, 60000)
    body = rng.choice(POOL).format(a=rng.randrange(256), b=rng.randrange(256), p=p, q=p + rng.randrange(1, 99))
    return f"-A {chain} {body}"


def _edit(text: str, rng: random.Random, count: int) -> tuple[str, dict[int, str]]:
    """Replace `count` random rule lines of `text` in place; (new text, {line index: new line})."""
    lines = text.split("\n")
    # not the jumps: an edit that changes the jump graph is left to a full compile (tested below)
    rule_lines = [i for i, l in enumerate(lines) if l.startswith("-A ") and not l.endswith(("-j svc", "-j blk"))]
    out = {}
    for i in rng.sample(rule_lines, count):
        chain = lines[i].split()[1]
        out[i] = _line(rng, chain)
        lines[i] = out[i]
    return "\n".join(lines), out


def _changed_rules(rs, state, text: str, edits: dict[int, str]) -> dict[int, object]:
    """rule number -> new rule (parsed alone, as the apply fast path does)."""
    table = rs.table("filter")
    chains = {c.name for c in table.chains}
    number = {(c, i): r for r, (c, i) in enumerate(state.plan.rule_chain)}
    by_line = {}
    for c in table.chains:
        for i, rule in enumerate(c.rules):
            by_line[rule.pos.line] = (c.name, i)
    out = {}
    for idx, line in edits.items():
        chain, rule = parse_rule_line(line, "f.rules", idx + 1, "filter", chains)
        out[number[by_line[idx + 1]]] = rule
    return out


def _user_chains_ruleset(n: int, seed: int) -> str:
    rng = random.Random(seed)
    lines = ["*filter", ":INPUT DROP [0:0]", ":FORWARD DROP [0:0]", ":OUTPUT ACCEPT [0:0]", ":svc - [0:0]",
             ":blk - [0:0]", "-A INPUT -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT",
             "-A INPUT -j blk", "-A INPUT -p tcp -j svc"]
    for _ in range(n):
        lines.append(_line(rng, rng.choice(("INPUT", "svc", "blk", "FORWARD"))))
    lines.append("COMMIT")
    return "\n".join(lines) + "\n"


CASES = [("mixed", lambda: generate("mixed", 1500)), ("blocklist", lambda: generate("blocklist", 800)),
         ("chains", lambda: _user_chains_ruleset(1200, 7))]


@pytest.mark.parametrize("name,make", CASES, ids=[c[0] for c in CASES])
@pytest.mark.parametrize("count", [1, 3, 40])
def test_incremental_equals_full(name, make, count):
    base = make()
    rng = random.Random(f"{name}-{count}-{SEED}")
    rs0 = parse_ruleset(base, "f.rules")
    state = compile_state(rs0.table("filter"), IFS, group=True)
    for step in range(6):
        text, edits = _edit(base, rng, count)
        rs = parse_ruleset(text, "f.rules")
        full = compile_state(rs.table("filter"), IFS, group=True)
        inc = recompile(state, _changed_rules(rs0, state, text, edits))
        assert inc is not None
        assert inc.plan == full.plan, f"step {step}: incremental plan differs from the full compile"
        assert inc.groups.keys == full.groups.keys and inc.groups.by_shape == full.groups.by_shape
        assert inc.rules == list(full.rules)
        # and onwards from the incremental state, as a process applying edit after edit does
        state, rs0, base = inc, rs, text


def test_small_groups_reuse_and_rechoose():
    """With a low group threshold, edits move rules between shapes: the chosen shapes change."""
    base = generate("mixed", 300)
    rng = random.Random(3)
    rs0 = parse_ruleset(base, "f.rules")
    state = compile_state(rs0.table("filter"), IFS)
    import ebpfw.compiler.groups as G
    old = G.MIN_GROUP
    G.MIN_GROUP = 2
    try:
        state = compile_state(rs0.table("filter"), IFS)
        for _ in range(15):
            text, edits = _edit(base, rng, 2)
            rs = parse_ruleset(text, "f.rules")
            inc = recompile(state, _changed_rules(rs0, state, text, edits))
            assert inc is not None and inc.plan == compile_state(rs.table("filter"), IFS).plan
            state, rs0, base = inc, rs, text
    finally:
        G.MIN_GROUP = old


def test_jump_changes_are_left_to_a_full_compile():
    text = _user_chains_ruleset(50, 1)
    rs = parse_ruleset(text, "f.rules")
    state = compile_state(rs.table("filter"), IFS)
    r = 3     # a rule of INPUT that does not jump, replaced by one that jumps
    chain, rule = parse_rule_line("-A INPUT -p udp -j svc", "f.rules", 99, "filter",
                                  {c.name for c in rs.table("filter").chains})
    assert recompile(state, {r: rule}) is None


def test_problems_of_a_changed_rule_are_the_full_compiles():
    text = generate("mixed", 200)
    rs = parse_ruleset(text, "f.rules")
    state = compile_state(rs.table("filter"), IFS)
    chains = {c.name for c in rs.table("filter").chains}
    _, bad = parse_rule_line("-A INPUT -p tcp -j LOG --log-uid", "f.rules", 10, "filter", chains)
    with pytest.raises(RulesetError) as inc:
        recompile(state, {4: bad})
    lines = text.split("\n")
    lines[9] = "-A INPUT -p tcp -j LOG --log-uid"
    with pytest.raises(RulesetError) as full:
        compile_state(parse_ruleset("\n".join(lines), "f.rules").table("filter"), IFS)
    assert inc.value.problems == full.value.problems


def test_parse_rule_line_is_the_parsers():
    text = _user_chains_ruleset(300, 5)
    rs = parse_ruleset(text, "g.rules")
    chains = {c.name for c in rs.table("filter").chains}
    lines = text.split("\n")
    for c in rs.table("filter").chains:
        for rule in c.rules:
            name, alone = parse_rule_line(lines[rule.pos.line - 1], "g.rules", rule.pos.line, "filter", chains)
            assert name == c.name and alone == rule
    with pytest.raises(RulesetError) as exc:
        parse_rule_line("-A INPUT -j nowhere", "g.rules", 7, "filter", chains)
    assert exc.value.problems[0].startswith("g.rules:7: ")
