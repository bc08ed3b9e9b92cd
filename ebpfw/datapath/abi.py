"""Python view of programs/ebpfw_abi.h: struct layouts, constants, and the program shape.

The shape is what the BPF programs are specialised for (-D flags): vector length, map
capacities and the fields in use. A new ruleset whose shape `fits` the loaded one is applied
by rewriting maps only (no bcc compile, no re-attach).
"""

from __future__ import annotations

import struct
from dataclasses import asdict, dataclass
from pathlib import Path

PROGRAMS_DIR = Path(__file__).resolve().parent.parent.parent / "programs"
SOURCE = PROGRAMS_DIR / "ebpfw.c"

NSLOTS = 2
PORT_SLOTS = 65537
TCPFL_SLOTS = 257
PROTO_SLOTS = 256
LENGTH_SLOTS = 65536
TTL_SLOTS = 256
TOS_SLOTS = 256
FRAG_SLOTS = 2
MSS_SLOTS = 65537                          # 0..65535, then "no MSS option"
PKTTYPE_SLOTS = 4
ATYPE_SLOTS = 4096                         # type | type on iif << 4 | type on oif << 8
ATYPE_CAP = 16384                          # routes in the addrtype trie (host view)
MAXSTEPS = 128

CTL = struct.Struct("<II")                 # active, generation
META = struct.Struct("<IIIIII")            # nrules, nchains, iif_default, oif_default, gin_default, raw
LPM_KEY = struct.Struct("<I4s4s")          # prefixlen, slot (be), addr (be)
RULE = struct.Struct("<BxHI")              # kind, pad, flags (16 bits), arg
CHAIN = struct.Struct("<IIII")             # start, end, policy, pad
COUNTER = struct.Struct("<QQ")             # packets, bytes
IFINFO = struct.Struct("<6sBB6I")          # mac, attached_in, pad, in_class[2], out_class[2], grp_class[2]
U32 = struct.Struct("<I")
GRP = struct.Struct("<IIBBBBII")           # smask, dmask, use_proto, port, active, use_iif, boff, bmask
GRP_KEY = struct.Struct("<II4s4sII")       # slot, gid, src (be), dst (be), proto << 24 | port, iif
GRP_IDS = 4
GRP_VAL = struct.Struct(f"<{GRP_IDS}I")    # rule numbers, 0xffffffff = none
GRNG_PER = 4                               # interval ids (u16) per ebpfw_grng entry
GRNG_SLOTS = 2 * 65536 // GRNG_PER         # entries per slot: source ports, then destination ports
MAC_KEY = struct.Struct("<I6sBB")          # slot, mac, is_default, pad
ATYPE_KEY = struct.Struct("<I4s")          # prefixlen, addr (be)
ATYPE_VAL = struct.Struct("<II")           # RTN type, ifindex of the first next hop

# connection tracking (programs/ebpfw.c, EBPFW_F_CT)
CT_KEY = struct.Struct("<4s4sHHBBH")       # a_addr (be), b_addr (be), a_port, b_port, proto, kind, pad
CT_VAL = struct.Struct("<QQQQQQBBBBI")     # expires, created, packets[2], bytes[2], orig_a, state, status, last, mark
NTIMEOUTS = 16
CT_CFG = struct.Struct(f"<{NTIMEOUTS}Q12QII")  # timeouts (ns), tcp transition rows, tcp_loose, pad
CT_SLOTS = 8
CT_STATS = ("created", "deleted", "seeded", "flushed", "invalid", "related", "insert_race", "reserved")
CT_DEFAULT_SIZE = 262144
CT_TABLE = "ct"          # pin names under <pin_dir>, outside the generation directories
CT_STAT = "ct_stat"

STATS = ("seen", "not_ipv4", "malformed", "other_host", "no_hook", "hotdrop", "walk_limit", "judged_forward",
         "mac_unknown",
         "reject_sent", "reject_quiet", "reject_failed", "reject_ratelimited", "log_events", "log_suppressed",
         "log_lost")
NSTATS = 16

# REJECT and LOG (programs/ebpfw_abi.h)
REJ_CFG = struct.Struct("<QII")            # icmp_ratelimit_ns, ttl, flags
REJCFG_FWMARK_REFLECT = 1                  # EBPFW_REJCFG_FWMARK_REFLECT
LOG_PREFIX = 32
LOG_CAP = 128
LOG_CFG = struct.Struct(f"<{LOG_PREFIX}sBBHI")   # prefix, level, flags, pad, pad2
LOG_EV = struct.Struct(f"<QIBBHIIIIII{LOG_CFG.size}s{LOG_CAP}s")  # ts, rule, hook, slot, caplen, iif, oif, wire_len, egress, mark, pad, cfg, data
LOGF_TCPSEQ, LOGF_TCPOPT, LOGF_IPOPT, LOGF_MACDEC = 1, 2, 4, 8
LOG_RL_CFG = struct.Struct("<QQ")          # ns_per_event, burst_ns
LOG_RING = "ebpfw_logring"

# -m limit (programs/ebpfw.c: struct ebpfw_limit): lock, credit, prev, credit_cap, cost, cpj, pad, nsj
LIMIT = struct.Struct("<IIQIIIIQ")
XT_LIMIT_SCALE = 10000


def host_hz(config_text: str | None = None) -> int:
    """The kernel's HZ (CONFIG_HZ), which xt_limit's arithmetic depends on: from /proc/config.gz,
    else /boot/config-$(uname -r). Refused when neither says, rather than guessed."""
    import gzip
    import os
    from ..errors import KernelError
    texts = [config_text] if config_text is not None else []
    if config_text is None:
        try:
            texts.append(gzip.open("/proc/config.gz", "rt").read())
        except OSError:
            pass
        try:
            texts.append(Path(f"/boot/config-{os.uname().release}").read_text())
        except OSError:
            pass
    for t in texts:
        for line in t.splitlines():
            if line.startswith("CONFIG_HZ="):
                return int(line.split("=", 1)[1])
    raise KernelError("the kernel's HZ is unknown (no CONFIG_HZ in /proc/config.gz or /boot/config-*); "
                      "-m limit needs it to count like xt_limit")


def credits_per_jiffy(hz: int) -> int:
    """xt_limit's CREDITS_PER_JIFFY: the largest power of two <= 0xFFFFFFFF / (HZ*60*60*24)."""
    max_cpj = 0xFFFFFFFF // (hz * 60 * 60 * 24)
    return 1 << (max_cpj.bit_length() - 1)


def limit_credits(user: int, hz: int) -> int:
    """xt_limit's user2credits (u32 arithmetic)."""
    cpj = credits_per_jiffy(hz)
    user &= 0xFFFFFFFF
    if user > 0xFFFFFFFF // (hz * cpj):
        return ((user // XT_LIMIT_SCALE) * hz * cpj) & 0xFFFFFFFF
    return (user * hz * cpj) // XT_LIMIT_SCALE


def limit_entry(avg: int, burst: int, hz: int, now_ns: int) -> bytes:
    """struct ebpfw_limit for a rule, as limit_mt_check leaves it: the bucket full."""
    nsj = 1_000_000_000 // hz
    cap = limit_credits(avg * burst, hz)
    return LIMIT.pack(0, cap, now_ns // nsj, cap, limit_credits(avg, hz), credits_per_jiffy(hz), 0, nsj)


# -m hashlimit (programs/ebpfw_abi.h: struct ebpfw_hlcfg, ebpfw_hlrule, ebpfw_hl_*)
HL_NT = 64                                  # tables (distinct --hashlimit-name) per slot
HL_CAP_MAX = 1 << 18                        # buckets in the (preallocated) LRU map: 31 MB
HL_CFG = struct.Struct("<QQQQQQIIHHIIIQQQQII")   # credit, cost, cpj, expire_j, gc_j, j0, srcmask, dstmask,
                                            # spmask, dpmask, needports, slots, max, name, cap, interval_j,
                                            # ccap, mode, gk
HL_SLOTS, HL_NAME, HL_MODE = 11, 13, 17      # their indexes in HL_CFG
HL_RULE = struct.Struct("<II")              # tid, inv
HL_KEY = struct.Struct("<I4s4sHH")          # tid, src (be), dst (be), sport, dport
HL_VAL = struct.Struct("<QQQQQQ")           # expires, prev, credit, credit_cap, cost, win
HL_RING = 64                                # EBPFW_HL_RING: slots of a table's entry count
HL_CNT_SIZE = 8 + 16 * HL_RING              # struct ebpfw_hlcnt
HL_BYTES, HL_RATE = 1, 2                    # struct ebpfw_hlcfg.mode
HL_ABI = 2                                  # the hashlimit maps' layout (Shape.hl_abi)
HASHLIMIT_BYTE_SHIFT = 4
HLM = {"dstip": 1, "dstport": 2, "srcip": 4, "srcport": 8}   # XT_HASHLIMIT_HASH_*
XT_HASHLIMIT_SCALE_V2 = 1_000_000
HASHLIMIT_MAX_SIZE = 1048576
HASHLIMIT_GCINTERVAL = 1000                 # ms, iptables' default --hashlimit-htable-gcinterval
U64 = (1 << 64) - 1


def hl_name_hash(name: str) -> int:
    """The 64-bit tag of a --hashlimit-name in struct ebpfw_hlcfg (never 0)."""
    import hashlib
    return int.from_bytes(hashlib.blake2b(name.encode(), digest_size=8).digest(), "little") | 1


def hashlimit_cpj(hz: int) -> int:
    """xt_hashlimit's CREDITS_PER_JIFFY (revision 2, 3): POW2_BELOW64(2^64-1 / (HZ*60*60*24))."""
    return 1 << ((U64 // (hz * 60 * 60 * 24)).bit_length() - 1)


def hashlimit_credits(user: int, hz: int) -> int:
    """xt_hashlimit's user2credits for revision 3 (u64 arithmetic)."""
    scale, hc = XT_HASHLIMIT_SCALE_V2, hz * hashlimit_cpj(hz)
    user &= U64
    if scale >= hc:
        return user // (scale // hc)
    return (user * (hc // scale)) & U64


def hashlimit_cpj_bytes(hz: int) -> int:
    """xt_hashlimit's CREDITS_PER_JIFFY_BYTES: POW2_BELOW32(0xFFFFFFFF / HZ)."""
    return 1 << ((0xFFFFFFFF // hz).bit_length() - 1)


def hashlimit_credits_byte(user: int, hz: int) -> int:
    """xt_hashlimit's user2credits_byte: (u32)((u64)user * HZ * CREDITS_PER_JIFFY_BYTES >> 32)."""
    return (((user & 0xFFFFFFFF) * ((hz * hashlimit_cpj_bytes(hz)) & 0xFFFFFFFF)) >> 32) & 0xFFFFFFFF


def hashlimit_rate(avg: int) -> int:
    """xt_hashlimit's user2rate (rate-match, packets): packets per second."""
    return XT_HASHLIMIT_SCALE_V2 // avg if avg else 0


def hashlimit_rate_bytes(avg: int) -> int:
    """xt_hashlimit's user2rate_bytes (rate-match, bytes): bytes per second."""
    avg &= 0xFFFFFFFF
    r = 0xFFFFFFFF // avg if avg else 0xFFFFFFFF
    return ((r - 1) << HASHLIMIT_BYTE_SHIFT) & U64


def hashlimit_group_runs(expire_j: int, gc_j: int) -> int:
    """Collector runs per slot of a table's entry count: 1 (exact) when the runs a live bucket
    can be freed by (its expiry in collector periods, rounded up, plus one) are at most 62,
    else as few as keep every live group in its own slot of the EBPFW_HL_RING, one to spare
    (a range of `span` runs touches at most ceil(span / gk) + 1 groups)."""
    span = -(-expire_j // max(gc_j, 1)) + 1
    return max(1, -(-span // (HL_RING - 2)))


def hashlimit_table_config(t, hz: int, j0: int, name_tag: int) -> list:
    """struct ebpfw_hlcfg for table `t` (compiler.plan.HlTable) as rateinfo_init would set up
    its buckets, without the slot bits."""
    def be(mask: int) -> int:
        m = (0xFFFFFFFF << (32 - mask)) & 0xFFFFFFFF if mask else 0
        return int.from_bytes(m.to_bytes(4, "big"), "little")

    bytes_, rate = getattr(t, "bytes", False), getattr(t, "rate_match", False)
    ccap = interval_j = 0
    if rate:
        if bytes_:
            cost = hashlimit_rate_bytes(t.avg)
            cap = (t.burst * cost) & U64 if t.burst else cost
        else:
            cost = hashlimit_rate(t.avg)
            cap = (t.burst + cost) & U64
        credit, cpj = 0, 0
        interval_j = (t.interval * hz) & 0xFFFFFFFF
    elif bytes_:
        cpj = hashlimit_cpj_bytes(hz)
        ccap = (cpj * hz) & 0xFFFFFFFF
        credit, cost, cap = ccap, hashlimit_credits_byte(t.avg, hz), t.burst & 0xFFFFFFFF
    else:
        cpj = hashlimit_cpj(hz)
        credit = cap = hashlimit_credits(t.avg * t.burst, hz)
        cost = hashlimit_credits(t.avg, hz)
    expire_j, gc_j = msecs_to_jiffies(t.expire, hz), msecs_to_jiffies(t.gcinterval, hz)
    ports = t.mode & (HLM["srcport"] | HLM["dstport"])
    return [credit, cost, cpj, expire_j, gc_j, j0,
            be(t.srcmask) if t.mode & HLM["srcip"] else 0,
            be(t.dstmask) if t.mode & HLM["dstip"] else 0,
            0xFFFF if t.mode & HLM["srcport"] else 0,
            0xFFFF if t.mode & HLM["dstport"] else 0, 1 if ports else 0, 0, t.max, name_tag,
            cap, interval_j, ccap, (HL_BYTES if bytes_ else 0) | (HL_RATE if rate else 0),
            hashlimit_group_runs(expire_j, gc_j)]


def hashlimit_overflows(avg: int, burst: int, hz: int) -> bool:
    """hashlimit_mt_check_common refuses (ERANGE) burst 0 or user2credits(avg * burst) <
    user2credits(avg): the u64 product wrapped."""
    return burst == 0 or hashlimit_credits((avg * burst) & U64, hz) < hashlimit_credits(avg, hz)


def msecs_to_jiffies(ms: int, hz: int) -> int:
    """The kernel's msecs_to_jiffies for 0 <= ms < 2^32 (rounds up)."""
    if 1000 % hz == 0:
        return (ms + 1000 // hz - 1) // (1000 // hz)
    if hz % 1000 == 0:
        return ms * (hz // 1000)
    return (ms * hz + 999) // 1000


def hashlimit_default_size(memtotal_kb: int | None = None, page_size: int = 4096) -> int:
    """htable_create's bucket count when --hashlimit-htable-size is not given (from the RAM)."""
    if memtotal_kb is None:
        memtotal_kb = 0
        try:
            for line in Path("/proc/meminfo").read_text().splitlines():
                if line.startswith("MemTotal:"):
                    memtotal_kb = int(line.split()[1])
        except OSError:
            pass
    nr_pages = memtotal_kb * 1024 // page_size
    size = (nr_pages * page_size) // 16384 // 8
    if nr_pages > 1024 * 1024 * 1024 // page_size:
        size = 8192
    return max(size, 16)


def hashlimit_size_max(size: int = 0, max_: int = 0) -> tuple[int, int]:
    """(size, max) as hashlimit_mt_check_common and htable_create settle them."""
    size = min(size, HASHLIMIT_MAX_SIZE) or hashlimit_default_size()
    max_ = min(max_, HASHLIMIT_MAX_SIZE)
    if max_ == 0:
        max_ = 8 * size
    elif max_ < size:
        max_ = size
    return size, max_


def jiffies_now() -> int:
    """The kernel's jiffies, from /proc/timer_list (the clock bpf_jiffies64 reads)."""
    from ..errors import KernelError
    try:
        with open("/proc/timer_list") as f:
            for line in f:
                if line.startswith("jiffies:"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    raise KernelError("cannot read the kernel's jiffies from /proc/timer_list; -m hashlimit needs it to "
                      "run its collector like xt_hashlimit")

# marks (programs/ebpfw_abi.h: struct ebpfw_markc): t_value, t_mask, t_nfmask, t_mode, m_flags, pad,
# m_value, m_mask, c_value, c_mask
MARKC = struct.Struct("<IIIBBHIIII")

# -m set (programs/ebpfw.c, ebpfw/sets.py)
SET_KEY = struct.Struct("<I")              # prefixlen; then id, proto << 16 | port, addr big endian
SETM = struct.Struct("<IBBBB")             # set id, kind, src0, src1, inv
SETDEF = struct.Struct("<32sIIIIIIII")     # name, type, count, maxelem, first, last, hashsize, timeout, flags
SET_VAL = struct.Struct("<QII")            # expiry (CLOCK_BOOTTIME ns, 0 = permanent), key prefixlen, flags
SET_NOMATCH = 1                            # SET_VAL flags: EBPFW_SETV_NOMATCH
SETK = {"hash:ip": 1, "hash:net": 1, "hash:ip,port": 2, "hash:net,port": 2, "bitmap:port": 3}
SETS_PIN = "sets"                          # pin names under <pin_dir>, outside the generations
SETDEF_PIN = "set_defs"
NSETS = 256


# -m recent (programs/ebpfw.c: struct ebpfw_recent_tbl, ebpfw_recentm; ebpfw/recent.py)
RECENT_HDR = struct.Struct("<II4sII4xQ200s")  # lock, nent, mask (be), kmask, inuse, seq, name
RECENT_ENT_HDR = struct.Struct("<4sBBBBQ")    # addr (be), used, ttl, index, nstamps, seq
RECENT_STAMPS = 32                            # stamps kept per address (EBPFW_RECENT_STAMPS)
RECENT_ENT_SIZE = RECENT_ENT_HDR.size + 8 * RECENT_STAMPS
RECENT_TABLES = 64                            # names (EBPFW_RECENT_TABLES)
RECENTM = struct.Struct("<IBBBBB3xIQ")         # id, cmd, inv, dest, rttl, reap, hitcount, window (jiffies)
RECENT_CMDS = {"set": 1, "rcheck": 2, "update": 3, "remove": 4}
RECENT_PIN = "recent"                         # pin name under <pin_dir>, outside the generations


# -m connlimit (programs/ebpfw_abi.h: struct ebpfw_clm; programs/ebpfw.c: ebpfw_cl)
CLM = struct.Struct("<4sIBBH")                # mask (be), limit, daddr, invert, pad
CL_KEY = struct.Struct("<I4s")                # slot * rcap + rule, masked address (be)
CL_ENT = struct.Struct("<4s4sHHBBHII")        # ebpfw_ct_key, jiffies, cpu
CL_HDR = struct.Struct("<IIIIQ")              # count, last_gc, last_gc_count, index slot, busy
CL_SLOT = struct.Struct("<I4sII")             # ebpfw_clidx: key (rk, address), used, pad
CL_KEYS = 16384                               # lists (rule, address group) at once (EBPFW_CL_KEYS)
CL_CONNS_MIN, CL_CONNS_MAX = 128, 1024        # connections per list (EBPFW_CL_CONNS), by the largest limit


def connlimit_conns(limits) -> int:
    """Connections one list holds (EBPFW_CL_CONNS): room for the largest limit and 64 more
    (connections the rule refused, closed ones not yet collected), a power of two."""
    need = max(limits, default=0) + 64
    return min(_pow2(need, CL_CONNS_MIN), CL_CONNS_MAX)


def recent_value_size(entries: int) -> int:
    return RECENT_HDR.size + entries * RECENT_ENT_SIZE


# maps that exist whatever the shape; field maps exist only when their field is in use
BASE_MAPS = ("ebpfw_ctl", "ebpfw_meta", "ebpfw_vec", "ebpfw_rule", "ebpfw_chain", "ebpfw_cnt",
             "ebpfw_pcnt", "ebpfw_stat", "ebpfw_ifinfo", "ebpfw_local", "ebpfw_walk", "ebpfw_cont",
             "ebpfw_jmpx", "ebpfw_jmpt", "ebpfw_pkt",
             "ebpfw_rank", "ebpfw_unrank", "ebpfw_resn")
FIELD_MAPS = {
    "src": ("ebpfw_src",), "dst": ("ebpfw_dst",), "proto": ("ebpfw_proto",),
    "sport": ("ebpfw_sport",), "dport": ("ebpfw_dport",), "xport": ("ebpfw_xsport", "ebpfw_xdport"),
    "tcpfl": ("ebpfw_tcpfl",), "icmp": ("ebpfw_icmp",),
    # -i / -o classes live in the interfaces' ebpfw_ifinfo entries (one per slot)
    "iif": (), "oif": (),
    # the table itself (ebpfw_ct) and its statistics (ebpfw_ctstat) are pinned outside the
    # generation directory, see Datapath.build
    "ct": ("ebpfw_ctcls", "ebpfw_ctcfg", "ebpfw_ctw", "ebpfw_ctfrag"),
    "groups": ("ebpfw_grp", "ebpfw_gent", "ebpfw_hits", "ebpfw_htouch", "ebpfw_gbloom"),
    # port -> elementary-interval id of the range groups (compiler/groups.py)
    "grange": ("ebpfw_grng",),
    "length": ("ebpfw_length",), "ttl": ("ebpfw_ttl",), "tos": ("ebpfw_tos",), "frag": ("ebpfw_frag",),
    "tcpmss": ("ebpfw_tcpmss", "ebpfw_mssw"), "pkttype": ("ebpfw_pkttype",), "mac": ("ebpfw_mac",),
    # ebpfw_atype (the host's routes) is written with the host view, like ebpfw_local
    "atsrc": ("ebpfw_atype", "ebpfw_atsrc"), "atdst": ("ebpfw_atype", "ebpfw_atdst"),
    # actions (Plan.actions)
    "reject": ("ebpfw_post_xdp", "ebpfw_post_tc", "ebpfw_rejcfg", "ebpfw_icmprl"),
    "log": ("ebpfw_post_xdp", "ebpfw_post_tc", LOG_RING, "ebpfw_logcfg", "ebpfw_logrlc", "ebpfw_logrl"),
    # per-rule checks after the other conditions hold
    "limit": ("ebpfw_limit",),
    "hashlimit": ("ebpfw_hlcfg", "ebpfw_hlrule", "ebpfw_hl", "ebpfw_hlscr", "ebpfw_hllock", "ebpfw_hlcnt"),
    # the sets themselves (ebpfw_sets, ebpfw_setdef) are pinned outside the generation directory
    "set": ("ebpfw_setm", "ebpfw_setk"),
    # -m mark / -m connmark and -j MARK / CONNMARK (an action: Plan.actions)
    "mark": ("ebpfw_markc",),
    # the tables themselves (ebpfw_recent) are pinned outside the generation directory
    "recent": ("ebpfw_recentm", "ebpfw_rscr", "ebpfw_rcx", "ebpfw_rct"),
    # the raw table's stage (an action: Plan.actions): its result and the program arrays
    "raw": ("ebpfw_rawres", "ebpfw_rawx", "ebpfw_rawt", "ebpfw_rawcx", "ebpfw_rawct", "ebpfw_mainx", "ebpfw_maint"),
    # -m connlimit: the rules' settings, their lists (reset with every apply) and programs
    "connlimit": ("ebpfw_clm", "ebpfw_cl", "ebpfw_clidx", "ebpfw_clscr", "ebpfw_clx", "ebpfw_clt"),
}
# fields whose shape name is also the Plan attribute holding their classes
OPTIONAL_FIELDS = ("length", "ttl", "tos", "frag", "tcpmss", "pkttype", "mac", "atsrc", "atdst")
PROGRAMS = {"xdp": "ebpfw_xdp_ingress", "tc_ingress": "ebpfw_tc_ingress", "tc_egress": "ebpfw_tc_egress"}
# attached at TC ingress next to the XDP program when the shape has REJECT: it answers the
# packets the XDP program rejected (XDP hands them over in the XDP metadata)
XDP_REJECT_PROGRAM = ("tc_xdprej", "ebpfw_tc_xdprej")
# continuation programs for walks longer than one program's step budget: program -> its array
CONT_PROGRAMS = {"ebpfw_xdp_cont": "ebpfw_jmpx", "ebpfw_tc_cont": "ebpfw_jmpt"}
# tail-called after the verdict when the shape has REJECT or LOG: program -> its array
POST_PROGRAMS = {"ebpfw_xdp_post": "ebpfw_post_xdp", "ebpfw_tc_post": "ebpfw_post_tc"}
POST_ACTIONS = ("reject", "log")
# tail-called when a walk reaches a -m recent rule (shape field "recent"): program -> its array
RECENT_PROGRAMS = {"ebpfw_xdp_recent": "ebpfw_rcx", "ebpfw_tc_recent": "ebpfw_rct"}
# the raw table (shape field "raw"): the raw stage's programs -> their arrays; the main programs
# (PROGRAMS keys) it hands the packet back to -> (array, index)
RAW_PROGRAMS = {"ebpfw_xdp_raw": "ebpfw_rawx", "ebpfw_tc_raw": "ebpfw_rawt",
                "ebpfw_xdp_rawc": "ebpfw_rawcx", "ebpfw_tc_rawc": "ebpfw_rawct"}
RAW_MAIN = {"xdp": ("ebpfw_mainx", 0), "tc_ingress": ("ebpfw_maint", 0), "tc_egress": ("ebpfw_maint", 1)}


def raw_meta(plan) -> int:
    """struct ebpfw_meta.raw: the raw chain ids (PREROUTING | OUTPUT << 16), 0 without a raw table."""
    rc = getattr(plan, "raw_chains", None)
    return 0 if rc is None else rc[0] | (rc[1] << 16)
# tail-called when a walk reaches a -m connlimit rule (shape field "connlimit")
CONNLIMIT_PROGRAMS = {"ebpfw_xdp_connlimit": "ebpfw_clx", "ebpfw_tc_connlimit": "ebpfw_clt"}


def _pow2(n: int, minimum: int) -> int:
    v = minimum
    while v < n:
        v <<= 1
    return v


@dataclass(frozen=True)
class Shape:
    nwords: int
    vcap: int
    rcap: int
    ccap: int
    lpm_cap: int
    ifc_cap: int
    maxdepth: int
    fields: tuple[str, ...]
    ct_size: int = 0          # conntrack table entries; 0 when no rule uses conntrack
    ngroups: int = 0          # exact-match rule groups (hash lookups per packet); 0: none
    gcap: int = 0             # group hash entries per slot
    mac_cap: int = 0          # (slot, MAC) entries per slot of -m mac; 0 when no rule uses it
    gwords: int = 0           # 64-rule words of the global numbering (0: old state, = nwords)
    hl_cap: int = 0           # hashlimit buckets (twice the tables' max, at most HL_CAP_MAX)
    cl_conns: int = 0         # connections per -m connlimit list (connlimit_conns); 0: no connlimit
    hl_abi: int = 0           # layout of the hashlimit maps (HL_ABI; 0: before byte rates and htable-max)
    cl_keys: int = 0          # -m connlimit lists at once (a power of two); 0: CL_KEYS

    @property
    def nsum(self) -> int:
        return (self.nwords + 63) // 64

    @property
    def vec_bytes(self) -> int:
        return 8 * (self.nsum + self.nwords)

    def cflags(self) -> list[str]:
        flags = [
            f"-DEBPFW_NWORDS={self.nwords}", f"-DEBPFW_GWORDS={self.gwords or self.nwords}",
            f"-DEBPFW_VCAP={self.vcap}", f"-DEBPFW_RCAP={self.rcap}",
            f"-DEBPFW_CCAP={self.ccap}", f"-DEBPFW_LPM_CAP={self.lpm_cap}", f"-DEBPFW_IFC_CAP={self.ifc_cap}",
            f"-DEBPFW_MAXDEPTH={self.maxdepth}", f"-DEBPFW_MAXSTEPS={MAXSTEPS}", f"-I{PROGRAMS_DIR}",
        ]
        flags += [f"-DEBPFW_F_{f.upper()}" for f in self.fields]
        if "ct" in self.fields:
            flags.append(f"-DEBPFW_CT_SIZE={self.ct_size or CT_DEFAULT_SIZE}")
        if "groups" in self.fields:
            flags += [f"-DEBPFW_NGROUPS={self.ngroups}", f"-DEBPFW_GCAP={self.gcap}"]
        if "mac" in self.fields:
            flags.append(f"-DEBPFW_MAC_CAP={max(self.mac_cap, 16)}")
        if "hashlimit" in self.fields:
            flags += [f"-DEBPFW_HL_NT={HL_NT}", f"-DEBPFW_HL_CAP={max(self.hl_cap, 1024)}"]
        if "connlimit" in self.fields:
            flags += [f"-DEBPFW_CL_CONNS={self.cl_conns or CL_CONNS_MIN}", f"-DEBPFW_CL_KEYS={self.cl_keys or CL_KEYS}"]
        if "atsrc" in self.fields or "atdst" in self.fields:
            flags.append(f"-DEBPFW_ATYPE_CAP={ATYPE_CAP}")
        return flags

    def maps(self) -> list[str]:
        names = list(BASE_MAPS)
        for f in self.fields:
            for m in FIELD_MAPS[f]:
                if m not in names:
                    names.append(m)
        return names

    def fits(self, need: "Shape") -> bool:
        """True if a ruleset needing `need` can be written into maps made for self."""
        return (need.nwords <= self.nwords and need.nsum <= self.nsum and need.vcap <= self.vcap
                and need.rcap <= self.rcap and need.ccap <= self.ccap and need.lpm_cap <= self.lpm_cap
                and need.ifc_cap <= self.ifc_cap and need.maxdepth <= self.maxdepth
                and set(need.fields) <= set(self.fields)
                and ("ct" not in need.fields or need.ct_size == self.ct_size)
                and need.ngroups <= self.ngroups and need.gcap <= self.gcap
                and ("mac" not in need.fields or need.mac_cap <= self.mac_cap)
                and need.gwords <= (self.gwords or self.nwords)
                and ("hashlimit" not in need.fields or (need.hl_cap <= self.hl_cap
                                                         and need.hl_abi == self.hl_abi))
                and ("connlimit" not in need.fields or need.cl_conns <= self.cl_conns))

    def to_json(self) -> dict:
        d = asdict(self)
        d["fields"] = list(self.fields)
        return d

    @classmethod
    def from_json(cls, d: dict) -> "Shape":
        return cls(**{**d, "fields": tuple(d["fields"])})


def ct_size_from_env() -> int:
    """EBPFW_CT_SIZE (entries of the conntrack table), default 262144."""
    import os
    from ..errors import EbpfwError
    raw = os.environ.get("EBPFW_CT_SIZE", "").strip()
    if not raw:
        return CT_DEFAULT_SIZE
    try:
        n = int(raw.replace("_", ""))
    except ValueError:
        n = 0
    if n < 1024 or n > (1 << 26):
        raise EbpfwError(f"EBPFW_CT_SIZE={raw!r} is not usable, expected a number of entries "
                         "from 1024 to 67108864, e.g. 262144 or 1048576")
    return n


def shape_for(plan, nlinks: int, ct_size: int | None = None) -> Shape:
    """The smallest shape, with headroom so that small ruleset edits keep it. `ct_size`
    (conntrack entries) defaults to EBPFW_CT_SIZE or 262144 when some rule uses conntrack."""
    fields = []
    for f in ("src", "dst", "proto", "sport", "dport", "tcpfl", "icmp", "iif", "oif"):
        if getattr(plan, f) is not None:
            fields.append(f)
    if plan.xsport is not None:
        fields.append("xport")
    if getattr(plan, "ct", None) is not None:
        fields.append("ct")
    ngroups = len(plan.group_shapes)
    if ngroups:
        fields.append("groups")
        if any(b is not None for b in getattr(plan, "group_ranges", (None, None))):
            fields.append("grange")
    for f in OPTIONAL_FIELDS:
        if getattr(plan, f, None) is not None:
            fields.append(f)
    fields += list(getattr(plan, "actions", []))
    if getattr(plan, "limits", None):
        fields.append("limit")
    if getattr(plan, "setm", None):
        fields.append("set")
    hl_tables = getattr(plan, "hl_tables", None) or []
    if hl_tables:
        fields.append("hashlimit")
    if getattr(plan, "recent", None):
        fields.append("recent")
    connlimits = getattr(plan, "connlimits", None) or {}
    if connlimits:
        fields.append("connlimit")
    def round_words(nbits: int) -> int:
        words = (nbits + 1 + 63) // 64
        return max(4, -(-words // 4) * 4) if words <= 64 else -(-words // 64) * 64

    nwords = round_words(len(plan.resid))     # vectors: residual rules only
    gwords = round_words(plan.nrules)         # rule numbers, counters, group hits
    nprefix = max(len(plan.src or []), len(plan.dst or []))
    return Shape(
        nwords=nwords,
        vcap=_pow2(len(plan.vectors) + len(plan.vectors) // 4 + 1, 64),
        rcap=gwords * 64,
        ccap=_pow2(len(plan.chain_names) + 1, 16),
        lpm_cap=_pow2(nprefix + nprefix // 4 + 1, 64),
        ifc_cap=_pow2(nlinks + 16, 64),
        maxdepth=max(8, plan.max_depth + 1),
        fields=tuple(fields),
        ct_size=(ct_size or ct_size_from_env()) if "ct" in fields else 0,
        ngroups=_pow2(ngroups, 4) if ngroups else 0,
        gcap=_pow2(len(plan.group_entries) + len(plan.group_entries) // 4 + 1, 1024) if ngroups else 0,
        mac_cap=_pow2(len(plan.mac) + len(plan.mac) // 4 + 1, 64) if getattr(plan, "mac", None) is not None else 0,
        gwords=gwords,
        hl_cap=min(_pow2(2 * sum(t.max for t in hl_tables), 1024), HL_CAP_MAX) if hl_tables else 0,
        cl_conns=connlimit_conns(m.limit for m in connlimits.values()) if connlimits else 0,
        hl_abi=HL_ABI if hl_tables else 0,
    )
