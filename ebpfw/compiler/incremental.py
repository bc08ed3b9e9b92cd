"""Recompile after rules changed in place, reusing what did not change.

Contract: `recompile(prev, changed)` takes the CompileState of a successful compile and the
rules that changed *in place* (rule number -> new rule: same chain, same index, so the rule
numbering, the chains and their ranges are unchanged) and returns the CompileState that
`compile_state(new table, ...)` would return, with the same arguments, or None when the change
is not one it handles (the caller then compiles in full). Equal means equal: the same Plan
(every table, vector and class number), which tests/unit/test_incremental.py checks against
full compiles of random edits.

What it reuses, and why that is exact:
- per-rule entries (kind, argument, flags, LOG, limit, set): a function of the rule, the chain
  ids and the set definitions only, so only the changed rules are redone;
- the jump depth: unchanged while no changed rule jumps (the only input is the jump graph);
- groups: every groupable rule's keys and every shape's members are kept; the changed rules
  move between member lists, the shapes are chosen again from the member counts (in the full
  compile's order), and a group is filled again only when its members, its port kind, its
  side's range interval bounds or (for -i groups) the interface classes changed (a group
  depends on nothing else);
- hashlimit tables, recent lists and marks depend on other rules (the first rule naming a
  table, the masks of a list, whether any rule uses the connection's mark), so an edit of a
  rule with -m hashlimit, -m recent, -m mark, -m connmark, -m connlimit (it turns tracking on),
  -j MARK or -j CONNMARK (before or after) is left to a full compile;
- fields and vectors: a function of the residual rules' matches and the interface names only;
  reused when the residual rules are the same and none of them changed, else rebuilt.
"""

from __future__ import annotations

import bisect
from dataclasses import replace
from typing import Optional

from ..errors import RulesetError
from ..marks import ConnmarkMatch, MarkMatch
from ..ruleset import ConnlimitMatch, HashlimitMatch, RecentMatch, Rule
from . import groups as G
from .plan import CompileState, Plan, residual_fields, rule_entry, set_groups

_JUMPS = ("JUMP", "GOTO")
# matches whose compile depends on other rules: hashlimit tables (configured by the first rule
# naming them), recent lists (masks per name), marks (connection tracking, the first skb rule),
# connlimit (connection tracking)
_WHOLE = (HashlimitMatch, RecentMatch, MarkMatch, ConnmarkMatch, ConnlimitMatch)
# Plan attributes made by residual_fields (everything that depends on the residual rules)
_FIELD_ATTRS = ("vectors", "src", "dst", "proto", "sport", "dport", "xsport", "xdport", "tcpfl", "icmp", "iif",
                "oif", "ct", "length", "ttl", "tos", "frag", "tcpmss", "pkttype", "mac", "atsrc", "atdst",
                "iface_patterns", "resid")


def recompile(prev: CompileState, changed: dict[int, Rule]) -> Optional[CompileState]:
    old = prev.plan
    rules = list(prev.rules)
    for r, rule in changed.items():
        if not 0 <= r < len(rules):
            return None
        was = rules[r].target
        if (was.kind in _JUMPS or rule.target.kind in _JUMPS) and was != rule.target:
            return None     # the jump graph (depth, chain ids in use) changes: compile in full
        if any(isinstance(m, _WHOLE) for m in rules[r].matches + rule.matches) \
                or {was.kind, rule.target.kind} & {"MARK", "CONNMARK"}:
            return None     # these depend on other rules too (see the module doc): compile in full
        rules[r] = rule

    problems: list[str] = []
    kinds, args, flags = list(old.rule_kind), list(old.rule_arg), list(old.rule_flags)
    logs, limits, setm, hls = dict(old.log), dict(old.limits), dict(old.setm), dict(old.hashlimits)
    for r in sorted(changed):
        kind, arg, f, log, lim, sm, hl, *_ = rule_entry(rules[r], prev.chain_id, prev.sets, prev.hl_index,
                                                        problems)
        kinds[r], args[r], flags[r] = kind, arg, f
        for table, value in ((logs, log), (limits, lim), (setm, sm), (hls, hl)):
            table.pop(r, None)
            if value is not None:
                table[r] = value
    # dicts keep insertion order, which the full compile makes ascending: keep it so
    logs, limits, setm, hls = (dict(sorted(t.items())) for t in (logs, limits, setm, hls))

    # groups: move the changed rules between their shapes' member lists, choose the shapes
    # again from the member counts (the full compile's order: larger first, ties by first
    # member), and fill again only the groups whose members, port kind or interval bounds changed
    g0 = prev.groups
    keys = dict(g0.keys)
    by_shape = dict(g0.by_shape)
    touched: set = set()
    for r in sorted(changed):
        k_old = keys.get(r)
        k_new = G._keys(rules[r], prev.ifindex_of)
        if k_old is not None:
            shape = k_old[0]
            members = list(by_shape[shape])
            i = bisect.bisect_left(members, r, key=lambda m: m[0])
            del members[i]
            if members:
                by_shape[shape] = members
            else:
                del by_shape[shape]
            touched.add(shape)
        if k_new is None:
            keys.pop(r, None)
        else:
            keys[r] = k_new
            shape = k_new[0]
            members = list(by_shape.get(shape, ()))
            bisect.insort(members, (r,) + k_new[1:], key=lambda m: m[0])
            by_shape[shape] = members
            touched.add(shape)
    min_size = G.MIN_GROUP if prev.min_group is None else prev.min_group
    chosen = sorted((s for s, m in by_shape.items() if len(m) >= min_size),
                    key=lambda s: (-len(by_shape[s]), by_shape[s][0][0]))[:G.MAX_GROUPS]
    pkinds, ranges = G.port_kinds(chosen, by_shape)
    ifclass, pclasses = G.iface_classes(chosen, by_shape, prev.ifindex_of)
    filled = dict(zip(g0.chosen, g0.per_shape))
    per_shape = []
    for s in chosen:
        kind = pkinds[s]
        b = ranges[G.SIDE[kind]] if kind in G.SIDE else None
        if s in filled and s not in touched and g0.kinds.get(s) == kind \
                and (b is None or b == g0.all_ranges[G.SIDE[kind]]) \
                and (not s.iif or pclasses == g0.pclasses):
            per_shape.append(filled[s])
        else:
            per_shape.append(G.fill_group(kind, b, by_shape[s], rules, prev.rule_chain_id, pclasses))
    # by_shape in the full compile's order (shapes by first member), for the next edit
    by_shape = dict(sorted(by_shape.items(), key=lambda kv: kv[1][0][0]))
    groups = G.assemble(chosen, pkinds, ranges, per_shape, keys, by_shape, ifclass, pclasses)

    n = old.nrules
    grouped = groups.grouped
    resid = [r for r in range(n) if r not in grouped]
    reuse = resid == old.resid and not any(r not in grouped for r in changed)
    common = dict(rule_kind=kinds, rule_arg=args, rule_flags=flags, log=logs, limits=limits, setm=setm,
                  hashlimits=hls, hl_tables=list(old.hl_tables), set_ids={})
    if reuse:
        if problems:
            raise RulesetError(f"{len(problems)} problem(s) compiling the ruleset", problems=problems)
        plan = replace(old, **common, iface_patterns=list(old.iface_patterns))
    else:
        plan = Plan(nrules=n, chain_names=old.chain_names, chain_ranges=old.chain_ranges,
                    chain_policy=old.chain_policy, rule_chain=old.rule_chain, max_depth=old.max_depth,
                    vectors=[], marks=old.marks, recent=old.recent, connlimits=old.connlimits,
                    skb_mark_rule=old.skb_mark_rule, **common)
        residual_fields(plan, rules, resid, prev.iface_names, problems, prev.uses_conn)
    set_groups(plan, groups)
    return CompileState(plan=plan, rules=rules, rule_chain_id=prev.rule_chain_id, chain_id=prev.chain_id,
                        groups=groups, ifindex_of=prev.ifindex_of, iface_names=prev.iface_names,
                        min_group=prev.min_group, sets=prev.sets, hl_index=prev.hl_index, uses_conn=prev.uses_conn)
