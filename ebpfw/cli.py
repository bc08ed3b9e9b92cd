"""The `ebpfw` command line: a thin typer layer over `ebpfw.api`.

Contract:
- Every command imports `ebpfw.api` (and through it bcc) lazily, so `ebpfw --help`,
  `ebpfw import` and `ebpfw check` work on a host without bcc.
- One edge handler (`_edge`) turns `EbpfwError` into its rendered lines on stderr and exit 1:
  `FILE:LINE: ...` problem lines exactly as the library wrote them, the summary as
  `error: ...`, and a `hint: ...` line when there is one. Any other exception is a bug and keeps
  its traceback (typer's pretty exceptions and locals are off: a root tool must not print them).
- Commands that touch the kernel or the pinned state (apply, save, show, status, detach) refuse
  early, with a clear message, when the process lacks CAP_BPF/CAP_SYS_ADMIN and CAP_NET_ADMIN.
- stdout carries only the command's product: `save` and `import` write plain ruleset text,
  `check --plan`, `show --json` and `status --json` write JSON; `show`, `status`, `doctor` draw
  rich tables. Diagnostics go to stderr.
- Exit status: 0 success, 1 a user-facing error (or a failing doctor check), 2 bad usage.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from enum import Enum
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from . import __version__
from .cliedge import edge, print_error
from .errors import EbpfwError

ENV_HELP = (
    "Environment: EBPFW_BPFFS is the bpffs under which pins live, in ebpfw/<netns>/ "
    "(default /sys/fs/bpf); EBPFW_STATE_DIR holds the applied ruleset and state per network "
    "namespace, in <netns>/ (default /var/lib/ebpfw); EBPFW_CONFIG is the agent's configuration "
    "(default /etc/ebpfw/ebpfw.toml); EBPFW_CT_SIZE, EBPFW_CT_TIMEOUTS and EBPFW_CT_SEED tune "
    "connection tracking. See ebpfw(8) and ebpfw-rules(5)."
)

app = typer.Typer(
    name="ebpfw",
    help="Enforce iptables-save rulesets with BPF programs at XDP and TC, with per-rule counters.",
    epilog=ENV_HELP,
    no_args_is_help=True,
    add_completion=True,      # --install-completion / --show-completion for bash, zsh, fish
    pretty_exceptions_enable=False,
    pretty_exceptions_show_locals=False,
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
)

STDIN_NAME = "<stdin>"
CAP_NET_ADMIN, CAP_SYS_ADMIN, CAP_BPF = 12, 21, 39


class Mode(str, Enum):
    auto = "auto"
    xdp = "xdp"
    xdp_generic = "xdp-generic"
    tc = "tc"


# ---- the edge -------------------------------------------------------------------------------------

# _edge / _print_error: the shared edge (ebpfw/cliedge.py), under the names hostcli imports
_print_error = print_error
_edge = edge


def _effective_caps() -> int:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("CapEff:"):
                    return int(line.split()[1], 16)
    except (OSError, ValueError, IndexError):
        pass
    return 0


def has_privileges() -> bool:
    """True when this process may load, pin and attach BPF programs."""
    if os.geteuid() == 0:
        return True
    caps = _effective_caps()
    bpf = caps >> CAP_BPF & 1 or caps >> CAP_SYS_ADMIN & 1
    return bool(bpf and caps >> CAP_NET_ADMIN & 1)


def _need_root(command: str) -> None:
    if not has_privileges():
        raise EbpfwError(
            f"`ebpfw {command}` needs root: it reads or changes BPF programs, pinned maps and "
            "netlink state (CAP_BPF or CAP_SYS_ADMIN, and CAP_NET_ADMIN)",
            hint=f"run it as root: sudo ebpfw {command} ...")


def _read_input(path: str) -> tuple[str, str]:
    """(text, filename for messages) of a ruleset file, or of stdin when path is '-'."""
    if path == "-":
        data, name = sys.stdin.buffer.read() if hasattr(sys.stdin, "buffer") else sys.stdin.read(), STDIN_NAME
    else:
        name = path
        try:
            with open(path, "rb") as f:
                data = f.read()
        except OSError as exc:
            raise EbpfwError(f"cannot read ruleset {path}: {exc.strerror}") from None
    if isinstance(data, str):
        return data, name
    try:
        return data.decode("utf-8"), name
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise EbpfwError(f"{name}:{line}: not UTF-8 text, expected an iptables-save file, "
                         f"found byte 0x{data[exc.start]:02x}") from None


def _write_atomic(path: str, text: str) -> None:
    """Replace `path` with `text` without ever leaving a half-written file."""
    target = Path(path)
    directory = target.parent if str(target.parent) else Path(".")
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=directory)
    except OSError as exc:
        raise EbpfwError(f"cannot write {path}: {exc.strerror}") from None
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        if target.exists():
            os.chmod(tmp, target.stat().st_mode & 0o7777)
        else:
            os.chmod(tmp, 0o644)
        os.replace(tmp, target)
    except OSError as exc:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise EbpfwError(f"cannot write {path}: {exc.strerror}") from None


def _json_default(obj: Any) -> Any:
    if isinstance(obj, (set, frozenset)):
        return sorted(obj)
    if isinstance(obj, Path):
        return str(obj)
    return str(obj)


def _print_json(obj: Any) -> None:
    sys.stdout.write(json.dumps(obj, indent=2, default=_json_default) + "\n")


def _console():
    from rich.console import Console
    return Console(highlight=False, soft_wrap=False)


def _api():
    from . import api
    return api


def _busy(what: str):
    """A rich spinner on stderr while a long step runs, only when stderr is a terminal."""
    import contextlib
    if not sys.stderr.isatty():
        return contextlib.nullcontext()
    from rich.console import Console
    return Console(stderr=True).status(what)


# ---- commands -------------------------------------------------------------------------------------

def _version(value: bool) -> None:
    if value:
        print(f"ebpfw {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                          help="Print the version and exit.")] = False,
) -> None:
    """Enforce iptables-save rulesets with BPF programs at XDP and TC, with per-rule counters."""


@app.command("import")
@_edge
def import_cmd(
    file: Annotated[str, typer.Argument(metavar="FILE", help="iptables-save output; '-' reads stdin.")],
    output: Annotated[Optional[str], typer.Option("--output", "-o", metavar="OUT",
                                                  help="Write the ruleset here (default: stdout).")] = None,
    sets: Annotated[Optional[str], typer.Option("--sets", metavar="SETFILE",
                                                help="`ipset save` output with the sets -m set rules name.")] = None,
) -> None:
    """Check an iptables-save file and write it as an ebpfw ruleset (canonical iptables-restore
    text). Every problem is reported as FILE:LINE on stderr and nothing is written."""
    text, name = _read_input(file)
    if sets is None:
        out = _api().import_ruleset(text, name)
    else:
        stext, sname = _read_input(sets)
        out = _api().import_ruleset(text, name, stext, sname)
    if output is None or output == "-":
        sys.stdout.write(out)
        sys.stdout.flush()
    else:
        _write_atomic(output, out)


@app.command()
@_edge
def check(
    ruleset: Annotated[str, typer.Argument(metavar="RULESET", help="Ruleset file; '-' reads stdin.")],
    plan: Annotated[bool, typer.Option("--plan", help="Print the compiled plan summary as JSON.")] = False,
) -> None:
    """Parse, check and compile a ruleset without loading or attaching anything."""
    text, name = _read_input(ruleset)
    summary = _api().check(text, name)
    if plan:
        _print_json(summary)
        return
    chains = summary.get("chains", {})
    fields = summary.get("fields", [])
    print(f"{name}: ok: {summary.get('rules', 0)} rules in {len(chains)} chains; "
          f"fields matched: {', '.join(fields) if fields else 'none'}")


@app.command()
@_edge
def apply(
    ruleset: Annotated[str, typer.Argument(metavar="RULESET", help="Ruleset file; '-' reads stdin.")],
    iface: Annotated[list[str], typer.Option("--iface", "-i", metavar="IF",
                                             help="Interface to enforce on (repeat for several).")],
    mode: Annotated[Mode, typer.Option("--mode", help="Ingress hook: xdp (native), xdp-generic, tc "
                                       "(clsact); auto keeps the XDP mode in use, else tries native "
                                       "XDP, then generic XDP (tc for rulesets that use the packet's "
                                       "mark).", case_sensitive=False)] = Mode.auto,
    counters: Annotated[bool, typer.Option("--counters", "-c", help="Start the counters from the "
                                           "file's [packets:bytes] (like iptables-restore -c).")] = False,
    confirm: Annotated[Optional[str], typer.Option("--confirm", metavar="DURATION", help="Put the previous "
                                                   "ruleset back after DURATION (30s, 2m) unless `ebpfw "
                                                   "confirm` runs first.")] = None,
    sets: Annotated[Optional[str], typer.Option("--sets", metavar="SETFILE", help="`ipset save` output: "
                                                "load these sets (exactly their elements) for -m set "
                                                "rules; without it the loaded sets stay as they are.")] = None,
) -> None:
    """Enforce RULESET on the given interfaces of this network namespace (atomic replace of
    whatever ebpfw enforced before). Interfaces not named are detached."""
    _need_root("apply")
    text, name = _read_input(ruleset)
    stext, sname = _read_input(sets) if sets is not None else (None, None)
    if confirm is not None and sets is not None:
        raise EbpfwError("--sets together with --confirm is not supported yet",
                         hint="load the sets with `ebpfw apply --sets` first, then apply with --confirm")
    if confirm is not None:
        from .hostcli import confirmed_apply
        return confirmed_apply(text, name, list(iface), mode.value, counters, confirm)
    extra = {"sets_text": stext, "sets_filename": sname} if sets is not None else {}
    res = None
    if sets is None and not os.environ.get("EBPFW_NO_AGENT"):
        # a running agent keeps the last ruleset parsed and compiled: it applies an edit faster
        from .control import try_apply
        with _busy("handing the ruleset to the agent"):
            res = try_apply(text, name, list(iface), mode.value, counters)
    if res is None:
        with _busy("compiling and loading the ruleset (bcc builds programs when the shape changes)"):
            res = _api().apply(text, name, list(iface), mode=mode.value, counters=counters, **extra)
    where = ", ".join(f"{i['name']} ({i.get('ingress', '?')})" for i in res.get("ifaces", []))
    how = "new programs" if res.get("recompiled") else "maps updated, programs kept"
    via = f" (by the agent, pid {res['agent_pid']})" if res.get("agent_pid") else ""
    print(f"applied {name}: {res.get('rules', 0)} rules on {where or 'no interface'}; "
          f"generation {res.get('generation')}, {how}, {res.get('seconds', 0):.3f} s{via}")


@app.command()
@_edge
def save(
    counters: Annotated[bool, typer.Option("--counters", "-c", help="Include [packets:bytes] "
                                           "counters (iptables-save -c format).")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the enforced chains, rules (canonical "
                                          "text) and their counters as JSON.")] = False,
) -> None:
    """Print the enforced ruleset as iptables-save text."""
    _need_root("save")
    if as_json:
        data = _api().show()
        _print_json({"table": "filter", "chains": data["chains"]})
        return
    text = _api().save(counters=counters)
    sys.stdout.write(text)
    sys.stdout.flush()


def _ifaces_text(ifaces: list) -> str:
    parts = []
    for i in ifaces or []:
        if isinstance(i, dict):
            parts.append(f"{i.get('name', '?')} ({i.get('ingress', i.get('mode', '?'))})")
        else:
            parts.append(str(i))
    return ", ".join(parts) or "none"


def _render_show(data: dict) -> None:
    from rich.table import Table
    from rich.text import Text

    con = _console()
    head = f"generation {data.get('generation')}"
    if data.get("source"):
        head += f", from {data['source']}"
    con.print(Text(f"ebpfw: {head}; interfaces: {_ifaces_text(data.get('ifaces', []))}"))
    for ch in data.get("chains", []):
        policy = ch.get("policy") or "-"
        name = ch["name"] if ch.get("table", "filter") == "filter" else f"{ch['name']} (table {ch['table']})"
        if policy != "-":
            title = (f"Chain {name} (policy {policy} {ch.get('packets', 0)} packets, "
                     f"{ch.get('bytes', 0)} bytes)")
        else:
            title = f"Chain {name} (user-defined)"
        con.print()
        con.print(Text(title, style="bold"))
        t = Table(show_lines=False, expand=False)
        t.add_column("num", justify="right")
        t.add_column("pkts", justify="right")
        t.add_column("bytes", justify="right")
        t.add_column("rule", overflow="fold")
        for r in ch.get("rules", []):
            t.add_row(str(r.get("num", "")), str(r.get("packets", 0)), str(r.get("bytes", 0)),
                      Text(str(r.get("text", ""))))
        if not ch.get("rules"):
            t.add_row("", "", "", Text("(no rules)"))
        con.print(t)
    stats = data.get("stats") or {}
    if stats:
        con.print()
        con.print(Text("Datapath statistics", style="bold"))
        t = Table()
        t.add_column("counter")
        t.add_column("value", justify="right")
        for k, v in stats.items():
            t.add_row(Text(str(k)), str(v))
        con.print(t)


@app.command()
@_edge
def show(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of tables.")] = False,
) -> None:
    """Show the enforced chains and rules with their counters, and datapath statistics."""
    _need_root("show")
    data = _api().show()
    if as_json:
        _print_json(data)
    else:
        _render_show(data)


def _render_status(st: dict) -> None:
    from rich.table import Table
    from rich.text import Text

    t = Table(title=Text("ebpfw status (this network namespace)"), title_justify="left", show_header=False)
    t.add_column("key")
    t.add_column("value", overflow="fold")
    t.add_row("state", "enforcing")
    rows: list[tuple[str, str]] = []
    if "generation" in st:
        rows.append(("generation", str(st["generation"])))
    if st.get("source"):
        rows.append(("ruleset", str(st["source"])))
    if st.get("applied_at"):
        try:
            rows.append(("applied at", time.strftime("%Y-%m-%d %H:%M:%S %z",
                                                     time.localtime(float(st["applied_at"])))))
        except (TypeError, ValueError, OverflowError):
            rows.append(("applied at", str(st["applied_at"])))
    if "ifaces" in st:
        rows.append(("interfaces", _ifaces_text(st["ifaces"])))
    if "rule_chain" in st:
        rows.append(("rules", str(len(st["rule_chain"]))))
    elif "rules" in st:
        rows.append(("rules", str(st["rules"])))
    if "chains" in st:
        chains = st["chains"]
        rows.append(("chains", ", ".join(chains) if isinstance(chains, list) else str(chains)))
    if "slot" in st:
        rows.append(("active slot", str(st["slot"])))
    if st.get("gen_dir"):
        rows.append(("pins", str(st["gen_dir"])))
    shape = st.get("shape")
    if isinstance(shape, dict):
        rows.append(("program shape", ", ".join(f"{k}={v}" for k, v in shape.items())))
    for k, v in rows:
        t.add_row(k, Text(v))
    _console().print(t)


@app.command()
@_edge
def status(
    as_json: Annotated[bool, typer.Option("--json", help="Print the state as JSON (null when "
                                          "nothing is applied).")] = False,
) -> None:
    """Say whether a ruleset is enforced in this network namespace, and where."""
    _need_root("status")
    st = _api().status()
    if as_json:
        _print_json(st)
    elif st is None:
        print("ebpfw: no ruleset is applied in this network namespace")
    else:
        _render_status(st)


@app.command()
@_edge
def detach() -> None:
    """Remove ebpfw's programs, qdiscs it created, pins and state in this network namespace.
    Packets are no longer filtered by ebpfw afterwards."""
    _need_root("detach")
    for line in _api().detach():
        print(line)


@app.command()
@_edge
def doctor(
    quick: Annotated[bool, typer.Option("--quick", help="Skip the live XDP/TC attach probe "
                                        "(it runs in a throwaway network namespace).")] = False,
) -> None:
    """Check that this host can run ebpfw; print what to fix. Exit status 1 if a check fails."""
    from rich.table import Table
    from rich.text import Text

    from . import doctor as doc

    checks = doc.run_checks(live=not quick)
    t = Table(title=Text("ebpfw doctor"), title_justify="left", show_lines=True)
    t.add_column("check")
    t.add_column("result")
    t.add_column("detail", overflow="fold")
    with_fix = any(c.fix for c in checks)
    if with_fix:
        t.add_column("fix", overflow="fold")
    failed = 0
    for c in checks:
        if not c.ok:
            failed += 1
            res = Text("FAIL", style="bold red")
        elif c.warning:
            res = Text("warn", style="yellow")
        else:
            res = Text("ok", style="green")
        cells = [Text(c.name), res, Text(c.detail)] + ([Text(c.fix or "")] if with_fix else [])
        t.add_row(*cells)
    con = _console()
    con.print(t)
    if failed:
        con.print(Text(f"{failed} check(s) failed", style="bold red"))
        raise typer.Exit(1)
    con.print(Text("all checks passed", style="green"))


@app.command("log")
@_edge
def log_cmd(
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Keep printing new LOG events until "
                                         "interrupted.")] = False,
) -> None:
    """Print the packets -j LOG rules saw, as the kernel's LOG target writes them
    (`<prefix>IN=.. OUT=.. MAC=.. SRC=.. DST=.. ...`). The events are consumed."""
    _need_root("log")
    from . import log as ebpfw_log
    try:
        for line in ebpfw_log.read_events(follow=follow):
            print(line, flush=True)
    except KeyboardInterrupt:
        pass


from .hostcli import register as _register_host_commands  # noqa: E402  (agent, confirm, diff)

_register_host_commands(app)


from .ctcli import conntrack_app  # noqa: E402  (no bcc at import time)

app.add_typer(conntrack_app, name="conntrack")


from .setcli import set_app  # noqa: E402  (no bcc at import time)

app.add_typer(set_app, name="set")

from .recentcli import recent_app  # noqa: E402  (no bcc at import time)

app.add_typer(recent_app, name="recent")


def main() -> None:
    """Console entry point (`ebpfw`, `python -m ebpfw`)."""
    try:
        app(prog_name="ebpfw")
    except BrokenPipeError:
        # `ebpfw save | head`: the reader went away; say nothing more, exit like a killed writer
        try:
            sys.stdout = open(os.devnull, "w")
        except OSError:
            pass
        sys.exit(141)
    except SystemExit as exc:
        _exit_now(exc.code)
    _exit_now(0)


def _exit_now(code) -> None:
    """Exit without tearing the interpreter down: freeing a parsed 100,000-rule ruleset object by
    object took 2 s, more than the parse. Output is flushed, an apply's finishing work (the old
    slot's clean-up, ebpfw.state.finish_in_background) is waited for, logging is shut down."""
    if code is None:
        code = 0
    elif not isinstance(code, int):
        print(code, file=sys.stderr)
        code = 1
    if "ebpfw.state" in sys.modules:
        sys.modules["ebpfw.state"].wait_background()
    if "logging" in sys.modules:
        sys.modules["logging"].shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            if stream is sys.stdout:
                code = code or 141      # a closed pipe, as above
    os._exit(code)


if __name__ == "__main__":
    main()
