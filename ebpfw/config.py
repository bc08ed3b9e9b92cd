"""/etc/ebpfw/ebpfw.toml: what `ebpfw agent` enforces, where, and how it stops.

Contract:
- `load_config(path=None)` reads the file named by `path`, else $EBPFW_CONFIG, else
  /etc/ebpfw/ebpfw.toml, and returns a frozen `Config`, or raises EbpfwError whose `problems`
  are `FILE:LINE: what, expected EXPECTED, found FOUND` lines (every problem, not just the
  first). Syntax errors carry tomllib's line; semantic errors the line of the offending key,
  found by scanning the file (TOML keeps no positions).
- The file format (documented in ebpfw.toml(5)):

      ruleset = "/etc/ebpfw/rules.v4"      # required; relative to the config file's directory
      mode = "auto"                        # default ingress hook: auto, xdp, xdp-generic, tc
      interfaces = ["eth0", "veth*", { match = "wg*", mode = "tc" }]   # required, glob patterns
      exclude = ["lo"]                     # patterns never enforced on (optional)
      on_stop = "keep"                     # keep enforcing when the agent stops, or "detach"

      [conntrack]                          # passed through to the connection tracker
      max = 262144
      tcp_timeout_established = 432000

- `Config.select(names)` returns the interfaces to enforce on, in the order given, with
  their ingress mode: the first entry of `interfaces` whose pattern matches (fnmatch, case
  sensitive) decides, and an `exclude` match wins over everything.
- Nothing here touches the kernel or imports bcc.
"""

from __future__ import annotations

import fnmatch
import os
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from .errors import EbpfwError

DEFAULT_CONFIG = "/etc/ebpfw/ebpfw.toml"
MODES = ("auto", "xdp", "xdp-generic", "tc")  # the same as ebpfw.api.MODES (a unit test checks)
ON_STOP = ("keep", "detach")
IFNAMSIZ = 16
TOP_KEYS = ("ruleset", "mode", "interfaces", "exclude", "on_stop", "conntrack")
IFACE_KEYS = ("match", "mode")
# The connection tracker's settings, named like netfilter's sysctls without `nf_conntrack_`
# (net.netfilter.nf_conntrack_max -> max); values are entry counts or seconds, except
# tcp_loose (a boolean, like nf_conntrack_tcp_loose). conntrack_env() turns them into the
# environment the datapath reads (EBPFW_CT_SIZE, EBPFW_CT_TIMEOUTS, EBPFW_CT_TCP_LOOSE).
CT_MIN_SIZE, CT_MAX_SIZE = 1024, 1 << 26   # what ebpfw.datapath.abi.ct_size_from_env accepts
CONNTRACK_KEYS = (
    "max", "tcp_loose",
    "tcp_timeout_syn_sent", "tcp_timeout_syn_recv", "tcp_timeout_established",
    "tcp_timeout_fin_wait", "tcp_timeout_close_wait", "tcp_timeout_last_ack",
    "tcp_timeout_time_wait", "tcp_timeout_close", "tcp_timeout_unacknowledged",
    "udp_timeout", "udp_timeout_stream", "icmp_timeout", "generic_timeout",
)
_PATTERN_CHARS = re.compile(r"^[A-Za-z0-9_.:@*?\[\]!+-]+$")


@dataclass(frozen=True)
class IfaceRule:
    match: str  # fnmatch pattern
    mode: Optional[str]  # None: the top-level mode


@dataclass(frozen=True)
class Config:
    path: Path
    ruleset: Path
    mode: str
    interfaces: tuple[IfaceRule, ...]
    exclude: tuple[str, ...]
    on_stop: str
    conntrack: dict = field(default_factory=dict)

    def select(self, names: list[str]) -> list[tuple[str, str]]:
        """(name, mode) of every interface in `names` the configuration enforces on."""
        out = []
        for name in names:
            if any(fnmatch.fnmatchcase(name, p) for p in self.exclude):
                continue
            for rule in self.interfaces:
                if fnmatch.fnmatchcase(name, rule.match):
                    out.append((name, rule.mode or self.mode))
                    break
        return out


CT_ENV = ("EBPFW_CT_SIZE", "EBPFW_CT_TIMEOUTS", "EBPFW_CT_TCP_LOOSE")


def conntrack_env(conntrack: dict) -> dict[str, str]:
    """The [conntrack] settings as the environment variables the datapath reads."""
    env = {}
    if "max" in conntrack:
        env["EBPFW_CT_SIZE"] = str(conntrack["max"])
    timeouts = [f"{k}={v}" for k, v in sorted(conntrack.items()) if k not in ("max", "tcp_loose")]
    if timeouts:
        env["EBPFW_CT_TIMEOUTS"] = ",".join(timeouts)
    if "tcp_loose" in conntrack:
        env["EBPFW_CT_TCP_LOOSE"] = "1" if conntrack["tcp_loose"] else "0"
    return env


def config_path(path: Optional[str | os.PathLike] = None) -> Path:
    return Path(path or os.environ.get("EBPFW_CONFIG") or DEFAULT_CONFIG)


# ---- finding lines --------------------------------------------------------------------------------

_HEADER = re.compile(r"^\s*\[\[?\s*([^\]]+?)\s*\]\]?\s*(#.*)?$")


class _Lines:
    """Where keys are in the file: (table, key) -> first line number (1-based)."""

    def __init__(self, text: str):
        self.lines = text.splitlines()
        self.keys: dict[tuple[str, str], int] = {}
        self.headers: dict[str, int] = {}
        table = ""
        for no, line in enumerate(self.lines, 1):
            m = _HEADER.match(line)
            if m:
                table = m.group(1).replace('"', "").replace(" ", "")
                self.headers.setdefault(table, no)
                continue
            m = re.match(r"^\s*([A-Za-z0-9_\-\"'.]+)\s*=", line)
            if m:
                key = m.group(1).strip("\"'")
                self.keys.setdefault((table, key), no)
                if "." in key:  # dotted keys: `conntrack.max = 1` at top level
                    head, tail = key.rsplit(".", 1)
                    self.keys.setdefault(((table + "." if table else "") + head, tail), no)

    def of(self, table: str, key: Optional[str] = None, needle: Optional[str] = None, after: int = 0) -> int:
        """Line of `key` in `table`; with `needle`, the first line at or after it (and at or
        after line `after`) containing that text (an array element); else the table header,
        else 1."""
        start = self.keys.get((table, key)) if key else None
        if start is None:
            return self.headers.get(table, 1)
        if needle:
            for no in range(max(start, after), len(self.lines) + 1):
                if needle in self.lines[no - 1]:
                    return no
        return start


# ---- validation -----------------------------------------------------------------------------------

def _type_name(v: Any) -> str:
    if isinstance(v, bool):
        return f"boolean {str(v).lower()}"
    if isinstance(v, int):
        return f"integer {v}"
    if isinstance(v, float):
        return f"float {v}"
    if isinstance(v, str):
        return f"string {v!r}"
    if isinstance(v, list):
        return "an array"
    if isinstance(v, dict):
        return "a table"
    return type(v).__name__


class _Checker:
    def __init__(self, path: Path, text: str):
        self.path = path
        self.where = _Lines(text)
        self.problems: list[str] = []

    def bad(self, line: int, what: str, expected: str, found: str) -> None:
        self.problems.append(f"{self.path}:{line}: {what}, expected {expected}, found {found}")

    def choice(self, data: dict, key: str, choices: tuple[str, ...], default: str) -> str:
        v = data.get(key, default)
        if not isinstance(v, str) or v not in choices:
            self.bad(self.where.of("", key), f"invalid {key}", "one of " + ", ".join(repr(c) for c in choices),
                     _type_name(v))
            return default
        return v

    def pattern(self, v: Any, key: str, line: int) -> Optional[str]:
        if not isinstance(v, str) or not v:
            self.bad(line, f"invalid interface pattern in {key}", "a non-empty string such as \"eth0\" or "
                     "\"veth*\"", _type_name(v))
            return None
        if len(v) >= IFNAMSIZ and not any(c in v for c in "*?["):
            self.bad(line, f"interface name {v!r} in {key} is too long",
                     f"at most {IFNAMSIZ - 1} characters", f"{len(v)}")
            return None
        if not _PATTERN_CHARS.match(v):
            self.bad(line, f"invalid interface pattern in {key}",
                     "letters, digits, '_.:@-' and the glob characters '*?[]!'", repr(v))
            return None
        return v


def _check(path: Path, text: str, data: dict) -> Config:
    ck = _Checker(path, text)
    w = ck.where
    for key in data:
        if key not in TOP_KEYS:
            ck.bad(w.of("", key) if (("", key) in w.keys) else w.of(key), f"unknown setting {key!r}",
                   "one of " + ", ".join(TOP_KEYS), repr(key))

    ruleset = path.parent / "rules.v4"
    if "ruleset" not in data:
        ck.bad(1, "missing setting 'ruleset'", "ruleset = \"/etc/ebpfw/rules.v4\" (the iptables-save "
               "file to enforce)", "no ruleset key")
    elif not isinstance(data["ruleset"], str) or not data["ruleset"]:
        ck.bad(w.of("", "ruleset"), "invalid ruleset", "a file name string", _type_name(data["ruleset"]))
    else:
        ruleset = (path.parent / data["ruleset"]) if not os.path.isabs(data["ruleset"]) else Path(data["ruleset"])

    mode = ck.choice(data, "mode", MODES, "auto")
    on_stop = ck.choice(data, "on_stop", ON_STOP, "keep")

    rules: list[IfaceRule] = []
    if "interfaces" not in data:
        ck.bad(1, "missing setting 'interfaces'", "interfaces = [\"eth0\", \"veth*\"] (names or glob "
               "patterns to enforce on)", "no interfaces key")
    elif not isinstance(data["interfaces"], list):
        ck.bad(w.of("", "interfaces"), "invalid interfaces", "an array of names, patterns or "
               "{ match = PATTERN, mode = MODE } tables", _type_name(data["interfaces"]))
    elif not data["interfaces"]:
        ck.bad(w.of("", "interfaces"), "empty interfaces", "at least one name or pattern", "[]")
    else:
        at = 0  # elements are in file order: each is looked for from the previous one's line
        for item in data["interfaces"]:
            if isinstance(item, str):
                at = line = w.of("", "interfaces", f'"{item}"', at)
                p = ck.pattern(item, "interfaces", line)
                if p:
                    rules.append(IfaceRule(p, None))
            elif isinstance(item, dict):
                needle = f'"{item["match"]}"' if isinstance(item.get("match"), str) else "{"
                at = line = w.of("", "interfaces", needle, at)
                at += 1
                for k in item:
                    if k not in IFACE_KEYS:
                        ck.bad(line, f"unknown key {k!r} in an interfaces entry", "match and mode", repr(k))
                if "match" not in item:
                    ck.bad(line, "interfaces entry without 'match'", "{ match = \"veth*\", mode = \"tc\" }",
                           "no match key")
                    continue
                p = ck.pattern(item["match"], "interfaces", line)
                m = item.get("mode")
                if m is not None and (not isinstance(m, str) or m not in MODES):
                    ck.bad(line, f"invalid mode for interfaces entry {item['match']!r}",
                           "one of " + ", ".join(repr(c) for c in MODES), _type_name(m))
                    m = None
                if p:
                    rules.append(IfaceRule(p, m))
            else:
                at = line = w.of("", "interfaces", str(item).lower(), at)
                ck.bad(line, "invalid interfaces entry", "a name or pattern string, or a "
                       "{ match = PATTERN, mode = MODE } table", _type_name(item))

    exclude: list[str] = []
    if "exclude" in data:
        if not isinstance(data["exclude"], list):
            ck.bad(w.of("", "exclude"), "invalid exclude", "an array of names or patterns",
                   _type_name(data["exclude"]))
        else:
            for item in data["exclude"]:
                line = w.of("", "exclude", f'"{item}"' if isinstance(item, str) else None)
                p = ck.pattern(item, "exclude", line)
                if p:
                    exclude.append(p)

    conntrack: dict = {}
    ct = data.get("conntrack", {})
    if not isinstance(ct, dict):
        ck.bad(w.of("", "conntrack"), "invalid conntrack", "a [conntrack] table", _type_name(ct))
    else:
        for k, v in ct.items():
            line = w.of("conntrack", k)
            if k not in CONNTRACK_KEYS:
                ck.bad(line, f"unknown conntrack setting {k!r}", "one of " + ", ".join(CONNTRACK_KEYS), repr(k))
            elif k == "tcp_loose":
                if not isinstance(v, bool):
                    ck.bad(line, "invalid conntrack tcp_loose", "true or false", _type_name(v))
                else:
                    conntrack[k] = v
            elif k == "max" and isinstance(v, int) and not isinstance(v, bool) and not CT_MIN_SIZE <= v <= CT_MAX_SIZE:
                ck.bad(line, "invalid conntrack max", f"a number of entries from {CT_MIN_SIZE} to {CT_MAX_SIZE}",
                       _type_name(v))
            elif isinstance(v, bool) or not isinstance(v, int) or v <= 0:
                what = "entries" if k == "max" else "seconds"
                ck.bad(line, f"invalid conntrack {k}", f"a positive integer ({what})", _type_name(v))
            else:
                conntrack[k] = v

    if ck.problems:
        def line_of(problem: str) -> int:
            return int(problem[len(str(path)) + 1:].split(":", 1)[0])
        raise EbpfwError(f"invalid configuration {path}", problems=sorted(ck.problems, key=line_of),
                         hint="see ebpfw.toml(5); /etc/ebpfw/ebpfw.toml.example has every setting")
    return Config(path=path, ruleset=ruleset, mode=mode, interfaces=tuple(rules), exclude=tuple(exclude),
                  on_stop=on_stop, conntrack=conntrack)


_TOML_POS = re.compile(r"\s*\(at line (\d+), column (\d+)\)\s*$")
_TOML_EOF = re.compile(r"\s*\(at end of document\)\s*$")


def parse_config(text: str, path: str | os.PathLike) -> Config:
    """The Config in `text` (read from `path`, used for messages and relative paths)."""
    path = Path(path)
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        msg = str(exc)
        m = _TOML_POS.search(msg)
        if m:
            line, where = int(m.group(1)), f" at column {m.group(2)}"
            msg = msg[: m.start()]
        elif _TOML_EOF.search(msg):
            line, where = max(1, len(text.splitlines())), " at the end of the file"
            msg = _TOML_EOF.sub("", msg)
        else:
            line, where = 1, ""
        raise EbpfwError(f"invalid configuration {path}",
                         problems=[f"{path}:{line}: invalid TOML, expected a `key = value` line or a "
                                   f"[table] header, found {msg.rstrip('.').lower()}{where}"],
                         hint="see ebpfw.toml(5)") from None
    return _check(path, text, data)


def load_config(path: Optional[str | os.PathLike] = None) -> Config:
    """The configuration at `path` (or $EBPFW_CONFIG, or /etc/ebpfw/ebpfw.toml)."""
    p = config_path(path)
    try:
        raw = p.read_bytes()
    except OSError as exc:
        raise EbpfwError(f"cannot read configuration {p}: {exc.strerror}",
                         hint=f"create it from {DEFAULT_CONFIG}.example, or name another with --config "
                              "or EBPFW_CONFIG") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        raise EbpfwError(f"invalid configuration {p}",
                         problems=[f"{p}:{line}: not UTF-8 text, expected a TOML file, "
                                   f"found byte 0x{raw[exc.start]:02x}"]) from None
    return parse_config(text, p)
