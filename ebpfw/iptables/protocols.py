"""Number and name tables iptables consults: /etc/protocols, /etc/services, ICMP types,
TCP flags, conntrack states, plus `strtoui`, iptables' way of reading numbers.

Contract: every function here is pure lookup (files are read once, lazily). When
/etc/protocols or /etc/services is missing or unreadable, a built-in table with the
common entries (copied from Debian 12's files) is used instead, so parsing never
depends on a name service. Nothing here does DNS or NSS lookups.
"""

from __future__ import annotations

import functools
import re
from pathlib import Path
from typing import Optional

PROTOCOLS_FILE = Path("/etc/protocols")
SERVICES_FILE = Path("/etc/services")

# Common protocols as Debian 12's /etc/protocols names them (official name first).
_FALLBACK_PROTOCOLS: tuple[tuple[str, int, tuple[str, ...]], ...] = (
    ("ip", 0, ("IP",)), ("hopopt", 0, ("HOPOPT",)), ("icmp", 1, ("ICMP",)), ("igmp", 2, ("IGMP",)),
    ("ipencap", 4, ("IP-ENCAP",)), ("tcp", 6, ("TCP",)), ("egp", 8, ("EGP",)), ("udp", 17, ("UDP",)),
    ("dccp", 33, ("DCCP",)), ("ipv6", 41, ("IPv6",)), ("ipv6-route", 43, ("IPv6-Route",)),
    ("ipv6-frag", 44, ("IPv6-Frag",)), ("rsvp", 46, ("RSVP",)), ("gre", 47, ("GRE",)),
    ("esp", 50, ("IPSEC-ESP",)), ("ah", 51, ("IPSEC-AH",)), ("ipv6-icmp", 58, ("IPv6-ICMP",)),
    ("ipv6-nonxt", 59, ("IPv6-NoNxt",)), ("ipv6-opts", 60, ("IPv6-Opts",)),
    ("eigrp", 88, ("EIGRP",)), ("ospf", 89, ("OSPFIGP",)), ("ipip", 94, ("IPIP",)),
    ("etherip", 97, ("ETHERIP",)), ("encap", 98, ("ENCAP",)), ("pim", 103, ("PIM",)),
    ("ipcomp", 108, ("IPCOMP",)), ("vrrp", 112, ("VRRP",)), ("l2tp", 115, ("L2TP",)),
    ("isis", 124, ("ISIS",)), ("sctp", 132, ("SCTP",)), ("mobility-header", 135, ("Mobility-Header",)),
    ("udplite", 136, ("UDPLite",)), ("mpls-in-ip", 137, ("MPLS-in-IP",)),
)

# iptables' own xtables_chain_protos, consulted after the protocols file when reading -p.
_CHAIN_PROTOS = {"tcp": 6, "sctp": 132, "udp": 17, "udplite": 136, "icmp": 1, "icmpv6": 58,
                 "esp": 50, "ah": 51, "mh": 135, "all": 0}

_FALLBACK_SERVICES: tuple[tuple[str, int, tuple[str, ...], tuple[str, ...]], ...] = (
    # name, port, protocols, aliases
    ("ftp-data", 20, ("tcp",), ()), ("ftp", 21, ("tcp",), ()), ("ssh", 22, ("tcp",), ()),
    ("telnet", 23, ("tcp",), ()), ("smtp", 25, ("tcp",), ("mail",)),
    ("domain", 53, ("tcp", "udp"), ()), ("bootps", 67, ("udp",), ()), ("bootpc", 68, ("udp",), ()),
    ("tftp", 69, ("udp",), ()), ("http", 80, ("tcp",), ("www",)), ("pop3", 110, ("tcp",), ("pop-3",)),
    ("sunrpc", 111, ("tcp", "udp"), ("portmapper",)), ("ntp", 123, ("udp",), ()),
    ("imap2", 143, ("tcp",), ("imap",)), ("snmp", 161, ("tcp", "udp"), ()),
    ("ldap", 389, ("tcp", "udp"), ()), ("https", 443, ("tcp", "udp"), ()),
    ("submissions", 465, ("tcp",), ("ssmtp", "smtps", "urd")), ("syslog", 514, ("udp",), ()),
    ("submission", 587, ("tcp",), ()), ("ldaps", 636, ("tcp", "udp"), ()),
    ("imaps", 993, ("tcp",), ()), ("pop3s", 995, ("tcp",), ()),
    ("openvpn", 1194, ("tcp", "udp"), ()), ("mysql", 3306, ("tcp",), ()),
    ("postgresql", 5432, ("tcp",), ("postgres",)),
)


_DOTTED = re.compile(r"(0|[1-9][0-9]{0,2})\.(0|[1-9][0-9]{0,2})\.(0|[1-9][0-9]{0,2})\.(0|[1-9][0-9]{0,2})")


def parse_ipv4(text: str) -> Optional[int]:
    """A dotted quad of decimal octets (no leading zeros, no short forms: iptables would read
    "010" as octal and "10.1" as 10.1.0.0, which we refuse rather than guess) → host-order int."""
    m = _DOTTED.fullmatch(text)
    if not m:
        return None
    a, b, c, d = (int(x) for x in m.groups())
    if a > 255 or b > 255 or c > 255 or d > 255:
        return None
    return (a << 24) | (b << 16) | (c << 8) | d


_DECIMAL = re.compile(r"[1-9][0-9]*")
_HEX = re.compile(r"0[xX][0-9a-fA-F]+")
_OCTAL = re.compile(r"0[0-7]*")


def strtoui(text: str, maximum: int) -> Optional[int]:
    """Read `text` the way iptables' xtables_strtoui(..., base 0) does: decimal,
    0x-prefixed hex or 0-prefixed octal, the whole string, at most `maximum`.
    None when it is not such a number."""
    if _DECIMAL.fullmatch(text):      # the common case first
        value = int(text, 10)
    elif _HEX.fullmatch(text):
        value = int(text, 16)
    elif _OCTAL.fullmatch(text):
        value = int(text, 8)
    else:
        return None
    return value if value <= maximum else None


@functools.lru_cache(maxsize=1)
def _protocols() -> tuple[dict[str, int], dict[int, str]]:
    by_name: dict[str, int] = {}
    by_number: dict[int, str] = {}
    entries: list[tuple[str, int, tuple[str, ...]]] = []
    try:
        for line in PROTOCOLS_FILE.read_text(encoding="utf-8", errors="replace").splitlines():
            fields = line.split("#", 1)[0].split()
            if len(fields) < 2 or not fields[1].isdigit():
                continue
            entries.append((fields[0], int(fields[1]), tuple(fields[2:])))
    except OSError:
        entries = []
    if not entries:
        entries = list(_FALLBACK_PROTOCOLS)
    for name, number, aliases in entries:
        if number > 255:
            continue
        for n in (name, *aliases):
            by_name.setdefault(n, number)
        by_number.setdefault(number, name)
    return by_name, by_number


@functools.lru_cache(maxsize=1)
def _services() -> dict[tuple[str, str], int]:
    table: dict[tuple[str, str], int] = {}
    found = False
    try:
        for line in SERVICES_FILE.read_text(encoding="utf-8", errors="replace").splitlines():
            fields = line.split("#", 1)[0].split()
            if len(fields) < 2 or "/" not in fields[1]:
                continue
            port, _, proto = fields[1].partition("/")
            if not port.isdigit() or int(port) > 65535:
                continue
            found = True
            for n in (fields[0], *fields[2:]):
                table.setdefault((n, proto), int(port))
    except OSError:
        found = False
    if not found:
        for name, port, protos, aliases in _FALLBACK_SERVICES:
            for proto in protos:
                for n in (name, *aliases):
                    table.setdefault((n, proto), port)
    return table


def parse_protocol(text: str) -> Optional[int]:
    """`-p` argument → protocol number (0 = all), as xtables_parse_protocol does after
    iptables lower-cases it. None when unknown."""
    text = text.lower()
    number = strtoui(text, 255)
    if number is not None:
        return number
    if text == "all":
        return 0
    by_name, _ = _protocols()
    if text in by_name:
        return by_name[text]
    return _CHAIN_PROTOS.get(text)


def protocol_name(number: int) -> str:
    """How iptables-save prints protocol `number`: its /etc/protocols name, else the number."""
    _, by_number = _protocols()
    return by_number.get(number, str(number))


def parse_port(text: str, proto: str) -> Optional[int]:
    """One port: a number (base 0, as iptables) or a service name for `proto` ("tcp", "udp")."""
    number = strtoui(text, 65535)
    if number is not None:
        return number
    return _services().get((text, proto))


# --- TCP flags (libxt_tcp's tcp_flag_names, in print order) -------------------------------
TCP_FLAG_NAMES: tuple[tuple[str, int], ...] = (
    ("FIN", 0x01), ("SYN", 0x02), ("RST", 0x04), ("PSH", 0x08), ("ACK", 0x10), ("URG", 0x20),
    ("ALL", 0x3F), ("NONE", 0x00),
)
SYN_FLAGS = (0x17, 0x02)   # --syn: FIN,SYN,RST,ACK SYN


def parse_tcp_flags(text: str) -> Optional[int]:
    """A comma list of flag names (any case) → bit mask; None if a name is unknown."""
    names = {n: v for n, v in TCP_FLAG_NAMES}
    value = 0
    for part in text.split(","):
        bit = names.get(part.upper())
        if bit is None:
            return None
        value |= bit
    return value


def format_tcp_flags(value: int) -> str:
    """As libxt_tcp's print_tcpf: single flags in FIN..URG order, NONE for 0."""
    out = [n for n, v in TCP_FLAG_NAMES[:6] if value & v]
    return ",".join(out) if out else "NONE"


# --- ICMP types (libxtables' xtables_icmp_codes order, as `iptables -p icmp -h` lists) ----
ICMP_NAMES: tuple[tuple[str, int, int, int], ...] = (
    ("any", 0xFF, 0, 0xFF),
    ("echo-reply", 0, 0, 0xFF),
    ("pong", 0, 0, 0xFF),
    ("destination-unreachable", 3, 0, 0xFF),
    ("network-unreachable", 3, 0, 0),
    ("host-unreachable", 3, 1, 1),
    ("protocol-unreachable", 3, 2, 2),
    ("port-unreachable", 3, 3, 3),
    ("fragmentation-needed", 3, 4, 4),
    ("source-route-failed", 3, 5, 5),
    ("network-unknown", 3, 6, 6),
    ("host-unknown", 3, 7, 7),
    ("network-prohibited", 3, 9, 9),
    ("host-prohibited", 3, 10, 10),
    ("TOS-network-unreachable", 3, 11, 11),
    ("TOS-host-unreachable", 3, 12, 12),
    ("communication-prohibited", 3, 13, 13),
    ("host-precedence-violation", 3, 14, 14),
    ("precedence-cutoff", 3, 15, 15),
    ("source-quench", 4, 0, 0xFF),
    ("redirect", 5, 0, 0xFF),
    ("network-redirect", 5, 0, 0),
    ("host-redirect", 5, 1, 1),
    ("TOS-network-redirect", 5, 2, 2),
    ("TOS-host-redirect", 5, 3, 3),
    ("echo-request", 8, 0, 0xFF),
    ("ping", 8, 0, 0xFF),
    ("router-advertisement", 9, 0, 0xFF),
    ("router-solicitation", 10, 0, 0xFF),
    ("time-exceeded", 11, 0, 0xFF),
    ("ttl-exceeded", 11, 0, 0xFF),
    ("ttl-zero-during-transit", 11, 0, 0),
    ("ttl-zero-during-reassembly", 11, 1, 1),
    ("parameter-problem", 12, 0, 0xFF),
    ("ip-header-bad", 12, 0, 0),
    ("required-option-missing", 12, 1, 1),
    ("timestamp-request", 13, 0, 0xFF),
    ("timestamp-reply", 14, 0, 0xFF),
    ("address-mask-request", 17, 0, 0xFF),
    ("address-mask-reply", 18, 0, 0xFF),
)


def lookup_icmp_name(text: str) -> tuple[Optional[tuple[int, int, int]], list[str]]:
    """iptables' rule: a case-insensitive prefix of exactly one name. Returns
    ((type, code_min, code_max) or None, the names that matched)."""
    low = text.lower()
    hits = [entry for entry in ICMP_NAMES if entry[0].lower().startswith(low)]
    if len(hits) == 1:
        _, t, lo, hi = hits[0]
        return (t, lo, hi), [hits[0][0]]
    return None, [h[0] for h in hits]


# --- conntrack states (print order of libxt_conntrack / libxt_state) ----------------------
CT_PRINT_ORDER = ("INVALID", "NEW", "RELATED", "ESTABLISHED", "UNTRACKED")
