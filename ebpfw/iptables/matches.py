"""The matcher table: one entry per iptables match extension ebpfw understands.

Contract: `MATCHES[name]` is a `MatchSpec` that says which `--options` the extension takes
(how many arguments, whether `!` may precede them, how to read each one), how to build the
typed IR match from the options given, how to print that match back the way
iptables-save 1.8.9 does, and which `-p` the rule must have. The parser and the printer
know nothing about individual extensions; adding one (say `limit`) is one entry here
plus its IR dataclass. Entries reproduce iptables' own normalisation (what the kernel
stores is what we store), so parse(save(x)) == x.

Option value readers raise `OptionError(what, expected, found)`; the parser adds
`FILE:LINE:` in front and collects them.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

from ..ruleset import (
    CT_STATE_NAMES, CommentMatch, ConntrackMatch, IcmpMatch, IprangeMatch, Match,
    MultiportMatch, PortRange, TcpMatch, UdpMatch,
)
from . import protocols as P
from .tokenize import save_string

IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP = 1, 6, 17
IPPROTO_DCCP, IPPROTO_SCTP, IPPROTO_UDPLITE = 33, 132, 136
MAX_COMMENT_LEN = 255     # XT_MAX_COMMENT_LEN - 1
MULTIPORT_MAX = 15        # XT_MULTI_PORTS; a range takes two slots


class OptionError(ValueError):
    """A bad option value: `what` was wrong, `expected` what would be right, `found` the text."""

    def __init__(self, what: str, expected: str, found: str):
        super().__init__(f"{what}, expected {expected}, found '{found}'")
        self.what, self.expected, self.found = what, expected, found


@dataclass
class Ctx:
    """What a value reader may need to know about the rule parsed so far."""
    proto: Optional[int] = None
    proto_invert: bool = False


@dataclass(frozen=True)
class Option:
    names: tuple[str, ...]          # long names without "--"; the first is the canonical one
    key: str                        # options sharing a key exclude each other (--syn/--tcp-flags)
    read: Callable[[list[str], Ctx, str], Any]   # (args, ctx, option as written) -> value
    nargs: int = 1
    invertible: bool = True


@dataclass(frozen=True)
class Given:
    value: Any
    invert: bool
    option: str                     # as written, e.g. "--destination-port"


@dataclass(frozen=True)
class MatchSpec:
    name: str
    ir_type: type
    options: tuple[Option, ...]
    build: Callable[[dict[str, Given], Ctx], Match]   # raises OptionError for missing options
    save: Callable[[Any], list[str]]                   # typed match -> words after "-m name"
    needs_proto: Optional[int] = None                  # rule must say `-p <this>`, not inverted
    unsupported: tuple[str, ...] = ()                  # options iptables has and we refuse
    by_name: dict[str, Option] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        for opt in self.options:
            for n in opt.names:
                self.by_name[n] = opt

    def option(self, name: str) -> Optional[Option]:
        return self.by_name.get(name)


# --- value readers -----------------------------------------------------------------------

def read_port(text: str, proto: str, option: str) -> int:
    port = P.parse_port(text, proto)
    if port is None:
        raise OptionError(f"invalid port in {option}",
                          f"a number 0-65535 or a {proto} service name from /etc/services", text)
    return port


def read_port_range(text: str, proto: str, option: str) -> PortRange:
    """tcp/udp --sport/--dport: PORT, LO:HI, :HI or LO: (libxt_tcp's parse_tcp_ports)."""
    if ":" not in text:
        p = read_port(text, proto, option)
        return (p, p)
    lo_s, _, hi_s = text.partition(":")
    lo = read_port(lo_s, proto, option) if lo_s else 0
    hi = read_port(hi_s, proto, option) if hi_s else 0xFFFF
    if lo > hi:
        raise OptionError(f"reversed port range in {option}", "LOW:HIGH with LOW <= HIGH", text)
    return (lo, hi)


def _ports_reader(proto: str) -> Callable[[list[str], Ctx, str], PortRange]:
    return lambda args, ctx, opt: read_port_range(args[0], proto, opt)


def read_tcp_flags(args: list[str], ctx: Ctx, option: str) -> tuple[int, int]:
    values = []
    for text in args:
        v = P.parse_tcp_flags(text)
        if v is None:
            raise OptionError(f"unknown TCP flag in {option}",
                              "a comma list of FIN, SYN, RST, PSH, ACK, URG, ALL, NONE", text)
        values.append(v)
    return (values[0], values[1])


def read_syn(args: list[str], ctx: Ctx, option: str) -> tuple[int, int]:
    return P.SYN_FLAGS


def read_tcp_option(args: list[str], ctx: Ctx, option: str) -> int:
    v = P.strtoui(args[0], 255)
    if v is None or v == 0:
        raise OptionError(f"bad TCP option number in {option}", "a number 1-255", args[0])
    return v


def read_icmp_type(args: list[str], ctx: Ctx, option: str) -> tuple[int, int, int]:
    text = args[0]
    if text and (text[0].isdigit()):
        t_s, slash, c_s = text.partition("/")
        t = P.strtoui(t_s, 255)
        c = P.strtoui(c_s, 255) if slash else 0
        if t is None or c is None:
            raise OptionError(f"invalid ICMP type in {option}",
                              "TYPE or TYPE/CODE with numbers 0-255, or a name from `iptables -p icmp -h`",
                              text)
        return (t, c, c) if slash else (t, 0, 0xFF)
    hit, names = P.lookup_icmp_name(text)
    if hit is None:
        if names:
            raise OptionError(f"ambiguous ICMP type in {option}",
                              "one of " + ", ".join(names), text)
        raise OptionError(f"unknown ICMP type in {option}",
                          "a name from `iptables -p icmp -h` (e.g. echo-request) or a number", text)
    return hit


def read_multiport(args: list[str], ctx: Ctx, option: str) -> tuple[PortRange, ...]:
    # libxt_multiport checks the protocol while reading the list (service names need it).
    names = {IPPROTO_TCP: "tcp", IPPROTO_UDP: "udp"}
    if ctx.proto in (IPPROTO_SCTP, IPPROTO_UDPLITE, IPPROTO_DCCP) and not ctx.proto_invert:
        raise OptionError(f"multiport on -p {P.protocol_name(ctx.proto)} is not supported yet "
                          "(the datapath reads ports of tcp and udp only)",
                          "-p tcp or -p udp", f"-p {P.protocol_name(ctx.proto)}")
    if ctx.proto not in names or ctx.proto_invert:
        found = "no -p" if ctx.proto is None else \
            ("! " if ctx.proto_invert else "") + f"-p {P.protocol_name(ctx.proto)}"
        raise OptionError("match 'multiport' needs -p tcp or -p udp before it",
                          "-p tcp or -p udp (not inverted) before -m multiport", found)
    proto = names[ctx.proto]
    text = args[0]
    ranges: list[PortRange] = []
    slots = 0
    for part in text.split(","):
        if ":" in part:
            lo_s, _, hi_s = part.partition(":")
            lo = read_port(lo_s, proto, option)
            hi = read_port(hi_s, proto, option)
            if lo >= hi:
                raise OptionError(f"invalid port range in {option}",
                                  "LOW:HIGH with LOW < HIGH (as iptables' multiport)", part)
            ranges.append((lo, hi))
            slots += 2
        else:
            p = read_port(part, proto, option)
            ranges.append((p, p))
            slots += 1
    if slots > MULTIPORT_MAX:
        raise OptionError(f"too many ports in {option}",
                          f"at most {MULTIPORT_MAX} ports (a range counts as two)", text)
    return tuple(ranges)


def _read_ipv4(text: str, option: str) -> int:
    addr = P.parse_ipv4(text)
    if addr is None:
        raise OptionError(f"invalid address in {option}", "a dotted-quad IPv4 address", text)
    return addr


def read_iprange(args: list[str], ctx: Ctx, option: str) -> tuple[int, int]:
    text = args[0]
    lo_s, dash, hi_s = text.partition("-")
    lo = _read_ipv4(lo_s, option)
    hi = _read_ipv4(hi_s, option) if dash else lo
    if lo > hi:
        raise OptionError(f"reversed address range in {option} would never match",
                          "FIRST-LAST with FIRST <= LAST", text)
    return (lo, hi)


def read_comment(args: list[str], ctx: Ctx, option: str) -> str:
    text = args[0]
    if len(text.encode()) > MAX_COMMENT_LEN:
        raise OptionError(f"comment too long in {option}",
                          f"at most {MAX_COMMENT_LEN} bytes", text[:40] + "...")
    if "\n" in text:
        raise OptionError(f"newline in {option}", "a one-line comment", text)
    return text


def read_states(args: list[str], ctx: Ctx, option: str) -> int:
    mask = 0
    for part in args[0].split(","):
        bit = CT_STATE_NAMES.get(part.upper())
        if bit is None:
            if part.upper() in ("SNAT", "DNAT"):
                raise OptionError(f"conntrack state {part.upper()} in {option} is not supported yet",
                                  "INVALID, NEW, RELATED, ESTABLISHED or UNTRACKED", part)
            raise OptionError(f"unknown conntrack state in {option}",
                              "a comma list of INVALID, NEW, RELATED, ESTABLISHED, UNTRACKED", part)
        mask |= bit
    return mask


# --- builders (options given -> typed match) ----------------------------------------------

def _get(values: dict[str, Given], key: str) -> tuple[Any, bool]:
    g = values.get(key)
    return (g.value, g.invert) if g else (None, False)


def _ports(values: dict[str, Given], key: str) -> tuple[Optional[PortRange], bool]:
    rng, inv = _get(values, key)
    if rng == (0, 0xFFFF) and not inv:     # iptables stores the full range: no match on it
        rng = None
    return rng, inv


def build_tcp(values: dict[str, Given], ctx: Ctx) -> TcpMatch:
    sport, sinv = _ports(values, "sport")
    dport, dinv = _ports(values, "dport")
    flags, finv = _get(values, "flags")
    if flags is not None and flags[0] == 0 and not finv:   # mask NONE: no test at all
        flags = None
    option, oinv = _get(values, "option")
    return TcpMatch(sport=sport, sport_invert=sinv, dport=dport, dport_invert=dinv,
                    flags=flags, flags_invert=finv, option=option, option_invert=oinv)


def build_udp(values: dict[str, Given], ctx: Ctx) -> UdpMatch:
    sport, sinv = _ports(values, "sport")
    dport, dinv = _ports(values, "dport")
    return UdpMatch(sport=sport, sport_invert=sinv, dport=dport, dport_invert=dinv)


def build_icmp(values: dict[str, Given], ctx: Ctx) -> IcmpMatch:
    if "type" not in values:
        raise OptionError("match 'icmp' needs --icmp-type", "--icmp-type TYPE[/CODE]", "-m icmp alone")
    (t, lo, hi), inv = _get(values, "type")
    if t == 0xFF:                     # the kernel ignores the code for type 255 ("any")
        lo, hi = 0, 0xFF
    return IcmpMatch(type=t, code_min=lo, code_max=hi, invert=inv)


def build_multiport(values: dict[str, Given], ctx: Ctx) -> MultiportMatch:
    g = values.get("ports")
    if g is None:
        raise OptionError("match 'multiport' needs an option",
                          "--sports, --dports or --ports", "-m multiport alone")
    kind = {"sports": "sports", "source-ports": "sports", "dports": "dports",
            "destination-ports": "dports", "ports": "ports"}[g.option.lstrip("-")]
    return MultiportMatch(kind=kind, ranges=g.value, invert=g.invert)  # type: ignore[arg-type]


def build_iprange(values: dict[str, Given], ctx: Ctx) -> IprangeMatch:
    if "src" not in values and "dst" not in values:
        raise OptionError("match 'iprange' needs an option", "--src-range or --dst-range",
                          "-m iprange alone")
    src, sinv = _get(values, "src")
    dst, dinv = _get(values, "dst")
    return IprangeMatch(src=src, src_invert=sinv, dst=dst, dst_invert=dinv)


def build_comment(values: dict[str, Given], ctx: Ctx) -> CommentMatch:
    if "comment" not in values:
        raise OptionError("match 'comment' needs --comment", '--comment "TEXT"', "-m comment alone")
    return CommentMatch(text=values["comment"].value)


def _build_ct(module: str, option: str) -> Callable[[dict[str, Given], Ctx], ConntrackMatch]:
    def build(values: dict[str, Given], ctx: Ctx) -> ConntrackMatch:
        if "states" not in values:
            raise OptionError(f"match '{module}' needs {option}", f"{option} STATE[,STATE...]",
                              f"-m {module} alone")
        states, inv = _get(values, "states")
        return ConntrackMatch(states=states, states_invert=inv, module=module)  # type: ignore[arg-type]
    return build


# --- printers (typed match -> the words iptables-save prints after "-m NAME") -------------

def _neg(invert: bool) -> list[str]:
    return ["!"] if invert else []


def _port_words(name: str, rng: Optional[PortRange], invert: bool) -> list[str]:
    if rng is None:
        return []
    lo, hi = rng
    return _neg(invert) + [name, str(lo) if lo == hi else f"{lo}:{hi}"]


def save_tcp(m: TcpMatch) -> list[str]:
    words = _port_words("--sport", m.sport, m.sport_invert)
    words += _port_words("--dport", m.dport, m.dport_invert)
    if m.option is not None:
        words += _neg(m.option_invert) + ["--tcp-option", str(m.option)]
    if m.flags is not None:
        words += _neg(m.flags_invert) + ["--tcp-flags", P.format_tcp_flags(m.flags[0]),
                                         P.format_tcp_flags(m.flags[1])]
    return words


def save_udp(m: UdpMatch) -> list[str]:
    return _port_words("--sport", m.sport, m.sport_invert) + \
        _port_words("--dport", m.dport, m.dport_invert)


def save_icmp(m: IcmpMatch) -> list[str]:
    if m.type == 0xFF:
        text = "any"
    elif (m.code_min, m.code_max) == (0, 0xFF):
        text = str(m.type)
    else:
        text = f"{m.type}/{m.code_min}"
    return _neg(m.invert) + ["--icmp-type", text]


def save_multiport(m: MultiportMatch) -> list[str]:
    ports = ",".join(str(lo) if lo == hi else f"{lo}:{hi}" for lo, hi in m.ranges)
    return _neg(m.invert) + [f"--{m.kind}", ports]


def _ip(addr: int) -> str:
    return str(ipaddress.IPv4Address(addr))


def save_iprange(m: IprangeMatch) -> list[str]:
    words: list[str] = []
    if m.src is not None:
        words += _neg(m.src_invert) + ["--src-range", f"{_ip(m.src[0])}-{_ip(m.src[1])}"]
    if m.dst is not None:
        words += _neg(m.dst_invert) + ["--dst-range", f"{_ip(m.dst[0])}-{_ip(m.dst[1])}"]
    return words


def save_comment(m: CommentMatch) -> list[str]:
    return ["--comment", save_string(m.text)]


def format_states(mask: int) -> str:
    return ",".join(n for n in P.CT_PRINT_ORDER if mask & CT_STATE_NAMES[n])


def save_conntrack(m: ConntrackMatch) -> list[str]:
    option = "--ctstate" if m.module == "conntrack" else "--state"
    if m.states is None:
        return []
    return _neg(m.states_invert) + [option, format_states(m.states)]


# --- the table ------------------------------------------------------------------------------

_TCP_OPTIONS = (
    Option(("sport", "source-port"), "sport", _ports_reader("tcp")),
    Option(("dport", "destination-port"), "dport", _ports_reader("tcp")),
    Option(("syn",), "flags", read_syn, nargs=0),
    Option(("tcp-flags",), "flags", read_tcp_flags, nargs=2),
    Option(("tcp-option",), "option", read_tcp_option),
)
_UDP_OPTIONS = (
    Option(("sport", "source-port"), "sport", _ports_reader("udp")),
    Option(("dport", "destination-port"), "dport", _ports_reader("udp")),
)

MATCHES: dict[str, MatchSpec] = {spec.name: spec for spec in (
    MatchSpec("tcp", TcpMatch, _TCP_OPTIONS, build_tcp, save_tcp, needs_proto=IPPROTO_TCP),
    MatchSpec("udp", UdpMatch, _UDP_OPTIONS, build_udp, save_udp, needs_proto=IPPROTO_UDP),
    MatchSpec("icmp", IcmpMatch, (Option(("icmp-type",), "type", read_icmp_type),),
              build_icmp, save_icmp, needs_proto=IPPROTO_ICMP),
    MatchSpec("multiport", MultiportMatch, (
        Option(("sports", "source-ports"), "ports", read_multiport),
        Option(("dports", "destination-ports"), "ports", read_multiport),
        Option(("ports",), "ports", read_multiport),
    ), build_multiport, save_multiport),
    MatchSpec("iprange", IprangeMatch, (
        Option(("src-range",), "src", read_iprange),
        Option(("dst-range",), "dst", read_iprange),
    ), build_iprange, save_iprange),
    MatchSpec("comment", CommentMatch, (Option(("comment",), "comment", read_comment, invertible=False),),
              build_comment, save_comment),
    MatchSpec("conntrack", ConntrackMatch, (Option(("ctstate",), "states", read_states),),
              _build_ct("conntrack", "--ctstate"), save_conntrack,
              unsupported=("ctproto", "ctorigsrc", "ctorigdst", "ctreplsrc", "ctrepldst",
                           "ctorigsrcport", "ctorigdstport", "ctreplsrcport", "ctrepldstport",
                           "ctstatus", "ctexpire", "ctdir")),
    MatchSpec("state", ConntrackMatch, (Option(("state",), "states", read_states),),
              _build_ct("state", "--state"), save_conntrack),
)}

# Match extensions that `-p NAME` loads implicitly when one of their options appears.
PROTO_MATCHES = {IPPROTO_TCP: "tcp", IPPROTO_UDP: "udp", IPPROTO_ICMP: "icmp"}


def spec_of(match: Match) -> MatchSpec:
    """The table entry that prints `match`."""
    if isinstance(match, ConntrackMatch):
        return MATCHES[match.module]
    for spec in MATCHES.values():
        if isinstance(match, spec.ir_type):
            return spec
    raise TypeError(f"no matcher table entry prints {type(match).__name__}")


def save_match(match: Match) -> list[str]:
    spec = spec_of(match)
    return ["-m", spec.name, *spec.save(match)]
