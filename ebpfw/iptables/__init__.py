"""The iptables front end: iptables-save text ⇄ Ruleset IR.

- `parse_ruleset(text, filename)` → Ruleset, or RulesetError listing every problem.
- `save_ruleset(rs, counters=None, header=None)` → canonical iptables-save text.
- `format_rule(chain, rule)` → one `-A CHAIN ...` line; `counters_of(rs)` → the IR's counters
  keyed for save_ruleset.
The per-extension knowledge lives in two tables: `matches.MATCHES` (-m NAME) and
`targets.TARGETS` (-j REJECT/LOG/MARK/CONNMARK with options).
"""

from .parse import parse_ruleset
from .save import counters_of, format_rule, save_ruleset

__all__ = ["parse_ruleset", "save_ruleset", "format_rule", "counters_of"]
