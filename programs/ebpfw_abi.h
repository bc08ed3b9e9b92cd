/* ebpfw_abi.h — the layout shared by the BPF programs and userspace.
 *
 * Every struct here has a ctypes twin in ebpfw/datapath/abi.py; tests/kernel/test_abi.py
 * checks that the sizes agree. Numbers (actions, field ids, capacities) are passed by
 * the loader as -D flags from ebpfw/datapath/abi.py, never written twice.
 *
 * All ruleset-dependent maps are indexed by slot (0 or 1): the control map names the
 * active slot, read once per packet, so a packet is judged by exactly one ruleset.
 */
#ifndef EBPFW_ABI_H
#define EBPFW_ABI_H

/* rule actions (struct ebpfw_rule.kind) */
#define EBPFW_ACT_NONE   0   /* no -j: count and continue */
#define EBPFW_ACT_ACCEPT 1
#define EBPFW_ACT_DROP   2
#define EBPFW_ACT_RETURN 3
#define EBPFW_ACT_JUMP   4
#define EBPFW_ACT_GOTO   5
#define EBPFW_ACT_REJECT 6   /* arg: ICMP destination-unreachable code, or EBPFW_REJ_TCP_RESET */
#define EBPFW_ACT_LOG    7   /* non-terminal: an event to the ring buffer, the walk goes on */
#define EBPFW_ACT_MARK     8 /* non-terminal: mark = (mark & ~t_mask) ^ t_value (struct ebpfw_markc) */
#define EBPFW_ACT_CONNMARK 9 /* non-terminal: on the connection's mark (struct ebpfw_markc) */
#define EBPFW_ACT_NOTRACK 10 /* raw table, non-terminal: the packet is not tracked (NOTRACK, CT --notrack) */

#define EBPFW_REJ_TCP_RESET 256

/* rule flags */
#define EBPFW_RF_NEEDS_L4 1   /* has a tcp/udp/icmp/multiport match: truncated L4 header hotdrops */
#define EBPFW_RF_MSS      2   /* has a tcpmss match: a malformed TCP header or option area hotdrops */
#define EBPFW_RF_MAC      4   /* has a mac match: dropped where the source MAC is unknown (see ebpfw.c) */
#define EBPFW_RF_LIMIT    8   /* has a -m limit match (its last one): the rule's token bucket decides */
#define EBPFW_RF_SET      16  /* has a -m set match: the set (ebpfw_sets) decides after the vectors */
#define EBPFW_RF_SETFIRST 32  /* its -m set comes before every match that can hotdrop: judged first */
#define EBPFW_RF_TCP      64  /* has a tcp match: hotdrops a TCP fragment at offset 8 (xt_tcp) */
/* Stateful matches judged after the vectors, like -m limit (each the rule's last match). */
#define EBPFW_RF_RECENT    128   /* -m recent: the rule's list table decides (and is updated) */
#define EBPFW_RF_HASHLIMIT 256   /* -m hashlimit: the per-key token bucket decides */
#define EBPFW_RF_CONNLIMIT 512   /* -m connlimit: the per-key connection count decides */
#define EBPFW_RF_MARK      1024  /* -m mark / -m connmark: the packet's or connection's mark decides */
/* a conntrack/state match in the raw table, judged in the walk (there is no connection yet) */
#define EBPFW_RF_RAWCT     2048
#define EBPFW_RF_CT_INV_OK 4096   /* ... it holds for INVALID (no connection attached) */
#define EBPFW_RF_CT_UNT_OK 8192   /* ... for UNTRACKED (after a NOTRACK) */
#define EBPFW_RF_CT_REL_OK 16384  /* ... for RELATED (a REJECT answer carries its original's connection) */
/* walk-state bit above the 16 rule-flag bits (rule->flags & ws->hot must never see it): the
 * packet is a TCP fragment at offset 8 */
#define EBPFW_HOT_FRAG1   0x10000

/* chain ids of the built-in chains (user chains follow) */
#define EBPFW_CHAIN_INPUT   0
#define EBPFW_CHAIN_FORWARD 1
#define EBPFW_CHAIN_OUTPUT  2

/* class 0 of every field is the all-ones vector (used for truncated L4 headers) */
#define EBPFW_CLASS_ALL 0

/* index of the "no value" entry in the port / icmp / tcp-flag class arrays */
#define EBPFW_PORT_NONE  65536
#define EBPFW_PORT_SLOTS 65537
#define EBPFW_ICMP_NONE  65536
#define EBPFW_TCPFL_NONE 256
#define EBPFW_TCPFL_SLOTS 257
#define EBPFW_PROTO_SLOTS 256

/* entries per slot of the other exact / interval fields (EBPFW_F_<FIELD>, see ebpfw.c) */
#define EBPFW_LENGTH_SLOTS  65536  /* IP total length */
#define EBPFW_TTL_SLOTS     256
#define EBPFW_TOS_SLOTS     256
#define EBPFW_FRAG_SLOTS    2      /* 1: a non-first fragment (what -f matches) */
#define EBPFW_MSS_NONE      65536  /* a TCP header without an MSS option (or not TCP) */
#define EBPFW_MSS_SLOTS     65537
#define EBPFW_PKTTYPE_SLOTS 4      /* PACKET_HOST (unicast), BROADCAST, MULTICAST, OTHERHOST */
#define EBPFW_ATYPE_SLOTS   4096   /* RTN type | RTN type on iif << 4 | RTN type on oif << 8 */

struct ebpfw_ctl {
    __u32 active;        /* active slot, 0 or 1 */
    __u32 generation;    /* bumped at every flip, for observers */
};

/* per-slot facts that are not per rule */
struct ebpfw_meta {
    __u32 nrules;
    __u32 nchains;
    __u32 iif_default;   /* class for an interface without an ebpfw_ifinfo entry */
    __u32 oif_default;
    __u32 gin_default;   /* interface class of the -i group keys, likewise */
    __u32 raw;           /* the raw table's chain ids: PREROUTING | OUTPUT << 16; 0: no raw table */
};

struct ebpfw_lpm_key {
    __u32 prefixlen;     /* 32 (slot) + address prefix length */
    __u32 slot;          /* network byte order, so the trie splits on it first */
    __u32 addr;          /* network byte order */
};

/* -m mac: (slot, source MAC) -> class; the entry with is_default = 1 (mac all zero) is the
 * class of every MAC no rule names */
struct ebpfw_mac_key {
    __u32 slot;
    __u8  mac[6];
    __u8  is_default;
    __u8  pad;
};

/* -m addrtype: the host's routes (not per slot), as inet_dev_addr_type() would find them */
struct ebpfw_atype_key {
    __u32 prefixlen;
    __u32 addr;          /* network byte order */
};

struct ebpfw_atype_val {
    __u32 type;          /* RTN_* the lookup yields (RTN_UNICAST for error routes) */
    __u32 ifindex;       /* device of the route's first next hop */
};

struct ebpfw_rule {
    __u8  kind;          /* EBPFW_ACT_* */
    __u8  pad;
    __u16 flags;         /* EBPFW_RF_* */
    __u32 arg;           /* target chain id for JUMP / GOTO */
};

struct ebpfw_chain {
    __u32 start;         /* first rule number */
    __u32 end;           /* one past the last rule */
    __u32 policy;        /* EBPFW_ACT_ACCEPT / DROP for built-ins, 0 for user chains */
    __u32 pad;
};

struct ebpfw_counter {
    __u64 packets;
    __u64 bytes;
};

/* host view kept by userspace, one entry per interface (ifindex), with the interface's classes
 * in each slot's ruleset: looked up once per packet, it serves the MAC check and -i / -o */
struct ebpfw_ifinfo {
    __u8  mac[6];
    __u8  attached_in;   /* our ingress program judges packets arriving here */
    __u8  pad;
    __u32 in_class[2];   /* per slot: class of the iif field (-i of the bit-vector rules) */
    __u32 out_class[2];  /* per slot: class of the oif field */
    __u32 grp_class[2];  /* per slot: interface class of the -i group keys (compiler/groups.py) */
};

/* datapath statistics (per CPU), index = EBPFW_STAT_* */
#define EBPFW_STAT_SEEN        0   /* IPv4 packets seen */
#define EBPFW_STAT_NOTIP       1   /* non-IPv4 passed untouched */
#define EBPFW_STAT_MALFORMED   2   /* bad IPv4 header: left for the kernel to drop */
#define EBPFW_STAT_OTHERHOST   3   /* not addressed to us at L2: left to the kernel */
#define EBPFW_STAT_NOHOOK      4   /* the kernel would not run a filter hook (ttl, mtu, no route) */
#define EBPFW_STAT_HOTDROP     5   /* truncated L4 header reached an L4 match */
#define EBPFW_STAT_WALK_LIMIT  6   /* walk exceeded its step budget: dropped (fail closed) */
#define EBPFW_STAT_JUDGED_FWD  7   /* forwarded packets already judged at ingress */
#define EBPFW_STAT_MAC_UNKNOWN 8   /* a -m mac rule reached where the source MAC is gone: dropped */
#define EBPFW_STAT_REJECT_SENT 9   /* REJECT: answer built and sent */
#define EBPFW_STAT_REJECT_QUIET 10 /* REJECT: dropped without an answer, as the kernel would (reject_prepare) */
#define EBPFW_STAT_REJECT_FAIL 11  /* REJECT: the answer could not be built (a helper failed): dropped */
#define EBPFW_STAT_REJECT_RATE 12  /* REJECT: ICMP error held back by the per-peer rate limit (icmp_ratelimit) */
#define EBPFW_STAT_LOG         13  /* LOG: events written to the ring buffer */
#define EBPFW_STAT_LOG_SUPPR   14  /* LOG: events suppressed by the per-CPU rate limit */
#define EBPFW_STAT_LOG_LOST    15  /* LOG: events lost (ring buffer full, or more than EBPFW_MAXLOG per packet) */
#define EBPFW_NSTATS           16

/* ---- REJECT (compiled in with EBPFW_F_REJECT) ----------------------------------------------- */
/* written by userspace at every apply from the namespace's sysctls */
struct ebpfw_rejcfg {
    __u64 icmp_ratelimit_ns;  /* net.ipv4.icmp_ratelimit (ms) in ns; 0 = no limit */
    __u32 ttl;                /* net.ipv4.ip_default_ttl */
    __u32 flags;              /* EBPFW_REJCFG_* */
};
#define EBPFW_REJCFG_FWMARK_REFLECT 1   /* net.ipv4.fwmark_reflect: answers carry the packet's mark */

/* per-peer token bucket of ICMP errors (inet_peer_xrlim_allow), keyed by the peer address */
struct ebpfw_icmprl {
    __u64 tokens;             /* ns of credit */
    __u64 last;               /* bpf_ktime_get_ns() of the last update */
};

/* ---- marks (compiled in with EBPFW_F_MARK) --------------------------------------------------
 * Per rule (slot * EBPFW_RCAP + rule): its -m mark / -m connmark conditions (rule flag
 * EBPFW_RF_MARK) and the operands of its -j MARK / -j CONNMARK. The packet's mark is walk state
 * (struct walkstate.mark in ebpfw.c): read from skb->mark at TC (0 at XDP), changed by MARK and
 * CONNMARK --restore-mark, written back to skb->mark when TC accepts the packet. */
#define EBPFW_MK_MARK       1    /* -m mark: (mark & m_mask) == m_value */
#define EBPFW_MK_MARK_INV   2
#define EBPFW_MK_MARK_FIRST 4    /* it comes before every match that can hotdrop: judged first */
#define EBPFW_MK_CONN       8    /* -m connmark: (ctmark & c_mask) == c_value; no connection: no match */
#define EBPFW_MK_CONN_INV   16
#define EBPFW_MK_CONN_FIRST 32
#define EBPFW_CM_SET     1       /* ctmark = (ctmark & ~t_mask) ^ t_value */
#define EBPFW_CM_SAVE    2       /* ctmark = (ctmark & ~t_mask) ^ (mark & t_nfmask) */
#define EBPFW_CM_RESTORE 3       /* mark = (mark & ~t_nfmask) ^ (ctmark & t_mask) */
struct ebpfw_markc {
    __u32 t_value;       /* MARK / CONNMARK --set-xmark value */
    __u32 t_mask;        /* MARK: the mask; CONNMARK: ctmask */
    __u32 t_nfmask;      /* CONNMARK --save-mark / --restore-mark */
    __u8  t_mode;        /* CONNMARK: EBPFW_CM_* */
    __u8  m_flags;       /* EBPFW_MK_* */
    __u16 pad;
    __u32 m_value;       /* -m mark --mark value/mask */
    __u32 m_mask;
    __u32 c_value;       /* -m connmark --mark value/mask */
    __u32 c_mask;
};

/* ---- LOG (compiled in with EBPFW_F_LOG) ------------------------------------------------------ */
#define EBPFW_LOG_PREFIX 32    /* --log-prefix is at most 29 bytes */
#define EBPFW_LOG_CAP    128   /* bytes of the frame (MAC, IP and L4 headers) copied into an event */
#define EBPFW_LOGF_TCPSEQ 1    /* --log-tcp-sequence */
#define EBPFW_LOGF_TCPOPT 2    /* --log-tcp-options */
#define EBPFW_LOGF_IPOPT  4    /* --log-ip-options */
#define EBPFW_LOGF_MACDEC 8    /* --log-macdecode */

/* per rule (slot * EBPFW_RCAP + rule), written with the ruleset */
struct ebpfw_logcfg {
    char  prefix[EBPFW_LOG_PREFIX];
    __u8  level;
    __u8  flags;              /* EBPFW_LOGF_* */
    __u16 pad;
    __u32 pad2;
};

/* one ring buffer record */
struct ebpfw_logev {
    __u64 ts;                 /* bpf_ktime_get_ns() */
    __u32 rule;               /* rule number in the slot's ruleset */
    __u8  hook;               /* EBPFW_CHAIN_INPUT / FORWARD / OUTPUT */
    __u8  slot;
    __u16 caplen;             /* bytes of data[] that are valid */
    __u32 iif;                /* 0: none */
    __u32 oif;
    __u32 wire_len;           /* frame length */
    __u32 pad;                /* 1: seen at TC egress */
    __u32 mark;               /* the packet's mark when the LOG rule was reached */
    __u32 pad2;
    struct ebpfw_logcfg cfg;
    __u8  data[EBPFW_LOG_CAP];  /* the frame from its MAC header */
};

/* the LOG rate limit: one token bucket per CPU (ns of credit), configured by userspace */
struct ebpfw_logrl_cfg {
    __u64 ns_per_event;       /* 0: unlimited */
    __u64 burst_ns;
};
struct ebpfw_logrl {
    __u64 tokens;
    __u64 last;
};


/* ---- -m hashlimit (compiled in with EBPFW_F_HASHLIMIT, see programs/ebpfw.c) ----------------
 * xt_hashlimit revision 3: one table per --hashlimit-name, one token bucket per key. Table ids
 * (0 .. 2 * EBPFW_HL_NT - 1) are shared by both slots: a name both rulesets use keeps its table
 * across an apply; the config is that of the first rule (iptables' check order) that made it. */
#define EBPFW_HLM_DIP 1       /* key parts: XT_HASHLIMIT_HASH_DIP .. SPT */
#define EBPFW_HLM_DPT 2
#define EBPFW_HLM_SIP 4
#define EBPFW_HLM_SPT 8

/* struct ebpfw_hlcfg.mode: the table's XT_HASHLIMIT_BYTES / XT_HASHLIMIT_RATE_MATCH */
#define EBPFW_HL_BYTES 1
#define EBPFW_HL_RATE  2
/* slots of a table's entry count (struct ebpfw_hlcnt), a power of two */
#define EBPFW_HL_RING 64

/* per table: the numbers rateinfo_init and the collector use, written by userspace. A new
 * bucket (rateinfo_init) is {credit, cap, cost}; per mode:
 *   packets:    credit = cap = user2credits(avg * burst), cost = user2credits(avg), cpj = CREDITS_PER_JIFFY
 *   bytes:      credit = ccap = CREDITS_PER_JIFFY_BYTES * HZ, cap = burst (refills left),
 *               cost = user2credits_byte(avg), cpj = CREDITS_PER_JIFFY_BYTES
 *   rate-match: credit = 0 (current_rate), cap = rateinfo.burst, cost = rateinfo.rate,
 *               interval_j = (u32)(interval * HZ) */
struct ebpfw_hlcfg {
    __u64 credit;
    __u64 cost;
    __u64 cpj;
    __u64 expire_j;      /* msecs_to_jiffies(--hashlimit-htable-expire) */
    __u64 gc_j;          /* msecs_to_jiffies(--hashlimit-htable-gcinterval) */
    __u64 j0;            /* jiffies when the table was made (the collector runs every gc_j from it) */
    __u32 srcmask;       /* network order; 0 when the source is not part of the key */
    __u32 dstmask;
    __u16 spmask;        /* 0xffff when the source port is part of the key, else 0 */
    __u16 dpmask;
    __u32 needports;     /* 1: a port is part of the key (a packet without them hotdrops) */
    __u32 slots;         /* userspace only: bit s = slot s uses this table */
    __u32 max;           /* --hashlimit-htable-max as htable_create settles it */
    __u64 name;          /* userspace only: tag of the --hashlimit-name (ebpfw/datapath/abi.py) */
    __u64 cap;
    __u64 interval_j;
    __u64 ccap;
    __u32 mode;          /* EBPFW_HL_BYTES | EBPFW_HL_RATE */
    __u32 gk;            /* collector runs per slot of the entry count */
};

/* a table's entry count (the kernel's ht->count), by the collector run that will free the
 * entries: slot g % EBPFW_HL_RING counts the live entries of group g (runs (g-1)*gk+1 .. g*gk),
 * tag[] says which group a slot holds (an older tag: a group the collector has passed) */
struct ebpfw_hlcnt {
    struct bpf_spin_lock lock;
    __u32 pad;
    __s64 n[EBPFW_HL_RING];
    __u64 tag[EBPFW_HL_RING];
};

/* per rule (slot * EBPFW_RCAP + rule) */
struct ebpfw_hlrule {
    __u32 tid;           /* table id */
    __u32 inv;           /* --hashlimit-above (XT_HASHLIMIT_INVERT) */
};

/* -m connlimit, per rule (slot * EBPFW_RCAP + rule); the lists are programs/ebpfw.c's ebpfw_cl */
struct ebpfw_clm {
    __u32 mask;          /* network order: the --connlimit-mask prefix */
    __u32 limit;         /* the rule matches when (count > limit) ^ invert */
    __u8  daddr;         /* --connlimit-daddr: the key is the destination address */
    __u8  invert;        /* --connlimit-upto (XT_CONNLIMIT_INVERT) */
    __u16 pad;
};

struct ebpfw_hl_key {
    __u32 tid;
    __u32 src;           /* network order, masked; 0 when not a key part */
    __u32 dst;
    __u16 sport;         /* host order; 0 when not a key part */
    __u16 dport;
};

/* struct dsthash_ent's expires and rateinfo (updated under a stripe lock, see ebpfw.c) */
struct ebpfw_hl_val {
    __u64 expires;       /* jiffies */
    __u64 prev;          /* jiffies of the last recalc */
    __u64 credit;        /* rate-match: current_rate */
    __u64 credit_cap;    /* rate-match: burst */
    __u64 cost;          /* rate-match: rate */
    __u64 win;           /* rate-match: prev_window */
};

/* ---- connection tracking (compiled in with EBPFW_F_CT, see programs/ebpfw.c) ---------- */

/* ctstate bit numbers: the `ct` field's class array is indexed by these, and a rule's
 * --ctstate mask uses 1 << n (ebpfw/ruleset.py CT_*) */
#define EBPFW_CT_INVALID     0
#define EBPFW_CT_ESTABLISHED 1
#define EBPFW_CT_RELATED     2
#define EBPFW_CT_NEW         3
#define EBPFW_CT_UNTRACKED   4
#define EBPFW_CT_SLOTS       8

/* TCP states, numbered as netfilter's enum tcp_conntrack */
#define EBPFW_TCP_NONE        0
#define EBPFW_TCP_SYN_SENT    1
#define EBPFW_TCP_SYN_RECV    2
#define EBPFW_TCP_ESTABLISHED 3
#define EBPFW_TCP_FIN_WAIT    4
#define EBPFW_TCP_CLOSE_WAIT  5
#define EBPFW_TCP_LAST_ACK    6
#define EBPFW_TCP_TIME_WAIT   7
#define EBPFW_TCP_CLOSE       8
#define EBPFW_TCP_SYN_SENT2   9
#define EBPFW_TCP_MAX        10   /* "sIV": the packet is INVALID */
#define EBPFW_TCP_IGNORE     11   /* "sIG": let through, no state change */

/* timeout slots of struct ebpfw_ctcfg.timeout (ns): 0..9 by TCP state, then these */
#define EBPFW_TO_TCP_UNACK    10  /* picked-up TCP connection without a reply yet */
#define EBPFW_TO_UDP          11
#define EBPFW_TO_UDP_STREAM   12
#define EBPFW_TO_ICMP         13
#define EBPFW_TO_GENERIC      14
#define EBPFW_NTIMEOUTS       16

/* struct ebpfw_ct_val.status bits */
#define EBPFW_CTS_SEEN_REPLY  1
#define EBPFW_CTS_ASSURED     2
#define EBPFW_CTS_CLOSE_INIT0 4   /* FIN_WAIT entered by the original direction */
#define EBPFW_CTS_CLOSE_INIT1 8   /* ... by the reply direction */
#define EBPFW_CTS_SIMOPEN     16  /* simultaneous open seen */
#define EBPFW_CTS_SEEDED      32  /* copied from the kernel's conntrack at apply */

/* Key: the connection's two ends in a canonical order, so both directions find one entry.
 * TCP/UDP/generic: (a_addr, a_port) <= (b_addr, b_port) compared in host order.
 * ICMP queries: a = the requester, a_port = b_port = the query id, kind = the request type. */
struct ebpfw_ct_key {
    __u32 a_addr;        /* network order */
    __u32 b_addr;
    __u16 a_port;        /* host order */
    __u16 b_port;
    __u8  proto;
    __u8  kind;
    __u16 pad;
};

struct ebpfw_ct_val {
    __u64 expires;       /* bpf_ktime_get_ns() (CLOCK_MONOTONIC) deadline */
    __u64 created;
    __u64 packets[2];    /* [0] original direction, [1] reply direction */
    __u64 bytes[2];      /* IP total length, as netfilter's accounting */
    __u8  orig_a;        /* 1: the original direction is a -> b */
    __u8  state;         /* TCP: EBPFW_TCP_*; others 0 */
    __u8  status;        /* EBPFW_CTS_* */
    __u8  last;          /* TCP: last packet's flag index | direction << 4 */
    __u32 mark;          /* the connection's mark (CONNMARK, -m connmark); was padding: 0 */
};

/* configuration written by userspace at every apply */
struct ebpfw_ctcfg {
    __u64 timeout[EBPFW_NTIMEOUTS];
    __u64 tcp_rows[12];  /* [dir * 6 + flag index]: 4 bits of new state per old state */
    __u32 tcp_loose;     /* pick up connections from a mid-stream ACK (nf_conntrack_tcp_loose) */
    __u32 pad;
};

/* conntrack statistics (per CPU, pinned next to the table), index = EBPFW_CTSTAT_* */
#define EBPFW_CTSTAT_CREATED  0   /* entries inserted by the datapath */
#define EBPFW_CTSTAT_DELETED  1   /* entries removed by the datapath (expired, reset, reopened) */
#define EBPFW_CTSTAT_SEEDED   2   /* entries inserted by userspace (seed from the kernel) */
#define EBPFW_CTSTAT_FLUSHED  3   /* entries removed by userspace (flush) */
#define EBPFW_CTSTAT_INVALID  4   /* packets labelled INVALID */
#define EBPFW_CTSTAT_RELATED  5   /* packets labelled RELATED */
#define EBPFW_CTSTAT_RACE     6   /* insert lost to another CPU's insert of the same flow */
#define EBPFW_NCTSTATS        8

#endif /* EBPFW_ABI_H */
