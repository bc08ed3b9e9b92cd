"""A reference interpreter of iptables' filter-table semantics over the IR, for tests.

It is deliberately the naive linked-list walk (what the kernel's ipt_do_table does), written
independently of the compiler, so that the bit-vector datapath can be checked against it on
any ruleset and packet. Real iptables is the oracle of the conformance suite; this is the
fast oracle for BPF_PROG_TEST_RUN tests and property tests.
"""

from __future__ import annotations

import dataclasses
import struct
from dataclasses import dataclass
from typing import Optional

from ebpfw.marks import ConnmarkMatch, MarkMatch

from ebpfw.ruleset import (
    ADDRTYPE_NAMES, AddrtypeMatch, CommentMatch, DscpMatch, HashlimitMatch, IcmpMatch, IprangeMatch, LengthMatch, MacMatch,
    MultiportMatch, PkttypeMatch, RecentMatch, Rule, Table, TcpMatch, TcpmssMatch, TosMatch, TtlMatch, UdpMatch,
)

TCP, UDP, ICMP = 6, 17, 1
L2_BROADCAST = b"\xff" * 6
L2_MULTICAST = b"\x01\x00\x5e\x00\x00\x05"


class Hotdrop(Exception):
    """A match set par->hotdrop: ipt_do_table returns NF_DROP at once."""


@dataclass
class Pkt:
    src: int
    dst: int
    proto: int = TCP
    sport: int = 1234
    dport: int = 80
    flags: int = 0x02          # TCP flags byte
    icmp_type: int = 8
    icmp_code: int = 0
    iif: str = ""
    oif: str = ""
    payload: int = 0           # payload bytes after the L4 header
    ttl: int = 64              # as on the wire (ip_forward decrements it before FORWARD)
    tos: int = 0
    frag: int = 0              # fragment offset in 8-byte units: non-zero is a non-first fragment
    mf: bool = False           # more fragments
    tcp_opts: bytes = b""      # TCP options, zero-padded to a multiple of 4
    tcp_doff: Optional[int] = None   # data offset to write instead of the right one (malformed)
    l2: str = "host"           # Ethernet destination at ingress: host, broadcast, multicast
    src_mac: bytes = b"\x02\0\0\0\0\x01"
    mark: int = 0              # skb->mark when the hook starts (OUTPUT: the socket's SO_MARK)
    ctmark: Optional[int] = None   # the connection's mark; None: the packet has no connection
    sock: bool = True          # OUTPUT: sent by a local socket (BPF_PROG_TEST_RUN gives TC a dummy one)

    @property
    def opts(self) -> bytes:
        return self.tcp_opts + b"\0" * (-len(self.tcp_opts) % 4)

    @property
    def l4_len(self) -> int:
        return {TCP: 20 + len(self.opts), UDP: 8, ICMP: 8}.get(self.proto, 0)

    @property
    def ip_len(self) -> int:
        return 20 + self.l4_len + self.payload


def _iface(name: str, pattern: str) -> bool:
    return name.startswith(pattern[:-1]) if pattern.endswith("+") else name == pattern


def _in(ranges, v) -> bool:
    return any(lo <= v <= hi for lo, hi in ranges)


# ---- the host's routes, for -m addrtype (inet_dev_addr_type) ----------------------------------

RTN = {name: i for i, name in enumerate(ADDRTYPE_NAMES)}
ERROR_TYPES = {"BLACKHOLE", "UNREACHABLE", "PROHIBIT", "THROW", "NAT", "XRESOLVE"}


@dataclass
class Route:
    net: int
    plen: int
    type: str        # ADDRTYPE_NAMES
    dev: str


class Host:
    """The routes of the local and main tables (one trie while there are no policy rules)."""

    def __init__(self, routes: list[Route]):
        self.routes = routes

    def addr_type(self, addr: int, dev: Optional[str]) -> int:
        if addr >> 24 == 0 or addr == 0xFFFFFFFF:
            return RTN["BROADCAST"]
        if addr >> 28 == 0xE:
            return RTN["MULTICAST"]
        best = None
        for rt in self.routes:
            mask = (0xFFFFFFFF << (32 - rt.plen)) & 0xFFFFFFFF if rt.plen else 0
            if addr & mask == rt.net and (best is None or rt.plen > best.plen):
                best = rt
        if best is None or best.type in ERROR_TYPES:   # fib_table_lookup fails: RTN_UNICAST
            return RTN["UNICAST"]
        if dev is not None and dev != best.dev:
            return RTN["UNICAST"]
        return RTN[best.type]


def tcp_mss(p: Pkt) -> Optional[int]:
    """xt_tcpmss over the bytes after the IP header (also of a non-first fragment): the MSS,
    None without one; raises Hotdrop where the kernel hotdrops."""
    raw = build_frame(p, b"\0" * 6)[34:14 + p.ip_len]
    if len(raw) < 20:
        raise Hotdrop()
    doff = (raw[12] >> 4) * 4
    if doff < 20:
        raise Hotdrop()
    optlen = doff - 20
    if optlen == 0:
        return None
    if len(raw) < doff:
        raise Hotdrop()
    op = raw[20:doff] + b"\0"          # the kernel may read one byte past the option area
    i = 0
    while i < optlen:
        if op[i] == 2 and optlen - i >= 4 and op[i + 1] == 4:
            return (op[i + 2] << 8) | op[i + 3]
        if op[i] < 2:
            i += 1
        else:
            i += op[i + 1] or 1
    return None


def pkt_type(p: Pkt, hook: str) -> str:
    """skb->pkt_type as xt_pkttype names it: from the Ethernet destination on receive;
    PACKET_HOST for what the host sends (OUTPUT)."""
    if hook == "OUTPUT":
        return "unicast"
    return {"host": "unicast", "broadcast": "broadcast", "multicast": "multicast"}[p.l2]


def rule_matches(r: Rule, p: Pkt, hook: str = "INPUT", host: Optional[Host] = None,
                 hl: Optional["Hashlimits"] = None, recent: Optional["RecentTables"] = None, now: int = 0) -> bool:
    ip = r.ip
    nonfirst = p.frag != 0
    if ip.src is not None and (((p.src & ip.src.mask) == ip.src.addr) == ip.src_invert):
        return False
    if ip.dst is not None and (((p.dst & ip.dst.mask) == ip.dst.addr) == ip.dst_invert):
        return False
    if ip.iface_in is not None and _iface(p.iif, ip.iface_in.name) == ip.iface_in.invert:
        return False
    if ip.iface_out is not None and _iface(p.oif, ip.iface_out.name) == ip.iface_out.invert:
        return False
    if ip.proto and ((p.proto == ip.proto) == ip.proto_invert):
        return False
    if ip.fragment is not None and nonfirst != ip.fragment:
        return False
    for m in r.matches:
        if isinstance(m, (TcpMatch, UdpMatch)):
            if isinstance(m, TcpMatch) and p.proto == TCP and p.frag == 1:
                raise Hotdrop()      # xt_tcp: "Dropping evil TCP offset=1 frag"
            if p.proto not in (TCP, UDP) or nonfirst:
                return False
            if m.sport is not None and _in([m.sport], p.sport) == m.sport_invert:
                return False
            if m.dport is not None and _in([m.dport], p.dport) == m.dport_invert:
                return False
            if isinstance(m, TcpMatch) and m.flags is not None:
                if ((p.flags & m.flags[0]) == m.flags[1]) == m.flags_invert:
                    return False
        elif isinstance(m, MultiportMatch):
            if p.proto not in (TCP, UDP) or nonfirst:
                return False
            if m.kind == "sports":
                hit = _in(m.ranges, p.sport)
            elif m.kind == "dports":
                hit = _in(m.ranges, p.dport)
            else:
                hit = _in(m.ranges, p.sport) or _in(m.ranges, p.dport)
            if hit == m.invert:
                return False
        elif isinstance(m, IcmpMatch):
            if p.proto != ICMP or nonfirst:
                return False
            hit = m.type == 255 or (p.icmp_type == m.type and m.code_min <= p.icmp_code <= m.code_max)
            if hit == m.invert:
                return False
        elif isinstance(m, IprangeMatch):
            if m.src is not None and (m.src[0] <= p.src <= m.src[1]) == m.src_invert:
                return False
            if m.dst is not None and (m.dst[0] <= p.dst <= m.dst[1]) == m.dst_invert:
                return False
        elif isinstance(m, CommentMatch):
            pass
        elif isinstance(m, LengthMatch):
            if (m.min <= p.ip_len <= m.max) == m.invert:
                return False
        elif isinstance(m, TtlMatch):
            ttl = p.ttl - 1 if hook == "FORWARD" else p.ttl
            ok = {"eq": ttl == m.value, "ne": ttl != m.value, "lt": ttl < m.value, "gt": ttl > m.value}[m.mode]
            if not ok:
                return False
        elif isinstance(m, TosMatch):
            if ((p.tos & m.mask) == m.value) == m.invert:
                return False
        elif isinstance(m, DscpMatch):
            if ((p.tos >> 2) == m.value) == m.invert:
                return False
        elif isinstance(m, TcpmssMatch):
            mss = tcp_mss(p)
            hit = mss is not None and m.min <= mss <= m.max
            if hit == m.invert:
                return False
        elif isinstance(m, PkttypeMatch):
            if (pkt_type(p, hook) == m.pkt_type) == m.invert:
                return False
        elif isinstance(m, MacMatch):
            if (p.src_mac == m.addr) == m.invert:
                return False
        elif isinstance(m, MarkMatch):            # xt_mark
            if ((p.mark & m.mask) == m.value) == m.invert:
                return False
        elif isinstance(m, ConnmarkMatch):        # xt_connmark: no connection, no match
            if p.ctmark is None or ((p.ctmark & m.mask) == m.value) == m.invert:
                return False
        elif isinstance(m, AddrtypeMatch):
            assert host is not None, "addrtype needs the host's routes"
            dev = (p.iif or None) if m.limit_iface_in else ((p.oif or None) if m.limit_iface_out else None)
            if m.src and bool((m.src >> host.addr_type(p.src, dev)) & 1) == m.src_invert:
                return False
            if m.dst and bool((m.dst >> host.addr_type(p.dst, dev)) & 1) == m.dst_invert:
                return False
        elif isinstance(m, HashlimitMatch):
            assert hl is not None, "hashlimit needs a Hashlimits state"
            if not hl.match(m, p):
                return False
        elif isinstance(m, RecentMatch):
            assert recent is not None, "-m recent needs the lists (RecentTables)"
            if not recent.match(m, p, hook, now):
                return False
        else:
            raise NotImplementedError(type(m).__name__)
    return True


def _xmark(old: int, value: int, mask: int) -> int:
    return ((old & ~mask) ^ value) & 0xFFFFFFFF


def _mark_target(r: Rule, p: Pkt) -> None:
    """xt_MARK / xt_CONNMARK (net/netfilter/xt_connmark.c connmark_tg_shift, no shifts) on the
    walk's packet state: MARK changes skb->mark, CONNMARK the connection's mark (nothing
    without a connection) or, with --restore-mark, skb->mark."""
    t = r.target.ext
    if r.target.kind == "MARK":
        p.mark = _xmark(p.mark, t.value, t.mask)
    elif p.ctmark is not None:
        if t.mode == "set":
            p.ctmark = _xmark(p.ctmark, t.value, t.ctmask)
        elif t.mode == "save":
            p.ctmark = _xmark(p.ctmark, p.mark & t.nfmask, t.ctmask)
        else:
            p.mark = _xmark(p.mark, p.ctmark & t.ctmask, t.nfmask)


def evaluate(table: Table, hook: str, p: Pkt, host: Optional[Host] = None,
             hl: Optional["Hashlimits"] = None, recent: Optional["RecentTables"] = None,
             now: int = 0) -> tuple[str, list[tuple[str, int]], Optional[str]]:
    """(verdict, rules counted as (chain, index), chain whose policy was counted or None);
    a hotdrop is ("DROP", what was counted before it, None). `recent` holds the -m recent
    lists (changed by the packet), `now` is the time in jiffies."""
    v, counted, policy, _ = evaluate_marks(table, hook, p, host, hl, recent, now)
    return v, counted, policy


def evaluate_marks(table: Table, hook: str, p: Pkt, host: Optional[Host] = None,
                   hl: Optional["Hashlimits"] = None, recent: Optional["RecentTables"] = None,
                   now: int = 0) -> tuple[str, list[tuple[str, int]], Optional[str], Pkt]:
    """evaluate(), and the packet as the walk left it (its `mark` and `ctmark` after the MARK
    and CONNMARK rules it reached; `p` itself is not changed)."""
    p = dataclasses.replace(p)
    chains = {c.name: c for c in table.chains}
    counted: list[tuple[str, int]] = []

    def walk(name: str, depth: int) -> Optional[str]:
        if depth > 64:
            raise RuntimeError("jump loop")
        for i, r in enumerate(chains[name].rules):
            if not rule_matches(r, p, hook, host, hl, recent, now):
                continue
            counted.append((name, i))
            k = r.target.kind
            if k in ("ACCEPT", "DROP"):
                return k
            if k in ("MARK", "CONNMARK"):
                _mark_target(r, p)
            if k == "RETURN":
                return None
            if k == "JUMP":
                v = walk(r.target.chain, depth + 1)
                if v is not None:
                    return v
            elif k == "GOTO":
                return walk(r.target.chain, depth + 1)
        return None

    if hook not in chains:
        return "ACCEPT", counted, None, p
    try:
        v = walk(hook, 0)
    except Hotdrop:
        return "DROP", counted, None, p
    if v is None:
        return chains[hook].policy, counted, hook, p
    return v, counted, None, p


def _csum(b: bytes) -> int:
    if len(b) % 2:
        b += b"\0"
    s = sum(struct.unpack(f"!{len(b) // 2}H", b))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def build_frame(p: Pkt, dst_mac: bytes, src_mac: Optional[bytes] = None) -> bytes:
    """Ethernet + IPv4 + L4 bytes for `p` (valid IP checksum, no IP options). A non-first
    fragment carries the same bytes, which the receiver takes for payload."""
    if src_mac is None:
        src_mac = p.src_mac
    if p.proto == TCP:
        doff = p.tcp_doff if p.tcp_doff is not None else 5 + len(p.opts) // 4
        l4 = struct.pack("!HHIIBBHHH", p.sport, p.dport, 1, 0, doff << 4, p.flags, 1024, 0, 0) + p.opts
    elif p.proto == UDP:
        l4 = struct.pack("!HHHH", p.sport, p.dport, 8 + p.payload, 0)
    elif p.proto == ICMP:
        l4 = struct.pack("!BBHHH", p.icmp_type, p.icmp_code, 0, 1, 1)
    else:
        l4 = b""
    body = l4 + b"\xab" * p.payload
    frag = p.frag | (0x2000 if p.mf else 0)
    hdr = struct.pack("!BBHHHBBH4s4s", 0x45, p.tos, 20 + len(body), 1, frag, p.ttl, p.proto, 0,
                      p.src.to_bytes(4, "big"), p.dst.to_bytes(4, "big"))
    hdr = hdr[:10] + struct.pack("!H", _csum(hdr)) + hdr[12:]
    frame = dst_mac + src_mac + b"\x08\x00" + hdr + body
    return frame + b"\0" * max(0, 60 - len(frame))


class LimitBucket:
    """xt_limit's token bucket (net/netfilter/xt_limit.c) with a clock the test drives in
    jiffies, written from the kernel source independently of ebpfw: limit_mt_check fills it,
    limit_mt takes `cost` credits per packet; credit is a u32 and wraps as the kernel's does."""

    SCALE = 10000                                   # XT_LIMIT_SCALE

    def __init__(self, avg: int, burst: int, hz: int, jiffies: int = 0):
        max_cpj = 0xFFFFFFFF // (hz * 60 * 60 * 24)
        cpj = 1
        while cpj * 2 <= max_cpj:                   # POW2_BELOW32(MAX_CPJ)
            cpj *= 2
        self.hz, self.cpj = hz, cpj
        self.prev = jiffies
        self.credit = self.credits(avg * burst)
        self.credit_cap = self.credit
        self.cost = self.credits(avg)

    def credits(self, user: int) -> int:           # user2credits, u32
        user &= 0xFFFFFFFF
        if user > 0xFFFFFFFF // (self.hz * self.cpj):
            return (user // self.SCALE) * self.hz * self.cpj & 0xFFFFFFFF
        return (user * self.hz * self.cpj) // self.SCALE

    def match(self, now: int) -> bool:
        self.credit = (self.credit + (now - self.prev) * self.cpj) & 0xFFFFFFFF
        self.prev = now
        if self.credit > self.credit_cap:
            self.credit = self.credit_cap
        if self.credit >= self.cost:
            self.credit -= self.cost
            return True
        return False


# ---- -m hashlimit: net/netfilter/xt_hashlimit.c, revision 3 ----------------------------------

HL_PORT_PROTOS = {6: 0, 17: 0, 33: 0, 50: 0, 132: 0, 136: 0, 51: 4}   # proto_ports_offset
U64_MASK = (1 << 64) - 1


class HashlimitTable:
    """One xt_hashlimit table (struct xt_hashlimit_htable) with the config of the rule that made
    it, on a jiffies clock the caller sets (`now`), written from the kernel source independently
    of ebpfw: dsthash_find / dsthash_alloc_init (ht->count against cfg.max: NULL = hotdrop),
    rateinfo_init, rateinfo_recalc and the cost of a packet in the three modes (packets; bytes:
    XT_HASHLIMIT_BYTES with hashlimit_byte_cost; rate-match: XT_HASHLIMIT_RATE_MATCH), and
    htable_gc every gc_interval from the table's creation freeing what has expired. Credits are
    u64 and wrap as the kernel's do."""

    SCALE = 1_000_000                                   # XT_HASHLIMIT_SCALE_v2

    def __init__(self, m: HashlimitMatch, hz: int, j0: int, size: int = 8192, max_: int = 0,
                 gc_interval: int = 1000):
        self.hz = hz
        max_cpj = ((1 << 64) - 1) // (hz * 60 * 60 * 24)
        cpj = 1
        while cpj * 2 <= max_cpj:                       # POW2_BELOW64(MAX_CPJ)
            cpj *= 2
        self.cpj = cpj
        cpjb = 1
        while cpjb * 2 <= 0xFFFFFFFF // hz:            # POW2_BELOW32(MAX_CPJ_BYTES)
            cpjb *= 2
        self.cpjb = cpjb
        self.bytes, self.rate_match = getattr(m, "bytes", False), getattr(m, "rate_match", False)
        self.interval = getattr(m, "interval", 0)
        self.mode = set(m.mode)
        self.srcmask, self.dstmask = m.srcmask, m.dstmask
        self.avg, self.burst = m.avg, m.burst
        self.expire_j = self.msecs_to_jiffies(m.expire)
        self.gc_j = self.msecs_to_jiffies(getattr(m, "gcinterval", 0) or gc_interval)
        # htable_create (hashlimit_mt_check_common clamped both to 1048576 already)
        size = getattr(m, "size", 0) or size
        max_ = getattr(m, "max", 0) or max_
        self.max = 8 * size if max_ == 0 else max(max_, size)
        self.j0 = j0
        self.next_gc = j0 + self.gc_j
        self.entries: dict[tuple, dict] = {}

    def msecs_to_jiffies(self, ms: int) -> int:
        if 1000 % self.hz == 0:
            return -(-ms // (1000 // self.hz))
        return -(-ms * self.hz // 1000)

    def credits(self, user: int) -> int:               # user2credits, revision 3
        user &= (1 << 64) - 1
        if self.SCALE >= self.hz * self.cpj:
            return user // (self.SCALE // (self.hz * self.cpj))
        return (user * (self.hz * self.cpj // self.SCALE)) & ((1 << 64) - 1)

    def credits_byte(self, user: int) -> int:          # user2credits_byte
        return ((user & 0xFFFFFFFF) * ((self.hz * self.cpjb) & 0xFFFFFFFF) >> 32) & 0xFFFFFFFF

    def key(self, p: Pkt) -> tuple:
        def maskl(a: int, n: int) -> int:
            return a & ((0xFFFFFFFF << (32 - n)) & 0xFFFFFFFF) if n else 0
        dst = maskl(p.dst, self.dstmask) if "dstip" in self.mode else 0
        src = maskl(p.src, self.srcmask) if "srcip" in self.mode else 0
        sport = dport = 0
        if self.mode & {"srcport", "dstport"}:
            poff = HL_PORT_PROTOS.get(p.proto)
            if poff is not None:
                raw = build_frame(p, b"\0" * 6)[34:14 + p.ip_len]   # the IP payload, even of a fragment
                if len(raw) < poff + 4:
                    raise Hotdrop()                      # skb_header_pointer fails
                sport, dport = struct.unpack("!HH", raw[poff:poff + 4])
            sport = sport if "srcport" in self.mode else 0
            dport = dport if "dstport" in self.mode else 0
        return (src, dst, sport, dport)

    def gc(self, now: int) -> None:
        """htable_gc runs that have happened by `now`."""
        while self.next_gc <= now:
            t = self.next_gc
            for k in [k for k, e in self.entries.items() if t >= e["expires"]]:
                del self.entries[k]
            self.next_gc = t + self.gc_j

    def init(self, now: int) -> dict:
        """rateinfo_init."""
        e = {"expires": now + self.expire_j, "prev": now, "win": 0}
        if self.rate_match:
            if self.bytes:                                  # user2rate_bytes
                r = 0xFFFFFFFF // (self.avg & 0xFFFFFFFF) if self.avg & 0xFFFFFFFF else 0xFFFFFFFF
                rate = ((r - 1) << 4) & U64_MASK
                burst = (self.burst * rate) & U64_MASK if self.burst else rate
            else:                                           # user2rate
                rate = self.SCALE // self.avg
                burst = (self.burst + rate) & U64_MASK
            e.update(credit=0, credit_cap=burst, cost=rate)     # current_rate, burst, rate
        elif self.bytes:
            e.update(credit=self.cpjb * self.hz, cost=self.credits_byte(self.avg), credit_cap=self.burst)
        else:
            credit = self.credits(self.avg * self.burst)
            e.update(credit=credit, credit_cap=credit, cost=self.credits(self.avg))
        return e

    def recalc(self, e: dict, now: int) -> None:
        """rateinfo_recalc."""
        delta = (now - e["prev"]) & U64_MASK
        if delta == 0:
            return
        if self.rate_match:
            interval = (self.interval * self.hz) & 0xFFFFFFFF     # u32 * HZ in 32 bits
            if delta < interval:
                return
            e["prev"] = now
            e["win"] = int((e["credit"] * interval) & U64_MASK > (delta * e["cost"]) & U64_MASK)
            e["credit"] = 0
            return
        e["prev"] = now
        if self.bytes:
            old = e["credit"]
            e["credit"] = (e["credit"] + self.cpjb * delta) & U64_MASK
            cap = (self.cpjb * self.hz) & 0xFFFFFFFF
            if old >= e["credit"]:
                e["credit"] = cap
                return
        else:
            e["credit"] = (e["credit"] + delta * self.cpj) & U64_MASK
            cap = e["credit_cap"]
        if e["credit"] > cap:
            e["credit"] = cap

    def match(self, p: Pkt, now: int, above: bool) -> bool:
        self.gc(now)
        k = self.key(p)
        e = self.entries.get(k)
        if e is None:
            if len(self.entries) >= self.max:
                raise Hotdrop()                          # dsthash_alloc_init: "max count reached"
            e = self.entries[k] = self.init(now)
        else:
            e["expires"] = now + self.expire_j
            self.recalc(e, now)
        length = p.ip_len                                # skb->len at the hook
        if self.rate_match:
            e["credit"] = (e["credit"] + (length if self.bytes else 1)) & U64_MASK
            return (not e["win"] and e["credit"] <= e["credit_cap"]) != above
        if self.bytes:                                   # hashlimit_byte_cost
            ccap = self.cpjb * self.hz
            cost = min((((length >> 4) + 1) * e["cost"]) & U64_MASK, ccap)
            if e["credit"] < cost and e["credit_cap"]:
                e["credit_cap"] -= 1
                e["credit"] = ccap
        else:
            cost = e["cost"]
        if e["credit"] >= cost:
            e["credit"] -= cost
            return not above
        return above


class Hashlimits:
    """The hashlimit tables of a ruleset, by name, made on first use by the rule that names them
    (call `prepare(table)` to make them in the kernel's check order first); `now` is the jiffies
    clock the next packets see."""

    def __init__(self, hz: int, j0: int = 0, size: int = 8192):
        self.hz, self.now, self.size = hz, j0, size
        self.tables: dict[str, HashlimitTable] = {}
        # a table's own clock for the next packet when it differs from `now` (a packet's rules
        # may be judged across a jiffy boundary)
        self.now_by: dict[str, int] = {}

    def prepare(self, table: Table, j0: Optional[dict] = None) -> "Hashlimits":
        """Make the tables `table` names; `j0` gives a table's creation jiffies by name (default: now)."""
        builtin = [c for n in ("INPUT", "FORWARD", "OUTPUT") for c in table.chains if c.name == n]
        user = sorted((c for c in table.chains if c.name not in ("INPUT", "FORWARD", "OUTPUT")),
                      key=lambda c: c.name.encode())
        for c in builtin + user:
            for r in c.rules:
                for m in r.matches:
                    if isinstance(m, HashlimitMatch) and m.name not in self.tables:
                        self.tables[m.name] = HashlimitTable(m, self.hz, (j0 or {}).get(m.name, self.now),
                                                             self.size)
        return self

    def match(self, m: HashlimitMatch, p: Pkt) -> bool:
        t = self.tables.get(m.name)
        if t is None:
            t = self.tables[m.name] = HashlimitTable(m, self.hz, self.now, self.size)
        return t.match(p, self.now_by.get(m.name, self.now), m.above)


class RecentTables:
    """xt_recent's lists (net/netfilter/xt_recent.c), written from the kernel source
    independently of ebpfw: per name, entries in LRU order (head = the oldest, evicted when a
    --set finds the table full and the only one --reap looks at), each with its address (after
    the table's mask), TTL and a ring of nstamps_max_mask + 1 times in jiffies."""

    def __init__(self, list_tot: int = 100, hz: int = 250, pkt_list_tot: int = 0):
        self.list_tot, self.hz, self.pkt_list_tot = list_tot, hz, pkt_list_tot
        self.tables: dict[str, list] = {}
        self.masks: dict[str, tuple[int, int]] = {}     # name -> (address mask, nstamps_max_mask)

    def prepare(self, table: Table) -> None:
        """recent_mt_check for every recent rule, in rule order: a new name gets a list with the
        rule's mask; a rule wanting more stamps grows the list's ring and flushes it."""
        for chain in table.chains:
            for r in chain.rules:
                for m in r.matches:
                    if not isinstance(m, RecentMatch):
                        continue
                    if self.pkt_list_tot and m.hitcount < self.pkt_list_tot:
                        k = (1 << (self.pkt_list_tot - 1).bit_length()) - 1
                    elif m.hitcount:
                        k = (1 << (m.hitcount - 1).bit_length()) - 1
                    else:
                        k = 31
                    if m.name not in self.masks:
                        self.masks[m.name] = (m.mask, k)
                        self.tables[m.name] = []
                    elif k > self.masks[m.name][1]:
                        self.masks[m.name] = (self.masks[m.name][0], k)
                        self.tables[m.name] = []

    def ordered(self, name: str) -> list:
        return list(self.tables.get(name, []))

    def match(self, m: RecentMatch, p: Pkt, hook: str, now: int) -> bool:
        if m.name not in self.masks:
            self.masks[m.name] = (m.mask, 31)
            self.tables[m.name] = []
        lst = self.tables[m.name]
        mask, kmask = self.masks[m.name]
        addr = (p.dst if m.side == "dest" else p.src) & mask
        ttl = p.ttl
        if hook == "OUTPUT" and not p.sock:
            ttl = (ttl + 1) & 0xFF        # no local socket: "use TTL as seen before forwarding"
        # FORWARD: the hook sees p.ttl - 1 and xt_recent adds the 1 back
        want_ttl = ttl if m.rttl else 0
        ret = m.invert
        e = next((x for x in lst if x.addr == addr and (want_ttl == x.ttl or want_ttl == 0 or x.ttl == 0)), None)
        if e is None:
            if m.command != "set":
                return ret
            if len(lst) >= self.list_tot:
                lst.pop(0)
            lst.append(_RecentEntry(addr, ttl, [now]))
            return not ret
        if m.command == "set":
            ret = not ret
        elif m.command == "remove":
            lst.remove(e)
            return not ret
        else:
            time = now - (m.seconds * self.hz & 0xFFFFFFFF)
            hits = 0
            for s in e.stamps:
                if m.seconds and s < time:
                    continue
                hits += 1
                if not m.hitcount or hits >= m.hitcount:
                    ret = not ret
                    break
            if m.reap:
                head = lst[0]
                if not (head is e and m.command == "update" and ret) and head.stamps[-1] < time:
                    lst.pop(0)
        if m.command == "set" or (m.command == "update" and ret):
            e.stamps = (e.stamps + [now])[-(kmask + 1):]
            e.ttl = ttl
            lst.remove(e)
            lst.append(e)
        return ret


@dataclass
class _RecentEntry:
    addr: int
    ttl: int
    stamps: list
