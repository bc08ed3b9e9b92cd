"""The command line's one error edge, shared by `ebpfw` and its sub-apps (conntrack, set):
an EbpfwError becomes its rendered lines on stderr (FILE:LINE problems and hints as they are,
the rest prefixed `error: `) and exit status 1; anything else keeps its traceback."""

from __future__ import annotations

import functools
import sys
from typing import Any, Callable

import typer

from .errors import EbpfwError


def print_error(exc: EbpfwError) -> None:
    problems = set(exc.problems)
    for line in exc.render().splitlines():
        if line in problems or line.startswith("hint: "):
            print(line, file=sys.stderr)
        else:
            print(f"error: {line}", file=sys.stderr)
    sys.stderr.flush()


def edge(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Run a command; an EbpfwError becomes its message on stderr and exit status 1."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except EbpfwError as exc:
            print_error(exc)
            raise typer.Exit(1) from None

    return wrapper


def sub_app(name: str, help: str) -> typer.Typer:
    """A typer sub-app configured like the main one (no locals in tracebacks, plain help)."""
    return typer.Typer(name=name, help=help, no_args_is_help=True, add_completion=False,
                       pretty_exceptions_enable=False, pretty_exceptions_show_locals=False,
                       rich_markup_mode=None)
