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
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

from ..ruleset import (
    ADDRTYPE_NAMES, CT_STATE_NAMES, HASHLIMIT_MODES, PKTTYPE_NAMES, AddrtypeMatch, CommentMatch,
    ConnlimitMatch, ConntrackMatch, DscpMatch, HashlimitMatch, IcmpMatch, IprangeMatch, LengthMatch,
    LimitMatch, MacMatch, Match, MultiportMatch, PkttypeMatch, PortRange, RecentMatch, SetMatch,
    TcpMatch, TcpmssMatch, TosMatch, TtlMatch, UdpMatch,
)
from ..marks import ConnmarkMatch, MarkMatch
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


# --- limit / hashlimit ----------------------------------------------------------------------

LIMIT_SCALE = 10_000            # XT_LIMIT_SCALE: -m limit counts time in 1/10000 s
HASHLIMIT_SCALE = 1_000_000     # XT_HASHLIMIT_SCALE_v2 (revision 2 and 3)
LIMIT_BURST_MAX = 10_000
HASHLIMIT_BURST_MAX = 1_000_000
HASHLIMIT_NAME_MAX = 254        # NAME_MAX - 1 (struct xt_hashlimit_mtinfo3.name)
_RATE_UNITS = (("second", 1), ("minute", 60), ("hour", 3600), ("day", 86400))


def parse_rate(text: str, scale: int, option: str) -> tuple[int, int]:
    """N[/second|minute|hour|day] (any case-insensitive prefix of the unit, as iptables'
    parse_rate) -> (period in 1/scale s, seconds per unit)."""
    num, slash, unit = text.partition("/")
    mult = 1
    if slash:
        hits = [m for name, m in _RATE_UNITS if unit and name.startswith(unit.lower())]
        if not hits:
            raise OptionError(f"bad rate unit in {option}", "N/sec, N/minute, N/hour or N/day", text)
        mult = hits[0]
    if not num.isdigit() or not 0 < int(num) < 2 ** 31:
        raise OptionError(f"bad rate in {option}", "a positive number of packets, e.g. 10/sec", text)
    avg = scale * mult // int(num)
    if avg == 0:
        raise OptionError(f"rate too fast in {option}",
                          f"at most {scale} packets per second", text)
    return avg, mult


def format_rate(period: int, scale: int) -> tuple[str, int]:
    """iptables' print_rate: the largest unit the period is (nearly) a whole number of ->
    ("N/unit", that unit in ms; hashlimit's default --hashlimit-htable-expire)."""
    rates = (("day", scale * 86400), ("hour", scale * 3600), ("min", scale * 60), ("sec", scale))
    i = 1
    while i < len(rates):
        mult = rates[i][1]
        if period > mult or mult // period < mult % period:
            break
        i += 1
    name, mult = rates[i - 1]
    return f"{mult // period}/{name}", mult // scale * 1000


def _uint_reader(what: str, lo: int, hi: int) -> Callable[[list[str], Ctx, str], int]:
    def read(args: list[str], ctx: Ctx, option: str) -> int:
        v = P.strtoui(args[0], hi)
        if v is None or v < lo:
            raise OptionError(f"bad {what} in {option}", f"a number {lo}-{hi}", args[0])
        return v
    return read


def _flag(args: list[str], ctx: Ctx, option: str) -> bool:
    return True


def read_limit(args: list[str], ctx: Ctx, option: str) -> int:
    return parse_rate(args[0], LIMIT_SCALE, option)[0]


def build_limit(values: dict[str, Given], ctx: Ctx) -> LimitMatch:
    avg = values["limit"].value if "limit" in values else LIMIT_SCALE * 3600 // 3   # 3/hour
    burst = values["burst"].value if "burst" in values else 5
    return LimitMatch(avg=avg, burst=burst)


def save_limit(m: LimitMatch) -> list[str]:
    words = ["--limit", format_rate(m.avg, LIMIT_SCALE)[0]]
    if m.burst != 5:
        words += ["--limit-burst", str(m.burst)]
    return words


HASHLIMIT_BYTE_SHIFT = 4        # XT_HASHLIMIT_BYTE_SHIFT: byte rates count 16-byte chunks
HASHLIMIT_BYTE_EXPIRE = 15      # s: a byte rate's default --hashlimit-htable-expire (x1000 ms) ...
HASHLIMIT_BYTE_EXPIRE_BURST = 60    # ... and with --hashlimit-burst
HASHLIMIT_GCINTERVAL = 1000     # ms, iptables' default --hashlimit-htable-gcinterval
HASHLIMIT_MAX_SIZE = 1048576    # the kernel clamps --hashlimit-htable-size/-max to it (iptables-save shows that)
U32_MAX = 0xFFFFFFFF
_HL_FACTOR = {"k": 1024, "m": 1024 * 1024}
_BYTE_RATE = re.compile(r"([0-9]+)([km]?)b/s")
_BURST = re.compile(r"(0[xX][0-9a-fA-F]+|0[0-7]*|[1-9][0-9]*)([kKmMbB]?|[kKmM][bB])")


def hashlimit_bytes_to_cost(nbytes: int) -> int:
    """libxt_hashlimit's bytes_to_cost: a byte rate -> the kernel's cfg.avg (u32 arithmetic)."""
    r = (nbytes >> HASHLIMIT_BYTE_SHIFT) & U32_MAX
    return U32_MAX // (r + 1)


def hashlimit_cost_to_bytes(cost: int) -> int:
    """libxt_hashlimit's cost_to_bytes: the kernel's cfg.avg -> bytes per second."""
    r = U32_MAX // cost if cost else U32_MAX
    return ((r - 1) << HASHLIMIT_BYTE_SHIFT) & ((1 << 64) - 1)


def read_hashlimit_rate(args: list[str], ctx: Ctx, option: str) -> tuple[bool, int, int]:
    """(bytes?, cfg.avg, seconds of the unit: libxt_hashlimit's udata->mult). A byte rate is
    N[k|m]b/s (parse_bytes; its mult is XT_HASHLIMIT_BYTE_EXPIRE), else a packet rate."""
    text = args[0]
    if text.find("b/s") > 0:
        m = _BYTE_RATE.fullmatch(text)
        if not m:
            raise OptionError(f"bad byte rate in {option}", "N b/s, N kb/s or N mb/s, e.g. 512kb/s", text)
        nbytes = int(m.group(1)) * _HL_FACTOR.get(m.group(2), 1)
        if nbytes == 0:
            raise OptionError(f"bad byte rate in {option}", "a positive rate, e.g. 512kb/s", text)
        if nbytes >> HASHLIMIT_BYTE_SHIFT > U32_MAX:
            raise OptionError(f"byte rate too high in {option}",
                              "at most 32767mb/s (iptables keeps a rate's 16-byte chunks in 32 bits: this one "
                              "would load as a different, wrapped rate)", text)
        cost = hashlimit_bytes_to_cost(nbytes)
        if hashlimit_cost_to_bytes(cost) == 0:
            raise OptionError(f"byte rate too low in {option}",
                              "at least 16b/s (iptables-save prints a slower rate as 0b/s, which iptables "
                              "cannot read back)", text)
        if cost < 2:
            raise OptionError(f"byte rate too high in {option}",
                              "at most 32767mb/s (the kernel refuses a faster one: \"overflow, rate too "
                              "high\")", text)
        return True, cost, HASHLIMIT_BYTE_EXPIRE
    avg, mult = parse_rate(text, HASHLIMIT_SCALE, option)
    return False, avg, mult


def read_hashlimit_burst(args: list[str], ctx: Ctx, option: str) -> int:
    """libxt_hashlimit's parse_burst: a number (base 0) with an optional k/m factor and 'b';
    without a suffix at most XT_HASHLIMIT_BURST_MAX."""
    text = args[0]
    m = _BURST.fullmatch(text)
    if not m:
        raise OptionError(f"bad burst in {option}", f"a number 1-{HASHLIMIT_BURST_MAX}, or bytes such as "
                          "1500b, 64kb or 2mb with a byte rate", text)
    digits, suffix = m.groups()
    base = 16 if digits[:2] in ("0x", "0X") else 8 if digits.startswith("0") else 10
    v = int(digits, base)
    if v == 0 or (not suffix and v > HASHLIMIT_BURST_MAX):
        raise OptionError(f"bad burst in {option}", f"a number 1-{HASHLIMIT_BURST_MAX}", text)
    v *= _HL_FACTOR.get(suffix[:1].lower(), 1)
    if v >= 1 << 64:
        raise OptionError(f"bad burst in {option}", "a smaller value", text)
    return v


def read_hashlimit_mode(args: list[str], ctx: Ctx, option: str) -> tuple[str, ...]:
    parts = [p for p in args[0].replace("|", ",").split(",") if p]
    for p in parts:
        if p not in HASHLIMIT_MODES:
            raise OptionError(f"unknown key in {option}",
                              "a comma list of srcip, srcport, dstip, dstport", p)
    return tuple(m for m in HASHLIMIT_MODES if m in parts)


def _read_word(what: str, maxlen: int, option_hint: str = "") -> Callable[[list[str], Ctx, str], str]:
    """A name iptables-save prints bare: non-empty, at most maxlen bytes, no white space or
    quotes (it would not read back), no '/'."""
    def read(args: list[str], ctx: Ctx, option: str) -> str:
        text = args[0]
        if not text or len(text.encode()) > maxlen or any(c.isspace() or c in "\"'/\\" for c in text):
            raise OptionError(f"bad {what} in {option}",
                              f"1-{maxlen} characters without white space, quotes or '/'", text)
        return text
    return read


def _read_interval(args: list[str], ctx: Ctx, option: str) -> int:
    """libxt_hashlimit's parse_interval: a positive number of seconds (atoi)."""
    text = args[0]
    if not text.isdigit() or not 0 < int(text) < 2 ** 31:
        raise OptionError(f"bad interval in {option}", "a number of seconds 1-2147483647", text)
    return int(text)


def build_hashlimit(values: dict[str, Given], ctx: Ctx) -> HashlimitMatch:
    """libxt_hashlimit's parse and final check (revision 3) with the kernel's clamping of the
    table size and max (hashlimit_mt_check_common), so the match holds what iptables-save shows."""
    if "rate" not in values:
        raise OptionError("match 'hashlimit' needs a rate",
                          "--hashlimit-upto RATE or --hashlimit-above RATE", "-m hashlimit without one")
    if "name" not in values:
        raise OptionError("match 'hashlimit' needs --hashlimit-name", "--hashlimit-name NAME",
                          "-m hashlimit without it")
    g = values["rate"]
    nbytes, avg, mult = g.value
    above = (g.option == "--hashlimit-above") != g.invert
    given_burst = values["burst"].value if "burst" in values else None
    expire = values["expire"].value if "expire" in values else None
    rate_match = "rate_match" in values
    if nbytes:
        burst = 0
        if given_burst is not None:
            unit = hashlimit_cost_to_bytes(avg)
            if given_burst < unit:
                raise OptionError("hashlimit burst smaller than one second at the byte rate",
                                  f"at least {unit}b", values["burst"].option + " " + str(given_burst) + "b")
            burst = (given_burst & U32_MAX) // unit + (1 if given_burst % unit else 0)
            burst &= U32_MAX
            if expire is None:
                expire = HASHLIMIT_BYTE_EXPIRE_BURST * 1000
    else:
        burst = 5 if given_burst is None else given_burst
        if burst > HASHLIMIT_BURST_MAX:
            raise OptionError("bad burst in --hashlimit-burst", f"a number 1-{HASHLIMIT_BURST_MAX}", str(burst))
    if expire is None:
        expire = mult * 1000
    interval = 0
    if rate_match:
        if not nbytes:
            avg //= mult
        interval = values["interval"].value if "interval" in values else (1 if nbytes else mult)
        if avg == 0:
            raise OptionError("hashlimit rate too fast for --hashlimit-rate-match",
                              "a rate whose period is at least 1 us per packet (the kernel refuses "
                              "it: \"invalid rate\")", g.option)
    mode = values["mode"].value if "mode" in values else ()
    return HashlimitMatch(
        name=values["name"].value, avg=avg, expire=expire, burst=burst, above=above, mode=mode,
        srcmask=values["srcmask"].value if "srcmask" in values else 32,
        dstmask=values["dstmask"].value if "dstmask" in values else 32,
        size=min(values["size"].value, HASHLIMIT_MAX_SIZE) if "size" in values else 0,
        max=min(values["max"].value, HASHLIMIT_MAX_SIZE) if "max" in values else 0,
        gcinterval=values["gcinterval"].value if "gcinterval" in values else HASHLIMIT_GCINTERVAL,
        bytes=nbytes, rate_match=rate_match, interval=interval)


_BYTE_UNITS = (("m", 1024 * 1024), ("k", 1024), ("", 1))


def format_hashlimit_bytes(avg: int, burst: int) -> tuple[str, Optional[str], int]:
    """libxt_hashlimit's print_bytes: (rate, burst or None, the expiry it implies in ms)."""
    r = hashlimit_cost_to_bytes(avg)
    i = 0
    while i < len(_BYTE_UNITS) - 1:
        th = _BYTE_UNITS[i][1]
        # ~(thresh - 1) is a 32-bit mask in iptables: it also clears the rate's high bits
        if r >= th and hashlimit_bytes_to_cost(r & ~(th - 1) & U32_MAX) == avg:
            break
        i += 1
    rate = f"{r // _BYTE_UNITS[i][1]}{_BYTE_UNITS[i][0]}b/s"
    if burst == 0:
        return rate, None, HASHLIMIT_BYTE_EXPIRE * 1000
    r = (r * burst) & ((1 << 64) - 1)
    i = 0
    while i < len(_BYTE_UNITS) - 1 and r < _BYTE_UNITS[i][1]:
        i += 1
    return rate, f"{r // _BYTE_UNITS[i][1]}{_BYTE_UNITS[i][0]}b", HASHLIMIT_BYTE_EXPIRE_BURST * 1000


def save_hashlimit(m: HashlimitMatch) -> list[str]:
    """hashlimit_mt_save (revision 3): the words and their order iptables-save prints."""
    words = ["--hashlimit-above" if m.above else "--hashlimit-upto"]
    if m.bytes:
        rate, burst, quantum = format_hashlimit_bytes(m.avg, m.burst)
        words.append(rate)
        if burst is not None:
            words += ["--hashlimit-burst", burst]
    else:
        rate, quantum = format_rate(m.avg, HASHLIMIT_SCALE)
        words += [rate, "--hashlimit-burst", str(m.burst)]
    if m.mode:
        words += ["--hashlimit-mode", ",".join(k for k in HASHLIMIT_MODES if k in m.mode)]
    words += ["--hashlimit-name", m.name]
    if m.size:
        words += ["--hashlimit-htable-size", str(m.size)]
    if m.max:
        words += ["--hashlimit-htable-max", str(m.max)]
    if m.gcinterval != HASHLIMIT_GCINTERVAL:
        words += ["--hashlimit-htable-gcinterval", str(m.gcinterval)]
    if m.expire != quantum:
        words += ["--hashlimit-htable-expire", str(m.expire)]
    if m.srcmask != 32:
        words += ["--hashlimit-srcmask", str(m.srcmask)]
    if m.dstmask != 32:
        words += ["--hashlimit-dstmask", str(m.dstmask)]
    if m.rate_match:
        words.append("--hashlimit-rate-match")
        if m.interval != 1:
            words += ["--hashlimit-rate-interval", str(m.interval)]
    return words


# --- set ------------------------------------------------------------------------------------

IPSET_MAXNAMELEN = 31          # IPSET_MAXNAMELEN - 1
IPSET_DIM_MAX = 6


def read_match_set(args: list[str], ctx: Ctx, option: str) -> tuple[str, tuple[str, ...]]:
    name = _read_word("set name", IPSET_MAXNAMELEN)([args[0]], ctx, option)
    flags = args[1].split(",")
    if any(f not in ("src", "dst") for f in flags):
        raise OptionError(f"bad direction list in {option}", "a comma list of src and dst, e.g. src,dst",
                          args[1])
    if len(flags) > IPSET_DIM_MAX:
        raise OptionError(f"too many directions in {option}", f"at most {IPSET_DIM_MAX} of src/dst",
                          args[1])
    return name, tuple(flags)


def build_set(values: dict[str, Given], ctx: Ctx) -> SetMatch:
    if "set" not in values:
        raise OptionError("match 'set' needs --match-set", "--match-set NAME src|dst[,...]",
                          "-m set alone")
    (name, flags), inv = _get(values, "set")
    return SetMatch(name=name, flags=flags, invert=inv)


def save_set(m: SetMatch) -> list[str]:
    return _neg(m.invert) + ["--match-set", m.name, ",".join(m.flags)]


# --- recent ---------------------------------------------------------------------------------

RECENT_NAME_MAX = 199          # XT_RECENT_NAME_LEN - 1


def read_recent_mask(args: list[str], ctx: Ctx, option: str) -> int:
    return _read_ipv4(args[0], option)


def build_recent(values: dict[str, Given], ctx: Ctx) -> RecentMatch:
    if "command" not in values:
        raise OptionError("match 'recent' needs a command", "--set, --rcheck, --update or --remove",
                          "-m recent without one")
    g = values["command"]
    command = g.option.lstrip("-")
    if "reap" in values and "seconds" not in values:
        raise OptionError("option '--reap' of match 'recent' needs --seconds", "--seconds N with --reap",
                          "--reap")
    if "rttl" in values and command in ("set", "remove"):
        raise OptionError(f"option '--rttl' cannot be used with --{command}",
                          "--rttl with --rcheck or --update", "--rttl")
    side = values["side"].option if "side" in values else "--rsource"
    return RecentMatch(
        command=command, name=values["name"].value if "name" in values else "DEFAULT",  # type: ignore[arg-type]
        invert=g.invert, seconds=values["seconds"].value if "seconds" in values else 0,
        reap="reap" in values, hitcount=values["hitcount"].value if "hitcount" in values else 0,
        rttl="rttl" in values, side="dest" if side == "--rdest" else "source",
        mask=values["mask"].value if "mask" in values else 0xFFFFFFFF)


def save_recent(m: RecentMatch) -> list[str]:
    words = _neg(m.invert) + [f"--{m.command}"]
    if m.seconds:
        words += ["--seconds", str(m.seconds)]
    if m.reap:
        words.append("--reap")
    if m.hitcount:
        words += ["--hitcount", str(m.hitcount)]
    if m.rttl:
        words.append("--rttl")
    words += ["--name", m.name, "--mask", _ip(m.mask), "--rsource" if m.side == "source" else "--rdest"]
    return words


# --- addrtype -------------------------------------------------------------------------------

def read_addrtypes(args: list[str], ctx: Ctx, option: str) -> int:
    mask = 0
    for part in args[0].split(","):
        if part.upper() not in ADDRTYPE_NAMES:
            raise OptionError(f"unknown address type in {option}",
                              "a comma list of " + ", ".join(ADDRTYPE_NAMES), part)
        mask |= 1 << ADDRTYPE_NAMES.index(part.upper())
    return mask


def format_addrtypes(mask: int) -> str:
    return ",".join(n for i, n in enumerate(ADDRTYPE_NAMES) if mask & (1 << i))


def build_addrtype(values: dict[str, Given], ctx: Ctx) -> AddrtypeMatch:
    if "src" not in values and "dst" not in values:
        raise OptionError("match 'addrtype' needs --src-type or --dst-type", "--src-type or --dst-type TYPES",
                          "-m addrtype without them")
    if "iface_in" in values and "iface_out" in values:
        raise OptionError("options '--limit-iface-in' and '--limit-iface-out' exclude each other",
                          "one of them", "--limit-iface-out")
    src, sinv = _get(values, "src")
    dst, dinv = _get(values, "dst")
    return AddrtypeMatch(src=src or 0, src_invert=sinv, dst=dst or 0, dst_invert=dinv,
                         limit_iface_in="iface_in" in values, limit_iface_out="iface_out" in values)


def save_addrtype(m: AddrtypeMatch) -> list[str]:
    words: list[str] = []
    if m.src:
        words += _neg(m.src_invert) + ["--src-type", format_addrtypes(m.src)]
    if m.dst:
        words += _neg(m.dst_invert) + ["--dst-type", format_addrtypes(m.dst)]
    if m.limit_iface_in:
        words.append("--limit-iface-in")
    if m.limit_iface_out:
        words.append("--limit-iface-out")
    return words


# --- pkttype, mac, length, ttl, tos, dscp, tcpmss, connlimit -------------------------------

_PKTTYPE_ALIASES = {"bcast": "broadcast", "mcast": "multicast", "host": "unicast"}


def read_pkttype(args: list[str], ctx: Ctx, option: str) -> str:
    low = args[0].lower()
    name = _PKTTYPE_ALIASES.get(low, low)
    if name not in PKTTYPE_NAMES:
        raise OptionError(f"unknown packet type in {option}",
                          "unicast, broadcast, multicast or otherhost", args[0])
    return name


def build_pkttype(values: dict[str, Given], ctx: Ctx) -> PkttypeMatch:
    if "type" not in values:
        raise OptionError("match 'pkttype' needs --pkt-type", "--pkt-type TYPE", "-m pkttype alone")
    t, inv = _get(values, "type")
    return PkttypeMatch(pkt_type=t, invert=inv)


def save_pkttype(m: PkttypeMatch) -> list[str]:
    return _neg(m.invert) + ["--pkt-type", m.pkt_type]


_MAC = re.compile(r"[0-9a-fA-F]{1,2}(?::[0-9a-fA-F]{1,2}){5}")


def read_mac(args: list[str], ctx: Ctx, option: str) -> bytes:
    if not _MAC.fullmatch(args[0]):
        raise OptionError(f"invalid MAC address in {option}", "six hex bytes such as 00:11:22:aa:bb:cc",
                          args[0])
    return bytes(int(x, 16) for x in args[0].split(":"))


def build_mac(values: dict[str, Given], ctx: Ctx) -> MacMatch:
    if "mac" not in values:
        raise OptionError("match 'mac' needs --mac-source", "--mac-source XX:XX:XX:XX:XX:XX", "-m mac alone")
    addr, inv = _get(values, "mac")
    return MacMatch(addr=addr, invert=inv)


def save_mac(m: MacMatch) -> list[str]:
    return _neg(m.invert) + ["--mac-source", ":".join(f"{b:02x}" for b in m.addr)]


def read_u16_range(args: list[str], ctx: Ctx, option: str) -> tuple[int, int]:
    """N, N:M, :M or N: with numbers 0-65535 (base 0, as xtables' UINT16RC)."""
    text = args[0]
    lo_s, colon, hi_s = text.partition(":")
    lo = P.strtoui(lo_s, 0xFFFF) if lo_s else 0
    hi = (P.strtoui(hi_s, 0xFFFF) if hi_s else 0xFFFF) if colon else lo
    if lo is None or hi is None or text == ":":
        raise OptionError(f"bad range in {option}", "N or MIN:MAX with numbers 0-65535", text)
    if lo > hi:
        raise OptionError(f"reversed range in {option} would never match", "MIN:MAX with MIN <= MAX", text)
    return (lo, hi)


def _range_words(option: str, lo: int, hi: int, invert: bool) -> list[str]:
    return _neg(invert) + [option, str(lo) if lo == hi else f"{lo}:{hi}"]


def build_length(values: dict[str, Given], ctx: Ctx) -> LengthMatch:
    if "length" not in values:
        raise OptionError("match 'length' needs --length", "--length MIN[:MAX]", "-m length alone")
    (lo, hi), inv = _get(values, "length")
    return LengthMatch(min=lo, max=hi, invert=inv)


def save_length(m: LengthMatch) -> list[str]:
    return _range_words("--length", m.min, m.max, m.invert)


def build_ttl(values: dict[str, Given], ctx: Ctx) -> TtlMatch:
    if "ttl" not in values:
        raise OptionError("match 'ttl' needs an option", "--ttl-eq, --ttl-gt or --ttl-lt", "-m ttl alone")
    g = values["ttl"]
    mode = g.option[len("--ttl-"):]
    if mode == "eq" and g.invert:
        mode = "ne"
    return TtlMatch(mode=mode, value=g.value)  # type: ignore[arg-type]


def save_ttl(m: TtlMatch) -> list[str]:
    if m.mode == "ne":
        return ["!", "--ttl-eq", str(m.value)]
    return [f"--ttl-{m.mode}", str(m.value)]


TOS_NAMES = {"minimize-cost": 0x02, "normal-service": 0x00, "maximize-reliability": 0x04,
             "maximize-throughput": 0x08, "minimize-delay": 0x10}


def read_tos(args: list[str], ctx: Ctx, option: str) -> tuple[int, int]:
    text = args[0]
    if text.lower() in TOS_NAMES:
        return (TOS_NAMES[text.lower()], 0x3F)
    value_s, slash, mask_s = text.partition("/")
    value = P.strtoui(value_s, 0xFF)
    mask = P.strtoui(mask_s, 0xFF) if slash else 0xFF
    if value is None or mask is None:
        raise OptionError(f"bad TOS in {option}",
                          "VALUE[/MASK] with numbers 0-255, or Minimize-Delay, Maximize-Throughput, "
                          "Maximize-Reliability, Minimize-Cost, Normal-Service", text)
    return (value, mask)


def build_tos(values: dict[str, Given], ctx: Ctx) -> TosMatch:
    if "tos" not in values:
        raise OptionError("match 'tos' needs --tos", "--tos VALUE[/MASK]", "-m tos alone")
    (value, mask), inv = _get(values, "tos")
    return TosMatch(value=value, mask=mask, invert=inv)


def save_tos(m: TosMatch) -> list[str]:
    return _neg(m.invert) + ["--tos", f"0x{m.value:02x}/0x{m.mask:02x}"]


DSCP_CLASSES = {"CS0": 0x00, "CS1": 0x08, "CS2": 0x10, "CS3": 0x18, "CS4": 0x20, "CS5": 0x28,
                "CS6": 0x30, "CS7": 0x38, "BE": 0x00, "AF11": 0x0a, "AF12": 0x0c, "AF13": 0x0e,
                "AF21": 0x12, "AF22": 0x14, "AF23": 0x16, "AF31": 0x1a, "AF32": 0x1c, "AF33": 0x1e,
                "AF41": 0x22, "AF42": 0x24, "AF43": 0x26, "EF": 0x2e}


def read_dscp_class(args: list[str], ctx: Ctx, option: str) -> int:
    v = DSCP_CLASSES.get(args[0].upper())
    if v is None:
        raise OptionError(f"unknown DSCP class in {option}", "one of " + ", ".join(DSCP_CLASSES), args[0])
    return v


def build_dscp(values: dict[str, Given], ctx: Ctx) -> DscpMatch:
    if "dscp" not in values:
        raise OptionError("match 'dscp' needs an option", "--dscp VALUE or --dscp-class CLASS",
                          "-m dscp alone")
    v, inv = _get(values, "dscp")
    return DscpMatch(value=v, invert=inv)


def save_dscp(m: DscpMatch) -> list[str]:
    return _neg(m.invert) + ["--dscp", f"0x{m.value:02x}"]


def build_tcpmss(values: dict[str, Given], ctx: Ctx) -> TcpmssMatch:
    if "mss" not in values:
        raise OptionError("match 'tcpmss' needs --mss", "--mss VALUE[:VALUE]", "-m tcpmss alone")
    (lo, hi), inv = _get(values, "mss")
    return TcpmssMatch(min=lo, max=hi, invert=inv)


def save_tcpmss(m: TcpmssMatch) -> list[str]:
    return _range_words("--mss", m.min, m.max, m.invert)


def read_prefix_mask(args: list[str], ctx: Ctx, option: str) -> int:
    """A prefix length 0-32 or a contiguous dotted mask -> prefix length."""
    text = args[0]
    if "." in text:
        mask = P.parse_ipv4(text)
        n = bin(mask).count("1") if mask is not None else -1
        if mask is None or mask != ((0xFFFFFFFF << (32 - n)) & 0xFFFFFFFF):
            raise OptionError(f"bad mask in {option}", "a prefix length 0-32 or a mask such as 255.255.255.0",
                              text)
        return n
    n = P.strtoui(text, 32)
    if n is None:
        raise OptionError(f"bad mask in {option}", "a prefix length 0-32 or a mask such as 255.255.255.0", text)
    return n


def build_connlimit(values: dict[str, Given], ctx: Ctx) -> ConnlimitMatch:
    if "limit" not in values:
        raise OptionError("match 'connlimit' needs a limit", "--connlimit-above N or --connlimit-upto N",
                          "-m connlimit without one")
    g = values["limit"]
    above = (g.option == "--connlimit-above") != g.invert
    daddr = "side" in values and values["side"].option == "--connlimit-daddr"
    return ConnlimitMatch(limit=g.value, above=above,
                          mask=values["mask"].value if "mask" in values else 32, daddr=daddr)


def save_connlimit(m: ConnlimitMatch) -> list[str]:
    return ["--connlimit-above" if m.above else "--connlimit-upto", str(m.limit),
            "--connlimit-mask", str(m.mask), "--connlimit-daddr" if m.daddr else "--connlimit-saddr"]


# --- mark, connmark -------------------------------------------------------------------------

def read_mark(args: list[str], ctx: Ctx, option: str) -> tuple[int, int]:
    """libxt_mark / libxt_connmark --mark VALUE[/MASK] (xtables_parse_mark_mask): numbers in C
    notation up to 0xffffffff, a missing mask is 0xffffffff; the value is kept as given."""
    value_s, slash, mask_s = args[0].partition("/")
    value = P.strtoui(value_s, 0xFFFFFFFF)
    mask = P.strtoui(mask_s, 0xFFFFFFFF) if slash else 0xFFFFFFFF
    if value is None or mask is None:
        raise OptionError(f"bad mark value in {option}", "VALUE or VALUE/MASK, numbers 0-0xffffffff", args[0])
    return (value, mask)


def build_mark(values: dict[str, Given], ctx: Ctx) -> MarkMatch:
    if "mark" not in values:
        raise OptionError("match 'mark' needs --mark", "--mark VALUE[/MASK]", "-m mark alone")
    (value, mask), inv = _get(values, "mark")
    return MarkMatch(value, mask, inv)


def build_connmark(values: dict[str, Given], ctx: Ctx) -> ConnmarkMatch:
    if "mark" not in values:
        raise OptionError("match 'connmark' needs --mark", "--mark VALUE[/MASK]", "-m connmark alone")
    (value, mask), inv = _get(values, "mark")
    return ConnmarkMatch(value, mask, inv)


def save_mark(m) -> list[str]:
    """xtables' print_mark: 0xVALUE, then /0xMASK unless the mask is all ones."""
    text = f"0x{m.value:x}" + (f"/0x{m.mask:x}" if m.mask != 0xFFFFFFFF else "")
    return _neg(m.invert) + ["--mark", text]


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
    MatchSpec("limit", LimitMatch, (
        Option(("limit",), "limit", read_limit, invertible=False),
        Option(("limit-burst",), "burst", _uint_reader("burst", 0, LIMIT_BURST_MAX), invertible=False),
    ), build_limit, save_limit),
    MatchSpec("hashlimit", HashlimitMatch, (
        Option(("hashlimit-upto", "hashlimit"), "rate", read_hashlimit_rate),
        Option(("hashlimit-above",), "rate", read_hashlimit_rate),
        Option(("hashlimit-burst",), "burst", read_hashlimit_burst, invertible=False),
        Option(("hashlimit-mode",), "mode", read_hashlimit_mode, invertible=False),
        Option(("hashlimit-name",), "name", _read_word("table name", HASHLIMIT_NAME_MAX), invertible=False),
        Option(("hashlimit-htable-expire",), "expire", _uint_reader("expiry time (ms)", 0, 0xFFFFFFFF),
               invertible=False),
        Option(("hashlimit-htable-size",), "size", _uint_reader("number of buckets", 0, 0xFFFFFFFF),
               invertible=False),
        Option(("hashlimit-htable-max",), "max", _uint_reader("number of entries", 0, 0xFFFFFFFF),
               invertible=False),
        Option(("hashlimit-htable-gcinterval",), "gcinterval",
               _uint_reader("collector interval (ms; the kernel refuses 0)", 1, 0xFFFFFFFF), invertible=False),
        Option(("hashlimit-srcmask",), "srcmask", _uint_reader("prefix length", 0, 32), invertible=False),
        Option(("hashlimit-dstmask",), "dstmask", _uint_reader("prefix length", 0, 32), invertible=False),
        Option(("hashlimit-rate-match",), "rate_match", _flag, nargs=0, invertible=False),
        Option(("hashlimit-rate-interval",), "interval", _read_interval, invertible=False),
    ), build_hashlimit, save_hashlimit),
    MatchSpec("set", SetMatch, (Option(("match-set", "set"), "set", read_match_set, nargs=2),),
              build_set, save_set,
              unsupported=("return-nomatch", "update-counters", "update-subcounters", "packets-eq",
                           "packets-lt", "packets-gt", "bytes-eq", "bytes-lt", "bytes-gt")),
    MatchSpec("recent", RecentMatch, (
        Option(("set",), "command", _flag, nargs=0),
        Option(("rcheck",), "command", _flag, nargs=0),
        Option(("update",), "command", _flag, nargs=0),
        Option(("remove",), "command", _flag, nargs=0),
        Option(("seconds",), "seconds", _uint_reader("number of seconds", 1, 0xFFFFFFFF), invertible=False),
        Option(("reap",), "reap", _flag, nargs=0, invertible=False),
        Option(("hitcount",), "hitcount", _uint_reader("hit count", 1, 0xFFFFFFFF), invertible=False),
        Option(("rttl",), "rttl", _flag, nargs=0, invertible=False),
        Option(("name",), "name", _read_word("list name", RECENT_NAME_MAX), invertible=False),
        Option(("rsource",), "side", _flag, nargs=0, invertible=False),
        Option(("rdest",), "side", _flag, nargs=0, invertible=False),
        Option(("mask",), "mask", read_recent_mask, invertible=False),
    ), build_recent, save_recent),
    MatchSpec("addrtype", AddrtypeMatch, (
        Option(("src-type",), "src", read_addrtypes),
        Option(("dst-type",), "dst", read_addrtypes),
        Option(("limit-iface-in",), "iface_in", _flag, nargs=0, invertible=False),
        Option(("limit-iface-out",), "iface_out", _flag, nargs=0, invertible=False),
    ), build_addrtype, save_addrtype),
    MatchSpec("pkttype", PkttypeMatch, (Option(("pkt-type",), "type", read_pkttype),),
              build_pkttype, save_pkttype),
    MatchSpec("mac", MacMatch, (Option(("mac-source",), "mac", read_mac),), build_mac, save_mac),
    MatchSpec("length", LengthMatch, (Option(("length",), "length", read_u16_range),),
              build_length, save_length),
    MatchSpec("ttl", TtlMatch, (
        Option(("ttl-eq",), "ttl", _uint_reader("TTL", 0, 255)),
        Option(("ttl-gt",), "ttl", _uint_reader("TTL", 0, 255), invertible=False),
        Option(("ttl-lt",), "ttl", _uint_reader("TTL", 0, 255), invertible=False),
    ), build_ttl, save_ttl),
    MatchSpec("tos", TosMatch, (Option(("tos",), "tos", read_tos),), build_tos, save_tos),
    MatchSpec("dscp", DscpMatch, (
        Option(("dscp",), "dscp", _uint_reader("DSCP", 0, 63)),
        Option(("dscp-class",), "dscp", read_dscp_class),
    ), build_dscp, save_dscp),
    MatchSpec("tcpmss", TcpmssMatch, (Option(("mss",), "mss", read_u16_range),), build_tcpmss, save_tcpmss,
              needs_proto=IPPROTO_TCP),
    MatchSpec("connlimit", ConnlimitMatch, (
        Option(("connlimit-upto",), "limit", _uint_reader("connection count", 0, 0xFFFFFFFF)),
        Option(("connlimit-above",), "limit", _uint_reader("connection count", 0, 0xFFFFFFFF)),
        Option(("connlimit-mask",), "mask", read_prefix_mask, invertible=False),
        Option(("connlimit-saddr",), "side", _flag, nargs=0, invertible=False),
        Option(("connlimit-daddr",), "side", _flag, nargs=0, invertible=False),
    ), build_connlimit, save_connlimit),
    MatchSpec("mark", MarkMatch, (Option(("mark",), "mark", read_mark),), build_mark, save_mark),
    MatchSpec("connmark", ConnmarkMatch, (Option(("mark",), "mark", read_mark),), build_connmark, save_mark),
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
