"""The target table: one entry per iptables target extension ebpfw understands (-j NAME with
options), the counterpart of `matches.MATCHES`.

Contract: `TARGETS[name]` is a `TargetSpec`: the `--options` the target takes (read with the
same `Option` readers as matches), how to build the typed IR (`ruleset.RejectTarget`, ...)
from them, and how to print it back the way iptables-save 1.8.9 does. Builders normalise as
iptables stores the rule (every MARK option becomes one (value, mask) pair, LOG's default
level is 4, ...), so parse(save(x)) == x. Restrictions that depend on the rest of the rule or
on the chain (REJECT --reject-with tcp-reset needs -p tcp) are in ebpfw.check.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Optional

from ..ruleset import (
    LOG_DEFAULT_LEVEL, REJECT_TYPES, ConnmarkTarget, CtTarget, LogTarget, MarkTarget, RejectTarget, TargetExt,
)
from . import protocols as P
from .matches import Ctx, Given, Option, OptionError, _flag
from .tokenize import save_string

LOG_PREFIX_MAX = 29            # sizeof(struct xt_log_info.prefix) - 1
# syslog level names libxt_LOG accepts (case-sensitive), with their numbers
LOG_LEVELS = {"emerg": 0, "panic": 0, "alert": 1, "crit": 2, "error": 3, "warning": 4, "notice": 5,
              "info": 6, "debug": 7}


@dataclass(frozen=True)
class TargetSpec:
    name: str
    ir_type: type
    options: tuple[Option, ...]
    build: Callable[[dict[str, Given], Ctx], TargetExt]   # raises OptionError
    save: Callable[[Any], list[str]]                      # typed target -> words after "-j NAME"
    unsupported: tuple[str, ...] = ()
    unsupported_why: str = ""                             # why those options are refused
    tables: tuple[str, ...] = ("filter",)                 # the tables the kernel accepts it in
    by_name: dict[str, Option] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        for opt in self.options:
            for n in opt.names:
                self.by_name[n] = opt

    def option(self, name: str) -> Optional[Option]:
        return self.by_name.get(name)


# --- REJECT -----------------------------------------------------------------------------------

def read_reject_with(args: list[str], ctx: Ctx, option: str) -> str:
    """libipt_REJECT: the first type (in table order) whose name or alias starts with the
    argument, case-insensitively."""
    low = args[0].lower()
    if low:
        for name, alias in REJECT_TYPES:
            if name.startswith(low) or alias.startswith(low):
                return name
    if low and ("echo-reply".startswith(low) or "echoreply".startswith(low)):
        raise OptionError(f"--reject-with echo-reply is no longer supported by iptables ({option})",
                          "one of " + ", ".join(n for n, _ in REJECT_TYPES), args[0])
    raise OptionError(f"unknown reject type in {option}", "one of " + ", ".join(n for n, _ in REJECT_TYPES),
                      args[0])


def build_reject(values: dict[str, Given], ctx: Ctx) -> RejectTarget:
    if "with" in values:
        return RejectTarget(values["with"].value)
    return RejectTarget()


def save_reject(t: RejectTarget) -> list[str]:
    return ["--reject-with", t.reject_with]


# --- LOG ----------------------------------------------------------------------------------------

def read_log_level(args: list[str], ctx: Ctx, option: str) -> int:
    text = args[0]
    if text in LOG_LEVELS:
        return LOG_LEVELS[text]
    v = P.strtoui(text, 7)
    if v is None:
        raise OptionError(f"unknown log level in {option}",
                          "0-7 or one of " + ", ".join(LOG_LEVELS) + " (lower case)", text)
    return v


def read_log_prefix(args: list[str], ctx: Ctx, option: str) -> str:
    text = args[0]
    if not text:
        raise OptionError(f"empty {option}", "at least one character (or no --log-prefix)", '""')
    if len(text.encode()) > LOG_PREFIX_MAX:
        raise OptionError(f"log prefix longer than {LOG_PREFIX_MAX} bytes in {option} (iptables would cut it)",
                          f"at most {LOG_PREFIX_MAX} bytes", text)
    if "\n" in text:
        raise OptionError(f"newline in {option}", "a one-line prefix", text)
    return text


_LOG_FLAGS = ("tcp_sequence", "tcp_options", "ip_options", "uid", "macdecode")


def build_log(values: dict[str, Given], ctx: Ctx) -> LogTarget:
    return LogTarget(prefix=values["prefix"].value if "prefix" in values else "",
                     level=values["level"].value if "level" in values else LOG_DEFAULT_LEVEL,
                     **{f: f in values for f in _LOG_FLAGS})


def save_log(t: LogTarget) -> list[str]:
    words: list[str] = []
    if t.prefix:
        words += ["--log-prefix", save_string(t.prefix)]
    if t.level != LOG_DEFAULT_LEVEL:
        words += ["--log-level", str(t.level)]
    for f in _LOG_FLAGS:
        if getattr(t, f):
            words.append("--log-" + f.replace("_", "-"))
    return words


# --- MARK / CONNMARK ----------------------------------------------------------------------------

def _u32(text: str, option: str) -> int:
    v = P.strtoui(text, 0xFFFFFFFF)
    if v is None:
        raise OptionError(f"bad value in {option}", "a number 0-0xffffffff", text)
    return v


def read_u32(args: list[str], ctx: Ctx, option: str) -> int:
    return _u32(args[0], option)


def read_mark_mask(args: list[str], ctx: Ctx, option: str) -> tuple[int, int]:
    """VALUE[/MASK]; a missing mask is 0xffffffff."""
    value_s, slash, mask_s = args[0].partition("/")
    value = _u32(value_s, option)
    mask = _u32(mask_s, option) if slash else 0xFFFFFFFF
    return (value, mask)


def _mark_op(values: dict[str, Given], target: str) -> tuple[int, int]:
    """--set-xmark/--set-mark/--and-mark/--or-mark/--xor-mark -> the (value, mask) pair the
    kernel stores for `new = (old & ~mask) ^ value`."""
    g = values["op"]
    opt = g.option.lstrip("-")
    if opt == "set-xmark":
        return g.value
    if opt == "set-mark":
        value, mask = g.value
        return (value, (value | mask) & 0xFFFFFFFF)
    if opt == "and-mark":
        return (0, ~g.value & 0xFFFFFFFF)
    if opt == "or-mark":
        return (g.value, g.value)
    if opt == "xor-mark":
        return (g.value, 0)
    raise AssertionError(opt)


def build_mark(values: dict[str, Given], ctx: Ctx) -> MarkTarget:
    if "op" not in values:
        raise OptionError("target 'MARK' needs an operation",
                          "--set-xmark, --set-mark, --and-mark, --or-mark or --xor-mark", "-j MARK alone")
    value, mask = _mark_op(values, "MARK")
    return MarkTarget(value=value, mask=mask)


def save_mark(t: MarkTarget) -> list[str]:
    return ["--set-xmark", f"0x{t.value:x}/0x{t.mask:x}"]


def build_connmark(values: dict[str, Given], ctx: Ctx) -> ConnmarkTarget:
    if "op" not in values:
        raise OptionError("target 'CONNMARK' needs an operation",
                          "--set-xmark, --set-mark, --and-mark, --or-mark, --xor-mark, --save-mark or "
                          "--restore-mark", "-j CONNMARK alone")
    opt = values["op"].option.lstrip("-")
    if "mask" in values and ("nfmask" in values or "ctmask" in values):
        raise OptionError("option '--mask' together with --nfmask/--ctmask (iptables applies them in "
                          "command-line order)", "either --mask or --nfmask/--ctmask", "--mask")
    if opt in ("save-mark", "restore-mark"):
        mask = values["mask"].value if "mask" in values else 0xFFFFFFFF
        nfmask = values["nfmask"].value if "nfmask" in values else mask
        ctmask = values["ctmask"].value if "ctmask" in values else mask
        return ConnmarkTarget(mode="save" if opt == "save-mark" else "restore", ctmask=ctmask, nfmask=nfmask)
    for k, o in (("nfmask", "--nfmask"), ("ctmask", "--ctmask")):
        if k in values:
            raise OptionError(f"option '{o}' only goes with --save-mark or --restore-mark",
                              "--save-mark or --restore-mark before it", f"--{opt}")
    value, mask = _mark_op(values, "CONNMARK")
    if "mask" in values:                     # libxt_CONNMARK: --set-mark V --mask M == --set-xmark V/M
        if opt != "set-mark":
            raise OptionError(f"option '--mask' does not go with --{opt}",
                              "--mask with --set-mark, --save-mark or --restore-mark", "--mask")
        mask = values["mask"].value
    return ConnmarkTarget(mode="set", value=value, ctmask=mask)


def save_connmark(t: ConnmarkTarget) -> list[str]:
    if t.mode == "set":
        return ["--set-xmark", f"0x{t.value:x}/0x{t.ctmask:x}"]
    return [f"--{t.mode}-mark", "--nfmask", f"0x{t.nfmask:x}", "--ctmask", f"0x{t.ctmask:x}"]


# --- CT ------------------------------------------------------------------------------------------

def build_ct(values: dict[str, Given], ctx: Ctx) -> CtTarget:
    if "notrack" not in values:
        raise OptionError("-j CT without --notrack is not supported by ebpfw (it attaches a conntrack "
                          "template: zones, helpers, event masks and timeout policies, which ebpfw's "
                          "connection tracking does not have)", "'-j CT --notrack' (or -j NOTRACK)", "-j CT")
    return CtTarget()


def save_ct(t: CtTarget) -> list[str]:
    return ["--notrack"]


_MARK_OPS = (
    Option(("set-xmark",), "op", read_mark_mask, invertible=False),
    Option(("set-mark",), "op", read_mark_mask, invertible=False),
    Option(("and-mark",), "op", read_u32, invertible=False),
    Option(("or-mark",), "op", read_u32, invertible=False),
    Option(("xor-mark",), "op", read_u32, invertible=False),
)

TARGETS: dict[str, TargetSpec] = {spec.name: spec for spec in (
    TargetSpec("REJECT", RejectTarget, (Option(("reject-with",), "with", read_reject_with, invertible=False),),
               build_reject, save_reject),
    TargetSpec("CT", CtTarget, (Option(("notrack",), "notrack", _flag, nargs=0, invertible=False),),
               build_ct, save_ct,
               unsupported=("zone", "zone-orig", "zone-reply", "helper", "ctevents", "expevents", "timeout"),
               unsupported_why="ebpfw enforces only CT --notrack: its connection tracking has no zones, "
               "helpers, event masks or timeout policies", tables=("raw",)),
    TargetSpec("LOG", LogTarget, (
        Option(("log-prefix",), "prefix", read_log_prefix, invertible=False),
        Option(("log-level",), "level", read_log_level, invertible=False),
        Option(("log-tcp-sequence",), "tcp_sequence", _flag, nargs=0, invertible=False),
        Option(("log-tcp-options",), "tcp_options", _flag, nargs=0, invertible=False),
        Option(("log-ip-options",), "ip_options", _flag, nargs=0, invertible=False),
        Option(("log-uid",), "uid", _flag, nargs=0, invertible=False),
        Option(("log-macdecode",), "macdecode", _flag, nargs=0, invertible=False),
    ), build_log, save_log, tables=("filter", "raw")),
    TargetSpec("MARK", MarkTarget, _MARK_OPS, build_mark, save_mark, tables=("filter", "raw")),
    TargetSpec("CONNMARK", ConnmarkTarget, _MARK_OPS + (
        Option(("save-mark",), "op", _flag, nargs=0, invertible=False),
        Option(("restore-mark",), "op", _flag, nargs=0, invertible=False),
        Option(("mask",), "mask", read_u32, invertible=False),
        Option(("nfmask",), "nfmask", read_u32, invertible=False),
        Option(("ctmask",), "ctmask", read_u32, invertible=False),
    ), build_connmark, save_connmark, unsupported=("left-shift-mark", "right-shift-mark"), tables=("filter", "raw")),
)}

# Targets that exist only in other tables: -j NAME in *filter is refused by the kernel. NOTRACK
# and CT are enforced in *raw (NOTRACK has no options: the parser handles it like a verdict).
OTHER_TABLE_TARGETS = {"NOTRACK": "raw", "CT": "raw", "DNAT": "nat", "SNAT": "nat", "MASQUERADE": "nat",
                       "REDIRECT": "nat", "NETMAP": "nat", "TPROXY": "mangle", "TTL": "mangle",
                       "ECN": "mangle", "TCPOPTSTRIP": "mangle", "DSCP": "mangle", "TOS": "mangle",
                       "CHECKSUM": "mangle"}


def spec_of_target(ext: TargetExt) -> TargetSpec:
    for spec in TARGETS.values():
        if isinstance(ext, spec.ir_type):
            return spec
    raise TypeError(f"no target table entry prints {type(ext).__name__}")
