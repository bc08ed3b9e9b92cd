"""Parse `iptables-save -c` / `ebpfw save --counters` output into comparable snapshots.

Both tools print the same canonical format (iptables-save 1.8.9):
    *filter
    :INPUT DROP [12:840]
    [3:180] -A INPUT -s 10.0.0.0/8 -j ACCEPT
    COMMIT
Only the counters and the rule text matter here; comments (`# ...`) are ignored.
A key names one counted thing: "INPUT:policy" or "INPUT:3" (3rd rule of INPUT, 1-based).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

_POLICY = re.compile(r"^:(\S+) (\S+) \[(\d+):(\d+)\]$")
_RULE = re.compile(r"^\[(\d+):(\d+)\] (-A (\S+)(?: .*)?)$")


class SaveFormatError(ValueError):
    pass


@dataclass
class ChainSnap:
    name: str
    policy: str                     # ACCEPT | DROP | "-" (user chain)
    packets: int = 0
    bytes: int = 0
    rules: list = field(default_factory=list)   # [(text, packets, bytes)]


@dataclass
class Snapshot:
    chains: dict                    # name -> ChainSnap, file order

    def counters(self) -> dict[str, tuple[int, int]]:
        """key -> (packets, bytes) for every policy of a built-in chain and every rule."""
        out: dict[str, tuple[int, int]] = {}
        for c in self.chains.values():
            if c.policy != "-":
                out[f"{c.name}:policy"] = (c.packets, c.bytes)
            for i, (_text, p, b) in enumerate(c.rules, 1):
                out[f"{c.name}:{i}"] = (p, b)
        return out

    def text_of(self, key: str) -> str:
        chain, _, what = key.partition(":")
        c = self.chains.get(chain)
        if c is None:
            return f"(no chain {chain})"
        if what == "policy":
            return f":{chain} {c.policy} (policy)"
        idx = int(what)
        return c.rules[idx - 1][0] if 0 < idx <= len(c.rules) else f"(no rule {key})"

    def keys(self) -> list[str]:
        return list(self.counters())


def parse_save(text: str, table: str = "filter") -> Snapshot:
    """The chains of one table from iptables-save -c style text. Raises SaveFormatError on a
    line it does not understand (so a format drift on either side is loud, not silent)."""
    chains: dict[str, ChainSnap] = {}
    in_table = False
    seen_table = False
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("*"):
            in_table = line[1:] == table
            seen_table = seen_table or in_table
            continue
        if not in_table:
            continue
        if line == "COMMIT":
            in_table = False
            continue
        m = _POLICY.match(line)
        if m:
            name, policy, p, b = m.groups()
            chains[name] = ChainSnap(name, policy, int(p), int(b))
            continue
        m = _RULE.match(line)
        if m:
            p, b, rule, chain = m.groups()
            if chain not in chains:
                raise SaveFormatError(f"line {lineno}: rule for undeclared chain {chain}: {line}")
            chains[chain].rules.append((rule, int(p), int(b)))
            continue
        raise SaveFormatError(f"line {lineno}: expected ':CHAIN POLICY [p:b]' or "
                              f"'[p:b] -A CHAIN ...', found {line!r}")
    if not seen_table:
        raise SaveFormatError(f"no *{table} table in the output")
    return Snapshot(chains)


def parse_save_with_raw(text: str) -> Snapshot:
    """The filter table plus the raw table, whose chains are named "raw CHAIN" (keys such as
    "raw PREROUTING:policy"; a chain name never contains white space, so none collides)."""
    snap = parse_save(text, "filter")
    for name, c in parse_save(text, "raw").chains.items():
        c.name = f"raw {name}"
        snap.chains[c.name] = c
    return snap


def has_raw(ruleset: str) -> bool:
    """The ruleset text has a *raw table (both sides then compare its counters too)."""
    return any(line.strip() == "*raw" for line in ruleset.splitlines())


def delta(after: Snapshot, before: Snapshot) -> dict[str, tuple[int, int]]:
    """Counter increments between two snapshots of the same ruleset (non-zero keys only)."""
    a, b = after.counters(), before.counters()
    out = {}
    for k, (p, by) in a.items():
        p0, b0 = b.get(k, (0, 0))
        if (p - p0, by - b0) != (0, 0):
            out[k] = (p - p0, by - b0)
    return out
