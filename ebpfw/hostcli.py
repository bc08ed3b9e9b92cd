"""Host-level commands of the `ebpfw` command line: `agent`, `confirm`, `diff`, and the
`--confirm` variant of `apply`. cli.py registers them with `register(app)`.

Contract:
- `ebpfw agent [--config F] [--verbose]` runs ebpfw.agent until SIGTERM (exit 0); a bad
  configuration or ruleset at start is an error (exit 1, FILE:LINE lines on stderr).
- `ebpfw diff RULESET`: unified diff from the enforced canonical ruleset to RULESET made
  canonical (parse + check + save, so comments, spacing, counters and option order do not
  count). Exit 0 equal, 1 different, 2 trouble (bad ruleset, nothing applied), like diff(1).
- `ebpfw confirm`: keep the ruleset applied with `apply --confirm`.
- `confirmed_apply(...)` is what `ebpfw apply --confirm DURATION` runs.
- bcc is imported lazily (through ebpfw.api) only by commands that touch the kernel.
"""

from __future__ import annotations

import difflib
import sys
from typing import Annotated, Optional

import typer

from .errors import EbpfwError


def confirmed_apply(text: str, name: str, ifaces: list[str], mode: str, counters: bool, duration: str) -> None:
    from . import rollback

    seconds = rollback.parse_duration(duration)
    res = rollback.apply_with_rollback(text, name, ifaces, mode, counters, seconds)
    where = ", ".join(f"{i['name']} ({i.get('ingress', '?')})" for i in res.get("ifaces", []))
    back = f"{res['previous']} comes back" if res.get("previous") else "ebpfw detaches"
    print(f"applied {name}: {res.get('rules', 0)} rules on {where}; generation {res.get('generation')}, "
          f"{res.get('seconds', 0):.3f} s")
    print(f"run `ebpfw confirm` within {seconds:g} s to keep it, or {back} "
          f"(rollback process {res['rollback_pid']})")


def diff_text(enforced: str, given: str, given_name: str) -> str:
    return "".join(difflib.unified_diff(enforced.splitlines(keepends=True), given.splitlines(keepends=True),
                                        fromfile="enforced", tofile=given_name))


def register(app: typer.Typer) -> None:
    from .cli import _edge, _need_root, _read_input

    @app.command()
    @_edge
    def agent(
        config: Annotated[Optional[str], typer.Option("--config", metavar="FILE", envvar="EBPFW_CONFIG",
                                                      help="Configuration file (default /etc/ebpfw/ebpfw.toml; "
                                                      "see ebpfw.toml(5)).")] = None,
        verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log every netlink wake-up.")] = False,
        check: Annotated[bool, typer.Option("--check", help="Only check the configuration and its ruleset "
                                            "and say which interfaces match now; change nothing.")] = False,
    ) -> None:
        """Enforce the configured ruleset and keep it enforced: attach to matching interfaces as
        they appear, follow local address changes, reload on SIGHUP, exit on SIGTERM."""
        if check:
            from .agent import Agent
            from .netlink import host

            a = Agent(config)
            cfg, _ = a.load()
            sel = cfg.select([l.name for l in host.links()])
            print(f"{cfg.path}: ok: ruleset {cfg.ruleset} checks; interfaces matching now: "
                  f"{', '.join(f'{n} ({m})' for n, m in sel) or 'none'}; on stop: {cfg.on_stop}")
            return
        _need_root("agent")
        from .agent import run_agent

        raise typer.Exit(run_agent(config, verbose))

    @app.command()
    @_edge
    def confirm() -> None:
        """Keep the ruleset applied with `ebpfw apply --confirm` (cancel its rollback)."""
        _need_root("confirm")
        from . import rollback

        print(rollback.confirm())

    @app.command()
    def diff(
        ruleset: Annotated[str, typer.Argument(metavar="RULESET", help="Ruleset file; '-' reads stdin.")],
    ) -> None:
        """Show what applying RULESET would change, as a unified diff from the enforced ruleset
        (both canonical). Exit status 0: the same, 1: different, 2: trouble."""
        try:
            _need_root("diff")
            from . import api
            from .iptables import save_ruleset

            text, name = _read_input(ruleset)
            rs = api._parse(text, name)
            api._filter_table(rs, name)
            given = save_ruleset(rs)
            enforced = api.save()
        except EbpfwError as exc:
            from .cli import _print_error

            _print_error(exc)
            raise typer.Exit(2) from None
        out = diff_text(enforced, given, name)
        sys.stdout.write(out)
        sys.stdout.flush()
        raise typer.Exit(1 if out else 0)
