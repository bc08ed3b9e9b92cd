"""iptables-save / iptables-restore text → Ruleset IR.

Contract: `parse_ruleset(text, filename)` reads the `*filter` and `*raw` tables of an iptables-save
file (`:CHAIN POLICY [p:b]` lines, `[p:b] -A CHAIN ...` rules, `COMMIT`, `#` comments,
blank lines) and returns a Ruleset whose values are what iptables itself would store
(addresses masked, `-s 0.0.0.0/0` dropped, protocol names resolved, ...). It collects every
problem and raises one RulesetError whose `problems` are `FILE:LINE: what was wrong,
expected ..., found '...'` lines (at most one problem per input line: the first one;
later words on that line may only be consequences of it). Other tables are refused with
one problem at their `*table` line and skipped up to their COMMIT.

Tables come out in file order. Chains come out in iptables-save's order: the built-in chains
(filter: INPUT, FORWARD, OUTPUT; raw: PREROUTING, OUTPUT; created with policy ACCEPT when the
file does not declare them, as iptables-restore does), then user-defined chains sorted by name. Rules keep file order within a chain.
Chains may be declared anywhere in their table, also after rules that jump to them.
Semantic checks that do not need the text (loops, -i in OUTPUT, unsupported datapath
features) are in ebpfw.check.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from typing import Optional

from ..errors import RulesetError
from ..ruleset import (
    BUILTIN_CHAINS, VERDICTS, Chain, Counters, IfaceMatch, IpMatch, Match, Net, Pos, Rule,
    Ruleset, Table, Target,
)
from . import protocols as P
from .matches import MATCHES, PROTO_MATCHES, Ctx, Given, MatchSpec, OptionError
from .targets import OTHER_TABLE_TARGETS, TARGETS, TargetSpec
from .tokenize import _SPACES, TokenizeError, tokenize

SUPPORTED_TABLES = ("filter", "raw")
KNOWN_TABLES = ("filter", "nat", "mangle", "raw", "security")
MAX_CHAIN_NAME = 28            # XT_EXTENSION_MAXNAMELEN - 1
MAX_IFNAME = 15                # IFNAMSIZ - 1

# Target extensions iptables 1.8.9 ships (libxt_*/libipt_* with upper-case names): a chain
# may not take these names, and `-j` with one of them is "not supported yet".
KNOWN_TARGETS = (
    "AUDIT", "CHECKSUM", "CLASSIFY", "CLUSTERIP", "CONNMARK", "CONNSECMARK", "CT", "DNAT", "DSCP",
    "ECN", "HMARK", "IDLETIMER", "LED", "LOG", "MARK", "MASQUERADE", "NETMAP", "NFLOG", "NFQUEUE",
    "NOTRACK", "QUEUE", "RATEEST", "REDIRECT", "REJECT", "SECMARK", "SET", "SNAT", "SYNPROXY",
    "TCPMSS", "TCPOPTSTRIP", "TEE", "TOS", "TPROXY", "TRACE", "TTL", "ULOG",
)
JUMP_VERDICTS = ("ACCEPT", "DROP", "RETURN")
# what -j may name in each table (for messages)
_TABLE_TARGETS = {
    "filter": "ACCEPT, DROP, RETURN, REJECT, LOG, MARK, CONNMARK or a user-defined chain",
    "raw": "ACCEPT, DROP, RETURN, NOTRACK, CT --notrack, LOG, MARK, CONNMARK or a user-defined chain",
}
OTHER_COMMANDS = {"-I", "--insert", "-D", "--delete", "-R", "--replace", "-N", "--new-chain",
                  "-X", "--delete-chain", "-P", "--policy", "-F", "--flush", "-Z", "--zero",
                  "-E", "--rename-chain", "-L", "--list", "-S", "--list-rules", "-C", "--check"}

_COUNTERS = re.compile(r"\[(\d+):(\d+)\]")


class _LineProblem(Exception):
    def __init__(self, what: str, expected: str, found: str):
        super().__init__(f"{what}, expected {expected}, found '{found}'")


def chain_name_problem(name: str) -> Optional[str]:
    """Why iptables would refuse `name` for a user-defined chain, or None."""
    if not name:
        return "empty chain name"
    if len(name) > MAX_CHAIN_NAME:
        return f"chain name longer than {MAX_CHAIN_NAME} characters"
    if name[0] in "-!":
        return f"chain name starting with '{name[0]}'"
    if name in JUMP_VERDICTS or name in KNOWN_TARGETS:
        return "chain name that is a target name"
    if any(c.isspace() for c in name):
        return "chain name with white space"
    return None


@dataclass
class _Section:
    name: str
    pos: Pos
    skip: bool
    chains: dict[str, tuple[Optional[str], Counters, Pos]] = field(default_factory=dict)
    rules: list[tuple[int, str, Optional[Counters]]] = field(default_factory=list)


class _Parser:
    def __init__(self, filename: str):
        self.filename = filename
        self.problems: list[tuple[int, str]] = []
        self.tables: list[Table] = []
        self.seen_tables: set[str] = set()

    def problem(self, line: int, what: str, expected: str, found: str) -> None:
        self.problems.append((line, f"{self.filename}:{line}: {what}, expected {expected}, found '{found}'"))

    def raw_problem(self, line: int, message: str) -> None:
        self.problems.append((line, f"{self.filename}:{line}: {message}"))

    # --- file structure -------------------------------------------------------------------
    def run(self, text: str) -> None:
        section: Optional[_Section] = None
        for lineno, raw in enumerate(text.split("\n"), 1):
            line = raw.rstrip("\r")
            s = line.strip()
            if not s or s.startswith("#"):
                continue
            if s.startswith("*"):
                if section is not None:
                    self.problem(section.pos.line, f"table '{section.name}' is never committed",
                                 "'COMMIT' before the next table", s)
                section = self.open_table(s, lineno)
                continue
            if section is None:
                self.problem(lineno, "line outside a table",
                             "a table header such as '*filter' first", _short(s))
                continue
            if section.skip:
                if s == "COMMIT":
                    section = None
                continue
            if s == "COMMIT":
                self.commit(section)
                section = None
            elif s.startswith(":"):
                self.declare_chain(section, s, lineno)
            elif s.startswith("-") or s.startswith("["):
                self.store_rule(section, s, lineno)
            else:
                self.problem(lineno, "unrecognised line",
                             "':CHAIN POLICY [p:b]', '-A CHAIN ...', 'COMMIT' or a '#' comment",
                             _short(s))
        if section is not None:
            self.problem(section.pos.line, f"table '{section.name}' is never committed",
                         "'COMMIT' before the end of the file", "end of file")

    def open_table(self, s: str, lineno: int) -> _Section:
        name = s[1:].strip()
        pos = Pos(self.filename, lineno)
        if name in SUPPORTED_TABLES:
            if name in self.seen_tables:
                self.problem(lineno, f"table '{name}' appears twice",
                             "one section per table", s)
                return _Section(name, pos, skip=True)
            self.seen_tables.add(name)
            return _Section(name, pos, skip=False)
        if name in KNOWN_TABLES:
            self.problem(lineno, f"table '{name}' is not supported by ebpfw yet", "'*filter' or '*raw'", s)
        else:
            self.problem(lineno, f"unknown table '{name}'", "'*filter' or '*raw'", s)
        return _Section(name, pos, skip=True)

    def declare_chain(self, sec: _Section, s: str, lineno: int) -> None:
        words = s[1:].split()
        pos = Pos(self.filename, lineno)
        if len(words) < 2 or len(words) > 3:
            self.problem(lineno, "malformed chain line", "':CHAIN POLICY [PACKETS:BYTES]'", s)
            return
        name, policy = words[0], words[1]
        if name in sec.chains:
            first = sec.chains[name][2]
            self.problem(lineno, f"chain '{name}' declared twice (first at line {first.line})",
                         "one ':CHAIN' line per chain", s)
            return
        builtins = BUILTIN_CHAINS.get(sec.name, ())
        pol: Optional[str] = policy if name in builtins else None
        # From here on the chain is declared even if the line has a problem, so its rules
        # are still parsed (and not reported as rules of an undeclared chain).
        sec.chains[name] = (pol, Counters(), pos)
        counters = Counters()
        if len(words) == 3:
            m = _COUNTERS.fullmatch(words[2])
            if not m:
                self.problem(lineno, f"malformed counters for chain '{name}'", "[PACKETS:BYTES]", words[2])
                return
            counters = Counters(int(m.group(1)), int(m.group(2)))
        if name in builtins:
            if policy not in VERDICTS:
                self.problem(lineno, f"built-in chain '{name}' needs a policy", "ACCEPT or DROP", policy)
                return
        else:
            why = chain_name_problem(name)
            if why:
                self.problem(lineno, f"invalid chain name: {why}",
                             f"at most {MAX_CHAIN_NAME} characters, not starting with '-' or '!', "
                             "not a target name", name)
                return
            if policy != "-":
                self.problem(lineno, f"user-defined chain '{name}' cannot have a policy "
                             f"(built-in chains of table '{sec.name}' are {', '.join(builtins)})",
                             "'-'", policy)
                return
            counters = Counters()      # iptables-save prints [0:0] for user chains
        sec.chains[name] = (pol, counters, pos)

    def store_rule(self, sec: _Section, s: str, lineno: int) -> None:
        counters: Optional[Counters] = None
        if s.startswith("["):
            m = _COUNTERS.match(s)
            if not m:
                self.problem(lineno, "malformed rule counters", "[PACKETS:BYTES] -A CHAIN ...", _short(s))
                return
            counters = Counters(int(m.group(1)), int(m.group(2)))
            s = s[m.end():]
        sec.rules.append((lineno, s, counters))

    def parse_rule(self, sec: _Section, lineno: int, s: str) -> Optional[tuple[str, Rule, bool]]:
        """(chain, rule, whether -c gave counters) of one rule line without its [p:b], or None
        after recording its problem."""
        if '"' in s:
            try:
                words = [t.text for t in tokenize(s)]
            except TokenizeError as exc:
                self.problem(lineno, "unterminated double quote", 'a closing "', exc.text)
                return None
        else:                   # tokenize's fast path, without a Token per word
            words = [w for w in _SPACES.split(s) if w]
        rp = _RuleParser(self.filename, lineno, sec, words)
        try:
            chain, rule = rp.parse()
        except _LineProblem as exc:
            self.raw_problem(lineno, str(exc))
            return None
        return chain, rule, rp.counters_given

    def commit(self, sec: _Section) -> None:
        builtins = BUILTIN_CHAINS.get(sec.name, ())
        for b in builtins:
            if b not in sec.chains:       # iptables-restore: built-in chains always exist
                sec.chains[b] = ("ACCEPT", Counters(), sec.pos)
        rules: dict[str, list[Rule]] = {name: [] for name in sec.chains}
        # a rule's meaning depends only on its text, its table and the chains that exist
        # (jump targets): re-applying an edited ruleset in one process parses only new lines
        cache_key = (sec.name, frozenset(sec.chains))
        cache = _RULE_CACHE.setdefault(cache_key, {}) if len(_RULE_CACHE) < 64 else {}
        for lineno, s, counters in sec.rules:
            hit = cache.get(s)
            if hit is None:
                hit = self.parse_rule(sec, lineno, s)
                if hit is None:
                    continue
                if len(cache) < _RULE_CACHE_MAX:
                    cache[s] = hit
            chain, rule, counters_given = hit
            rule = _at(rule, Pos(self.filename, lineno))
            if counters is not None:
                if counters_given:
                    self.problem(lineno, "counters given twice", "either [p:b] or -c", "-c")
                    continue
                rule = replace(rule, counters=counters)
            rules[chain].append(rule)
        order = [b for b in builtins] + sorted(n for n in sec.chains if n not in builtins)
        chains = []
        for name in order:
            pol, ctrs, pos = sec.chains[name]
            chains.append(Chain(name=name, policy=pol, rules=tuple(rules[name]),  # type: ignore[arg-type]
                                pos=pos, counters=ctrs))
        self.tables.append(Table(name=sec.name, chains=tuple(chains), pos=sec.pos))


def _at(rule: Rule, pos: Pos) -> Rule:
    """dataclasses.replace(rule, pos=pos), without its per-field __init__ (a tenth of a parse):
    the other fields are the cached rule's, already built and checked."""
    new = object.__new__(Rule)
    d = new.__dict__
    d.update(rule.__dict__)
    d["pos"] = pos
    return new


# parsed rules by (table, declared chains) then line text; bounded, per process
_RULE_CACHE: dict[tuple, dict[str, tuple]] = {}
_RULE_CACHE_MAX = 200_000


def _short(s: str, n: int = 60) -> str:
    return s if len(s) <= n else s[:n] + "..."


@dataclass
class _Loaded:
    spec: MatchSpec | TargetSpec
    values: dict[str, Given] = field(default_factory=dict)
    implicit: bool = False

    @property
    def what(self) -> str:
        return f"'{self.spec.name}' " + ("target" if isinstance(self.spec, TargetSpec) else "match")


class _RuleParser:
    """One `-A CHAIN ...` line. Raises _LineProblem at the first problem."""

    def __init__(self, filename: str, lineno: int, sec: _Section, words: list[str]):
        self.pos = Pos(filename, lineno)
        self.sec = sec
        self.words = words
        self.i = 0
        self.ip: dict[str, object] = {}
        self.given: set[str] = set()
        self.ctx = Ctx()
        self.matches: list[_Loaded] = []
        self.target: Optional[Target] = None
        self.target_ext: Optional[_Loaded] = None     # -j REJECT/LOG/...: its options
        self.counters = Counters()
        self.counters_given = False

    def fail(self, what: str, expected: str, found: str) -> None:
        raise _LineProblem(what, expected, found)

    def next_arg(self, option: str, what: str = "an argument") -> str:
        if self.i >= len(self.words):
            self.fail(f"option '{option}' needs {what}", f"'{option} VALUE'", "end of line")
        arg = self.words[self.i]
        self.i += 1
        return arg

    def intrapositioned(self, option: str, arg: str) -> None:
        """`-s ! ADDR`: old iptables syntax, refused by iptables 1.8 too."""
        if arg == "!":
            self.fail(f"'!' after option '{option}'", f"'! {option} VALUE' (the '!' goes first)",
                      f"{option} !")

    def parse(self) -> tuple[str, Rule]:
        if not self.words:
            self.fail("empty rule", "'-A CHAIN ...'", "")
        cmd = self.words[0]
        if cmd not in ("-A", "--append"):
            if cmd in OTHER_COMMANDS:
                self.fail(f"command '{cmd}' is not allowed in a ruleset file", "'-A CHAIN ...'", cmd)
            self.fail("rule does not start with -A", "'-A CHAIN ...'", cmd)
        if len(self.words) < 2:
            self.fail("'-A' without a chain", "'-A CHAIN ...'", cmd)
        chain = self.words[1]
        if chain not in self.sec.chains:
            self.fail(f"rule for undeclared chain '{chain}'",
                      f"a ':{chain} - [0:0]' line in table '{self.sec.name}'", f"-A {chain}")
        self.i = 2
        invert = False
        while self.i < len(self.words):
            word = self.words[self.i]
            self.i += 1
            if word == "!":
                if invert:
                    self.fail("'!' twice", "one '!' before an option", "! !")
                invert = True
                continue
            if not word.startswith("-") or word in ("-", "--"):
                self.fail("unexpected word", "an option such as -s, -p, -m or -j", word)
            self.option(word, invert)
            invert = False
        if invert:
            self.fail("'!' at the end of the rule", "an option after '!'", "!")
        return chain, self.finish()

    # --- one option ---------------------------------------------------------------------------
    def option(self, word: str, invert: bool) -> None:
        if word in ("-s", "--source", "--src", "-d", "--destination", "--dst"):
            key = "src" if word in ("-s", "--source", "--src") else "dst"
            if key in self.given:
                self.fail(f"option '{word}' given twice", "one -s and one -d per rule", word)
            self.given.add(key)
            arg = self.next_arg(word, "an address")
            self.intrapositioned(word, arg)
            net = parse_net(arg, word)
            if net.mask or invert:        # iptables-save drops a plain 0.0.0.0/0
                self.ip[key] = net
                self.ip[key + "_invert"] = invert
            return
        if word in ("-i", "--in-interface", "-o", "--out-interface"):
            key = "iface_in" if word in ("-i", "--in-interface") else "iface_out"
            if key in self.given:
                self.fail(f"option '{word}' given twice", "one -i and one -o per rule", word)
            self.given.add(key)
            arg = self.next_arg(word, "an interface name")
            self.intrapositioned(word, arg)
            iface = parse_iface(arg, word, invert)
            if iface.name != "+" or invert:   # a plain "-i +" matches every interface
                self.ip[key] = iface
            return
        if word in ("-p", "--protocol"):
            if "proto" in self.given:
                self.fail(f"option '{word}' given twice", "one -p per rule", word)
            arg = self.next_arg(word, "a protocol")
            self.intrapositioned(word, arg)
            self.given.add("proto")
            proto = P.parse_protocol(arg)
            if proto is None:
                self.fail("unknown protocol", "tcp, udp, icmp, all, a number 0-255 or a name from "
                          "/etc/protocols", arg)
            if proto == 0 and invert:
                self.fail("'! -p all' would never match (iptables refuses it too)",
                          "a protocol other than all/0", f"! {word} {arg}")
            if proto:
                self.ip["proto"] = proto
                self.ip["proto_invert"] = invert
            self.ctx.proto = proto or None
            self.ctx.proto_invert = bool(proto) and invert
            return
        if word in ("-f", "--fragment"):
            if "fragment" in self.given:
                self.fail(f"option '{word}' given twice", "one -f per rule", word)
            self.given.add("fragment")
            self.ip["fragment"] = not invert
            return
        if word in ("-m", "--match"):
            name = self.next_arg(word, "a match name")
            if invert:
                self.fail("'!' before -m", "'-m NAME ! --option VALUE'", f"! {word} {name}")
            spec = MATCHES.get(name)
            if spec is None:
                self.fail(f"match '{name}' is not supported yet",
                          "one of " + ", ".join(sorted(MATCHES)), f"-m {name}")
            self.matches.append(_Loaded(spec))
            return
        if word in ("-j", "--jump", "-g", "--goto"):
            self.jump(word, invert)
            return
        if word in ("-c", "--set-counters"):
            if invert:
                self.fail(f"'!' before {word}", f"'{word} PACKETS BYTES'", f"! {word}")
            p, b = self.next_arg(word, "packets and bytes"), self.next_arg(word, "packets and bytes")
            if not (p.isdigit() and b.isdigit()):
                self.fail("malformed counters", f"'{word} PACKETS BYTES' with decimal numbers", f"{p} {b}")
            if self.counters_given:
                self.fail(f"option '{word}' given twice", "one -c per rule", word)
            self.counters, self.counters_given = Counters(int(p), int(b)), True
            return
        if word.startswith("--"):
            self.match_option(word, invert)
            return
        self.fail("unknown option", "an option of iptables (-s -d -i -o -p -f -m -j -g) or of a "
                  "loaded match", word)

    def jump(self, word: str, invert: bool) -> None:
        name = self.next_arg(word, "a target")
        if invert:
            self.fail(f"'!' before {word}", f"'{word} TARGET'", f"! {word} {name}")
        if self.target is not None:
            self.fail("more than one -j/-g", "one target per rule", f"{word} {name}")
        builtins = BUILTIN_CHAINS.get(self.sec.name, ())
        user_chain = name in self.sec.chains and name not in builtins
        if word in ("-g", "--goto"):
            if not user_chain:
                self.fail(f"goto target '{name}' is not a user-defined chain",
                          "'-g CHAIN' with a chain declared as ':CHAIN - [0:0]'", f"{word} {name}")
            self.target = Target("GOTO", name)
            return
        table = self.sec.name
        allowed = _TABLE_TARGETS.get(table, "ACCEPT, DROP, RETURN or a user-defined chain")
        if name in JUMP_VERDICTS:
            self.target = Target(name)  # type: ignore[arg-type]
        elif name == "NOTRACK" and table == "raw" and not user_chain:
            self.target = Target("NOTRACK")     # libxt_NOTRACK has no options
        elif name in TARGETS and not user_chain and table in TARGETS[name].tables:
            self.target = Target(name)  # type: ignore[arg-type]   # options come in finish()
            self.target_ext = _Loaded(TARGETS[name])
        elif name in TARGETS and not user_chain:
            self.fail(f"target '{name}' is only valid in the {' and '.join(TARGETS[name].tables)} table "
                      f"(the kernel refuses it in {table}: \"{name} target: only valid in "
                      f"{TARGETS[name].tables[0]} table, not {table}\")", allowed, f"{word} {name}")
        elif name in OTHER_TABLE_TARGETS and not user_chain:
            other = OTHER_TABLE_TARGETS[name]
            if other in SUPPORTED_TABLES:
                self.fail(f"target '{name}' is only valid in the {other} table (the kernel refuses it in "
                          f"{table})", allowed, f"{word} {name}")
            self.fail(f"target '{name}' is only valid in the {other} table (the kernel refuses it in "
                      f"{table}) and ebpfw enforces only the filter and raw tables", allowed, f"{word} {name}")
        elif user_chain:
            self.target = Target("JUMP", name)
        elif name in builtins:
            self.fail(f"jump to built-in chain '{name}'",
                      "ACCEPT, DROP, RETURN or a user-defined chain", f"{word} {name}")
        elif name in KNOWN_TARGETS:
            self.fail(f"target '{name}' is not supported yet", allowed, f"{word} {name}")
        else:
            self.fail(f"jump to undefined chain '{name}'",
                      f"ACCEPT, DROP, RETURN or a chain declared with ':{name} - [0:0]'",
                      f"{word} {name}")

    def match_option(self, word: str, invert: bool) -> None:
        name = word[2:]
        loaded = next((m for m in reversed(self.matches) if m.spec.option(name)), None)
        if loaded is None and self.target_ext is not None:
            if self.target_ext.spec.option(name):
                loaded = self.target_ext
            elif name in self.target_ext.spec.unsupported:
                why = self.target_ext.spec.unsupported_why
                self.fail(f"option '{word}' of {self.target_ext.what} is not supported yet"
                          + (f" ({why})" if why else ""),
                          "only " + ", ".join("--" + n for o in self.target_ext.spec.options for n in o.names),
                          word)
        if loaded is None:
            for m in reversed(self.matches):
                if name in m.spec.unsupported:
                    self.fail(f"option '{word}' of match '{m.spec.name}' is not supported yet",
                              "only " + ", ".join("--" + n for o in m.spec.options for n in o.names),
                              word)
            implicit = PROTO_MATCHES.get(self.ctx.proto or 0)
            if implicit and not self.ctx.proto_invert and MATCHES[implicit].option(name):
                loaded = _Loaded(MATCHES[implicit], implicit=True)   # iptables loads -p's match
                self.matches.append(loaded)
        if loaded is None:
            owners = [s.name for s in MATCHES.values() if s.option(name)]
            target_owners = [t.name for t in TARGETS.values() if t.option(name)]
            if not owners and target_owners:
                self.fail(f"option '{word}' without a target that takes it",
                          " or ".join(f"-j {t}" for t in target_owners) + " before it", word)
            if owners:
                ways = [f"-p {o}" for o in owners if o in PROTO_MATCHES.values()]
                ways += [f"-m {o}" for o in owners]
                self.fail(f"option '{word}' without a match that takes it",
                          ", ".join(ways[:-1]) + (" or " if len(ways) > 1 else "") + ways[-1] + " before it",
                          word)
            self.fail("unknown option", "an option of iptables or of a match loaded with -m "
                      "before it", word)
        assert loaded is not None
        opt = loaded.spec.option(name)
        assert opt is not None
        if invert and not opt.invertible:
            self.fail(f"'!' before '{word}'", f"'{word}' without '!'", f"! {word}")
        if opt.key in loaded.values:
            prev = loaded.values[opt.key].option
            what = (f"option '{word}' given twice in one {loaded.what}" if prev == word else
                    f"options '{prev}' and '{word}' exclude each other in one {loaded.what}")
            if loaded is self.target_ext:
                self.fail(what, "one of them", word)
            self.fail(what, f"one of them (or a second -m {loaded.spec.name})", word)
        args = [self.next_arg(word) for _ in range(opt.nargs)]
        try:
            value = opt.read(args, self.ctx, word)
        except OptionError as exc:
            for arg in args:
                self.intrapositioned(word, arg)
            self.fail(exc.what, exc.expected, exc.found)
        loaded.values[opt.key] = Given(value, invert, word)

    # --- the rule -------------------------------------------------------------------------------
    def finish(self) -> Rule:
        typed: list[Match] = []
        for m in self.matches:
            try:
                typed.append(m.spec.build(m.values, self.ctx))
            except OptionError as exc:
                self.fail(exc.what, exc.expected, exc.found)
            need = m.spec.needs_proto
            if need is not None and (self.ctx.proto != need or self.ctx.proto_invert):
                pname = P.protocol_name(need)
                found = "no -p" if self.ctx.proto is None else \
                    ("! " if self.ctx.proto_invert else "") + f"-p {P.protocol_name(self.ctx.proto)}"
                self.fail(f"match '{m.spec.name}' needs -p {pname} (iptables refuses it otherwise)",
                          f"'-p {pname}' (not inverted) in the rule", found)
        target = self.target or Target("NONE")
        if self.target_ext is not None:
            try:
                ext = self.target_ext.spec.build(self.target_ext.values, self.ctx)
            except OptionError as exc:
                self.fail(exc.what, exc.expected, exc.found)
            target = Target(target.kind, ext=ext)
        ip = IpMatch(**self.ip)  # type: ignore[arg-type]
        return Rule(ip=ip, matches=tuple(typed), target=target, pos=self.pos, counters=self.counters)


def parse_net(text: str, option: str) -> Net:
    """-s/-d argument: ADDR, ADDR/LEN or ADDR/DOTTED-MASK; the address is masked."""
    if "," in text:
        raise _LineProblem(f"address list in {option} (iptables would make one rule per address)",
                           "one address or network per rule; write one rule per address", text)
    addr_s, slash, mask_s = text.partition("/")
    addr = P.parse_ipv4(addr_s)
    if addr is None:
        if re.fullmatch(r"[A-Za-z0-9.-]+", addr_s) and re.search(r"[A-Za-z]", addr_s):
            raise _LineProblem(f"host name in {option} (ebpfw does no DNS lookups)",
                               "an IPv4 address such as 192.0.2.1 or 10.0.0.0/8", text)
        raise _LineProblem(f"invalid address in {option}",
                           "an IPv4 address such as 192.0.2.1 or 10.0.0.0/8", text)
    if not slash:
        mask = 0xFFFFFFFF
    elif "." in mask_s:
        dotted = P.parse_ipv4(mask_s)
        if dotted is None:
            raise _LineProblem(f"invalid mask in {option}", "a prefix length 0-32 or a dotted mask",
                               text)
        mask = dotted
    else:
        bits = P.strtoui(mask_s, 32)
        if bits is None:
            raise _LineProblem(f"invalid mask in {option}", "a prefix length 0-32 or a dotted mask",
                               text)
        mask = (0xFFFFFFFF << (32 - bits)) & 0xFFFFFFFF
    return Net(addr & mask, mask)


def parse_iface(text: str, option: str, invert: bool) -> IfaceMatch:
    if not text:
        raise _LineProblem(f"empty interface name in {option}", "an interface name such as eth0 or eth+", '')
    if len(text) > MAX_IFNAME:
        raise _LineProblem(f"interface name in {option} too long",
                           f"at most {MAX_IFNAME} characters (IFNAMSIZ)", text)
    body = text[:-1] if text.endswith("+") else text
    if "/" in body or any(c.isspace() for c in body):
        raise _LineProblem(f"interface name in {option} can never match (the kernel does not allow "
                           "'/' or white space in names)", "an interface name such as eth0 or eth+", text)
    return IfaceMatch(text, invert)


def parse_rule_line(line: str, filename: str, lineno: int, table: str, chains) -> tuple[str, Rule]:
    """One rule line of a table whose chains (declared and built-in) are `chains`, exactly as
    parse_ruleset parses it inside that table: the rule has Pos(filename, lineno) and counters
    only from -c. The line must not start with '[p:b]'. Raises RulesetError with its problem."""
    s = line.rstrip("\r").strip()
    parser = _Parser(filename)
    names = frozenset(chains)
    sec = _Section(table, Pos(filename, lineno), skip=False,
                   chains={n: (None, Counters(), Pos(filename, lineno)) for n in names})
    cache_key = (table, names)
    cache = _RULE_CACHE.get(cache_key, {})
    hit = cache.get(s)
    if hit is None:
        hit = parser.parse_rule(sec, lineno, s)
        if hit is None:
            raise RulesetError(f"1 problem in {filename}", problems=[parser.problems[0][1]])
        if cache_key in _RULE_CACHE and len(cache) < _RULE_CACHE_MAX:
            cache[s] = hit
    chain, rule, _ = hit
    return chain, _at(rule, Pos(filename, lineno))


def parse_ruleset(text: str, filename: str = "<stdin>") -> Ruleset:
    """Parse iptables-save text; raise RulesetError listing every problem."""
    parser = _Parser(filename)
    parser.run(text)
    if parser.problems:
        n = len(parser.problems)
        problems = [msg for _, msg in sorted(parser.problems, key=lambda p: p[0])]
        raise RulesetError(f"{n} problem{'s' if n != 1 else ''} in {filename}", problems=problems)
    return Ruleset(tables=tuple(parser.tables))
