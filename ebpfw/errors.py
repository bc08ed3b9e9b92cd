"""One exception family. The CLI catches EbpfwError at the edge and prints it;
anything else is a bug and keeps its traceback."""

from __future__ import annotations


class EbpfwError(Exception):
    """A user-facing failure: bad input, a missing kernel feature, a failed apply.
    `problems` lists every `FILE:LINE: what, expected, found` line when there are several."""

    def __init__(self, message: str, problems: list[str] | None = None, hint: str | None = None):
        super().__init__(message)
        self.problems = list(problems or [])
        self.hint = hint

    def render(self) -> str:
        lines = list(self.problems) if self.problems else []
        head = str(self)
        if head and head not in lines:
            lines.append(head) if lines else lines.insert(0, head)
        if self.hint:
            lines.append(f"hint: {self.hint}")
        return "\n".join(lines)


class RulesetError(EbpfwError):
    """The ruleset text cannot be enforced exactly; `problems` has one line per place."""


class KernelError(EbpfwError):
    """The kernel refused something (verifier, attach, map operation)."""


class StateError(EbpfwError):
    """Pinned state or the state directory is missing or inconsistent."""
