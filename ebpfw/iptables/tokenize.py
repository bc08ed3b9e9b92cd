"""Split one iptables-restore line into words, and quote a word back for iptables-save.

Contract: `tokenize` follows iptables-restore's add_param_to_argv (iptables 1.8.9,
xshared.c): words are separated by spaces, tabs and newlines; a double quote opens a
quoted part in which spaces are kept and a backslash escapes the next character; the
closing quote ends the word. Outside quotes a backslash and a single quote are ordinary
characters. `save_string` is libxtables' xtables_save_string: words made only of
`_-0-9a-zA-Z` are printed bare, anything else in double quotes with `"`, `\\` and `'`
backslash-escaped. So tokenize(save_string(s)) == [s] for every s without a newline.
"""

from __future__ import annotations

import re
from dataclasses import dataclass


class TokenizeError(ValueError):
    """An unterminated quote; `.text` is the part of the line that was left open."""

    def __init__(self, text: str):
        super().__init__(f"unterminated double quote in {text!r}")
        self.text = text


@dataclass(frozen=True)
class Token:
    text: str
    quoted: bool = False   # came (at least partly) from a "..." part

    def __str__(self) -> str:
        return self.text


_SPACES = re.compile(r"[ \t\n]+")


def tokenize(line: str) -> list[Token]:
    if '"' not in line:               # fast path: nothing but separators to care about
        return [Token(w) for w in _SPACES.split(line) if w]
    words: list[Token] = []
    buf: list[str] = []
    quote_open = False
    escaped = False
    quoted = False
    quote_start = 0
    for i, ch in enumerate(line):
        if quote_open:
            if escaped:
                buf.append(ch)
                escaped = False
                continue
            if ch == "\\":
                escaped = True
                continue
            if ch != '"':
                buf.append(ch)
                continue
            quote_open = False      # the closing quote ends the word (as iptables)
        elif ch == '"':
            quote_open = True
            quoted = True
            quote_start = i
            continue
        if ch == '"' or ch in " \t\n":
            if ch != '"' and not buf and not quoted:
                continue
            words.append(Token("".join(buf), quoted))
            buf = []
            quoted = False
            continue
        buf.append(ch)
    if quote_open:
        raise TokenizeError(line[quote_start:])
    if buf or quoted:
        words.append(Token("".join(buf), quoted))
    return words


_BARE = re.compile(r"[_\-0-9a-zA-Z]+")


def save_string(value: str) -> str:
    """One word as iptables-save prints it (xtables_save_string)."""
    if _BARE.fullmatch(value):
        return value
    return '"' + re.sub(r'(["\\\'])', r"\\\1", value) + '"'
