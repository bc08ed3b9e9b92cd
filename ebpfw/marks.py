"""Packet marks and connection marks: the IR of -m mark / -m connmark and the arithmetic of
-j MARK / -j CONNMARK, shared by the parser, the checker, the compiler and the tests.

The two match dataclasses belong with the others in ebpfw/ruleset.py; they live here because
that file is frozen while several issues change the IR at once (move them when it is not).

Semantics (net/netfilter/xt_mark.c, xt_connmark.c):
  -m mark --mark V/M       matches when (skb->mark & M) == V (V is kept as given: a value with
                           bits outside the mask never matches), `!` inverts;
  -m connmark --mark V/M   the same on the connection's mark; a packet without a connection
                           (INVALID, UNTRACKED) never matches, with or without `!`;
  -j MARK --set-xmark V/M  skb->mark = (skb->mark & ~M) ^ V;
  -j CONNMARK              see ebpfw.ruleset.ConnmarkTarget (set, save, restore).
"""

from __future__ import annotations

from dataclasses import dataclass

U32 = 0xFFFFFFFF


@dataclass(frozen=True)
class MarkMatch:
    """-m mark --mark value[/mask]: (skb->mark & mask) == value."""
    value: int
    mask: int = U32
    invert: bool = False


@dataclass(frozen=True)
class ConnmarkMatch:
    """-m connmark --mark value[/mask]: (ctmark & mask) == value; no connection: no match."""
    value: int
    mask: int = U32
    invert: bool = False


def xmark(old: int, value: int, mask: int) -> int:
    """The kernel's `(old & ~mask) ^ value` in u32."""
    return ((old & ~mask) ^ value) & U32


def mark_holds(mark: int, value: int, mask: int, invert: bool) -> bool:
    return ((mark & mask) == value) != invert
