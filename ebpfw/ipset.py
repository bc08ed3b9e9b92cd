"""`ipset save` text ⇄ typed IPv4 sets, for `-m set --match-set NAME ...` rules.

Contract: `parse_ipsets(text, filename)` reads what `ipset save` prints (and what `ipset
restore` accepts) for the set types ebpfw knows: `create NAME TYPE [options]` and `add NAME
ELEMENT [timeout N] [nomatch]` lines, `#` comments and blank lines. It returns the sets by name
in file order, with every value as the kernel would keep it: hashsize rounded up to a power of
two (at least 64), the family/hashsize/maxelem defaults filled in, address ranges and CIDRs of
hash:ip and port ranges expanded into single elements (as ipset does), hash:net ranges turned
into prefixes, addresses masked, service names and protocol numbers resolved. Every problem is
collected and raised as one RulesetError of `FILE:LINE: what, expected ..., found '...'` lines.

`save_ipsets(sets)` prints them back in `ipset save` format (elements in IR order; the kernel
prints them in hash order), so `ipset restore` of it recreates the same sets and
parse_ipsets(save_ipsets(x)) == x up to positions.

Types: hash:ip, hash:net, hash:ip,port, hash:net,port, bitmap:port, family inet. Refused
clearly: IPv6 (family inet6), netmask, counters/comment/skbinfo/forceadd extensions, icmp
elements of the ,port types, other set types and other commands.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Literal, Optional

from .errors import RulesetError
from .iptables import protocols as P
from .ruleset import Pos

SetType = Literal["hash:ip", "hash:net", "hash:ip,port", "hash:net,port", "bitmap:port"]
SET_TYPES: dict[str, int] = {"hash:ip": 1, "hash:net": 1, "hash:ip,port": 2, "hash:net,port": 2,
                             "bitmap:port": 1}           # type -> dimension (what -m set reads)
PORT_PROTOS = {"tcp": 6, "udp": 17, "sctp": 132, "udplite": 136}
PROTO_NAMES = {v: k for k, v in PORT_PROTOS.items()}
MAX_NAME = 31                                             # IPSET_MAXNAMELEN - 1
MIN_HASHSIZE = 64
MAX_EXPAND = 65536                                        # elements one add line may expand into
_UNSUPPORTED_CREATE = ("counters", "comment", "skbinfo", "forceadd", "netmask", "markmask")
_UNSUPPORTED_ADD = ("packets", "bytes", "comment", "skbmark", "skbprio", "skbqueue", "nomatch")


@dataclass(frozen=True)
class IpSetEntry:
    """One element. `addr`/`prefixlen` for the hash types (prefixlen 32 for hash:ip),
    `proto`/`port` for the ,port types and bitmap:port (proto None there), `timeout` the
    seconds left (0 = never expires; None when the set has no timeout), `nomatch` an
    exception inside a hash:net set (a packet in it does not match)."""
    addr: Optional[int] = None
    prefixlen: int = 32
    proto: Optional[int] = None
    port: Optional[int] = None
    timeout: Optional[int] = None
    nomatch: bool = False
    pos: Pos = field(default=Pos("", 0), compare=False)


@dataclass(frozen=True)
class IpSet:
    """A set as the kernel keeps it. `hashsize`/`maxelem`/`bucketsize`/`initval` only for
    hash types; `range` (first, last port) only for bitmap:port; `timeout` the default entry
    timeout (None: the set has no timeouts). `bucketsize`/`initval` are None when the kernel
    chooses them."""
    name: str
    type: SetType
    pos: Pos
    entries: tuple[IpSetEntry, ...] = ()
    family: str = "inet"
    hashsize: Optional[int] = 1024
    maxelem: Optional[int] = 65536
    timeout: Optional[int] = None
    range: Optional[tuple[int, int]] = None
    bucketsize: Optional[int] = None
    initval: Optional[int] = None

    @property
    def dimension(self) -> int:
        return SET_TYPES[self.type]


class _Problem(Exception):
    def __init__(self, what: str, expected: str, found: str):
        super().__init__(f"{what}, expected {expected}, found '{found}'")


def _uint(text: str, what: str, maximum: int = 0xFFFFFFFF) -> int:
    v = P.strtoui(text, maximum)
    if v is None:
        raise _Problem(f"bad {what}", f"a number 0-{maximum}", text)
    return v


def _ipv4(text: str) -> int:
    v = P.parse_ipv4(text)
    if v is None:
        raise _Problem("bad IPv4 address", "a dotted quad such as 192.0.2.1", text)
    return v


def _cidrs(lo: int, hi: int) -> list[tuple[int, int]]:
    """The fewest prefixes covering [lo, hi] (as ipset turns a range into hash:net elements)."""
    out = []
    while lo <= hi:
        size = (lo & -lo).bit_length() - 1 if lo else 32
        while size > 0 and lo + (1 << size) - 1 > hi:
            size -= 1
        out.append((lo, 32 - size))
        lo += 1 << size
    return out


def _addresses(text: str, settype: str) -> list[tuple[int, int]]:
    """An address part -> [(addr, prefixlen)] for the set type."""
    net = settype.startswith("hash:net")
    if "-" in text:
        lo_s, _, hi_s = text.partition("-")
        lo, hi = _ipv4(lo_s), _ipv4(hi_s)
        if lo > hi:
            raise _Problem("reversed address range", "FIRST-LAST with FIRST <= LAST", text)
        if net:
            return _cidrs(lo, hi)
        if hi - lo >= MAX_EXPAND:
            raise _Problem(f"address range of more than {MAX_EXPAND} addresses in a {settype} set",
                           "a smaller range (or a hash:net set)", text)
        return [(a, 32) for a in range(lo, hi + 1)]
    addr_s, slash, plen_s = text.partition("/")
    addr = _ipv4(addr_s)
    plen = _uint(plen_s, "prefix length", 32) if slash else 32
    if plen == 0:
        raise _Problem("prefix length 0 (ipset refuses it)", "a prefix length 1-32", text)
    mask = (0xFFFFFFFF << (32 - plen)) & 0xFFFFFFFF
    if net:
        return [(addr & mask, plen)]
    if (1 << (32 - plen)) > MAX_EXPAND:
        raise _Problem(f"network of more than {MAX_EXPAND} addresses in a {settype} set",
                       "a smaller network (or a hash:net set)", text)
    base = addr & mask
    return [(a, 32) for a in range(base, base + (1 << (32 - plen)))]


def _ports(text: str, with_proto: bool) -> list[tuple[Optional[int], int]]:
    """[proto:]port[-port] -> [(proto, port)]; proto defaults to tcp (None without protocols)."""
    proto = 6 if with_proto else None
    pname = "tcp"
    if ":" in text:
        pname, _, text = text.partition(":")
        num = P.strtoui(pname, 255)
        if num is not None:
            pname = PROTO_NAMES.get(num, pname)
        if pname.lower() in ("icmp", "1"):
            raise _Problem("icmp elements are not supported yet", "tcp:, udp:, sctp: or udplite: PORT", pname)
        if pname.lower() not in PORT_PROTOS:
            raise _Problem("unknown protocol in element", "tcp, udp, sctp or udplite", pname)
        pname = pname.lower()
        proto = PORT_PROTOS[pname] if with_proto else None

    def port(t: str) -> int:
        v = P.parse_port(t, pname)
        if v is None:
            raise _Problem("bad port", f"a number 0-65535 or a {pname} service name", t)
        return v
    # a service name may itself contain '-' (e.g. "ftp-data"): try the whole text first
    single = P.parse_port(text, pname)
    if single is not None:
        return [(proto, single)]
    lo_s, dash, hi_s = text.partition("-")
    lo = port(lo_s)
    hi = port(hi_s) if dash else lo
    if lo > hi:
        raise _Problem("reversed port range", "FIRST-LAST with FIRST <= LAST", text)
    return [(proto, p) for p in range(lo, hi + 1)]


@dataclass
class _Building:
    set: IpSet
    entries: list[IpSetEntry] = field(default_factory=list)
    keys: set = field(default_factory=set)


class _Parser:
    def __init__(self, filename: str):
        self.filename = filename
        self.problems: list[str] = []
        self.sets: dict[str, _Building] = {}

    def run(self, text: str) -> None:
        for lineno, raw in enumerate(text.split("\n"), 1):
            s = raw.strip()
            if not s or s.startswith("#"):
                continue
            words = s.split()
            try:
                if words[0] == "create":
                    self.create(words, lineno)
                elif words[0] == "add":
                    self.add(words, lineno)
                else:
                    raise _Problem(f"command '{words[0]}' is not allowed in a set file",
                                   "'create NAME TYPE ...' or 'add NAME ELEMENT ...' (ipset save format)",
                                   words[0])
            except _Problem as exc:
                self.problems.append(f"{self.filename}:{lineno}: {exc}")

    def create(self, words: list[str], lineno: int) -> None:
        if len(words) < 3:
            raise _Problem("incomplete create line", "'create NAME TYPE [options]'", " ".join(words))
        name, settype = words[1], words[2]
        if not name or len(name) > MAX_NAME or any(c in "\"'" for c in name):
            raise _Problem("bad set name", f"1-{MAX_NAME} characters without quotes", name)
        if name in self.sets:
            raise _Problem(f"set '{name}' created twice (first at line {self.sets[name].set.pos.line})",
                           "one create line per set", f"create {name}")
        if settype not in SET_TYPES:
            raise _Problem("set type not supported", "hash:ip, hash:net, hash:ip,port, hash:net,port or "
                           "bitmap:port", settype)
        bitmap = settype == "bitmap:port"
        opts: dict[str, object] = {"hashsize": None if bitmap else 1024, "maxelem": None if bitmap else 65536}
        i = 3
        hash_only = ("family", "hashsize", "maxelem", "bucketsize", "initval")
        while i < len(words):
            opt = words[i]
            if opt in _UNSUPPORTED_CREATE:
                raise _Problem(f"create option '{opt}' is not supported yet",
                               "family, hashsize, maxelem, timeout, range, bucketsize, initval", opt)
            if opt not in hash_only + ("timeout", "range"):
                raise _Problem("unknown create option", "family, hashsize, maxelem, timeout, range, "
                               "bucketsize, initval", opt)
            if (bitmap and opt in hash_only) or (not bitmap and opt == "range"):
                raise _Problem(f"option '{opt}' does not apply to {settype}",
                               "range and timeout for bitmap:port, no range for hash types", opt)
            if i + 1 >= len(words):
                raise _Problem(f"option '{opt}' needs a value", f"'{opt} VALUE'", opt)
            value = words[i + 1]
            if opt == "family":
                if value != "inet":
                    raise _Problem("only IPv4 sets are supported", "family inet", value)
            elif opt == "hashsize":
                n = max(_uint(value, "hashsize"), MIN_HASHSIZE)
                opts["hashsize"] = 1 << (n - 1).bit_length()
            elif opt == "range":
                lo_s, dash, hi_s = value.partition("-")
                lo, hi = _uint(lo_s, "port", 0xFFFF), _uint(hi_s, "port", 0xFFFF) if dash else None
                if hi is None or lo > hi:
                    raise _Problem("bad port range", "FIRST-LAST with FIRST <= LAST", value)
                opts["range"] = (lo, hi)
            elif opt == "initval":
                if not re.fullmatch(r"0x[0-9a-fA-F]{1,8}", value):
                    raise _Problem("bad initval", "a 32-bit hex number such as 0x1234abcd", value)
                opts["initval"] = int(value, 16)
            else:
                opts[opt] = _uint(value, opt)
            i += 2
        if bitmap and "range" not in opts:
            raise _Problem("bitmap:port needs a port range", "'range FIRST-LAST'", " ".join(words))
        self.sets[name] = _Building(IpSet(name=name, type=settype, pos=Pos(self.filename, lineno),  # type: ignore[arg-type]
                                          **opts))  # type: ignore[arg-type]

    def add(self, words: list[str], lineno: int) -> None:
        if len(words) < 3:
            raise _Problem("incomplete add line", "'add NAME ELEMENT [timeout N]'", " ".join(words))
        name, elem = words[1], words[2]
        b = self.sets.get(name)
        if b is None:
            raise _Problem(f"add to set '{name}' that is not created before", f"'create {name} TYPE' first",
                           f"add {name}")
        st = b.set
        timeout: Optional[int] = st.timeout
        nomatch = False
        i = 3
        while i < len(words):
            opt = words[i]
            if opt == "timeout":
                if st.timeout is None:
                    raise _Problem(f"element timeout in set '{name}' created without timeout",
                                   "'timeout N' on the create line first", "timeout")
                if i + 1 >= len(words):
                    raise _Problem("option 'timeout' needs a value", "'timeout SECONDS'", opt)
                timeout = _uint(words[i + 1], "timeout", 2147483)
                i += 2
            elif opt == "nomatch" and st.type.startswith("hash:net"):
                nomatch = True
                i += 1
            elif opt in _UNSUPPORTED_ADD:
                raise _Problem(f"element option '{opt}' is not supported", "'timeout N' (or nomatch in "
                               "hash:net sets)", opt)
            else:
                raise _Problem("unknown element option", "'timeout N' (or nomatch in hash:net sets)", opt)
        new = self.element(st, elem, timeout, nomatch, Pos(self.filename, lineno))
        for e in new:
            key = (e.addr, e.prefixlen, e.proto, e.port)
            if key in b.keys:
                raise _Problem("element already in the set (ipset restore refuses it)", "each element once",
                               elem)
            b.keys.add(key)
        if st.maxelem is not None and len(b.entries) + len(new) > st.maxelem:
            raise _Problem(f"set '{name}' is full (maxelem {st.maxelem})", "a larger maxelem", elem)
        b.entries.extend(new)

    def element(self, st: IpSet, text: str, timeout: Optional[int], nomatch: bool, pos: Pos) -> list[IpSetEntry]:
        if st.type == "bitmap:port":
            out = []
            for _, port in _ports(text, with_proto=False):
                assert st.range is not None
                if not st.range[0] <= port <= st.range[1]:
                    raise _Problem(f"port outside the set's range {st.range[0]}-{st.range[1]}",
                                   "a port inside the range", text)
                out.append(IpSetEntry(port=port, timeout=timeout, pos=pos))
            return out
        addr_s, comma, port_s = text.partition(",")
        if st.type.endswith(",port") != bool(comma):
            raise _Problem(f"element does not fit a {st.type} set",
                           "ADDRESS,[PROTO:]PORT" if st.type.endswith(",port") else "one address or network",
                           text)
        addrs = _addresses(addr_s, st.type)
        ports: list[tuple[Optional[int], Optional[int]]] = list(_ports(port_s, True)) if comma else [(None, None)]
        if len(addrs) * len(ports) > MAX_EXPAND:
            raise _Problem(f"element expands into more than {MAX_EXPAND} entries", "a smaller range", text)
        return [IpSetEntry(addr=a, prefixlen=plen, proto=pr, port=pt, timeout=timeout, nomatch=nomatch, pos=pos)
                for a, plen in addrs for pr, pt in ports]


def parse_ipsets(text: str, filename: str = "<stdin>") -> dict[str, IpSet]:
    """Parse `ipset save` text; raise RulesetError listing every problem."""
    parser = _Parser(filename)
    parser.run(text)
    if parser.problems:
        n = len(parser.problems)
        raise RulesetError(f"{n} problem{'s' if n != 1 else ''} in {filename}", problems=parser.problems)
    out: dict[str, IpSet] = {}
    for name, b in parser.sets.items():
        s = b.set
        out[name] = IpSet(name=s.name, type=s.type, pos=s.pos, entries=tuple(b.entries), family=s.family,
                          hashsize=s.hashsize, maxelem=s.maxelem, timeout=s.timeout, range=s.range,
                          bucketsize=s.bucketsize, initval=s.initval)
    return out


def _ip(addr: int) -> str:
    return ".".join(str((addr >> s) & 0xFF) for s in (24, 16, 8, 0))


def format_element(st: IpSet, e: IpSetEntry) -> str:
    if st.type == "bitmap:port":
        return str(e.port)
    text = _ip(e.addr or 0)
    if st.type.startswith("hash:net") and e.prefixlen != 32:
        text += f"/{e.prefixlen}"
    if st.type.endswith(",port"):
        text += f",{PROTO_NAMES.get(e.proto or 6, str(e.proto))}:{e.port}"
    return text


def save_ipsets(sets: dict[str, IpSet] | list[IpSet]) -> str:
    """`ipset save` text for the sets (create line, then its add lines, set by set)."""
    out: list[str] = []
    for st in (sets.values() if isinstance(sets, dict) else sets):
        words = ["create", st.name, st.type]
        if st.type == "bitmap:port":
            assert st.range is not None
            words += ["range", f"{st.range[0]}-{st.range[1]}"]
            if st.timeout is not None:
                words += ["timeout", str(st.timeout)]
        else:
            words += ["family", st.family, "hashsize", str(st.hashsize), "maxelem", str(st.maxelem)]
            if st.timeout is not None:
                words += ["timeout", str(st.timeout)]
            if st.bucketsize is not None:
                words += ["bucketsize", str(st.bucketsize)]
            if st.initval is not None:
                words += ["initval", f"0x{st.initval:08x}"]
        out.append(" ".join(words))
        for e in st.entries:
            line = f"add {st.name} {format_element(st, e)}"
            if e.timeout is not None:
                line += f" timeout {e.timeout}"
            if e.nomatch:
                line += " nomatch"
            out.append(line)
    return "".join(line + "\n" for line in out)
