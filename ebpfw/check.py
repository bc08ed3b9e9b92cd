"""Semantic checks on a Ruleset, before it is compiled.

Contract: `check_ruleset(rs, allow_conntrack=False, sets=None)` returns None when ebpfw can enforce
`rs` exactly, and otherwise raises one RulesetError whose `problems` list every problem as
`FILE:LINE: what was wrong, expected ..., found '...'` at the table, chain or rule it is
about. It checks what iptables itself refuses (jump targets that are not user chains,
loops in the jump graph, -i in OUTPUT, -o in INPUT, policies, chain names, a match without
its -p), what the kernel refuses when it loads a rule (REJECT tcp-reset without -p tcp,
-m mac or addrtype --limit-iface-in in rules reached from OUTPUT, --limit-iface-out from
INPUT, limit/hashlimit rates that overflow the token bucket, recent options that need
--rcheck/--update; hook restrictions follow the jump graph from the built-in chains like
the kernel's), and what ebpfw's datapath cannot enforce yet (other tables, --tcp-option,
conntrack/state matches unless `allow_conntrack=True`, and target kinds the compiler has no
action for). New match types are not refused here: the compiler refuses what it does not
know, with the rule's FILE:LINE. It works on any IR, also one not made by the parser.
"""

from __future__ import annotations

from typing import Mapping, Optional

from .compiler.plan import ACT as _DATAPATH_ACTIONS
from .errors import RulesetError
from .iptables.matches import spec_of
from .iptables.parse import chain_name_problem
from .iptables.protocols import protocol_name
from .iptables.save import format_rule
from .ipset import IpSet
from .marks import ConnmarkMatch
from .iptables.targets import LOG_PREFIX_MAX
from .ruleset import (
    BUILTIN_CHAINS, EXT_TARGETS, REJECT_TYPES, VERDICTS, AddrtypeMatch, Chain, ConnlimitMatch,
    ConnmarkTarget, ConntrackMatch, HashlimitMatch, IcmpMatch, IpMatch, LimitMatch, LogTarget, MacMatch,
    CtTarget, MarkTarget, MultiportMatch, Pos, RecentMatch, RejectTarget, Rule, Ruleset, SetMatch, Table, TcpMatch,
    Target,
)

SUPPORTED_TABLES = ("filter", "raw")
# targets the kernel accepts in one table only
TABLE_ONLY_TARGETS = {"NOTRACK": "raw", "CT": "raw", "REJECT": "filter"}
U32 = 0xFFFFFFFF
# HZ * CREDITS_PER_JIFFY of xt_limit/xt_hashlimit: 32000 for HZ=250 and HZ=1000 (Debian's kernels)
HZ_CPJ = 32000


def limit_overflows(avg: int, burst: int) -> bool:
    """xt_limit's check: `user2credits(avg * burst) < user2credits(avg)` in u32 arithmetic
    (the product wraps; iptables-legacy reports "Overflow, try lower")."""
    def credits(user: int) -> int:
        if user > U32 // HZ_CPJ:
            return (user // 10000) * HZ_CPJ & U32
        return (user * HZ_CPJ) // 10000
    return burst == 0 or credits((avg * burst) & U32) < credits(avg)


def hashlimit_overflows(avg: int, burst: int) -> bool:
    """hashlimit_mt_check_common's ERANGE for revision 3 (what iptables 1.8.9 loads): its 64-bit
    user2credits with this host's HZ (ebpfw.datapath.abi has the arithmetic the datapath uses)."""
    from .datapath.abi import hashlimit_overflows as overflows, host_hz
    return overflows(avg, burst, host_hz())


def chain_hooks(chains: dict[str, Chain], builtins: tuple[str, ...]) -> dict[str, frozenset[str]]:
    """For every chain, the built-in chains it is reached from (by -j/-g, any depth): the
    kernel checks a match's or target's hook restrictions against exactly these. A chain no
    built-in chain reaches gets the empty set (and the kernel checks nothing for it)."""
    hooks: dict[str, set[str]] = {n: set() for n in chains}
    for b in builtins:
        if b not in chains:
            continue
        seen, todo = {b}, [b]
        while todo:
            name = todo.pop()
            hooks[name].add(b)
            for r in chains[name].rules:
                t = r.target
                if t.kind in ("JUMP", "GOTO") and t.chain in chains and t.chain not in seen:
                    seen.add(t.chain)
                    todo.append(t.chain)
    return {n: frozenset(h) for n, h in hooks.items()}


def _p(pos: Pos, what: str, expected: str, found: str) -> str:
    return f"{pos}: {what}, expected {expected}, found '{found}'"


def _rule_text(chain: str, rule: Rule) -> str:
    try:
        return format_rule(chain, rule)
    except Exception:                  # a hand-made IR the printer cannot print
        return f"-A {chain} ..."


class _LazyRuleText:
    """The rule's canonical text, formatted only when a problem message needs it (formatting
    every rule of a 10,000-rule file cost a tenth of an apply)."""
    __slots__ = ("chain", "rule")

    def __init__(self, chain: str, rule: Rule):
        self.chain, self.rule = chain, rule

    def __str__(self) -> str:
        return _rule_text(self.chain, self.rule)

    def __format__(self, spec: str) -> str:
        return format(str(self), spec)


class _Checker:
    def __init__(self, allow_conntrack: bool, sets: Optional[Mapping[str, IpSet]] = None):
        self.allow_conntrack = allow_conntrack
        self.sets = sets
        self.hooks: dict[str, frozenset[str]] = {}
        self.problems: list[tuple[int, str]] = []
        self.file = ""

    def add(self, pos: Pos, what: str, expected: str, found: str) -> None:
        self.file = self.file or pos.file
        self.problems.append((pos.line, _p(pos, what, expected, found)))

    def table(self, table: Table) -> None:
        if table.name not in SUPPORTED_TABLES:
            self.add(table.pos, f"table '{table.name}' is not supported by ebpfw yet", "'*filter' or '*raw'",
                     f"*{table.name}")
            return
        builtins = BUILTIN_CHAINS[table.name]
        seen: dict[str, Chain] = {}
        for chain in table.chains:
            if chain.name in seen:
                self.add(chain.pos, f"chain '{chain.name}' defined twice (first at {seen[chain.name].pos})",
                         "one chain per name", chain.name)
                continue
            seen[chain.name] = chain
            self.chain_head(chain, builtins)
        self.hooks = chain_hooks(seen, builtins)
        for chain in table.chains:
            for rule in chain.rules:
                self.rule(table, chain, rule, seen, builtins)
        self.loops(table, seen, builtins)

    def chain_head(self, chain: Chain, builtins: tuple[str, ...]) -> None:
        if chain.name in builtins:
            if chain.policy not in VERDICTS:
                self.add(chain.pos, f"built-in chain '{chain.name}' needs a policy", "ACCEPT or DROP",
                         str(chain.policy if chain.policy is not None else "-"))
            return
        if chain.policy is not None:
            self.add(chain.pos, f"user-defined chain '{chain.name}' cannot have a policy", "'-'",
                     chain.policy)
        why = chain_name_problem(chain.name)
        if why:
            self.add(chain.pos, f"invalid chain name: {why}", "a valid iptables chain name", chain.name)

    def rule(self, table: Table, chain: Chain, rule: Rule, chains: dict[str, Chain],
             builtins: tuple[str, ...]) -> None:
        pos, text = rule.pos, _LazyRuleText(chain.name, rule)
        t = rule.target
        if t.kind in ("JUMP", "GOTO"):
            opt = "-j" if t.kind == "JUMP" else "-g"
            if not t.chain or t.chain not in chains:
                self.add(pos, f"{opt} target chain '{t.chain}' is not defined",
                         f"a chain declared with ':{t.chain} - [0:0]'", f"{opt} {t.chain}")
            elif t.chain in builtins:
                self.add(pos, f"{opt} to built-in chain '{t.chain}'",
                         "a user-defined chain", f"{opt} {t.chain}")
        elif TABLE_ONLY_TARGETS.get(t.kind, table.name) != table.name:
            self.add(pos, f"target '{t.kind}' is only valid in the {TABLE_ONLY_TARGETS[t.kind]} table (the "
                     f"kernel refuses it in {table.name})", f"a target of the {table.name} table", f"-j {t.kind}")
        elif t.kind in EXT_TARGETS:
            self.target_ext(pos, rule, t, text)
        elif t.kind not in ("ACCEPT", "DROP", "RETURN", "NONE", "NOTRACK"):
            self.add(pos, f"target '{t.kind}' is not supported yet",
                     "ACCEPT, DROP, RETURN or a user-defined chain", t.kind)
        ip = rule.ip
        if chain.name == "OUTPUT" and ip.iface_in is not None:
            self.add(pos, "-i in chain OUTPUT (iptables refuses it: no input interface there)",
                     "no -i in OUTPUT", f"-i {ip.iface_in.name}")
        if chain.name == "PREROUTING" and ip.iface_out is not None:
            self.add(pos, "-o in chain PREROUTING (iptables refuses it: no output interface there)",
                     "no -o in PREROUTING", f"-o {ip.iface_out.name}")
        if chain.name == "INPUT" and ip.iface_out is not None:
            self.add(pos, "-o in chain INPUT (iptables refuses it: no output interface there)",
                     "no -o in INPUT", f"-o {ip.iface_out.name}")
        for net, opt in ((ip.src, "-s"), (ip.dst, "-d")):
            if net is not None and net.addr & ~net.mask & 0xFFFFFFFF:
                self.add(pos, f"address in {opt} has bits outside its mask",
                         "a masked address (the parser masks it)", text)
        for m in rule.matches:
            self.match(pos, ip, m, text)
            self.kernel_match(pos, self.hooks.get(chain.name, frozenset()), m, text)

    def target_ext(self, pos: Pos, rule: Rule, t: Target, text: str) -> None:
        """What iptables and the kernel refuse for REJECT/LOG/MARK/CONNMARK, then whether the
        datapath enforces the target at all (it does once the compiler knows the kind)."""
        ext = t.ext
        if ext is None and t.kind in ("REJECT", "LOG"):
            ext = EXT_TARGETS[t.kind]()
        if ext is None or not isinstance(ext, EXT_TARGETS[t.kind]):
            self.add(pos, f"target '{t.kind}' without its options",
                     f"a {EXT_TARGETS[t.kind].__name__} in Target.ext", text)
            return
        if isinstance(ext, RejectTarget):
            if ext.reject_with not in [n for n, _ in REJECT_TYPES]:
                self.add(pos, f"unknown reject type '{ext.reject_with}'",
                         "one of " + ", ".join(n for n, _ in REJECT_TYPES), text)
            elif ext.reject_with == "tcp-reset" and (rule.ip.proto != 6 or rule.ip.proto_invert):
                self.add(pos, "REJECT --reject-with tcp-reset needs -p tcp (the kernel refuses it otherwise)",
                         "'-p tcp' (not inverted) in the rule", text)
        elif isinstance(ext, LogTarget):
            if not 0 <= ext.level <= 7 or len(ext.prefix.encode()) > LOG_PREFIX_MAX or "\n" in ext.prefix:
                self.add(pos, "LOG options out of range",
                         f"--log-level 0-7 and a one-line --log-prefix of at most {LOG_PREFIX_MAX} bytes", text)
        elif isinstance(ext, (MarkTarget, ConnmarkTarget)):
            values = [ext.value, ext.mask] if isinstance(ext, MarkTarget) else [ext.value, ext.ctmask, ext.nfmask]
            if any(not 0 <= v <= U32 for v in values):
                self.add(pos, f"{t.kind} value or mask out of range", "32-bit values", text)
        elif isinstance(ext, CtTarget) and not ext.notrack:
            self.add(pos, "-j CT without --notrack is not supported by ebpfw", "'-j CT --notrack'", text)
        if t.kind == "CONNMARK" and not self.allow_conntrack:
            self.add(pos, "target 'CONNMARK' is not supported yet (connection tracking is not enabled in "
                     "this ebpfw)", "a rule without -j CONNMARK", "-j CONNMARK")
        if t.kind not in _DATAPATH_ACTIONS:
            self.add(pos, f"target '{t.kind}' is not supported by the datapath yet",
                     "ACCEPT, DROP, REJECT, LOG, RETURN or a user-defined chain", f"-j {t.kind}")

    def kernel_match(self, pos: Pos, hooks: frozenset[str], m: object, text: str) -> None:
        """What the kernel's checkentry refuses for a match: value limits and the hooks
        (built-in chains reaching the rule) it may be used from."""
        if isinstance(m, (LimitMatch, HashlimitMatch)) and m.avg <= 0:
            self.add(pos, f"{type(m).__name__} with avg {m.avg}", "a positive time between packets "
                     "(as the parser computes from N/unit)", f"avg={m.avg}")
            return
        if isinstance(m, LimitMatch) and limit_overflows(m.avg, m.burst):
            self.add(pos, "limit rate and burst overflow the kernel's token bucket (xt_limit: "
                     "\"Overflow, try lower\")", "a higher rate or a smaller --limit-burst (>= 1)", text)
        if isinstance(m, HashlimitMatch):
            # byte rates and rate-match are not token buckets of avg * burst: the parser checked
            # what the kernel refuses of them (cost, rate-match's avg)
            if not m.bytes and not m.rate_match and hashlimit_overflows(m.avg, m.burst):
                self.add(pos, "hashlimit rate and burst overflow the kernel's token bucket (xt_hashlimit: "
                         "\"overflow, try lower\")", "a higher rate or a smaller --hashlimit-burst", text)
            if m.expire == 0 or not (0 <= m.srcmask <= 32 and 0 <= m.dstmask <= 32):
                self.add(pos, "hashlimit --hashlimit-htable-expire 0 or a mask over 32 (the kernel refuses it)",
                         "an expiry > 0 ms and masks 0-32", text)
            if m.gcinterval == 0:
                self.add(pos, "hashlimit --hashlimit-htable-gcinterval 0 (the kernel refuses it)",
                         "an interval > 0 ms", text)
        if isinstance(m, MacMatch) and "OUTPUT" in hooks:
            self.add(pos, "match 'mac' in a rule reached from chain OUTPUT (the kernel allows it only in "
                     "INPUT and FORWARD: locally sent packets have no source MAC yet)",
                     "-m mac only in rules reached from INPUT or FORWARD", text)
        if isinstance(m, AddrtypeMatch):
            if not m.src and not m.dst:
                self.add(pos, "match 'addrtype' without --src-type or --dst-type", "at least one of them", text)
            if m.limit_iface_in and m.limit_iface_out:
                self.add(pos, "addrtype --limit-iface-in together with --limit-iface-out", "one of them", text)
            elif m.limit_iface_in and "OUTPUT" in hooks:
                self.add(pos, "addrtype --limit-iface-in in a rule reached from chain OUTPUT (the kernel "
                         "refuses it: there is no input interface)", "--limit-iface-in only in INPUT and "
                         "FORWARD", text)
            elif m.limit_iface_out and "INPUT" in hooks:
                self.add(pos, "addrtype --limit-iface-out in a rule reached from chain INPUT (the kernel "
                         "refuses it: there is no output interface)", "--limit-iface-out only in FORWARD "
                         "and OUTPUT", text)
            elif m.limit_iface_out and "PREROUTING" in hooks:
                self.add(pos, "addrtype --limit-iface-out in a rule reached from chain PREROUTING (the kernel "
                         "refuses it: there is no output interface yet)", "--limit-iface-out only in FORWARD "
                         "and OUTPUT", text)
        if isinstance(m, RecentMatch):
            if m.command in ("set", "remove") and (m.seconds or m.hitcount or m.reap or m.rttl):
                self.add(pos, f"recent --{m.command} with --seconds, --hitcount, --reap or --rttl (the "
                         "kernel refuses it)", "those options only with --rcheck or --update", text)
            elif m.reap and not m.seconds:
                self.add(pos, "recent --reap without --seconds", "--seconds N with --reap", text)
            if m.hitcount >= 65536:
                self.add(pos, "recent --hitcount above 65535 (the kernel refuses it: XT_RECENT_MAX_NSTAMPS)",
                         "--hitcount 1-65535", text)
        if isinstance(m, SetMatch) and self.sets is not None:
            st = self.sets.get(m.name)
            if st is None:
                self.add(pos, f"set '{m.name}' does not exist (iptables-restore refuses the rule)",
                         "a set created in the set file: " + (", ".join(self.sets) or "(no sets)"), text)
            elif len(m.flags) < st.dimension:
                self.add(pos, f"set '{m.name}' is {st.type} ({st.dimension} dimensions) but --match-set gives "
                         f"{len(m.flags)}: the rule never matches", f"{st.dimension} directions such as "
                         + ",".join(["src"] + ["dst"] * (st.dimension - 1)), text)
        if isinstance(m, ConnlimitMatch) and not 0 <= m.mask <= 32:
            self.add(pos, f"connlimit mask /{m.mask}", "a prefix length 0-32", text)

    def match(self, pos: Pos, ip: IpMatch, m: object, text: str) -> None:
        try:
            spec = spec_of(m)  # type: ignore[arg-type]
        except TypeError:
            self.add(pos, f"match {type(m).__name__} has no iptables form", "a known match", text)
            return
        need = spec.needs_proto
        if need is not None and (ip.proto != need or ip.proto_invert):
            self.add(pos, f"match '{spec.name}' needs -p {protocol_name(need)}",
                     f"'-p {protocol_name(need)}' (not inverted) in the rule", text)
        if isinstance(m, MultiportMatch) and (ip.proto not in (6, 17) or ip.proto_invert):
            self.add(pos, "match 'multiport' needs -p tcp or -p udp",
                     "'-p tcp' or '-p udp' (not inverted) in the rule", text)
        if isinstance(m, TcpMatch) and m.option is not None:
            self.add(pos, "option '--tcp-option' is not supported yet",
                     "a tcp match without --tcp-option",
                     f"{'! ' if m.option_invert else ''}--tcp-option {m.option}")
        if isinstance(m, IcmpMatch) and m.type != 0xFF and (m.code_min, m.code_max) != (0, 0xFF) \
                and m.code_min != m.code_max:
            self.add(pos, f"ICMP code range {m.code_min}-{m.code_max} has no iptables form",
                     "one code or all codes (0-255)", text)
        if isinstance(m, ConntrackMatch) and not m.states:
            self.add(pos, f"match '{m.module}' without states", "at least one state", text)
        if isinstance(m, ConnmarkMatch) and not self.allow_conntrack:
            self.add(pos, "match 'connmark' is not supported yet (connection tracking is not enabled in "
                     "this ebpfw)", "a rule without connmark matches", "-m connmark")
        if isinstance(m, ConntrackMatch) and not self.allow_conntrack:
            self.add(pos, f"match '{m.module}' is not supported yet (connection tracking is not "
                     "enabled in this ebpfw)", "a rule without conntrack or state matches",
                     f"-m {m.module}")

    def loops(self, table: Table, chains: dict[str, Chain], builtins: tuple[str, ...]) -> None:
        """iptables refuses a ruleset whose jumps/gotos form a loop; report each loop once,
        at the rule that closes it."""
        edges: dict[str, list[tuple[str, Rule]]] = {}
        for name, chain in chains.items():
            edges[name] = [(r.target.chain, r) for r in chain.rules
                           if r.target.kind in ("JUMP", "GOTO") and r.target.chain in chains
                           and r.target.chain not in builtins]
        WHITE, GREY, BLACK = 0, 1, 2
        color = {n: WHITE for n in chains}
        for root in chains:                 # built-ins first, as they come in the IR
            if color[root] != WHITE:
                continue
            # iterative DFS (a generated ruleset may nest more chains than Python recurses)
            path: list[str] = [root]
            stack = [iter(edges[root])]
            color[root] = GREY
            while stack:
                step = next(stack[-1], None)
                if step is None:
                    color[path.pop()] = BLACK
                    stack.pop()
                    continue
                dst, rule = step
                if color[dst] == GREY:
                    src = path[-1]
                    cycle = path[path.index(dst):] + [dst]
                    self.add(rule.pos, f"jump from chain '{src}' to '{dst}' makes a loop "
                             f"({' -> '.join(cycle)}), iptables refuses loops too",
                             "a jump graph without loops", _rule_text(src, rule))
                elif color[dst] == WHITE:
                    color[dst] = GREY
                    path.append(dst)
                    stack.append(iter(edges[dst]))


def table_hooks(table: Table) -> dict[str, frozenset[str]]:
    """chain_hooks of a table's chains (the built-in chains reaching each chain)."""
    return chain_hooks({c.name: c for c in table.chains}, BUILTIN_CHAINS.get(table.name, ()))


def check_rules(table: Table, rules: list[tuple[str, Rule]], hooks: dict[str, frozenset[str]], *,
                allow_conntrack: bool = False, sets: Optional[Mapping[str, IpSet]] = None) -> None:
    """check_ruleset's per-rule checks for some rules of `table` (chain name, rule), for a table
    that passed check_ruleset before with the same chains and jump graph (so its chain,
    hook and loop checks still hold): `hooks` are table_hooks(table). Raises as check_ruleset."""
    checker = _Checker(allow_conntrack, sets)
    checker.hooks = hooks
    chains = {c.name: c for c in table.chains}
    builtins = BUILTIN_CHAINS[table.name]
    for name, rule in rules:
        checker.rule(table, chains[name], rule, chains, builtins)
    if checker.problems:
        n = len(checker.problems)
        problems = [msg for _, msg in sorted(checker.problems, key=lambda p: p[0])]
        raise RulesetError(f"{n} problem{'s' if n != 1 else ''} in {checker.file}", problems=problems)


def check_ruleset(rs: Ruleset, *, allow_conntrack: bool = False,
                  sets: Optional[Mapping[str, IpSet]] = None) -> None:
    """`sets` (from ebpfw.ipset.parse_ipsets): when given, every -m set must name one of them
    with at least as many src/dst directions as the set has dimensions."""
    checker = _Checker(allow_conntrack, sets)
    seen: set[str] = set()
    for table in rs.tables:
        if table.name in seen:
            checker.add(table.pos, f"table '{table.name}' appears twice", "one section per table",
                        f"*{table.name}")
            continue
        seen.add(table.name)
        checker.table(table)
    if checker.problems:
        n = len(checker.problems)
        problems = [msg for _, msg in sorted(checker.problems, key=lambda p: p[0])]
        raise RulesetError(f"{n} problem{'s' if n != 1 else ''} in {checker.file}", problems=problems)
