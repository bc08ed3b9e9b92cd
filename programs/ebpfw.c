/* ebpfw.c — the datapath: one source, three entry points.
 *
 *   ebpfw_xdp_ingress  (XDP, native or generic)  INPUT / FORWARD for packets arriving
 *   ebpfw_tc_ingress   (TC clsact ingress)       the same, where XDP is not wanted
 *   ebpfw_tc_egress    (TC clsact egress)        OUTPUT, and FORWARD for packets that
 *                                                entered through an interface we do not judge
 *
 * Contract: a packet is judged by exactly one ruleset (the control map's active slot is read
 * once), exactly like iptables' filter table would judge it at that hook; packets the kernel
 * would drop before any filter hook (bad IPv4 header, wrong L2 destination, TTL expiry on
 * forward) are passed on uncounted, so the kernel drops them as it always did.
 *
 * Classification is a linear bit-vector search: every field in use maps the packet's value to
 * a class, every class has a bit vector over all rules (numbered in iptables order, each chain
 * a contiguous range); the walk ANDs the vectors word by word and visits the set bits in order,
 * following jumps with a small return stack.
 *
 * The loader specialises this file with -D flags (ebpfw/datapath/loader.py):
 *   EBPFW_NWORDS, EBPFW_VCAP, EBPFW_RCAP, EBPFW_CCAP, EBPFW_LPM_CAP, EBPFW_IFC_CAP,
 *   EBPFW_MAXDEPTH, EBPFW_MAXSTEPS and EBPFW_F_<FIELD> for each field some rule uses.
 * With EBPFW_F_CT (some rule uses -m conntrack / -m state) every judged packet is labelled by
 * connection tracking first (the section below) and the `ct` field classifies its state;
 * EBPFW_CT_SIZE, EBPFW_CT_PATH and EBPFW_CTSTAT_PATH place the shared, pinned table.
 * With EBPFW_F_REJECT some rule is -j REJECT: the walk ends with V_REJECT and a post program
 * rewrites the frame into the answer and sends it back (see the REJECT section). With
 * EBPFW_F_LOG some rule is -j LOG: the walk notes the rule and a post program writes an event
 * to a ring buffer; the walk goes on. With EBPFW_F_RAW the ruleset has a raw table: every
 * packet first goes through the raw stage (a tail-called program, see "the raw table" below),
 * which walks raw PREROUTING / OUTPUT and hands the packet back with its result.
 */
#include <uapi/linux/bpf.h>
#include <uapi/linux/if_ether.h>
#include <uapi/linux/ip.h>
#include <uapi/linux/in.h>
#include <uapi/linux/tcp.h>
#include <uapi/linux/udp.h>
#include <uapi/linux/icmp.h>
#include <uapi/linux/pkt_cls.h>

#include "ebpfw_abi.h"

#define NSLOTS 2

/* A rule bit vector with a one-level summary: bit b of s[] is set when word b of w[] is not
 * zero, so a walk skips 4,096 rules that cannot match with one AND per field. */
#define EBPFW_NSUM ((EBPFW_NWORDS + 63) / 64)
struct ebpfw_vec {
    __u64 s[EBPFW_NSUM];
    __u64 w[EBPFW_NWORDS];
};

/* Vector bits number only the *residual* rules (those not in an exact-match group), densely:
 * bit k is rule ebpfw_unrank[k]; ebpfw_rank[p] is the bit of the first residual rule >= p.
 * Rules, chains and counters keep the global numbering (iptables order). */
#define EBPFW_GSUM ((EBPFW_GWORDS + 63) / 64)
#define NO_RULE 0xffffffff

/* ---- maps ------------------------------------------------------------------------------- */
BPF_ARRAY(ebpfw_ctl, struct ebpfw_ctl, 1);
BPF_ARRAY(ebpfw_meta, struct ebpfw_meta, NSLOTS);
BPF_ARRAY(ebpfw_vec, struct ebpfw_vec, NSLOTS * EBPFW_VCAP);
BPF_ARRAY(ebpfw_rule, struct ebpfw_rule, NSLOTS * EBPFW_RCAP);
BPF_ARRAY(ebpfw_rank, __u32, NSLOTS * (EBPFW_RCAP + 1));
BPF_ARRAY(ebpfw_unrank, __u32, NSLOTS * EBPFW_RCAP);
BPF_ARRAY(ebpfw_resn, __u32, NSLOTS);
BPF_ARRAY(ebpfw_chain, struct ebpfw_chain, NSLOTS * EBPFW_CCAP);
BPF_PERCPU_ARRAY(ebpfw_cnt, struct ebpfw_counter, NSLOTS * EBPFW_RCAP);
BPF_PERCPU_ARRAY(ebpfw_pcnt, struct ebpfw_counter, NSLOTS * EBPFW_CCAP);
BPF_PERCPU_ARRAY(ebpfw_stat, __u64, EBPFW_NSTATS);
BPF_HASH(ebpfw_ifinfo, __u32, struct ebpfw_ifinfo, 4096);
BPF_HASH(ebpfw_local, __u32, __u8, 4096);

#ifdef EBPFW_F_SRC
BPF_F_TABLE("lpm_trie", struct ebpfw_lpm_key, __u32, ebpfw_src, NSLOTS * EBPFW_LPM_CAP, BPF_F_NO_PREALLOC);
#endif
#ifdef EBPFW_F_DST
BPF_F_TABLE("lpm_trie", struct ebpfw_lpm_key, __u32, ebpfw_dst, NSLOTS * EBPFW_LPM_CAP, BPF_F_NO_PREALLOC);
#endif
#ifdef EBPFW_F_PROTO
BPF_ARRAY(ebpfw_proto, __u32, NSLOTS * EBPFW_PROTO_SLOTS);
#endif
#ifdef EBPFW_F_SPORT
BPF_ARRAY(ebpfw_sport, __u32, NSLOTS * EBPFW_PORT_SLOTS);
#endif
#ifdef EBPFW_F_DPORT
BPF_ARRAY(ebpfw_dport, __u32, NSLOTS * EBPFW_PORT_SLOTS);
#endif
#ifdef EBPFW_F_XPORT
BPF_ARRAY(ebpfw_xsport, __u32, NSLOTS * EBPFW_PORT_SLOTS);
BPF_ARRAY(ebpfw_xdport, __u32, NSLOTS * EBPFW_PORT_SLOTS);
#endif
#ifdef EBPFW_F_TCPFL
BPF_ARRAY(ebpfw_tcpfl, __u32, NSLOTS * EBPFW_TCPFL_SLOTS);
#endif
#ifdef EBPFW_F_ICMP
BPF_ARRAY(ebpfw_icmp, __u32, NSLOTS * EBPFW_PORT_SLOTS);
#endif
#ifdef EBPFW_F_LENGTH
BPF_ARRAY(ebpfw_length, __u32, NSLOTS * EBPFW_LENGTH_SLOTS);
#endif
#ifdef EBPFW_F_TTL
BPF_ARRAY(ebpfw_ttl, __u32, NSLOTS * EBPFW_TTL_SLOTS);
#endif
#ifdef EBPFW_F_TOS
BPF_ARRAY(ebpfw_tos, __u32, NSLOTS * EBPFW_TOS_SLOTS);
#endif
#ifdef EBPFW_F_FRAG
BPF_ARRAY(ebpfw_frag, __u32, NSLOTS * EBPFW_FRAG_SLOTS);
#endif
#ifdef EBPFW_F_TCPMSS
BPF_ARRAY(ebpfw_tcpmss, __u32, NSLOTS * EBPFW_MSS_SLOTS);
#endif
#ifdef EBPFW_F_PKTTYPE
BPF_ARRAY(ebpfw_pkttype, __u32, NSLOTS * EBPFW_PKTTYPE_SLOTS);
#endif
#ifdef EBPFW_F_MAC
BPF_HASH(ebpfw_mac, struct ebpfw_mac_key, __u32, NSLOTS * EBPFW_MAC_CAP);
#endif
#if defined(EBPFW_F_ATSRC) || defined(EBPFW_F_ATDST)
BPF_F_TABLE("lpm_trie", struct ebpfw_atype_key, struct ebpfw_atype_val, ebpfw_atype, EBPFW_ATYPE_CAP, BPF_F_NO_PREALLOC);
#endif
#ifdef EBPFW_F_ATSRC
BPF_ARRAY(ebpfw_atsrc, __u32, NSLOTS * EBPFW_ATYPE_SLOTS);
#endif
#ifdef EBPFW_F_ATDST
BPF_ARRAY(ebpfw_atdst, __u32, NSLOTS * EBPFW_ATYPE_SLOTS);
#endif

/* ---- the parsed packet ------------------------------------------------------------------ */
#define L4_OK     0   /* the L4 header is present */
#define L4_NONE   1   /* a non-first fragment, or a protocol without ports */
#define L4_TRUNC  2   /* first fragment whose L4 header is cut short: hotdrop at L4 matches */

struct pkt {
    __u32 saddr;      /* network order */
    __u32 daddr;
    __u32 len;        /* IP total length: what iptables counts as bytes */
    __u16 sport;      /* host order; for ICMP: (type << 8) | code */
    __u16 dport;
    __u8  proto;
    __u8  tcpflags;
    __u8  l4;         /* L4_* */
    __u8  ttl;        /* the TTL the filter hook sees (FORWARD: after ip_forward's decrement) */
    __u8  df;
    __u8  tos;
    __u16 l4off;      /* offset of the L4 header from the frame start */
    __u16 l4len;      /* IP total length - IP header length */
    __u8  frag;       /* 0 not a fragment, 1 a non-first fragment, 2 a first fragment */
    __u8  ctstate;    /* EBPFW_CT_* bit number (EBPFW_F_CT only) */
    __u16 ipid;       /* IP identification, host order */
    __u8  pkttype;    /* skb->pkt_type at the hook: PACKET_HOST, BROADCAST, MULTICAST */
    __u8  macok;      /* smac is the frame's Ethernet source (-m mac can be judged) */
    __u8  smac[6];
    __u32 mss;        /* EBPFW_F_TCPMSS: the MSS option, EBPFW_MSS_NONE, or MSS_BAD */
    __u16 setsport;   /* EBPFW_F_SET: the ports ipset reads (ip_set_get_ip4_port), host order */
    __u16 setdport;
    __u32 setok;      /* EBPFW_F_SET: ip_set_get_ip4_port would succeed */
    __u16 hlsport;    /* EBPFW_F_HASHLIMIT: the ports hashlimit_init_dst reads, host order */
    __u16 hldport;
    __u32 hlok;       /* EBPFW_F_HASHLIMIT: ... and it could read them (else it hotdrops) */
    __u8  rttl;       /* the TTL xt_recent reads: as received (INPUT, FORWARD), as sent (OUTPUT),
                       * plus one at egress for a packet without a socket (recent_mt's ttl++) */
    __u8  pad[3];     /* per-CPU map values are multiples of 8 bytes */
    /* the interfaces' classes per slot, from their ebpfw_ifinfo entries (note_iif, note_oif) */
    __u32 ifc_in[NSLOTS];
    __u32 ifc_out[NSLOTS];
    __u32 ifc_grp[NSLOTS];
};

/* xt_tcpmss hotdrops a TCP header it cannot read: class "all" plus EBPFW_RF_MSS in walk() */
#define MSS_BAD (EBPFW_MSS_NONE + 1)

/* the packet being judged lives in map memory rather than on the 512-byte stack; its values
 * are then unknown to the verifier, which does not split its states on them */
BPF_PERCPU_ARRAY(ebpfw_pkt, struct pkt, 1);

/* the hooks a packet can be judged at */
#define HOOK_INGRESS 0
#define HOOK_EGRESS  1

/* results of judge() */
#define V_PASS   0    /* not ours to judge: let the kernel decide */
#define V_ACCEPT 1
#define V_DROP   2
#define V_CONT   3    /* the walk continues in a tail call (programs/ebpfw.c: continuation) */
#define V_REJECT 4    /* drop and answer (EBPFW_F_REJECT): the walk left the rule's arg in walkstate.arg */
#define V_RECENT 5    /* a -m recent rule needs its list: the recent program decides, then the walk goes on */
#define V_CONNLIMIT 6 /* a -m connlimit rule needs its count: the connlimit program decides, likewise */
#define V_RAWPASS 7   /* EBPFW_F_RAW: the post program wrote the raw rules' LOG events and hands the
                       * packet on to the filter stage */

/* Actions after the verdict (LOG events, building a REJECT answer) run in tail-called post
 * programs: code placed after the inlined walk would be verified once per way out of the walk,
 * code in another program is verified once. The walk leaves what they need in its scratch
 * record (struct walkstate). */
#define EBPFW_MAXLOG 8        /* LOG rules one packet can reach; more are counted as lost */

#ifdef EBPFW_F_CT
/* ---- connection tracking (compiled in with -DEBPFW_F_CT) ---------------------------------
 *
 * (It lives in this file because bcc rewrites map calls only in the main source file.)
 *
 *
 * Contract: ct_label() gives every judged packet netfilter's ctstate (INVALID, ESTABLISHED,
 * RELATED, NEW; UNTRACKED is given by the raw stage instead, see ct_untrack) before classification, and updates
 * the entry of a known connection the way nf_conntrack_in does (state, timeout, counters),
 * whatever the verdict. A packet that would start a connection only prepares its entry in a
 * per-CPU scratch record; ct_commit() inserts it after the ruleset ACCEPTed the packet
 * (netfilter confirms an entry only for a packet that survives the hooks).
 *
 * The table is an LRU hash keyed by the canonical 5-tuple (struct ebpfw_ct_key), shared by
 * the ingress and egress programs and, with -DEBPFW_CT_PATH="...", pinned outside the
 * generation directory so it survives re-applies and program swaps.
 *
 * TCP follows nf_conntrack_proto_tcp: the tcp_valid_flags check, the tcp_conntracks
 * transition table (written by userspace into ebpfw_ctcfg.tcp_rows), mid-stream pickup of a
 * bare ACK when tcp_loose is set, reopening from TIME_WAIT/CLOSE, simultaneous open, and
 * the kill of a connection whose only reply is a RST. Not done: sequence/window tracking
 * (tcp_in_window: an out-of-window segment is not INVALID here), TCP/UDP/ICMP checksum
 * validation, the SYN-ACK resync of an ignored SYN, and reassembly: netfilter reassembles
 * before tracking and filtering; here each fragment is judged, the later ones with the label
 * of the first (so rules with port matches do not match them, and each fragment is counted).
 * UDP: NEW until a reply, 30 s unreplied / 120 s once replied and older than 2 s.
 * ICMP echo/timestamp/info/address-mask: pseudo-connections by (requester, id, type); an
 * ICMP error quoting a tracked flow (inner IP header + 8 bytes) is RELATED, else INVALID.
 * Other protocols: generic, by addresses and protocol, 600 s.
 */

#ifndef EBPFW_CT_SIZE
#define EBPFW_CT_SIZE 262144
#endif

#ifdef EBPFW_CT_PATH
BPF_TABLE_PINNED("lru_hash", struct ebpfw_ct_key, struct ebpfw_ct_val, ebpfw_ct, EBPFW_CT_SIZE, EBPFW_CT_PATH);
BPF_TABLE_PINNED("percpu_array", __u32, __u64, ebpfw_ctstat, EBPFW_NCTSTATS, EBPFW_CTSTAT_PATH);
#else
BPF_TABLE("lru_hash", struct ebpfw_ct_key, struct ebpfw_ct_val, ebpfw_ct, EBPFW_CT_SIZE);
BPF_PERCPU_ARRAY(ebpfw_ctstat, __u64, EBPFW_NCTSTATS);
#endif
BPF_ARRAY(ebpfw_ctcfg, struct ebpfw_ctcfg, 1);
BPF_ARRAY(ebpfw_ctcls, __u32, NSLOTS * EBPFW_CT_SLOTS);

struct ctwork {
    struct ebpfw_ct_key key;
    struct ebpfw_ct_val val;
    __u32 pending;       /* 1: insert val at key once the packet is accepted */
    __u32 hasct;         /* 1: the packet belongs to the entry at key (known connection, or the
                          * connection an ICMP error is RELATED to): CONNMARK / -m connmark */
};
BPF_PERCPU_ARRAY(ebpfw_ctw, struct ctwork, 1);

/* the labels of first fragments, for the fragments that follow (no reassembly) */
struct ctfrag_key {
    __u32 saddr;
    __u32 daddr;
    __u16 id;
    __u8  proto;
    __u8  pad;
};
struct ctfrag_val {
    __u32 label;
    __u32 hasct;         /* the first fragment had a connection (known, or being made) ... */
    __u64 expires;
    struct ebpfw_ct_key key;   /* ... at this key: the later fragments belong to it too */
};
BPF_TABLE("lru_hash", struct ctfrag_key, struct ctfrag_val, ebpfw_ctfrag, 8192);

/* tcp flag index (netfilter's get_conntrack_index) */
#define TIX_SYN    0
#define TIX_SYNACK 1
#define TIX_FIN    2
#define TIX_ACK    3
#define TIX_RST    4
#define TIX_NONE   5

#define TH_FIN 0x01
#define TH_SYN 0x02
#define TH_RST 0x04
#define TH_ACK 0x10
#define TH_URG 0x20
/* tcp_valid_flags[]: the combinations of FIN SYN RST ACK URG (PSH ECE CWR ignored) netfilter
 * accepts; bit n set = flags value n is valid */
#define TCP_VALID_FLAGS ((1ULL << TH_SYN) | (1ULL << (TH_SYN | TH_URG)) | (1ULL << (TH_SYN | TH_ACK)) | \
                         (1ULL << TH_RST) | (1ULL << (TH_RST | TH_ACK)) | (1ULL << (TH_FIN | TH_ACK)) | \
                         (1ULL << (TH_FIN | TH_ACK | TH_URG)) | (1ULL << TH_ACK) | (1ULL << (TH_ACK | TH_URG)))

#define NS_PER_SEC 1000000000ULL

static __always_inline void ctstat_inc(__u32 idx)
{
    __u64 *v = ebpfw_ctstat.lookup(&idx);
    if (v)
        *v += 1;
}

static __always_inline __u32 tcp_index(__u8 f)
{
    if (f & TH_RST)
        return TIX_RST;
    if (f & TH_SYN)
        return (f & TH_ACK) ? TIX_SYNACK : TIX_SYN;
    if (f & TH_FIN)
        return TIX_FIN;
    if (f & TH_ACK)
        return TIX_ACK;
    return TIX_NONE;
}

/* canonical key of a flow; returns 1 when the packet goes a -> b */
static __always_inline int ct_key_norm(struct ebpfw_ct_key *k, __u32 s, __u32 d, __u16 sp, __u16 dp, __u8 proto)
{
    __u32 hs = ntohl(s), hd = ntohl(d);
    int a_is_src = hs < hd || (hs == hd && sp <= dp);
    if (a_is_src) {
        k->a_addr = s;
        k->b_addr = d;
        k->a_port = sp;
        k->b_port = dp;
    } else {
        k->a_addr = d;
        k->b_addr = s;
        k->a_port = dp;
        k->b_port = sp;
    }
    k->proto = proto;
    k->kind = 0;
    k->pad = 0;
    return a_is_src;
}

/* ICMP query types: the request type of a query family, or 0 if `type` is none */
static __always_inline __u8 icmp_request_of(__u8 type, int *is_request)
{
    *is_request = 1;
    if (type == 8 || type == 13 || type == 15 || type == 17)
        return type;
    *is_request = 0;
    if (type == 0)
        return 8;
    if (type == 14 || type == 16 || type == 18)
        return type - 1;
    return 0;
}

static __always_inline int icmp_is_error(__u8 type)
{
    return type == 3 || type == 4 || type == 5 || type == 11 || type == 12;
}

static __always_inline void ct_acct(struct ebpfw_ct_val *v, __u32 dir, __u32 len)
{
    if (dir) {
        __sync_fetch_and_add(&v->packets[1], 1);
        __sync_fetch_and_add(&v->bytes[1], len);
    } else {
        __sync_fetch_and_add(&v->packets[0], 1);
        __sync_fetch_and_add(&v->bytes[0], len);
    }
}

static __always_inline __u64 cfg_timeout(struct ebpfw_ctcfg *cfg, __u64 i)
{
    asm volatile("" : "+r"(i));
    if (i >= EBPFW_NTIMEOUTS)
        return 0;
    return cfg->timeout[i];
}

/* prepare the entry a first packet would create (inserted by ct_commit on ACCEPT) */
static __always_inline __u32 ct_prepare(struct ctwork *w, int from_a, __u8 state, __u8 last,
                                        __u64 now, __u64 timeout, __u32 len)
{
    struct ebpfw_ct_val *v = &w->val;
    v->expires = now + timeout;
    v->created = now;
    v->packets[0] = 1;
    v->bytes[0] = len;
    v->packets[1] = 0;
    v->bytes[1] = 0;
    v->orig_a = from_a ? 1 : 0;
    v->state = state;
    v->status = 0;
    v->last = last;
    v->mark = 0;
    w->pending = 1;
    return EBPFW_CT_NEW;
}

/* ICMP error: RELATED if the quoted packet (inner IP header + 8 bytes) belongs to a tracked
 * connection whose packet we sent (the inner source is the outer destination) */
static __always_inline __u32 ct_icmp_error(struct pkt *p, void *data, void *data_end, __u64 now,
                                           struct ctwork *w)
{
    __u64 off = p->l4off + 8;
    asm volatile("" : "+r"(off));
    if (off > 128)
        return EBPFW_CT_INVALID;
    struct iphdr *in = data + off;
    if ((void *)(in + 1) > data_end)
        return EBPFW_CT_INVALID;
    __u64 ihl = in->ihl * 4;
    if (in->version != 4 || ihl < 20)
        return EBPFW_CT_INVALID;
    if (in->saddr != p->daddr)
        return EBPFW_CT_INVALID;
    __u64 l4 = off + ihl;
    asm volatile("" : "+r"(l4));
    if (l4 > 200)
        return EBPFW_CT_INVALID;
    __u8 *q = data + l4;
    if ((void *)(q + 8) > data_end)
        return EBPFW_CT_INVALID;
    struct ebpfw_ct_key k = {};
    __u8 proto = in->protocol;
    if (proto == IPPROTO_TCP || proto == IPPROTO_UDP) {
        __u16 sp = ((__u16)q[0] << 8) | q[1];
        __u16 dp = ((__u16)q[2] << 8) | q[3];
        ct_key_norm(&k, in->saddr, in->daddr, sp, dp, proto);
    } else if (proto == IPPROTO_ICMP) {
        int req;
        __u8 kind = icmp_request_of(q[0], &req);
        if (!kind)
            return EBPFW_CT_INVALID;
        k.a_addr = req ? in->saddr : in->daddr;
        k.b_addr = req ? in->daddr : in->saddr;
        k.a_port = k.b_port = ((__u16)q[4] << 8) | q[5];
        k.proto = IPPROTO_ICMP;
        k.kind = kind;
    } else {
        ct_key_norm(&k, in->saddr, in->daddr, 0, 0, proto);
    }
    struct ebpfw_ct_val *v = ebpfw_ct.lookup(&k);
    if (!v || v->expires <= now)
        return EBPFW_CT_INVALID;
    ctstat_inc(EBPFW_CTSTAT_RELATED);
    /* netfilter attaches the error to the connection it quotes (its mark is that one's) */
    __builtin_memcpy(&w->key, &k, sizeof(k));
    w->hasct = 1;
    return EBPFW_CT_RELATED;
}

/* a known TCP connection: netfilter's tcp_packet() without window tracking */
static __always_inline __u32 ct_tcp(struct ebpfw_ctcfg *cfg, struct ctwork *w, struct ebpfw_ct_val *v,
                                    __u32 dir, __u32 idx, __u64 now, __u32 len, int *reopen)
{
    __u32 old = v->state;
    if (old > EBPFW_TCP_SYN_SENT2)
        old = EBPFW_TCP_NONE;
    __u64 ri = dir * 6 + idx;
    asm volatile("" : "+r"(ri));
    if (ri >= 12)
        return EBPFW_CT_INVALID;
    __u32 nw = (cfg->tcp_rows[ri] >> (old * 4)) & 0xf;
    __u32 seen = v->status & EBPFW_CTS_SEEN_REPLY;
    __u32 label = (dir || seen) ? EBPFW_CT_ESTABLISHED : EBPFW_CT_NEW;
    __u32 ldir = v->last >> 4, lidx = v->last & 0xf;
    if (nw == EBPFW_TCP_SYN_SENT && old >= EBPFW_TCP_TIME_WAIT) {
        /* reopening a closed or aborted connection: forget it, track the SYN as new */
        if ((v->status & (EBPFW_CTS_CLOSE_INIT0 | EBPFW_CTS_CLOSE_INIT1)) || (ldir == dir && lidx == TIX_RST)) {
            *reopen = 1;
            return EBPFW_CT_NEW;
        }
        nw = EBPFW_TCP_IGNORE;
    }
    if (nw == EBPFW_TCP_IGNORE) {
        v->last = idx | (dir << 4);
        return label;
    }
    if (nw >= EBPFW_TCP_MAX)
        return EBPFW_CT_INVALID;
    if (nw == EBPFW_TCP_SYN_SENT2)
        v->status |= EBPFW_CTS_SIMOPEN;
    if (nw == EBPFW_TCP_SYN_RECV && dir == 1 && idx == TIX_ACK && (v->status & EBPFW_CTS_SIMOPEN))
        nw = EBPFW_TCP_ESTABLISHED;
    v->last = idx | (dir << 4);
    v->state = nw;
    if (old != nw && nw == EBPFW_TCP_FIN_WAIT)
        v->status |= dir ? EBPFW_CTS_CLOSE_INIT1 : EBPFW_CTS_CLOSE_INIT0;
    __u64 to = idx == TIX_RST ? cfg_timeout(cfg, EBPFW_TCP_CLOSE) : cfg_timeout(cfg, nw);
    int renew = 1;
    if (!seen) {
        if (idx == TIX_RST) {
            /* the only reply is a RST: no connection, drop the entry now */
            *reopen = 2;
            return label;
        }
        if (idx == TIX_SYN && old == EBPFW_TCP_SYN_SENT)
            renew = 0;   /* a retransmitted SYN does not extend the SYN_SENT timeout */
        __u64 unack = cfg_timeout(cfg, EBPFW_TO_TCP_UNACK);
        if (nw == EBPFW_TCP_ESTABLISHED && to > unack)
            to = unack;
    } else if (!(v->status & EBPFW_CTS_ASSURED) &&
               (old == EBPFW_TCP_SYN_RECV || old == EBPFW_TCP_ESTABLISHED) && nw == EBPFW_TCP_ESTABLISHED) {
        v->status |= EBPFW_CTS_ASSURED;
    }
    if (renew)
        v->expires = now + to;
    ct_acct(v, dir, len);
    if (dir)
        v->status |= EBPFW_CTS_SEEN_REPLY;
    return label;
}

/* Label packet p (not a non-first fragment); returns the ctstate bit number (EBPFW_CT_*). */
static __always_inline __u32 ct_label_packet(struct pkt *p, void *data, void *data_end, struct ebpfw_ctcfg *cfg,
                                             struct ctwork *w, __u64 now)
{
    struct ebpfw_ct_key *k = &w->key;
    __u8 proto = p->proto;
    int from_a = 1;
    __u32 idx = TIX_NONE;
    __u64 off = p->l4off;
    asm volatile("" : "+r"(off));
    if (off > 128)
        return EBPFW_CT_INVALID;
    if (proto == IPPROTO_TCP) {
        if (p->l4 != L4_OK)
            return EBPFW_CT_INVALID;
        __u8 *th = data + off;
        if ((void *)(th + 20) > data_end)
            return EBPFW_CT_INVALID;
        __u32 doff = (th[12] >> 4) * 4;
        if (doff < 20 || doff > p->l4len)
            return EBPFW_CT_INVALID;
        __u32 f = p->tcpflags & (TH_FIN | TH_SYN | TH_RST | TH_ACK | TH_URG);
        if (!((TCP_VALID_FLAGS >> f) & 1))
            return EBPFW_CT_INVALID;
        idx = tcp_index(p->tcpflags);
        from_a = ct_key_norm(k, p->saddr, p->daddr, p->sport, p->dport, proto);
    } else if (proto == IPPROTO_UDP) {
        if (p->l4 != L4_OK)
            return EBPFW_CT_INVALID;
        __u8 *uh = data + off;
        if ((void *)(uh + 8) > data_end)
            return EBPFW_CT_INVALID;
        __u32 ulen = ((__u32)uh[4] << 8) | uh[5];
        /* a first fragment carries only part of the datagram its length counts */
        if (ulen < 8 || (ulen > p->l4len && p->frag != 2))
            return EBPFW_CT_INVALID;
        from_a = ct_key_norm(k, p->saddr, p->daddr, p->sport, p->dport, proto);
    } else if (proto == IPPROTO_ICMP) {
        if (p->l4 != L4_OK)
            return EBPFW_CT_INVALID;
        __u8 type = p->sport >> 8;
        if (type > 18)
            return EBPFW_CT_INVALID;
        if (icmp_is_error(type))
            return ct_icmp_error(p, data, data_end, now, w);
        int req;
        __u8 kind = icmp_request_of(type, &req);
        if (!kind)
            return EBPFW_CT_INVALID;   /* no reply type: netfilter cannot track it */
        __u8 *ic = data + off;
        if ((void *)(ic + 8) > data_end)
            return EBPFW_CT_INVALID;
        k->a_addr = req ? p->saddr : p->daddr;
        k->b_addr = req ? p->daddr : p->saddr;
        k->a_port = k->b_port = ((__u16)ic[4] << 8) | ic[5];
        k->proto = IPPROTO_ICMP;
        k->kind = kind;
        k->pad = 0;
        from_a = req;
    } else {
        from_a = ct_key_norm(k, p->saddr, p->daddr, 0, 0, proto);
    }

    struct ebpfw_ct_val *v = ebpfw_ct.lookup(k);
    if (v && v->expires <= now) {
        ebpfw_ct.delete(k);
        ctstat_inc(EBPFW_CTSTAT_DELETED);
        v = NULL;
    }
    if (v) {
        __u32 dir = (from_a ? 1 : 0) == v->orig_a ? 0 : 1;
        if (proto == IPPROTO_TCP) {
            int reopen = 0;
            __u32 label = ct_tcp(cfg, w, v, dir, idx, now, p->len, &reopen);
            if (!reopen) {
                w->hasct = label != EBPFW_CT_INVALID;
                return label;
            }
            if (ebpfw_ct.delete(k) == 0)
                ctstat_inc(EBPFW_CTSTAT_DELETED);
            if (reopen == 2)
                return label;
            /* reopened: falls through to a new connection for this SYN */
        } else {
            __u32 seen = v->status & EBPFW_CTS_SEEN_REPLY;
            __u64 to;
            if (proto == IPPROTO_UDP) {
                to = cfg_timeout(cfg, EBPFW_TO_UDP);
                if (seen && now > v->created + 2 * NS_PER_SEC) {
                    to = cfg_timeout(cfg, EBPFW_TO_UDP_STREAM);
                    v->status |= EBPFW_CTS_ASSURED;
                }
            } else if (proto == IPPROTO_ICMP) {
                to = cfg_timeout(cfg, EBPFW_TO_ICMP);
            } else {
                to = cfg_timeout(cfg, EBPFW_TO_GENERIC);
            }
            v->expires = now + to;
            ct_acct(v, dir, p->len);
            if (dir)
                v->status |= EBPFW_CTS_SEEN_REPLY;
            w->hasct = 1;
            return (dir || seen) ? EBPFW_CT_ESTABLISHED : EBPFW_CT_NEW;
        }
    }

    /* no entry: the first packet of a connection, if it may start one */
    if (proto == IPPROTO_TCP) {
        __u64 ri = idx;
        asm volatile("" : "+r"(ri));
        if (ri >= 6)
            return EBPFW_CT_INVALID;
        __u32 nw = cfg->tcp_rows[ri] & 0xf;   /* original direction, from state NONE */
        if (nw >= EBPFW_TCP_MAX)
            return EBPFW_CT_INVALID;
        if (nw != EBPFW_TCP_SYN_SENT) {
            if (!cfg->tcp_loose)
                return EBPFW_CT_INVALID;
            /* picked up mid-stream: ESTABLISHED, with the short timeout until a reply */
            __u64 to = cfg_timeout(cfg, EBPFW_TCP_ESTABLISHED);
            __u64 unack = cfg_timeout(cfg, EBPFW_TO_TCP_UNACK);
            return ct_prepare(w, from_a, nw, idx, now, to > unack ? unack : to, p->len);
        }
        return ct_prepare(w, from_a, nw, idx, now, cfg_timeout(cfg, EBPFW_TCP_SYN_SENT), p->len);
    }
    if (proto == IPPROTO_UDP)
        return ct_prepare(w, from_a, 0, 0, now, cfg_timeout(cfg, EBPFW_TO_UDP), p->len);
    if (proto == IPPROTO_ICMP) {
        if (!from_a)
            return EBPFW_CT_INVALID;   /* a reply without its request */
        return ct_prepare(w, 1, 0, 0, now, cfg_timeout(cfg, EBPFW_TO_ICMP), p->len);
    }
    return ct_prepare(w, from_a, 0, 0, now, cfg_timeout(cfg, EBPFW_TO_GENERIC), p->len);
}

/* Label packet p; returns the ctstate bit number (EBPFW_CT_*). Fragments: the first one is
 * labelled from its L4 header and its label is remembered for 30 s by (addresses, protocol, IP
 * id); later fragments get that label, or INVALID when the first fragment was not seen. */
static __always_inline __u32 ct_label(struct pkt *p, void *data, void *data_end)
{
    __u32 zero = 0;
    struct ebpfw_ctcfg *cfg = ebpfw_ctcfg.lookup(&zero);
    struct ctwork *w = ebpfw_ctw.lookup(&zero);
    if (!cfg || !w)
        return EBPFW_CT_INVALID;
    w->pending = 0;
    w->hasct = 0;
    __u64 now = bpf_ktime_get_ns();
    struct ctfrag_key fk = { .saddr = p->saddr, .daddr = p->daddr, .id = p->ipid, .proto = p->proto };
    if (p->frag == 1) {
        struct ctfrag_val *fv = ebpfw_ctfrag.lookup(&fk);
        if (fv && fv->expires > now) {
            /* CONNMARK / -m connmark: the first fragment's connection, if it exists by now */
            __builtin_memcpy(&w->key, &fv->key, sizeof(w->key));
            w->hasct = fv->hasct;
            return fv->label;
        }
        return EBPFW_CT_INVALID;
    }
    __u32 label = ct_label_packet(p, data, data_end, cfg, w, now);
    if (p->frag == 2) {
        struct ctfrag_val fv = { .label = label, .expires = now + 30 * NS_PER_SEC };
        fv.hasct = (w->hasct || w->pending) ? 1 : 0;
        __builtin_memcpy(&fv.key, &w->key, sizeof(fv.key));
        ebpfw_ctfrag.update(&fk, &fv);
    }
    return label;
}

/* The mark of the packet's connection (CONNMARK, -m connmark): of the entry being prepared for
 * a first packet, or of the known entry. Read into *m (write = 0) or stored from *m (write =
 * 1) around the walk, which works on a copy in its scratch record (no table lookups in the
 * loop); returns 0 when the packet has no connection (INVALID; a later fragment whose first
 * fragment was not seen, or made no connection). */
static __always_inline int ct_mark_io(__u32 *m, int write)
{
    __u32 zero = 0;
    struct ctwork *w = ebpfw_ctw.lookup(&zero);
    if (!w)
        return 0;
    if (w->pending) {
        if (write)
            w->val.mark = *m;
        else
            *m = w->val.mark;
        return 1;
    }
    if (!w->hasct)
        return 0;
    struct ebpfw_ct_val *v = ebpfw_ct.lookup(&w->key);
    if (!v)
        return 0;
    if (write)
        v->mark = *m;
    else
        *m = v->mark;
    return 1;
}

static __always_inline void mark_ct_out(void);

/* A packet the raw table exempted (NOTRACK, CT --notrack): no entry is looked up, created or
 * updated, and the filter table sees it UNTRACKED (nf_ct_set(skb, NULL, IP_CT_UNTRACKED)). The
 * kernel exempts a whole reassembled datagram; here an exempted first fragment leaves its label
 * for the fragments that follow (which a port rule in raw cannot match), as ct_label does. */
static __always_inline __u32 ct_untrack(struct pkt *p)
{
    __u32 zero = 0;
    struct ctwork *w = ebpfw_ctw.lookup(&zero);
    if (w) {
        w->pending = 0;
        w->hasct = 0;
    }
    if (p->frag == 2) {
        struct ctfrag_key fk = { .saddr = p->saddr, .daddr = p->daddr, .id = p->ipid, .proto = p->proto };
        struct ctfrag_val fv = { .label = EBPFW_CT_UNTRACKED, .hasct = 0,
                                 .expires = bpf_ktime_get_ns() + 30 * NS_PER_SEC };
        ebpfw_ctfrag.update(&fk, &fv);
    }
    return EBPFW_CT_UNTRACKED;
}

/* After the verdict: an accepted first packet creates its connection. */
static __always_inline void ct_commit(int verdict)
{
    mark_ct_out();   /* a CONNMARK change stays, whatever the verdict (as in netfilter) */
    if (verdict != V_ACCEPT)
        return;
    __u32 zero = 0;
    struct ctwork *w = ebpfw_ctw.lookup(&zero);
    if (!w || !w->pending)
        return;
    w->pending = 0;
    if (ebpfw_ct.insert(&w->key, &w->val) == 0)
        ctstat_inc(EBPFW_CTSTAT_CREATED);
    else
        ctstat_inc(EBPFW_CTSTAT_RACE);
}
#endif /* EBPFW_F_CT */

static __always_inline void stat_inc(__u32 idx)
{
    __u64 *v = ebpfw_stat.lookup(&idx);
    if (v)
        *v += 1;
}

static __always_inline __u32 csum_fold32(__u32 s)
{
    s = (s & 0xffff) + (s >> 16);
    s = (s & 0xffff) + (s >> 16);
    return s;
}

#ifdef EBPFW_F_TCPMSS
/* The option walk keeps its state in a per-CPU scratch record, as walk() does: the verifier
 * then sees one state at the loop head (and one after it) instead of one per path. */
struct mssstate {
    __u32 i;
    __u32 optlen;
    __u32 result;
    __u32 pad;
};
BPF_PERCPU_ARRAY(ebpfw_mssw, struct mssstate, 1);

/* The MSS option as xt_tcpmss finds it: MSS_BAD where it hotdrops (no full TCP header, data
 * offset < 5, options cut short), EBPFW_MSS_NONE when the options hold no MSS (or not TCP).
 * The walk is the kernel's: kind 0/1 advance 1, others by their length (0 counts as 1);
 * the option area is at most 40 bytes, so 40 steps always finish it. */
static __always_inline __u32 mss_walk(volatile struct mssstate *ms, void *data, void *data_end, struct pkt *p)
{
    if (p->proto != IPPROTO_TCP)
        return EBPFW_MSS_NONE;
    __u64 off = p->l4off;
    asm volatile("" : "+r"(off));
    if (off > 14 + 60)
        return MSS_BAD;
    __u8 *th = data + off;
    if (p->l4len < 20 || (void *)(th + 20) > data_end)
        return MSS_BAD;
    __u32 doff = (th[12] >> 4) * 4;
    if (doff < 20 || doff > p->l4len)
        return MSS_BAD;
    ms->i = 0;
    ms->optlen = doff - 20;
    ms->result = EBPFW_MSS_NONE;
    __u8 *op = th + 20;
    for (__u32 n = 0; n < 40; n++) {
        __u32 i = ms->i, optlen = ms->optlen;
        if (i >= optlen || optlen > 40)
            break;
        __u8 *q = op + (i & 63);
        if ((void *)(q + 1) > data_end) {
            ms->result = MSS_BAD;
            break;
        }
        __u8 kind = q[0];
        if (kind < 2) {
            ms->i = i + 1;
            continue;
        }
        if (i + 1 >= optlen)
            break;   /* the kernel reads one byte past the area here and leaves the loop */
        if ((void *)(q + 2) > data_end) {
            ms->result = MSS_BAD;
            break;
        }
        __u8 olen = q[1];
        if (kind == 2 && olen == 4 && optlen - i >= 4) {
            if ((void *)(q + 4) > data_end)
                ms->result = MSS_BAD;
            else
                ms->result = ((__u32)q[2] << 8) | q[3];
            break;
        }
        ms->i = i + (olen ? olen : 1);
    }
    return ms->result;
}

static __always_inline __u32 parse_mss(void *data, void *data_end, struct pkt *p)
{
    __u32 zero = 0;
    /* volatile: every access goes to map memory (see struct mssstate), and the result read
     * back from it is one unknown value for the verifier, whichever way it was found */
    volatile struct mssstate *ms = ebpfw_mssw.lookup(&zero);
    if (!ms)
        return MSS_BAD;
    ms->result = mss_walk(ms, data, data_end, p);
    return ms->result;
}
#endif

/* Parse Ethernet + IPv4 + the start of L4. Returns 0 for a packet to judge, 1 for not IPv4,
 * 2 for a malformed IPv4 header (the kernel's ip_rcv would drop it). */
static __always_inline int parse(void *data, void *data_end, __u32 wire_len, struct pkt *p, int check_csum)
{
    struct ethhdr *eth = data;
    if ((void *)(eth + 1) > data_end)
        return 1;
    if (eth->h_proto != htons(ETH_P_IP))
        return 1;
    struct iphdr *ip = (void *)(eth + 1);
    if ((void *)(ip + 1) > data_end)
        return 2;
    __u32 ihl = ip->ihl * 4;
    if (ip->version != 4 || ihl < 20)
        return 2;
    __u32 tot = ntohs(ip->tot_len);
    /* wire_len counts non-linear skb data too; headers are only read below data_end */
    if (tot < ihl || tot + sizeof(*eth) > wire_len)
        return 2;
    if (check_csum) {
        /* the IPv4 header checksum, as ip_rcv checks it; ihl is at most 60 bytes */
        __u32 s = 0;
        __u16 *w = (__u16 *)ip;
#pragma unroll
        for (int i = 0; i < 10; i++)
            s += w[i];
        for (int i = 10; i < 30; i++) {
            if (i * 2 >= ihl)
                break;
            __u16 *q = w + i;
            asm volatile("" : "+r"(q));
            if ((void *)(q + 1) > data_end)
                return 2;
            s += *q;
        }
        if (csum_fold32(s) != 0xffff)
            return 2;
    }
    p->saddr = ip->saddr;
    p->daddr = ip->daddr;
    p->len = tot;
    p->proto = ip->protocol;
    p->ttl = ip->ttl;
    p->rttl = ip->ttl;
    p->tos = ip->tos;
    __u16 frag = ntohs(ip->frag_off);
    p->df = (frag & 0x4000) ? 1 : 0;
    p->sport = 0;
    p->dport = 0;
    p->tcpflags = 0;
    p->l4off = sizeof(*eth) + ihl;
    p->l4len = tot - ihl;
    p->frag = (frag & 0x1fff) ? 1 : ((frag & 0x2000) ? 2 : 0);
    p->ipid = ntohs(ip->id);
    p->ctstate = 0;
    p->pkttype = 0;   /* PACKET_HOST */
    p->macok = 0;
    p->mss = EBPFW_MSS_NONE;
#ifdef EBPFW_F_TCPMSS
    /* xt_tcpmss reads the header at the IP payload even in a non-first fragment */
    p->mss = parse_mss(data, data_end, p);
#endif
    void *l4 = (void *)ip + ihl;
    __u32 l4len = tot - ihl;
#ifdef EBPFW_F_SET
    p->setsport = 0;
    p->setdport = 0;
    p->setok = 0;
#endif
#ifdef EBPFW_F_HASHLIMIT
    /* hashlimit_init_dst: proto_ports_offset() of TCP, UDP, DCCP, ESP, SCTP, UDP-Lite (0) and
     * AH (4), read at the IP payload even in a non-first fragment (it does not look at the
     * fragment offset); a packet too short for them hotdrops; other protocols have ports 0 */
    p->hlsport = 0;
    p->hldport = 0;
    p->hlok = 1;
    if (p->proto == IPPROTO_TCP || p->proto == IPPROTO_UDP || p->proto == 33 /* DCCP */ ||
        p->proto == 50 /* ESP */ || p->proto == IPPROTO_SCTP || p->proto == IPPROTO_UDPLITE) {
        __u8 *h = l4;
        if (l4len < 4 || (void *)(h + 4) > data_end) {
            p->hlok = 0;
        } else {
            p->hlsport = ((__u16)h[0] << 8) | h[1];
            p->hldport = ((__u16)h[2] << 8) | h[3];
        }
    } else if (p->proto == 51 /* AH: the SPI */) {
        __u8 *h = (__u8 *)l4 + 4;
        if (l4len < 8 || (void *)(h + 4) > data_end) {
            p->hlok = 0;
        } else {
            p->hlsport = ((__u16)h[0] << 8) | h[1];
            p->hldport = ((__u16)h[2] << 8) | h[3];
        }
    }
#endif
    if (frag & 0x1fff) {
        /* xt_tcp drops a TCP fragment at offset 1 (8 bytes: it could rewrite the first
         * fragment's flags) when a rule with a tcp match reaches it: the same hotdrop as a
         * cut-short header. Other fragments have no L4 header to match. */
        p->l4 = ((frag & 0x1fff) == 1 && p->proto == IPPROTO_TCP) ? L4_TRUNC : L4_NONE;
        return 0;
    }
    p->l4 = L4_NONE;
    if (p->proto == IPPROTO_TCP) {
        struct tcphdr *th = l4;
        if (l4len < sizeof(*th) || (void *)(th + 1) > data_end) {
            p->l4 = L4_TRUNC;
            return 0;
        }
        p->sport = ntohs(th->source);
        p->dport = ntohs(th->dest);
        p->tcpflags = ((__u8 *)th)[13];
        p->l4 = L4_OK;
    } else if (p->proto == IPPROTO_UDP) {
        struct udphdr *uh = l4;
        if (l4len < sizeof(*uh) || (void *)(uh + 1) > data_end) {
            p->l4 = L4_TRUNC;
            return 0;
        }
        p->sport = ntohs(uh->source);
        p->dport = ntohs(uh->dest);
        p->l4 = L4_OK;
    } else if (p->proto == IPPROTO_ICMP) {
        struct icmphdr *ic = l4;
        if (l4len < sizeof(*ic) || (void *)(ic + 1) > data_end) {
            p->l4 = L4_TRUNC;
            return 0;
        }
        p->sport = ((__u16)ic->type << 8) | ic->code;
        p->l4 = L4_OK;
    }
#ifdef EBPFW_F_SET
    /* ip_set_get_ip4_port reads SCTP (12-byte header) and UDP-Lite (8) ports too */
    else if (p->proto == IPPROTO_SCTP || p->proto == IPPROTO_UDPLITE) {
        __u8 *h = l4;
        if (l4len >= (p->proto == IPPROTO_SCTP ? 12 : 8) && (void *)(h + 4) <= data_end) {
            p->setsport = ((__u16)h[0] << 8) | h[1];
            p->setdport = ((__u16)h[2] << 8) | h[3];
            p->setok = 1;
        }
    }
#endif
    return 0;
}

/* The classes of the packet's interfaces in both slots (the slot is read later, in classify),
 * from their ebpfw_ifinfo entries; without one (no interface, or one that appeared after the
 * apply) the slots' defaults, as for an interface name no rule mentions. Userspace writes every
 * slot's classes into every entry (a slot's defaults until a ruleset there names the interface). */
static __always_inline void note_iif(struct pkt *p, struct ebpfw_ifinfo *ii)
{
    if (ii) {
        p->ifc_in[0] = ii->in_class[0];
        p->ifc_in[1] = ii->in_class[1];
        p->ifc_grp[0] = ii->grp_class[0];
        p->ifc_grp[1] = ii->grp_class[1];
        return;
    }
    __u32 s0 = 0, s1 = 1;
    struct ebpfw_meta *m0 = ebpfw_meta.lookup(&s0);
    struct ebpfw_meta *m1 = ebpfw_meta.lookup(&s1);
    p->ifc_in[0] = m0 ? m0->iif_default : 0;
    p->ifc_grp[0] = m0 ? m0->gin_default : 0;
    p->ifc_in[1] = m1 ? m1->iif_default : 0;
    p->ifc_grp[1] = m1 ? m1->gin_default : 0;
}

static __always_inline void note_oif(struct pkt *p, struct ebpfw_ifinfo *oi)
{
    if (oi) {
        p->ifc_out[0] = oi->out_class[0];
        p->ifc_out[1] = oi->out_class[1];
        return;
    }
    __u32 s0 = 0, s1 = 1;
    struct ebpfw_meta *m0 = ebpfw_meta.lookup(&s0);
    struct ebpfw_meta *m1 = ebpfw_meta.lookup(&s1);
    p->ifc_out[0] = m0 ? m0->oif_default : 0;
    p->ifc_out[1] = m1 ? m1->oif_default : 0;
}

/* ---- classification --------------------------------------------------------------------- */
static __always_inline struct ebpfw_vec *vec_of(__u32 slot, __u32 cls)
{
    __u32 k = slot * EBPFW_VCAP + cls;
    return ebpfw_vec.lookup(&k);
}

#ifdef EBPFW_F_PROTO
static __always_inline __u32 cls_proto(__u32 k)
{
    __u32 *c = ebpfw_proto.lookup(&k);
    return c ? *c : EBPFW_CLASS_ALL;
}
#endif
#ifdef EBPFW_F_SPORT
static __always_inline __u32 cls_sport(__u32 k)
{
    __u32 *c = ebpfw_sport.lookup(&k);
    return c ? *c : EBPFW_CLASS_ALL;
}
#endif
#ifdef EBPFW_F_DPORT
static __always_inline __u32 cls_dport(__u32 k)
{
    __u32 *c = ebpfw_dport.lookup(&k);
    return c ? *c : EBPFW_CLASS_ALL;
}
#endif
#ifdef EBPFW_F_XPORT
static __always_inline __u32 cls_xsport(__u32 k)
{
    __u32 *c = ebpfw_xsport.lookup(&k);
    return c ? *c : EBPFW_CLASS_ALL;
}
#endif
#ifdef EBPFW_F_XPORT
static __always_inline __u32 cls_xdport(__u32 k)
{
    __u32 *c = ebpfw_xdport.lookup(&k);
    return c ? *c : EBPFW_CLASS_ALL;
}
#endif
#ifdef EBPFW_F_TCPFL
static __always_inline __u32 cls_tcpfl(__u32 k)
{
    __u32 *c = ebpfw_tcpfl.lookup(&k);
    return c ? *c : EBPFW_CLASS_ALL;
}
#endif
#ifdef EBPFW_F_ICMP
static __always_inline __u32 cls_icmp(__u32 k)
{
    __u32 *c = ebpfw_icmp.lookup(&k);
    return c ? *c : EBPFW_CLASS_ALL;
}
#endif

#ifdef EBPFW_F_MAC
/* the class of the packet's source MAC: its own entry, else the slot's default entry */
static __always_inline __u32 cls_mac(__u32 slot, struct pkt *p)
{
    struct ebpfw_mac_key k = { .slot = slot };
    __builtin_memcpy(k.mac, p->smac, 6);
    __u32 *c = ebpfw_mac.lookup(&k);
    if (c)
        return *c;
    __builtin_memset(k.mac, 0, 6);
    k.is_default = 1;
    c = ebpfw_mac.lookup(&k);
    return c ? *c : EBPFW_CLASS_ALL;
}
#endif
#if defined(EBPFW_F_ATSRC) || defined(EBPFW_F_ATDST)
#define RTN_UNICAST   1
#define RTN_BROADCAST 3
#define RTN_MULTICAST 5
/* inet_dev_addr_type() of xt_addrtype, for any device and for the input and output
 * interfaces (--limit-iface-in/out), as RTN type | type on iif << 4 | type on oif << 8:
 * 0.0.0.0/8 and 255.255.255.255 are BROADCAST, 224.0.0.0/4 MULTICAST, others the type of
 * their route in the local table (userspace copies the routes into ebpfw_atype, error routes
 * as UNICAST) or UNICAST without one; a route through another device than the one given
 * is UNICAST. A zero ifindex is "no device": no restriction, as in the kernel. */
static __always_inline __u32 atype_of(__u32 addr, __u32 iif, __u32 oif)
{
    __u32 h = ntohl(addr);
    if ((h >> 24) == 0 || h == 0xffffffff)
        return RTN_BROADCAST * 0x111;
    if ((h >> 28) == 0xe)
        return RTN_MULTICAST * 0x111;
    struct ebpfw_atype_key k = { .prefixlen = 32, .addr = addr };
    struct ebpfw_atype_val *v = ebpfw_atype.lookup(&k);
    if (!v)
        return RTN_UNICAST * 0x111;
    __u32 t = v->type & 15;
    __u32 ti = (!iif || v->ifindex == iif) ? t : RTN_UNICAST;
    __u32 to = (!oif || v->ifindex == oif) ? t : RTN_UNICAST;
    return t | (ti << 4) | (to << 8);
}
#endif

#ifdef EBPFW_F_SRC
static __always_inline __u32 class_src(__u32 slot, __u32 addr)
{
    struct ebpfw_lpm_key k = { .prefixlen = 64, .slot = htonl(slot), .addr = addr };
    __u32 *c = ebpfw_src.lookup(&k);
    return c ? *c : EBPFW_CLASS_ALL;
}
#endif
#ifdef EBPFW_F_DST
static __always_inline __u32 class_dst(__u32 slot, __u32 addr)
{
    struct ebpfw_lpm_key k = { .prefixlen = 64, .slot = htonl(slot), .addr = addr };
    __u32 *c = ebpfw_dst.lookup(&k);
    return c ? *c : EBPFW_CLASS_ALL;
}
#endif

/* index of the lowest set bit; __builtin_ctzll crashes bcc 0.26's backend */
static __always_inline __u32 lowest_bit(__u64 x)
{
    __u64 y = (x & -x) - 1;
    return __builtin_popcountll(y);
}

#ifdef EBPFW_F_GROUPS
/* grouped rules found for this packet, in the global numbering, three levels deep so the next
 * one after any position is found in constant time (top: summary words that are not zero) */
struct hitvec {
    __u64 top;
    __u64 s[EBPFW_GSUM];
    __u64 w[EBPFW_GWORDS];
};
#endif

struct vecs {
#ifdef EBPFW_F_SRC
    struct ebpfw_vec *src;
#endif
#ifdef EBPFW_F_DST
    struct ebpfw_vec *dst;
#endif
#ifdef EBPFW_F_PROTO
    struct ebpfw_vec *proto;
#endif
#ifdef EBPFW_F_SPORT
    struct ebpfw_vec *sport;
#endif
#ifdef EBPFW_F_DPORT
    struct ebpfw_vec *dport;
#endif
#ifdef EBPFW_F_XPORT
    struct ebpfw_vec *xs;
    struct ebpfw_vec *xd;
#endif
#ifdef EBPFW_F_TCPFL
    struct ebpfw_vec *tcpfl;
#endif
#ifdef EBPFW_F_ICMP
    struct ebpfw_vec *icmp;
#endif
#ifdef EBPFW_F_IIF
    struct ebpfw_vec *iif;
#endif
#ifdef EBPFW_F_OIF
    struct ebpfw_vec *oif;
#endif
#ifdef EBPFW_F_CT
    struct ebpfw_vec *ct;
#endif
#ifdef EBPFW_F_GROUPS
    struct hitvec *hits;       /* grouped rules whose key the packet has (per-CPU scratch) */
#endif
#ifdef EBPFW_F_LENGTH
    struct ebpfw_vec *length;
#endif
#ifdef EBPFW_F_TTL
    struct ebpfw_vec *ttl;
#endif
#ifdef EBPFW_F_TOS
    struct ebpfw_vec *tos;
#endif
#ifdef EBPFW_F_FRAG
    struct ebpfw_vec *frag;
#endif
#ifdef EBPFW_F_TCPMSS
    struct ebpfw_vec *tcpmss;
#endif
#ifdef EBPFW_F_PKTTYPE
    struct ebpfw_vec *pkttype;
#endif
#ifdef EBPFW_F_MAC
    struct ebpfw_vec *mac;
#endif
#ifdef EBPFW_F_ATSRC
    struct ebpfw_vec *atsrc;
#endif
#ifdef EBPFW_F_ATDST
    struct ebpfw_vec *atdst;
#endif
    int dummy;
};

#define GETVEC(dst, slot, cls)            \
    do {                                  \
        dst = vec_of(slot, cls);          \
        if (!dst)                         \
            return -1;                    \
    } while (0)

/* Look up every field's class and its vector. Returns -1 if a map is inconsistent. */
static __always_inline int lookup_vecs(__u32 slot, struct pkt *p, __u32 iif, __u32 oif, struct vecs *v)
{
    __u32 k;
    /* the port-like fields: the packet's value, the "no value" entry (no L4 header), or
     * the all-ones class (truncated L4 header: the L4 match is reached, then hotdrops) */
#ifdef EBPFW_F_SRC
    GETVEC(v->src, slot, class_src(slot, p->saddr));
#endif
#ifdef EBPFW_F_DST
    GETVEC(v->dst, slot, class_dst(slot, p->daddr));
#endif
#ifdef EBPFW_F_PROTO
    k = slot * EBPFW_PROTO_SLOTS + p->proto;
    GETVEC(v->proto, slot, cls_proto(k));
#endif
#if defined(EBPFW_F_SPORT) || defined(EBPFW_F_DPORT) || defined(EBPFW_F_XPORT)
    int tcpudp = (p->proto == IPPROTO_TCP || p->proto == IPPROTO_UDP);
    __u32 sp = EBPFW_PORT_NONE, dp = EBPFW_PORT_NONE;
    if (tcpudp && p->l4 == L4_OK) {
        sp = p->sport;
        dp = p->dport;
    }
#endif
#ifdef EBPFW_F_SPORT
    if (tcpudp && p->l4 == L4_TRUNC) {
        GETVEC(v->sport, slot, EBPFW_CLASS_ALL);
    } else {
        k = slot * EBPFW_PORT_SLOTS + sp;
        GETVEC(v->sport, slot, cls_sport(k));
    }
#endif
#ifdef EBPFW_F_DPORT
    if (tcpudp && p->l4 == L4_TRUNC) {
        GETVEC(v->dport, slot, EBPFW_CLASS_ALL);
    } else {
        k = slot * EBPFW_PORT_SLOTS + dp;
        GETVEC(v->dport, slot, cls_dport(k));
    }
#endif
#ifdef EBPFW_F_XPORT
    if (tcpudp && p->l4 == L4_TRUNC) {
        GETVEC(v->xs, slot, EBPFW_CLASS_ALL);
        GETVEC(v->xd, slot, EBPFW_CLASS_ALL);
    } else {
        k = slot * EBPFW_PORT_SLOTS + sp;
        GETVEC(v->xs, slot, cls_xsport(k));
        k = slot * EBPFW_PORT_SLOTS + dp;
        GETVEC(v->xd, slot, cls_xdport(k));
    }
#endif
#ifdef EBPFW_F_TCPFL
    if (p->proto == IPPROTO_TCP && p->l4 == L4_TRUNC) {
        GETVEC(v->tcpfl, slot, EBPFW_CLASS_ALL);
    } else {
        __u32 f = (p->proto == IPPROTO_TCP && p->l4 == L4_OK) ? p->tcpflags : EBPFW_TCPFL_NONE;
        k = slot * EBPFW_TCPFL_SLOTS + f;
        GETVEC(v->tcpfl, slot, cls_tcpfl(k));
    }
#endif
#ifdef EBPFW_F_ICMP
    if (p->proto == IPPROTO_ICMP && p->l4 == L4_TRUNC) {
        GETVEC(v->icmp, slot, EBPFW_CLASS_ALL);
    } else {
        __u32 t = (p->proto == IPPROTO_ICMP && p->l4 == L4_OK) ? p->sport : EBPFW_ICMP_NONE;
        k = slot * EBPFW_PORT_SLOTS + t;
        GETVEC(v->icmp, slot, cls_icmp(k));
    }
#endif
#ifdef EBPFW_F_CT
    {
        __u32 ck = slot * EBPFW_CT_SLOTS + (p->ctstate & (EBPFW_CT_SLOTS - 1));
        __u32 *cc = ebpfw_ctcls.lookup(&ck);
        GETVEC(v->ct, slot, cc ? *cc : EBPFW_CLASS_ALL);
    }
#endif
#if defined(EBPFW_F_IIF) || defined(EBPFW_F_OIF)
    /* the classes came with the interfaces' ebpfw_ifinfo entries (note_iif, note_oif) */
#ifdef EBPFW_F_IIF
    GETVEC(v->iif, slot, p->ifc_in[slot & 1]);
#endif
#ifdef EBPFW_F_OIF
    GETVEC(v->oif, slot, p->ifc_out[slot & 1]);
#endif
#endif
    /* the fields of issue 5 share one key on the stack (the BPF stack is 512 bytes) */
    __u32 *c;
#ifdef EBPFW_F_LENGTH
    k = slot * EBPFW_LENGTH_SLOTS + (p->len & 0xffff);
    c = ebpfw_length.lookup(&k);
    GETVEC(v->length, slot, c ? *c : EBPFW_CLASS_ALL);
#endif
#ifdef EBPFW_F_TTL
    k = slot * EBPFW_TTL_SLOTS + p->ttl;
    c = ebpfw_ttl.lookup(&k);
    GETVEC(v->ttl, slot, c ? *c : EBPFW_CLASS_ALL);
#endif
#ifdef EBPFW_F_TOS
    k = slot * EBPFW_TOS_SLOTS + p->tos;
    c = ebpfw_tos.lookup(&k);
    GETVEC(v->tos, slot, c ? *c : EBPFW_CLASS_ALL);
#endif
#ifdef EBPFW_F_FRAG
    k = slot * EBPFW_FRAG_SLOTS + (p->frag == 1 ? 1 : 0);
    c = ebpfw_frag.lookup(&k);
    GETVEC(v->frag, slot, c ? *c : EBPFW_CLASS_ALL);
#endif
#ifdef EBPFW_F_TCPMSS
    /* MSS_BAD: every tcpmss rule passes here and hotdrops in walk() */
    k = slot * EBPFW_MSS_SLOTS + (p->mss > EBPFW_MSS_NONE ? EBPFW_MSS_NONE : p->mss);
    c = ebpfw_tcpmss.lookup(&k);
    GETVEC(v->tcpmss, slot, (c && p->mss <= EBPFW_MSS_NONE) ? *c : EBPFW_CLASS_ALL);
#endif
#ifdef EBPFW_F_PKTTYPE
    k = slot * EBPFW_PKTTYPE_SLOTS + (p->pkttype & 3);
    c = ebpfw_pkttype.lookup(&k);
    GETVEC(v->pkttype, slot, c ? *c : EBPFW_CLASS_ALL);
#endif
#ifdef EBPFW_F_MAC
    /* no source MAC (judged at egress): every mac rule passes here and drops in walk() */
    GETVEC(v->mac, slot, p->macok ? cls_mac(slot, p) : EBPFW_CLASS_ALL);
#endif
#ifdef EBPFW_F_ATSRC
    k = slot * EBPFW_ATYPE_SLOTS + atype_of(p->saddr, iif, oif);
    c = ebpfw_atsrc.lookup(&k);
    GETVEC(v->atsrc, slot, c ? *c : EBPFW_CLASS_ALL);
#endif
#ifdef EBPFW_F_ATDST
    k = slot * EBPFW_ATYPE_SLOTS + atype_of(p->daddr, iif, oif);
    c = ebpfw_atdst.lookup(&k);
    GETVEC(v->atdst, slot, c ? *c : EBPFW_CLASS_ALL);
#endif
    return 0;
}

/* AND of all fields' word w; w is already known to be < EBPFW_NWORDS */
static __always_inline __u64 word_and(struct vecs *v, __u64 w)
{
    __u64 m = ~0ULL;
#ifdef EBPFW_F_SRC
    m &= v->src->w[w];
#endif
#ifdef EBPFW_F_DST
    m &= v->dst->w[w];
#endif
#ifdef EBPFW_F_PROTO
    m &= v->proto->w[w];
#endif
#ifdef EBPFW_F_SPORT
    m &= v->sport->w[w];
#endif
#ifdef EBPFW_F_DPORT
    m &= v->dport->w[w];
#endif
#ifdef EBPFW_F_XPORT
    m &= (v->xs->w[w] | v->xd->w[w]);
#endif
#ifdef EBPFW_F_TCPFL
    m &= v->tcpfl->w[w];
#endif
#ifdef EBPFW_F_ICMP
    m &= v->icmp->w[w];
#endif
#ifdef EBPFW_F_IIF
    m &= v->iif->w[w];
#endif
#ifdef EBPFW_F_OIF
    m &= v->oif->w[w];
#endif
#ifdef EBPFW_F_CT
    m &= v->ct->w[w];
#endif
#ifdef EBPFW_F_LENGTH
    m &= v->length->w[w];
#endif
#ifdef EBPFW_F_TTL
    m &= v->ttl->w[w];
#endif
#ifdef EBPFW_F_TOS
    m &= v->tos->w[w];
#endif
#ifdef EBPFW_F_FRAG
    m &= v->frag->w[w];
#endif
#ifdef EBPFW_F_TCPMSS
    m &= v->tcpmss->w[w];
#endif
#ifdef EBPFW_F_PKTTYPE
    m &= v->pkttype->w[w];
#endif
#ifdef EBPFW_F_MAC
    m &= v->mac->w[w];
#endif
#ifdef EBPFW_F_ATSRC
    m &= v->atsrc->w[w];
#endif
#ifdef EBPFW_F_ATDST
    m &= v->atdst->w[w];
#endif
    return m;
}

/* AND of all fields' summary word w; w is already known to be < EBPFW_NSUM */
static __always_inline __u64 sum_and(struct vecs *v, __u64 w)
{
    __u64 m = ~0ULL;
#ifdef EBPFW_F_SRC
    m &= v->src->s[w];
#endif
#ifdef EBPFW_F_DST
    m &= v->dst->s[w];
#endif
#ifdef EBPFW_F_PROTO
    m &= v->proto->s[w];
#endif
#ifdef EBPFW_F_SPORT
    m &= v->sport->s[w];
#endif
#ifdef EBPFW_F_DPORT
    m &= v->dport->s[w];
#endif
#ifdef EBPFW_F_XPORT
    m &= (v->xs->s[w] | v->xd->s[w]);
#endif
#ifdef EBPFW_F_TCPFL
    m &= v->tcpfl->s[w];
#endif
#ifdef EBPFW_F_ICMP
    m &= v->icmp->s[w];
#endif
#ifdef EBPFW_F_IIF
    m &= v->iif->s[w];
#endif
#ifdef EBPFW_F_OIF
    m &= v->oif->s[w];
#endif
#ifdef EBPFW_F_CT
    m &= v->ct->s[w];
#endif
#ifdef EBPFW_F_LENGTH
    m &= v->length->s[w];
#endif
#ifdef EBPFW_F_TTL
    m &= v->ttl->s[w];
#endif
#ifdef EBPFW_F_TOS
    m &= v->tos->s[w];
#endif
#ifdef EBPFW_F_FRAG
    m &= v->frag->s[w];
#endif
#ifdef EBPFW_F_TCPMSS
    m &= v->tcpmss->s[w];
#endif
#ifdef EBPFW_F_PKTTYPE
    m &= v->pkttype->s[w];
#endif
#ifdef EBPFW_F_MAC
    m &= v->mac->s[w];
#endif
#ifdef EBPFW_F_ATSRC
    m &= v->atsrc->s[w];
#endif
#ifdef EBPFW_F_ATDST
    m &= v->atdst->s[w];
#endif
    return m;
}

static __always_inline void count(void *map_value, __u32 bytes)
{
    struct ebpfw_counter *c = map_value;
    if (c) {
        c->packets += 1;
        c->bytes += bytes;
    }
}

static __always_inline __u32 rank_of(__u32 slot, __u32 pos)
{
    __u32 k = slot * (EBPFW_RCAP + 1) + pos;
    __u32 *c = ebpfw_rank.lookup(&k);
    return c ? *c : NO_RULE;
}

/* the rule of residual bit k, or NO_RULE past the last residual rule */
static __always_inline __u32 unrank_of(__u32 slot, __u32 k, __u32 nres)
{
    if (k >= nres)
        return NO_RULE;
    __u32 i = slot * EBPFW_RCAP + k;
    __u32 *r = ebpfw_unrank.lookup(&i);
    return r ? *r : NO_RULE;
}

#ifdef EBPFW_F_GROUPS
/* the first grouped hit at or after pos, or NO_RULE: constant time through the three levels */
static __always_inline __u32 next_hit(struct hitvec *h, __u32 pos)
{
    __u64 w = pos >> 6;
    asm volatile("" : "+r"(w));
    if (w >= EBPFW_GWORDS)
        return NO_RULE;
    __u64 m = h->w[w] & (~0ULL << (pos & 63));
    if (m)
        return ((__u32)w << 6) + lowest_bit(m);
    __u64 sw = w >> 6;
    asm volatile("" : "+r"(sw));
    if (sw >= EBPFW_GSUM)
        return NO_RULE;
    __u64 b = (w & 63) + 1;
    __u64 sm = b >= 64 ? 0 : (h->s[sw] & (~0ULL << b));
    if (!sm) {
        __u64 tb = sw + 1;
        __u64 t = tb >= 64 ? 0 : (h->top & (~0ULL << tb));
        if (!t)
            return NO_RULE;
        sw = lowest_bit(t);
        asm volatile("" : "+r"(sw));
        if (sw >= EBPFW_GSUM)
            return NO_RULE;
        sm = h->s[sw];
    }
    w = (sw << 6) + lowest_bit(sm);
    asm volatile("" : "+r"(w));
    if (w >= EBPFW_GWORDS)
        return NO_RULE;
    return ((__u32)w << 6) + lowest_bit(h->w[w]);
}
#endif

/* The walk's state lives in a per-CPU scratch record rather than in registers: the verifier
 * then sees the same abstract state at every iteration and prunes, so the cost of verifying
 * the loop does not grow with its bound. */
struct walkstate {
    __u32 pos;
    __u32 end;
    __u32 sp;
    __u32 hot;        /* EBPFW_RF_* bits that drop the packet when a rule with them matches */
    __u32 ret_pos[EBPFW_MAXDEPTH];
    __u32 ret_end[EBPFW_MAXDEPTH];
    /* for the post programs (REJECT, LOG) */
    __u32 arg;        /* the REJECT rule's arg when walk() returns V_REJECT */
    __u32 slot;
    __u32 nlog;       /* LOG rules reached, in order */
    __u64 logs[EBPFW_MAXLOG];     /* rule number; EBPFW_F_MARK: the packet's mark at that rule << 32 */
    __u32 verdict;    /* V_* */
    __u32 hook;       /* EBPFW_CHAIN_* */
    __u32 iif;
    __u32 oif;
    __u32 l2host;     /* the frame was addressed to us at L2 */
    __u32 local;      /* the IP destination is a local address */
    __u32 egress;     /* judged by the TC egress program */
    /* -m hashlimit is judged outside the walk's loop (see hashlimit_pass): the walk stops at
     * the rule (V_CONT), the continuation program judges it and resumes the walk there */
    __u32 hlrk;       /* rk + 1 of the hashlimit rule waiting for its result, 0: none */
    __s32 hlres;      /* its result once hldone: 1 match, 0 no match, -1 hotdrop */
    __u32 hldone;
    __u32 hlpad;
    __u32 mark;       /* the packet's mark as the rules see it (EBPFW_F_MARK): skb->mark at TC, 0
                       * at XDP; MARK and CONNMARK --restore-mark change it for the later rules */
    __u32 hasct;      /* EBPFW_F_MARK with conntrack: the packet has a connection, whose mark is */
    __u32 ctmark;     /* ctmark here during the walk (CONNMARK changes it), ctmark_in before */
    __u32 ctmark_in;
    /* -m recent (EBPFW_F_RECENT): the rule whose list the recent program is to read, and its answer */
    __u32 rk;         /* slot * EBPFW_RCAP + rule */
    __u32 rrule;      /* rule + 1 while the walk waits for the answer */
    __u32 rdone;      /* rule + 1 once the answer is in rres */
    __u32 rres;
#ifdef EBPFW_F_RAW
    __u32 untracked;  /* the raw walk reached a NOTRACK / CT --notrack rule */
    __u32 rawct;      /* the EBPFW_RF_CT_*_OK bit of the packet's state in raw before a NOTRACK */
    __u32 rawct_nt;   /* ... and after one */
    __u32 rawpad;
#endif
    /* -m connlimit (EBPFW_F_CONNLIMIT): likewise for the connlimit program */
    __u32 clk;        /* slot * EBPFW_RCAP + rule */
    __u32 clrule;     /* rule + 1 while the walk waits for the answer */
    __u32 cldone;     /* rule + 1 once the answer is in clres */
    __u32 clres;      /* 1 match, 0 no match, 2 hotdrop */
    /* -m set whose first lookup found an expired element: judged like hashlimit (set_slow) */
    __u32 setrk;      /* rk + 1 of the set rule waiting for its result, 0: none */
    __u32 setres;     /* its membership (before `!`) once setdone */
    __u32 setdone;
    __u32 setpad;
};
BPF_PERCPU_ARRAY(ebpfw_walk, struct walkstate, 1);

#ifdef EBPFW_F_RAW
/* ---- the raw table (iptables -t raw) ----------------------------------------------------------
 * The raw chains are chains of the same classifier (rules numbered after the filter table's,
 * ids in ebpfw_meta.raw), walked by a program of their own so that the main programs keep a
 * single inlined walk: an entry program that has no raw result for the packet yet tail-calls
 * the raw program of its type (ebpfw_rawx / ebpfw_rawt); that one walks raw PREROUTING (ingress,
 * and forwarded packets judged at egress) or raw OUTPUT (locally generated packets), drops the
 * packet or leaves its result here and tail-calls the entry program again (ebpfw_mainx /
 * ebpfw_maint), which takes the result and judges as usual with the raw stage's slot (both
 * tables of one packet come from one ruleset). As in the kernel, raw runs before connection
 * tracking and before the routing decision: it sees the packets ip_forward would drop. */
#define RAW_NONE      0   /* rawres.state: the raw stage has not judged this packet yet */
#define RAW_TRACKED   1   /* the raw table accepted the packet */
#define RAW_UNTRACKED 2   /* ... after a NOTRACK: connection tracking leaves it alone */
#define RAW_HOOK_PRE  0
#define RAW_HOOK_OUT  1
#define EBPFW_HOOK_RAW_PRE_EGRESS 3   /* LOG events: raw PREROUTING of a forwarded packet seen at egress */
struct rawres {
    __u32 state;      /* RAW_*: set by the raw program right before it tail-calls the entry program */
    __u32 slot;       /* the slot the raw stage judged with; classify() uses it for the filter table */
    __u32 untracked;  /* the packet the filter table is judging is untracked */
    __u32 egress;     /* TC: the raw stage was entered from the egress program (ebpfw_maint index) */
    __u32 hook;       /* egress: RAW_HOOK_PRE (a forwarded packet) or RAW_HOOK_OUT */
    __u32 iif;        /* egress, RAW_HOOK_PRE: the input interface */
    __s32 ctorig;     /* egress: the first pass's rj_take_pending() (>= 0: a REJECT answer) */
    __u32 pad;
};
BPF_PERCPU_ARRAY(ebpfw_rawres, struct rawres, 1);
BPF_PROG_ARRAY(ebpfw_rawx, 1);    /* ebpfw_xdp_raw */
BPF_PROG_ARRAY(ebpfw_rawt, 1);    /* ebpfw_tc_raw */
BPF_PROG_ARRAY(ebpfw_rawcx, 1);   /* ebpfw_xdp_rawc: a long raw walk continues there */
BPF_PROG_ARRAY(ebpfw_rawct, 1);   /* ebpfw_tc_rawc */
BPF_PROG_ARRAY(ebpfw_mainx, 1);   /* ebpfw_xdp_ingress */
BPF_PROG_ARRAY(ebpfw_maint, 2);   /* ebpfw_tc_ingress, ebpfw_tc_egress */

/* At an entry program's start: 1 when the raw stage must judge the packet first; otherwise the
 * entry was tail-called by the raw stage, whose result it takes (and clears, so a later packet
 * never sees it). */
static __always_inline int raw_first(__u32 egress)
{
    __u32 zero = 0;
    struct rawres *rr = ebpfw_rawres.lookup(&zero);
    if (!rr)
        return 1;
    if (rr->state == RAW_NONE) {
        rr->egress = egress;
        rr->ctorig = -1;
        return 1;
    }
    rr->untracked = rr->state == RAW_UNTRACKED;
    rr->state = RAW_NONE;
    return 0;
}

static __always_inline int raw_untracked(void)
{
    __u32 zero = 0;
    struct rawres *rr = ebpfw_rawres.lookup(&zero);
    return rr && rr->untracked;
}
#endif /* EBPFW_F_RAW */
#if defined(EBPFW_F_LOG) || defined(EBPFW_F_REJECT)
#define EBPFW_POST 1
/* one array per program type: the kernel ties a prog array to the type of its first user */
BPF_PROG_ARRAY(ebpfw_post_xdp, 1);
BPF_PROG_ARRAY(ebpfw_post_tc, 1);
#endif

#ifdef EBPFW_F_LIMIT
/* ---- -m limit: xt_limit's token bucket, one per rule and slot, shared by every CPU ----------
 * Userspace (ebpfw/datapath/abi.py: limit_entry) writes the kernel's numbers: credit_cap =
 * credits of avg*burst, cost = credits of avg, cpj = CREDITS_PER_JIFFY for the host's HZ, and
 * the bucket full. "jiffies" here are CLOCK_MONOTONIC nanoseconds divided by nsj = 10^9 / HZ
 * (the same clock userspace reads for `prev`); the arithmetic is limit_mt()'s, including the
 * u32 wrap of credit. A rule whose bucket is empty does not match: the walk goes on uncounted. */
struct ebpfw_limit {
    struct bpf_spin_lock lock;
    __u32 credit;
    __u64 prev;           /* "jiffies" of the last packet */
    __u32 credit_cap;
    __u32 cost;
    __u32 cpj;
    __u32 pad;
    __u64 nsj;            /* nanoseconds per jiffy (10^9 / HZ) */
};
BPF_ARRAY(ebpfw_limit, struct ebpfw_limit, NSLOTS * EBPFW_RCAP);

static __always_inline int limit_pass(__u32 rk)
{
    struct ebpfw_limit *e = ebpfw_limit.lookup(&rk);
    if (!e)
        return 0;
    __u64 nsj = e->nsj;
    if (nsj == 0)
        return 0;            /* never written: fail closed (the rule does not match) */
    __u64 now = bpf_ktime_get_ns() / nsj;
    int ok = 0;
    bpf_spin_lock(&e->lock);
    __u32 credit = e->credit + (__u32)((now - e->prev) * e->cpj);
    e->prev = now;
    if (credit > e->credit_cap)
        credit = e->credit_cap;
    if (credit >= e->cost) {
        credit -= e->cost;
        ok = 1;
    }
    e->credit = credit;
    bpf_spin_unlock(&e->lock);
    return ok;
}
#endif

#ifdef EBPFW_F_HASHLIMIT
/* ---- -m hashlimit: xt_hashlimit (revision 3), one bucket per key ----------------------------
 * A table per --hashlimit-name (ebpfw_abi.h: struct ebpfw_hlcfg, written by userspace from the
 * first rule naming it, as the kernel keeps the first rule's config); its buckets live in one
 * hash map keyed by (table id, masked addresses, ports). The clock is the kernel's own jiffies
 * (bpf_jiffies64), the arithmetic hashlimit_mt_common's for the table's mode: rateinfo_init for
 * a new bucket, rateinfo_recalc for a known one (packets: u64 credit capped at credit_cap;
 * bytes: CREDITS_PER_JIFFY_BYTES per jiffy capped at one second's worth, and
 * hashlimit_byte_cost's refills, at most `burst` in a bucket's life; rate-match: a window of
 * `interval` seconds ends, prev_window says whether it went over the rate), then cost the
 * packet (1, or its length, skb->len: the IP total length) or no match; the expiry is pushed to
 * now + expire at every packet.
 *
 * Every CPU updates a bucket under a bpf_spin_lock (the kernel's dsthash_ent.lock; here the
 * lock of the bucket's stripe, ebpfw_hllock), so two CPUs never lose or double a token; two
 * CPUs making the same new bucket agree through the map's BPF_NOEXIST insert (the loser uses
 * the winner's bucket, as the kernel's "race" path). The kernel's collector (htable_gc, every
 * gcinterval from the table's creation) frees buckets whose expiry has passed; a bucket found
 * after the collector would have freed it is a new bucket here (rateinfo_init).
 *
 * --hashlimit-htable-max: dsthash_alloc_init refuses a new bucket (the packet is hotdropped)
 * while the table holds max buckets, freed ones not counted. The count here is by the
 * collector run that frees a bucket (struct ebpfw_hlcnt), so it drops exactly when the runs
 * this datapath assumes happen; with a long expiry (more than 61 collector periods) the count
 * is kept per group of gk runs and a freed bucket is counted up to gk - 1 periods longer
 * (docs/CONFORMANCE.md). A new bucket reserves its place in the count before it is made and
 * gives it back when another CPU made it first. Buckets nobody sees again are left to the
 * map's LRU eviction, which is sized (twice the tables' max, both slots) so that it only
 * reaches long-dead buckets.
 */
BPF_ARRAY(ebpfw_hlcfg, struct ebpfw_hlcfg, NSLOTS * EBPFW_HL_NT);
BPF_ARRAY(ebpfw_hlrule, struct ebpfw_hlrule, NSLOTS * EBPFW_RCAP);
BPF_TABLE("lru_hash", struct ebpfw_hl_key, struct ebpfw_hl_val, ebpfw_hl, EBPFW_HL_CAP);
BPF_ARRAY(ebpfw_hlcnt, struct ebpfw_hlcnt, NSLOTS * EBPFW_HL_NT);
/* the key and a new bucket are built in per-CPU scratch memory: the walk's stack is full */
struct hlscratch {
    struct ebpfw_hl_key k;
    struct ebpfw_hl_val v;
};
/* an LRU map cannot hold a bpf_spin_lock: a bucket is updated under the lock of its stripe
 * (same key, same stripe), which serialises every CPU's updates of it all the same */
#define EBPFW_HL_LOCKS 1024
struct hllock {
    struct bpf_spin_lock lock;
};
BPF_ARRAY(ebpfw_hllock, struct hllock, EBPFW_HL_LOCKS);
BPF_PERCPU_ARRAY(ebpfw_hlscr, struct hlscratch, 1);

/* the collector run (1, 2, ...: at j0 + n * gc) that frees a bucket expiring at `ex` */
static __always_inline __u64 hl_run(__u64 ex, __u64 j0, __u64 gc)
{
    __u64 n = ((__s64)(ex - j0) > 0) ? (ex - j0 + gc - 1) / gc : 1;
    return n | (n == 0);
}

/* the count group of collector run n */
static __always_inline __u64 hl_group(__u64 n, __u64 gk)
{
    return (n + gk - 1) / gk;
}

/* take a place in the count for a new bucket of group g, unless the table is full: 1 taken */
static __always_inline int hl_reserve(struct ebpfw_hlcnt *cn, __u64 live, __u64 g, __s64 max)
{
    __s64 sum = 0;
    int ok = 0;
    __u32 s = g & (EBPFW_HL_RING - 1);
    bpf_spin_lock(&cn->lock);
#pragma unroll
    for (int i = 0; i < EBPFW_HL_RING; i++)
        if (cn->tag[i] >= live)
            sum += cn->n[i];
    if (sum < max) {
        if (cn->tag[s] != g) {
            cn->tag[s] = g;
            cn->n[s] = 0;
        }
        cn->n[s] += 1;
        ok = 1;
    }
    bpf_spin_unlock(&cn->lock);
    return ok;
}

/* a bucket leaves group `from` (0: none) for group `to` (0: none) */
static __always_inline void hl_move(struct ebpfw_hlcnt *cn, __u64 from, __u64 to)
{
    __u32 a = from & (EBPFW_HL_RING - 1), b = to & (EBPFW_HL_RING - 1);
    bpf_spin_lock(&cn->lock);
    if (from && cn->tag[a] == from)
        cn->n[a] -= 1;
    if (to) {
        if (cn->tag[b] != to) {
            cn->tag[b] = to;
            cn->n[b] = 0;
        }
        cn->n[b] += 1;
    }
    bpf_spin_unlock(&cn->lock);
}

/* 1: the match holds, 0: it does not, -1: hotdrop. Run by the continuation program before it
 * resumes the walk at the rule (outside the walk's loop, where the verifier would go through
 * it once per step). */
static __always_inline int hashlimit_pass(__u32 rk, struct pkt *p)
{
    struct ebpfw_hlrule *hr = ebpfw_hlrule.lookup(&rk);
    if (!hr)
        return 0;
    __u32 tid = hr->tid;
    __u32 inv = hr->inv & 1;
    struct ebpfw_hlcfg *c = ebpfw_hlcfg.lookup(&tid);
    struct ebpfw_hlcnt *cn = ebpfw_hlcnt.lookup(&tid);
    __u32 zero = 0;
    struct hlscratch *sc = ebpfw_hlscr.lookup(&zero);
    if (!c || !cn || !sc)
        return 0;
    /* userspace wrote masks that are 0 for the parts the mode leaves out */
    if (c->needports & ~p->hlok & 1)
        return -1;           /* hashlimit_init_dst could not read the ports */
    struct ebpfw_hl_key *k = &sc->k;
    k->tid = tid;
    k->src = p->saddr & c->srcmask;
    k->dst = p->daddr & c->dstmask;
    k->sport = p->hlsport & c->spmask;
    k->dport = p->hldport & c->dpmask;
    __u64 now = bpf_jiffies64();
    __u64 j0 = c->j0, gc = c->gc_j | (c->gc_j == 0), expire = c->expire_j, gk = c->gk | (c->gk == 0);
    __u64 credit0 = c->credit, cap0 = c->cap, cost0 = c->cost;
    __u64 done = ((__s64)(now - j0) > 0) ? (now - j0) / gc : 0;   /* collector runs so far */
    __u64 live = hl_group(done + 1, gk);                          /* the oldest group not freed */
    __u64 gnew = hl_group(hl_run(now + expire, j0, gc), gk);
    int held = 0;            /* this packet holds a place in the count for a new bucket */
    struct ebpfw_hl_val *e = ebpfw_hl.lookup(k);
    if (!e || hl_run(e->expires, j0, gc) <= done) {
        /* a new bucket (or the collector freed this one): dsthash_alloc_init */
        held = hl_reserve(cn, live, gnew, (__s64)c->max);
        if (!e && held) {
            struct ebpfw_hl_val *v = &sc->v;
            v->expires = now + expire;
            v->prev = now;
            v->credit = credit0;
            v->credit_cap = cap0;
            v->cost = cost0;
            v->win = 0;
            if (ebpfw_hl.insert(k, v) == 0)
                held = 2;    /* made: its place is taken */
        }
        if (!e)
            e = ebpfw_hl.lookup(k);   /* ours, or another CPU's that came first */
        if (!e) {
            if (held)
                hl_move(cn, gnew, 0);
            return -1;       /* full: dsthash_alloc_init's NULL */
        }
    }
    __u32 stripe = (tid * 0x9e3779b1u ^ k->src * 0x85ebca6bu ^ k->dst * 0xc2b2ae35u ^
                    ((__u32)k->sport << 16 | k->dport)) % EBPFW_HL_LOCKS;
    struct hllock *lk = ebpfw_hllock.lookup(&stripe);
    if (!lk) {
        if (held == 1)
            hl_move(cn, gnew, 0);
        return 0;
    }
    __u32 mode = c->mode;
    __u64 cpj = c->cpj, ccap = c->ccap, ival = c->interval_j;
    __u64 plen = p->len;
    __u64 gold = 0;
    int ok = 0, drop = 0;
    bpf_spin_lock(&lk->lock);
    if (hl_run(e->expires, j0, gc) <= done) {
        /* freed by the collector since: a new bucket, if the table had room for it */
        if (held == 1) {
            e->prev = now;
            e->credit = credit0;
            e->credit_cap = cap0;
            e->cost = cost0;
            e->win = 0;
            held = 2;
        } else {
            drop = 1;
        }
    } else if (held != 2) {
        gold = hl_group(hl_run(e->expires, j0, gc), gk);
    }
    if (!drop) {
        __u64 delta = now - e->prev;
        if (mode & EBPFW_HL_RATE) {
            /* rateinfo_recalc, rate-match: a window ends after `interval` seconds */
            if (delta && delta >= ival) {
                e->prev = now;
                e->win = (e->credit * ival) > (delta * e->cost);
                e->credit = 0;
            }
            e->credit += (mode & EBPFW_HL_BYTES) ? plen : 1;
            ok = !e->win && e->credit <= e->credit_cap;
        } else if (mode & EBPFW_HL_BYTES) {
            /* rateinfo_recalc, bytes */
            if (delta) {
                __u64 old = e->credit;
                e->prev = now;
                e->credit += cpj * delta;
                if (old >= e->credit || e->credit > ccap)
                    e->credit = ccap;
            }
            /* hashlimit_byte_cost */
            __u64 t = ((plen >> 4) + 1) * e->cost;
            if (t > ccap)
                t = ccap;
            if (e->credit < t && e->credit_cap) {
                e->credit_cap -= 1;
                e->credit = ccap;
            }
            if (e->credit >= t) {
                e->credit -= t;
                ok = 1;
            }
        } else {
            /* rateinfo_recalc, packets (delta 0 changes nothing) */
            __u64 credit = e->credit + delta * cpj;
            e->prev = now;
            if (credit > e->credit_cap)
                credit = e->credit_cap;
            if (credit >= e->cost) {
                credit -= e->cost;
                ok = 1;
            }
            e->credit = credit;
        }
        e->expires = now + expire;
    }
    bpf_spin_unlock(&lk->lock);
    if (drop)
        return -1;           /* freed meanwhile and the table is full */
    if (held == 1)
        hl_move(cn, gnew, 0);         /* another CPU made or renewed it first: give the place back */
    if (gold && gold != gnew)
        hl_move(cn, gold, gnew);      /* its expiry moved it to a later collector run */
    return ok ^ inv;
}
#endif

#ifdef EBPFW_F_SET
/* ---- -m set: ipset membership (ebpfw/sets.py) -----------------------------------------------
 * Every set lives in one LPM trie pinned outside the generation directories (so live `ebpfw set
 * add|del` and re-applies keep it): key = (set id, proto << 16 | port, address), all big
 * endian, an element is a prefix of 64 bits (id and port part exact) plus its address prefix
 * (0 for bitmap:port). The per-rule table says which set and which packet sides to read.
 * The value (struct ebpfw_set_val) holds the element's expiry (ipset `timeout`): CLOCK_BOOTTIME
 * in ns (userspace reads the same clock with clock_gettime(CLOCK_BOOTTIME)), 0 = permanent,
 * its `nomatch` flag (hash:net types) and its own key prefix length. The kernel keeps
 * add-time jiffies + timeout * HZ and an element is alive while jiffies <= that
 * (ip_set_timeout_expired); this clock has ns precision, so an element expires here exactly
 * `timeout` seconds after its add, and in the kernel up to one jiffy (1/HZ: 4 ms at HZ=250)
 * later (a packet within that jiffy is the only possible difference).
 * Lookup (mtype_test_cidrs in ip_set_hash_gen.h): the kernel tries the set's prefix lengths
 * from the most specific down and the first live element decides: a match, or no match for a
 * `nomatch` element; an expired element is skipped. The trie returns the longest prefix that
 * is not longer than the key's prefix length, so after an expired element of prefix length L
 * the lookup is repeated with the key's length L - 1: each repeat is shorter, so at most 33
 * lookups (/32 ... /1, then nothing) decide. The walk makes the first two lookups; only when
 * both find an expired element does it stop at the rule (V_CONT) and the continuation program
 * run the repeated lookups (set_member, a loop verified once there rather than at every
 * state of the walk) and resume the walk at the rule with the answer, as for -m hashlimit.
 * Nothing is deleted here (a delete could race with a userspace `set add` renewing the
 * element); userspace deletes expired elements (ebpfw/sets.py). */
struct ebpfw_set_key {
    __u32 prefixlen;
    __u32 id;             /* network order */
    __u32 pp;             /* proto << 16 | port, network order; 0 for hash:ip / hash:net */
    __u32 addr;           /* network order */
};
struct ebpfw_set_val {
    __u64 expiry;         /* CLOCK_BOOTTIME ns, 0 = permanent */
    __u32 prefixlen;      /* the element's key prefix length (64 + its address prefix) */
    __u32 flags;          /* EBPFW_SETV_NOMATCH */
};
#define EBPFW_SETV_NOMATCH 1
#ifndef EBPFW_SET_TRIES
#define EBPFW_SET_TRIES    33   /* the address prefix lengths 32 ... 1, then none */
#endif
struct ebpfw_setm {
    __u32 id;
    __u8  kind;           /* EBPFW_SETK_* */
    __u8  src0;           /* dimension 1 reads the source (else the destination) */
    __u8  src1;           /* dimension 2 reads the source port (else the destination port) */
    __u8  inv;            /* ! --match-set */
};
#define EBPFW_SETK_ADDR     1   /* hash:ip, hash:net */
#define EBPFW_SETK_ADDRPORT 2   /* hash:ip,port, hash:net,port */
#define EBPFW_SETK_PORT     3   /* bitmap:port */
#ifndef EBPFW_SETS_CAP
#define EBPFW_SETS_CAP 1048576
#endif
/* the sets' definitions (name, type, element count), for userspace only: id -> definition */
struct ebpfw_setdef {
    char  name[32];
    __u32 type;           /* ebpfw/sets.py TYPES; 0 = a free id */
    __u32 count;
    __u32 maxelem;
    __u32 first;          /* bitmap:port range */
    __u32 last;
    __u32 hashsize;
    __u32 timeout;        /* the set's default element timeout in seconds (create ... timeout) */
    __u32 flags;          /* EBPFW_SETDEF_TIMEOUT: the set was created with a timeout */
};
#define EBPFW_SETDEF_TIMEOUT 1
#define EBPFW_NSETS 256
#ifdef EBPFW_SET_PATH
BPF_TABLE_PINNED("lpm_trie", struct ebpfw_set_key, struct ebpfw_set_val, ebpfw_sets, EBPFW_SETS_CAP, EBPFW_SET_PATH, BPF_F_NO_PREALLOC);
BPF_TABLE_PINNED("array", __u32, struct ebpfw_setdef, ebpfw_setdef, EBPFW_NSETS, EBPFW_SETDEF_PATH);
#else
BPF_F_TABLE("lpm_trie", struct ebpfw_set_key, struct ebpfw_set_val, ebpfw_sets, EBPFW_SETS_CAP, BPF_F_NO_PREALLOC);
BPF_ARRAY(ebpfw_setdef, struct ebpfw_setdef, EBPFW_NSETS);
#endif
BPF_ARRAY(ebpfw_setm, struct ebpfw_setm, NSLOTS * EBPFW_RCAP);
/* the lookup key is built in map memory: the stack of the inlined walk is full */
BPF_PERCPU_ARRAY(ebpfw_setk, struct ebpfw_set_key, 1);

/* ip_set_get_ip4_port: the ports of TCP, UDP, SCTP, UDP-Lite and ICMP (type << 8 | code for
 * both) in a first fragment whose header is whole; any other protocol (fragments too) has
 * port 0; protocol 0 never matches */
static __always_inline int ports_ok(struct pkt *p)
{
    __u8 pr = p->proto;
    if (pr == IPPROTO_TCP || pr == IPPROTO_UDP || pr == IPPROTO_ICMP)
        return p->l4 == L4_OK;
    if (pr == IPPROTO_SCTP || pr == IPPROTO_UDPLITE)
        return p->setok;
    return pr != 0;
}

static __always_inline __u32 set_sport(struct pkt *p)
{
    __u8 pr = p->proto;
    if (pr == IPPROTO_TCP || pr == IPPROTO_UDP || pr == IPPROTO_ICMP)
        return p->sport;
    return p->setsport;
}

static __always_inline __u32 set_dport(struct pkt *p)
{
    __u8 pr = p->proto;
    if (pr == IPPROTO_TCP || pr == IPPROTO_UDP)
        return p->dport;
    if (pr == IPPROTO_ICMP)
        return p->sport;
    return p->setdport;
}

/* the packet's key for the set match m in k (full length); 0 when the packet has none (then it
 * is not in the set) */
static __always_inline int set_key(struct ebpfw_setm *m, struct pkt *p, struct ebpfw_set_key *k)
{
    __u32 kind = m->kind;
    int valid = 0;
    k->prefixlen = 96;
    k->id = bpf_htonl(m->id);
    k->pp = 0;
    k->addr = 0;
    if (kind == EBPFW_SETK_ADDR) {
        k->addr = m->src0 ? p->saddr : p->daddr;
        valid = 1;
    } else if (kind == EBPFW_SETK_ADDRPORT) {
        if (ports_ok(p)) {
            __u32 port = m->src1 ? set_sport(p) : set_dport(p);
            k->pp = bpf_htonl(((__u32)p->proto << 16) | port);
            k->addr = m->src0 ? p->saddr : p->daddr;
            valid = 1;
        }
    } else if (kind == EBPFW_SETK_PORT) {
        /* ip_set_get_ip_port: TCP and UDP only */
        if ((p->proto == IPPROTO_TCP || p->proto == IPPROTO_UDP) && p->l4 == L4_OK) {
            k->pp = bpf_htonl(m->src0 ? p->sport : p->dport);
            valid = 1;
        }
    }
    return valid;
}

/* the longest element covering k decides when it is alive (a match unless it is `nomatch`):
 * 1 or 0; when it expired, the longest one below it is looked up too (an expired ban with
 * nothing behind it, or inside a live net, is decided here); SET_EXPIRED when that one expired
 * as well (set_member then looks further) */
#define SET_EXPIRED 2
static __always_inline int set_first(struct ebpfw_set_key *k)
{
    struct ebpfw_set_val *v = ebpfw_sets.lookup(k);
    if (!v)
        return 0;
    __u64 expiry = v->expiry;
    if (expiry == 0 || bpf_ktime_get_boot_ns() <= expiry)     /* ip_set_timeout_expired */
        return !(v->flags & EBPFW_SETV_NOMATCH);
    __u32 plen = v->prefixlen;
    if (plen <= 64 || plen > k->prefixlen)
        return 0;
    k->prefixlen = plen - 1;
    v = ebpfw_sets.lookup(k);
    if (!v)
        return 0;
    expiry = v->expiry;
    if (expiry == 0 || bpf_ktime_get_boot_ns() <= expiry)
        return !(v->flags & EBPFW_SETV_NOMATCH);
    return SET_EXPIRED;
}

/* branch-free selection (BPF has no conditional move): one verifier path in the walk */
static __always_inline __u64 set_eq(__u64 a, __u64 b)
{
    return ((a ^ b) - 1) >> 63;
}
static __always_inline __u64 set_sel(__u64 c, __u64 a, __u64 b)
{
    return b ^ ((a ^ b) & (0 - c));
}

/* mtype_test_cidrs: the longest live element covering k decides; expired ones are skipped */
static __always_inline int set_member(struct ebpfw_set_key *k)
{
#pragma clang loop unroll(disable)
    for (__u32 i = 0; i < EBPFW_SET_TRIES; i++) {
        struct ebpfw_set_val *v = ebpfw_sets.lookup(k);
        if (!v)
            return 0;
        __u64 expiry = v->expiry;
        if (expiry == 0 || bpf_ktime_get_boot_ns() <= expiry)
            return !(v->flags & EBPFW_SETV_NOMATCH);
        __u32 plen = v->prefixlen;
        if (plen <= 64 || plen > k->prefixlen)
            return 0;
        k->prefixlen = plen - 1;
    }
    return 0;
}

/* the continuation program's part: the answer for set rule rk (before `!`) */
static __always_inline int set_slow(__u32 rk, struct pkt *p)
{
    struct ebpfw_setm *m = ebpfw_setm.lookup(&rk);
    __u32 zero = 0;
    struct ebpfw_set_key *k = ebpfw_setk.lookup(&zero);
    if (!m || !k)
        return 0;
    return set_key(m, p, k) ? set_member(k) : 0;
}

/* -m set for rule rk in the walk: 1 the match holds (after `!`), 0 not, -1 the continuation
 * program is to decide (the first lookup found an expired element; see above). When the
 * continuation program has decided for this rule, its answer is taken (and consumed). */
static __always_inline int set_pass(__u32 rk, struct walkstate *ws)
{
    __u32 zero = 0;
    struct ebpfw_setm *m = ebpfw_setm.lookup(&rk);
    struct ebpfw_set_key *k = ebpfw_setk.lookup(&zero);
    /* the packet is read back from its per-CPU record: fewer live registers in the walk */
    struct pkt *p = ebpfw_pkt.lookup(&zero);
    if (!m || !k || !p)
        return 0;
    __u64 first = set_key(m, p, k) ? set_first(k) : 0;
    __u64 done = ws->setdone & 1;
    __u64 use = set_eq(ws->setrk, rk + 1) & done;
    ws->setdone = done ^ use;
    ws->setrk = set_sel(use, 0, ws->setrk);
    __u64 member = set_sel(use, ws->setres & 1, first);
    if (member == SET_EXPIRED)
        return -1;
    return (member & 1) ^ (m->inv ? 1 : 0);
}
#endif

#ifdef EBPFW_F_MARK
/* ---- marks: -m mark, -m connmark, -j MARK, -j CONNMARK (xt_mark.c, xt_connmark.c) ----------- */
BPF_ARRAY(ebpfw_markc, struct ebpfw_markc, NSLOTS * EBPFW_RCAP);

/* The rule's mark conditions; with `hit` (the rule hotdrops the packet) only those written
 * before every match that can hotdrop: iptables runs the matches in order, so those refuse the
 * packet before the hotdrop and the others would come after it. */
static __always_inline int mark_pass(__u32 rk, __u32 hit)
{
    __u32 zero = 0;
    struct ebpfw_markc *mc = ebpfw_markc.lookup(&rk);
    struct walkstate *ws = ebpfw_walk.lookup(&zero);
    if (!mc || !ws)
        return 0;
    __u32 f = mc->m_flags;
    if ((f & EBPFW_MK_MARK) && (!hit || (f & EBPFW_MK_MARK_FIRST))) {
        __u32 eq = (ws->mark & mc->m_mask) == mc->m_value;
        if (eq == ((f & EBPFW_MK_MARK_INV) ? 1 : 0))
            return 0;
    }
    if ((f & EBPFW_MK_CONN) && (!hit || (f & EBPFW_MK_CONN_FIRST))) {
#ifdef EBPFW_F_CT
        if (!ws->hasct)
            return 0;     /* no connection: no match, inverted or not */
        __u32 eq = (ws->ctmark & mc->c_mask) == mc->c_value;
        if (eq == ((f & EBPFW_MK_CONN_INV) ? 1 : 0))
            return 0;
#else
        return 0;         /* never written without conntrack (the compiler turns it on) */
#endif
    }
    return 1;
}

/* -j MARK / -j CONNMARK: the kernel's arithmetic; CONNMARK on a packet without a connection
 * does nothing. */
static __always_inline void mark_target(__u32 rk, __u32 kind)
{
    __u32 zero = 0;
    struct ebpfw_markc *mc = ebpfw_markc.lookup(&rk);
    struct walkstate *ws = ebpfw_walk.lookup(&zero);
    if (!mc || !ws)
        return;
    if (kind == EBPFW_ACT_MARK) {
        ws->mark = (ws->mark & ~mc->t_mask) ^ mc->t_value;
        return;
    }
#ifdef EBPFW_F_CT
    if (!ws->hasct)
        return;
    __u32 mode = mc->t_mode;
    if (mode == EBPFW_CM_RESTORE) {
        ws->mark = (ws->mark & ~mc->t_nfmask) ^ (ws->ctmark & mc->t_mask);
        return;
    }
    __u32 v = mode == EBPFW_CM_SAVE ? (ws->mark & mc->t_nfmask) : mc->t_value;
    ws->ctmark = (ws->ctmark & ~mc->t_mask) ^ v;
#endif
}
#endif

/* Before the walk (after conntrack labelled the packet): the packet's mark as the rules see it
 * first, and its connection's mark. */
static __always_inline void mark_in(__u32 mark)
{
#ifdef EBPFW_F_MARK
    __u32 zero = 0;
    struct walkstate *ws = ebpfw_walk.lookup(&zero);
    if (!ws)
        return;
    ws->mark = mark;
    __u32 cm = 0;
#ifdef EBPFW_F_CT
    ws->hasct = ct_mark_io(&cm, 0);
#else
    ws->hasct = 0;
#endif
    ws->ctmark = cm;
    ws->ctmark_in = cm;
#endif
}

#ifdef EBPFW_F_CT
/* After the walk: a connection mark CONNMARK changed goes to the connection. */
static __always_inline void mark_ct_out(void)
{
#ifdef EBPFW_F_MARK
    __u32 zero = 0;
    struct walkstate *ws = ebpfw_walk.lookup(&zero);
    if (!ws || !ws->hasct || ws->ctmark == ws->ctmark_in)
        return;
    __u32 cm = ws->ctmark;
    ct_mark_io(&cm, 1);
#endif
}
#endif

/* After the verdict at TC: an accepted packet leaves with the mark the rules gave it (as the
 * filter table's MARK leaves it on the skb for the rest of the stack); a dropped one does not
 * matter, and a REJECT answer gets the kernel's reply mark (tc_reject). */
static __always_inline void mark_out(struct __sk_buff *skb, int v)
{
#ifdef EBPFW_F_MARK
    __u32 zero = 0;
    struct walkstate *ws = ebpfw_walk.lookup(&zero);
    if (ws && v == V_ACCEPT && skb->mark != ws->mark)
        skb->mark = ws->mark;
#endif
}


#ifdef EBPFW_F_RECENT
/* ---- -m recent: xt_recent's address lists (net/netfilter/xt_recent.c, recent_mt) -----------
 * One table per --name, pinned outside the generations (a re-apply that keeps the name keeps
 * the table, as the kernel keeps /proc/net/xt_recent/NAME when iptables-restore keeps it):
 * up to EBPFW_RECENT_ENTRIES (the host's ip_list_tot) addresses, each with its last
 * EBPFW_RECENT_STAMPS times. The kernel's LRU list is an order number per entry (`seq`, larger
 * = inited or updated later): its head, the oldest entry, is the one with the smallest seq,
 * found by the same scan that looks the address up. Eviction (a --set on a full table drops
 * the head) and --reap (drops the head when its last time is older than the window) are the
 * kernel's.
 *
 * Time base: xt_recent stamps with `jiffies`; bpf_jiffies64() reads the very same counter
 * (jiffies_64, which is jiffies on 64-bit hosts), so --seconds windows are cut exactly where
 * the kernel cuts them. Userspace writes the window as the kernel computes it:
 * (u32)(seconds * HZ) jiffies, and time_after() is a signed difference as in the kernel.
 *
 * The kernel keeps roundup_pow_of_two(hitcount) (or 32, or ip_pkt_list_tot) stamps per entry;
 * every decision reads only the newest `hitcount` stamps (stamps only grow), so keeping 32
 * gives the same answers for every hitcount <= 32 (the compiler refuses larger ones). */
#ifndef EBPFW_RECENT_ENTRIES
#define EBPFW_RECENT_ENTRIES 100
#endif
#define EBPFW_RECENT_STAMPS 32
#define EBPFW_RECENT_TABLES 64
#define EBPFW_RECENT_NAME 200     /* XT_RECENT_NAME_LEN */
#define EBPFW_RC_SET    1
#define EBPFW_RC_CHECK  2
#define EBPFW_RC_UPDATE 3
#define EBPFW_RC_REMOVE 4
#define RC_NONE 0xffffffff
struct ebpfw_recent_ent {
    __u32 addr;           /* address & the table's mask, network order */
    __u8  used;
    __u8  ttl;
    __u8  index;          /* 1 + the slot of the newest stamp (the kernel's e->index) */
    __u8  nstamps;
    __u64 seq;            /* LRU order */
    __u64 stamps[EBPFW_RECENT_STAMPS];   /* jiffies */
};
struct ebpfw_recent_tbl {
    struct bpf_spin_lock lock;
    __u32 nent;           /* entries in use (t->entries) */
    __u32 mask;           /* the table's address mask (of the rule that made it), network order */
    __u32 kmask;          /* the kernel's nstamps_max_mask (userspace: listing, flush on growth) */
    __u32 inuse;          /* 1: a name owns this table (userspace) */
    __u64 seq;            /* last order number given */
    char  name[EBPFW_RECENT_NAME];
    struct ebpfw_recent_ent ent[EBPFW_RECENT_ENTRIES];
};
/* per rule and slot: which table and what to do (0 = never written: the rule does not match) */
struct ebpfw_recentm {
    __u32 id;
    __u8  cmd;            /* EBPFW_RC_* */
    __u8  inv;
    __u8  dest;           /* --rdest */
    __u8  rttl;
    __u8  reap;
    __u8  pad[3];
    __u32 hitcount;
    __u64 window;         /* (u32)(seconds * HZ), jiffies; 0 = no --seconds */
};
/* the match's working values, in map memory: the inlined walk has no stack to spare */
struct recent_scr {
    __u64 found;
    __u64 oldest;
    __u64 free;
    __u64 oseq;
    __u64 addr;
    __u64 lttl;
    __u64 ttl;
    __u64 now;
    __u64 time;
    __u32 cmd;
    __u32 ret;
    __u32 hitcount;
    __u32 window;
    __u32 reap;
    __u32 pad;
};
#ifdef EBPFW_RECENT_PATH
BPF_TABLE_PINNED("array", __u32, struct ebpfw_recent_tbl, ebpfw_recent, EBPFW_RECENT_TABLES, EBPFW_RECENT_PATH);
#else
BPF_ARRAY(ebpfw_recent, struct ebpfw_recent_tbl, EBPFW_RECENT_TABLES);
#endif
BPF_ARRAY(ebpfw_recentm, struct ebpfw_recentm, NSLOTS * EBPFW_RCAP);
/* the recent programs, one array per program type (see ebpfw_post_xdp) */
BPF_PROG_ARRAY(ebpfw_rcx, 1);
BPF_PROG_ARRAY(ebpfw_rct, 1);
BPF_PERCPU_ARRAY(ebpfw_rscr, struct recent_scr, 1);

/* branch-free helpers for the scan (operands below 2^63) */
static __always_inline __u64 rc_eq(__u64 a, __u64 b)
{
    return ((a ^ b) - 1) >> 63;
}
static __always_inline __u64 rc_lt(__u64 a, __u64 b)
{
    return (a - b) >> 63;
}
static __always_inline __u64 rc_sel(__u64 c, __u64 a, __u64 b)
{
    return b ^ ((a ^ b) & (0 - c));
}

static __always_inline void recent_remove(struct ebpfw_recent_tbl *t, __u32 i)
{
    if (i < EBPFW_RECENT_ENTRIES && t->ent[i].used) {
        t->ent[i].used = 0;
        t->nent -= 1;
    }
}

/* recent_mt() for rule rk: 1 if the match holds (after `!`), with the table updated as the
 * kernel updates it */
static __always_inline int recent_pass(__u32 rk)
{
    __u32 zero = 0;
    struct recent_scr *s = ebpfw_rscr.lookup(&zero);
    struct pkt *p = ebpfw_pkt.lookup(&zero);
    struct ebpfw_recentm *m = ebpfw_recentm.lookup(&rk);
    if (!s || !p || !m || !m->cmd)
        return 0;
    s->cmd = m->cmd;
    s->ret = m->inv ? 1 : 0;
    s->addr = m->dest ? p->daddr : p->saddr;
    s->ttl = p->rttl;
    s->lttl = m->rttl ? p->rttl : 0;
    s->window = m->window != 0;
    s->hitcount = m->hitcount;
    s->reap = m->reap;
    s->now = bpf_jiffies64();
    s->time = s->now - m->window;
    __u32 id = m->id;
    struct ebpfw_recent_tbl *t = ebpfw_recent.lookup(&id);
    if (!t)
        return 0;
    bpf_spin_lock(&t->lock);
    s->addr &= t->mask;
    /* one pass finds the address, the LRU head and a free slot; the body has no branch (BPF
     * has no conditional move: rc_eq / rc_lt / rc_sel are arithmetic), so verifying the loop
     * costs one path per step */
    s->found = RC_NONE;
    s->oldest = RC_NONE;
    s->free = RC_NONE;
    s->oseq = ~0ULL >> 1;
#pragma clang loop unroll(disable)
    for (__u32 i = 0; i < EBPFW_RECENT_ENTRIES; i++) {
        struct ebpfw_recent_ent *e = &t->ent[i];
        __u64 used = e->used & 1;
        __u64 seq = e->seq;
        __u64 ettl = e->ttl;
        __u64 lt = s->lttl;
        s->free = rc_sel((used ^ 1) & rc_eq(s->free, RC_NONE), i, s->free);
        __u64 older = used & rc_lt(seq, s->oseq);
        s->oseq = rc_sel(older, seq, s->oseq);
        s->oldest = rc_sel(older, i, s->oldest);
        /* recent_entry_lookup: the TTL only counts when both sides have one */
        __u64 hit = used & rc_eq(e->addr, s->addr) & (rc_eq(lt, 0) | rc_eq(ettl, 0) | rc_eq(ettl, lt));
        s->found = rc_sel(hit, i, s->found);
    }
    __u32 f = s->found;
    asm volatile("" : "+r"(f));
    if (f >= EBPFW_RECENT_ENTRIES) {
        if (s->cmd == EBPFW_RC_SET) {
            /* recent_entry_init: a full table first drops its oldest entry */
            __u32 slot = s->free;
            if (t->nent >= EBPFW_RECENT_ENTRIES) {
                slot = s->oldest;
                recent_remove(t, slot);
            }
            if (slot < EBPFW_RECENT_ENTRIES) {
                struct ebpfw_recent_ent *e = &t->ent[slot];
                e->used = 1;
                e->addr = s->addr;
                e->ttl = s->ttl;
                e->stamps[0] = s->now;
                e->nstamps = 1;
                e->index = 1;
                t->seq += 1;
                e->seq = t->seq;
                t->nent += 1;
            }
            s->ret ^= 1;
        }
        bpf_spin_unlock(&t->lock);
        return s->ret;
    }
    struct ebpfw_recent_ent *e = &t->ent[f];
    if (s->cmd == EBPFW_RC_SET) {
        s->ret ^= 1;
    } else if (s->cmd == EBPFW_RC_REMOVE) {
        recent_remove(t, f);
        s->ret ^= 1;
    } else {
        /* the kernel counts stamps inside the window until it has `hitcount` (any one without
         * --hitcount): the same answer as counting them all */
        __u64 hits = 0;
#pragma clang loop unroll(disable)
        for (__u32 j = 0; j < EBPFW_RECENT_STAMPS; j++) {
            __u64 older = (e->stamps[j] - s->time) >> 63;       /* time_after(time, stamp) */
            hits += rc_lt(j, e->nstamps) & ((s->window & older) ^ 1);
        }
        __u32 hc = s->hitcount;
        if (hc ? hits >= hc : hits > 0)
            s->ret ^= 1;
        if (s->reap) {
            /* recent_entry_reap: only the LRU head, and not the entry about to be updated */
            __u32 h = s->oldest;
            if (h < EBPFW_RECENT_ENTRIES && !(h == f && s->cmd == EBPFW_RC_UPDATE && s->ret)) {
                __u32 last = (t->ent[h].index - 1) & (EBPFW_RECENT_STAMPS - 1);
                if ((__s64)(t->ent[h].stamps[last] - s->time) < 0)
                    recent_remove(t, h);
            }
        }
    }
    if (s->cmd == EBPFW_RC_SET || (s->cmd == EBPFW_RC_UPDATE && s->ret)) {
        /* recent_entry_update (an entry reaped above is never updated: see the condition) */
        if (e->used) {
            __u32 ix = e->index & (EBPFW_RECENT_STAMPS - 1);
            e->stamps[ix] = s->now;
            ix += 1;
            e->index = ix;
            if (ix > e->nstamps)
                e->nstamps = ix;
            t->seq += 1;
            e->seq = t->seq;
            e->ttl = s->ttl;
        }
    }
    bpf_spin_unlock(&t->lock);
    return s->ret;
}
#endif

#ifdef EBPFW_F_CONNLIMIT
/* ---- -m connlimit: xt_connlimit's count from nf_conncount (net/netfilter/nf_conncount.c) -----
 * Every connlimit rule keeps, per key (the packet's source address, or destination with
 * --connlimit-daddr, AND the mask), the list of connections it has seen: ebpfw_cl, keyed by
 * (slot * EBPFW_RCAP + rule, key); lists start empty with every apply, as iptables-restore
 * makes every rule's nf_conncount_data anew. The rule's connlimit match (always its last) is
 * judged by the connlimit program (a tail call; the list walk is a bpf_loop there), which
 * follows count_tree / __nf_conncount_add / nf_conncount_gc_list:
 *  - the packet's connection is the entry of ebpfw_ct it belongs to: the one ct_label
 *    prepared (not confirmed until the ruleset accepts the packet, ct_commit) or found
 *    (confirmed); an INVALID packet without one is looked up by its own tuple.
 *  - no list for the key: a new list holding the connection (insert_tree), count 1.
 *  - a confirmed, ASSURED connection is not added (-EEXIST): the list is collected instead
 *    (gc_list: skipped when it was collected in this jiffy; stops past
 *    CONNCOUNT_GC_MAX_COLLECT evictions at the next live entry).
 *  - an unconfirmed one skips the walk when the list was collected in this jiffy and fewer
 *    than CONNCOUNT_GC_MAX_COLLECT were added since (and is then appended, even twice);
 *    otherwise, like a confirmed one that is not yet ASSURED, the list is walked in order:
 *    an entry whose connection is gone (not in ebpfw_ct, or expired) is evicted when this
 *    CPU added it or it is 2 jiffies old (find_or_evict), a TCP connection in TIME_WAIT or
 *    CLOSE is evicted (already_closed), the walk stops past CONNCOUNT_GC_MAX_COLLECT
 *    evictions, and the packet's own connection found in it is not added again.
 *  - count = the list's length afterwards; 0 hotdrops (nf_conncount's allocation failure),
 *    and so does a list that would outgrow EBPFW_CL_CONNS or a new list when ebpfw_cl holds
 *    EBPFW_CL_KEYS lists: the capacities stand for the kernel's memory.
 *  - match = (count > limit) ^ --connlimit-upto.
 * A list that empties stays until a new list takes its index slot (the kernel frees an empty
 * node later, from its tree collector). nf_conncount holds the list's spinlock while it walks
 * and adds; a bpf_spin_lock cannot be held across the walk's map lookups, so a list has a busy
 * word instead, taken with an atomic exchange (cl_lock): a CPU that finds it taken waits for
 * it a bounded number of reads (the holder works for microseconds), and only past that bound
 * goes ahead unserialized.
 * Time base: jiffies from bpf_jiffies64(), the counter nf_conncount reads. */
#ifndef EBPFW_F_CT
#error "-m connlimit counts tracked connections: it needs EBPFW_F_CT"
#endif
#ifndef EBPFW_CL_CONNS
#define EBPFW_CL_CONNS 128
#endif
#ifndef EBPFW_CL_KEYS
#define EBPFW_CL_KEYS 16384
#endif
#define CL_GC_MAX_COLLECT 64      /* CONNCOUNT_GC_MAX_COLLECT */

struct ebpfw_cl_key {
    __u32 rk;            /* slot * EBPFW_RCAP + rule */
    __u32 addr;          /* network order, masked */
};
struct ebpfw_cl_ent {
    struct ebpfw_ct_key key;   /* the connection (ebpfw_ct's key) */
    __u32 jiffies;       /* (u32)jiffies when added */
    __u32 cpu;           /* the CPU that added it */
};
struct ebpfw_cl_list {
    __u32 count;
    __u32 last_gc;       /* (u32)jiffies of the last collection */
    __u32 last_gc_count; /* count then */
    __u32 idx;           /* its slot in ebpfw_clidx */
    __u64 busy;          /* 1 while a CPU updates the list (see cl_lock) */
    struct ebpfw_cl_ent ent[EBPFW_CL_CONNS];   /* [0, count) in the order they were added */
};
/* room for the lists that lost their index slot in a race (see ebpfw_clidx) */
BPF_F_TABLE("hash", struct ebpfw_cl_key, struct ebpfw_cl_list, ebpfw_cl, 2 * EBPFW_CL_KEYS, BPF_F_NO_PREALLOC);
/* The index of the lists, EBPFW_CL_KEYS slots (a power of two), which bounds how many lists
 * exist. A new list takes the first of CL_PROBES slots from its key's hash that is free, or
 * whose list is gone, or whose list holds at most CL_RECLAIM connections, all ended (what the
 * kernel's tree collector frees); none: the kernel's allocation failure (hotdrop). So the
 * lists of keys that came once and left do not fill the map. */
#define CL_PROBES 8
#define CL_RECLAIM 8
struct ebpfw_cl_slot {
    struct ebpfw_cl_key key;
    __u32 used;
    __u32 pad;
};
BPF_ARRAY(ebpfw_clidx, struct ebpfw_cl_slot, EBPFW_CL_KEYS);
BPF_ARRAY(ebpfw_clm, struct ebpfw_clm, NSLOTS * EBPFW_RCAP);
BPF_PERCPU_ARRAY(ebpfw_clscr, struct ebpfw_cl_list, 1);   /* a new list is built here */
/* the walk's state: in map memory, whose values the verifier does not track, so that its
 * states at the loop head differ only by the index (a bounded loop of EBPFW_CL_CONNS steps;
 * bcc cannot load bpf_loop's callbacks) */
struct cl_walk {
    struct ebpfw_ct_key key;   /* the packet's connection */
    __u64 now;           /* bpf_ktime_get_ns(): ebpfw_ct's clock */
    __u32 jif;
    __u32 cpu;
    __u32 n;             /* entries before the walk */
    __u32 w;             /* entries kept so far (stable compaction) */
    __u32 collect;
    __u32 exists;        /* the packet's connection is in the list */
    __u32 gc;            /* 1: nf_conncount_gc_list, 0: the walk of __nf_conncount_add */
    __u32 stop;          /* past the walk's end: the rest is kept as it is */
    __u64 exp;           /* the entry's connection, when found: its expiry */
    __u32 state;         /* ... and TCP state */
    __u32 found;
    __u32 confirmed;     /* the packet's connection is in ebpfw_ct */
    __u32 assured;       /* ... and ASSURED */
    __u32 walk;          /* the list is walked */
    __u32 locked;        /* the list's busy word was taken (cl_lock) */
};
BPF_PERCPU_ARRAY(ebpfw_clw, struct cl_walk, 1);
/* the connlimit programs, one array per program type (see ebpfw_post_xdp) */
BPF_PROG_ARRAY(ebpfw_clx, 1);
BPF_PROG_ARRAY(ebpfw_clt, 1);

/* branch-free helpers for the walk (operands below 2^32): every branch of the loop's body
 * would double the states the verifier walks per entry */
static __always_inline __u64 cl_eq(__u64 a, __u64 b)
{
    return ((a ^ b) - 1) >> 63;
}
static __always_inline __u64 cl_lt(__u64 a, __u64 b)
{
    return (a - b) >> 63;
}

/* one entry of the walk: judge entry i and keep it (at index w) or drop it. Kept entries are
 * [0, w) and w <= i, so slot w is free: entry i is copied there whatever the judgement and
 * w only moves on when it is kept (stable compaction, no branch). */
static __always_inline void cl_step(__u32 i, struct cl_walk *c, struct ebpfw_cl_list *l)
{
    struct ebpfw_cl_ent *e = &l->ent[i & (EBPFW_CL_CONNS - 1)];
    struct ebpfw_ct_val *v = ebpfw_ct.lookup(&e->key);
    /* through map memory: both ways out of the branch meet in one verifier state */
    c->found = 0;
    if (v) {
        c->found = 1;
        c->exp = v->expires;
        c->state = v->state;
    }
    asm volatile("" ::: "memory");
    /* found (nf_conntrack_find_get): not expired; TCP in TIME_WAIT or CLOSE: already_closed */
    __u64 exp = c->exp, now = c->now, st = c->state;
    __u64 live = (c->found & 1) & (((now - exp) >> 63) | (((now ^ exp) >> 63) & (exp >> 63)));
    __u64 closed = cl_eq(st, EBPFW_TCP_TIME_WAIT) | cl_eq(st, EBPFW_TCP_CLOSE);
    __u32 *ek = (__u32 *)&e->key, *ck = (__u32 *)&c->key;
    __u64 same = cl_eq(ek[0], ck[0]) & cl_eq(ek[1], ck[1]) & cl_eq(ek[2], ck[2]) & cl_eq(ek[3], ck[3]);
    closed &= cl_eq(e->key.proto, IPPROTO_TCP);
    __u64 gc = c->gc & 1, stop = c->stop & 1, collect = c->collect;
    __u64 over = cl_lt(CL_GC_MAX_COLLECT, collect);      /* collect > CONNCOUNT_GC_MAX_COLLECT */
    /* __nf_conncount_add checks the limit before each entry, nf_conncount_gc_list after a live one */
    __u64 cut = (1 - gc) & over;
    __u64 act = (1 - stop) & (1 - cut);
    /* find_or_evict: a gone entry is evicted when this CPU added it or it is 2 jiffies old */
    __u64 age = (__u32)(c->jif - e->jiffies);
    __u64 evict = cl_eq(e->cpu, c->cpu) | cl_lt(1, age);
    __u64 mine = (1 - gc) & same;                         /* the packet's connection */
    __u64 drop_gone = act & (1 - live) & evict;
    __u64 hit = act & mine & (live | (1 - evict));
    __u64 drop_closed = act & live & (1 - mine) & closed;
    __u64 gc_cut = act & live & (1 - mine) & (1 - closed) & gc & over;
    __u64 drop = drop_gone | drop_closed;
    c->collect = collect + drop;
    c->exists |= hit;
    c->stop = stop | cut | hit | gc_cut;
    __u32 w = c->w;
    __builtin_memcpy(&l->ent[w & (EBPFW_CL_CONNS - 1)], e, sizeof(*e));
    c->w = w + (1 - drop);
}

/* walk l's first c->n entries; the list keeps c->w of them */
static __always_inline void cl_walk_list(struct cl_walk *c, struct ebpfw_cl_list *l)
{
    c->w = 0;
    c->collect = 0;
    c->exists = 0;
    c->stop = 0;
    for (__u32 i = 0; i < EBPFW_CL_CONNS; i++) {
        asm volatile("" ::: "memory");   /* nothing kept in registers from the last entry */
        if (i >= c->n)
            break;
        /* stopped with nothing left to move down: entries [i, n) stay where they are */
        if (c->stop && c->w == i) {
            c->w = c->n;
            break;
        }
        cl_step(i, c, l);
    }
}

/* take list l's busy word: 1 when taken, 0 when the wait ran out (then the update is not
 * serialized with the other CPU's; that CPU would have had to stay on it for thousands of reads) */
#define CL_SPIN 256
static __always_inline int cl_lock(struct ebpfw_cl_list *l)
{
    for (__u32 i = 0; i < CL_SPIN; i++) {
        if (__sync_lock_test_and_set(&l->busy, 1) == 0)
            return 1;
    }
    return 0;
}

static __always_inline void cl_unlock(struct ebpfw_cl_list *l, int taken)
{
    if (taken)
        __sync_lock_test_and_set(&l->busy, 0);
}

/* 1 when list o holds at most CL_RECLAIM connections and every one has ended as the walk
 * judges it (gone and evictable, or TCP in TIME_WAIT / CLOSE); c is the walk's scratch */
static __always_inline int cl_all_dead(struct cl_walk *c, struct ebpfw_cl_list *o)
{
    if (o->count > CL_RECLAIM)
        return 0;
    for (__u32 i = 0; i < CL_RECLAIM; i++) {
        asm volatile("" ::: "memory");
        if (i >= o->count)
            break;
        struct ebpfw_cl_ent *e = &o->ent[i & (EBPFW_CL_CONNS - 1)];
        struct ebpfw_ct_val *v = ebpfw_ct.lookup(&e->key);
        c->found = 0;
        if (v) {
            c->found = 1;
            c->exp = v->expires;
            c->state = v->state;
        }
        asm volatile("" ::: "memory");
        __u64 exp = c->exp, now = c->now, st = c->state;
        __u64 live = (c->found & 1) & (((now - exp) >> 63) | (((now ^ exp) >> 63) & (exp >> 63)));
        __u64 closed = (cl_eq(st, EBPFW_TCP_TIME_WAIT) | cl_eq(st, EBPFW_TCP_CLOSE)) &
                       cl_eq(e->key.proto, IPPROTO_TCP);
        __u64 age = (__u32)(c->jif - e->jiffies);
        __u64 evict = cl_eq(e->cpu, c->cpu) | cl_lt(1, age);
        if (!(((1 - live) & evict) | (live & closed)))
            return 0;
    }
    return 1;
}

/* a new list's index slot (see ebpfw_clidx): its position, or EBPFW_CL_KEYS when none */
static __always_inline __u32 cl_claim(struct cl_walk *c, struct ebpfw_cl_key *k)
{
    __u32 h = (k->addr * 0x9E3779B1u) ^ (k->rk * 0x85EBCA6Bu);
    h ^= h >> 15;
    for (__u32 i = 0; i < CL_PROBES; i++) {
        __u32 at = (h + i) & (EBPFW_CL_KEYS - 1);
        struct ebpfw_cl_slot *sl = ebpfw_clidx.lookup(&at);
        if (!sl)
            return EBPFW_CL_KEYS;
        int take = !sl->used;
        if (!take) {
            struct ebpfw_cl_list *o = ebpfw_cl.lookup(&sl->key);
            take = !o || cl_all_dead(c, o);
            if (take && o)
                ebpfw_cl.delete(&sl->key);
        }
        if (take) {
            sl->key = *k;
            sl->used = 1;
            return at;
        }
    }
    return EBPFW_CL_KEYS;
}

static __always_inline __u32 cl_update(struct cl_walk *c, struct ebpfw_cl_list *l, struct ebpfw_clm *m);

/* connlimit_mt for rule rk and packet p: 1 match, 0 no match, 2 hotdrop. The walk's inputs
 * go through map memory (struct cl_walk) so that every kind of packet enters the one inlined
 * loop in the same verifier state. */
static __always_inline __u32 connlimit_pass(__u32 rk, struct pkt *p)
{
    __u32 zero = 0;
    struct ebpfw_clm *m = ebpfw_clm.lookup(&rk);
    struct ctwork *w = ebpfw_ctw.lookup(&zero);
    struct cl_walk *c = ebpfw_clw.lookup(&zero);
    if (!m || !w || !c)
        return 2;
    c->now = bpf_ktime_get_ns();
    c->jif = (__u32)bpf_jiffies64();
    c->cpu = bpf_get_smp_processor_id();
    c->confirmed = 0;
    c->assured = 0;
    /* the packet's connection, and whether it is confirmed (and ASSURED) */
    if (w->pending) {
        __builtin_memcpy(&c->key, &w->key, sizeof(c->key));
    } else {
        if (w->hasct) {
            __builtin_memcpy(&c->key, &w->key, sizeof(c->key));
        } else if (p->proto == IPPROTO_TCP || p->proto == IPPROTO_UDP) {
            /* nf_ct_get_tuplepr: no tuple without the ports (a first fragment cut short) */
            if (p->l4 != L4_OK && p->frag != 1)
                return 2;
            if (p->frag == 1)
                ct_key_norm(&c->key, p->saddr, p->daddr, 0, 0, p->proto);
            else
                ct_key_norm(&c->key, p->saddr, p->daddr, p->sport, p->dport, p->proto);
        } else if (p->proto == IPPROTO_ICMP) {
            c->key.a_addr = p->saddr;
            c->key.b_addr = p->daddr;
            c->key.a_port = p->sport;       /* type << 8 | code: a tuple of its own */
            c->key.b_port = p->sport;
            c->key.proto = IPPROTO_ICMP;
            c->key.kind = 0;
            c->key.pad = 0;
        } else {
            ct_key_norm(&c->key, p->saddr, p->daddr, 0, 0, p->proto);
        }
        struct ebpfw_ct_val *v = ebpfw_ct.lookup(&c->key);
        if (v && v->expires > c->now) {
            c->confirmed = 1;
            c->assured = (v->status & EBPFW_CTS_ASSURED) ? 1 : 0;
        }
    }
    struct ebpfw_cl_key k = { .rk = rk, .addr = (m->daddr ? p->daddr : p->saddr) & m->mask };
    struct ebpfw_cl_list *l = ebpfw_cl.lookup(&k);
    if (!l) {
        /* insert_tree: a new list with the packet's connection (confirmed or not) */
        struct ebpfw_cl_list *s = ebpfw_clscr.lookup(&zero);
        if (!s)
            return 2;
        __u32 at = cl_claim(c, &k);
        if (at >= EBPFW_CL_KEYS)
            return 2;      /* no room for another list: the kernel's allocation failure */
        s->count = 1;
        s->last_gc = c->jif;
        s->last_gc_count = 0;
        s->idx = at;
        s->busy = 0;
        __builtin_memcpy(&s->ent[0].key, &c->key, sizeof(c->key));
        s->ent[0].jiffies = c->jif;
        s->ent[0].cpu = c->cpu;
        if (ebpfw_cl.insert(&k, s) == 0)
            return (1 > m->limit) ^ m->invert;
        /* another CPU made the key's list meanwhile (or ebpfw_cl is full): use that one */
        struct ebpfw_cl_slot *sl = ebpfw_clidx.lookup(&at);
        if (sl)
            sl->used = 0;
        l = ebpfw_cl.lookup(&k);
        if (!l)
            return 2;
    }
    /* whether the busy word was taken goes through map memory: one verifier state for the walk */
    c->locked = cl_lock(l);
    asm volatile("" ::: "memory");
    __u32 res = cl_update(c, l, m);
    asm volatile("" ::: "memory");
    cl_unlock(l, c->locked);
    return res;
}

/* the part of connlimit_pass that reads and changes an existing list l */
static __always_inline __u32 cl_update(struct cl_walk *c, struct ebpfw_cl_list *l, struct ebpfw_clm *m)
{
    __u32 n = l->count;
    c->n = n > EBPFW_CL_CONNS ? EBPFW_CL_CONNS : n;
    /* confirmed and ASSURED: -EEXIST, not added; nf_conncount_gc_list unless it ran in this
     * jiffy. Otherwise __nf_conncount_add: an unconfirmed connection skips the walk when the
     * list was collected in this jiffy and fewer than CONNCOUNT_GC_MAX_COLLECT came since. */
    c->gc = c->confirmed & c->assured;
    c->walk = c->gc ? c->jif != l->last_gc
                    : (c->confirmed || !(c->jif == l->last_gc && c->n - l->last_gc_count < CL_GC_MAX_COLLECT));
    c->w = c->n;
    c->exists = 0;
    asm volatile("" ::: "memory");
    if (c->walk) {
        cl_walk_list(c, l);
        __u32 kept = c->w;
        l->count = kept;
        if (!c->exists) {
            l->last_gc = c->jif;
            l->last_gc_count = kept;
        }
    }
    if (!c->gc && !c->exists) {
        __u32 at = c->w;
        if (at >= EBPFW_CL_CONNS)
            return 2;      /* the list is full: the kernel's allocation failure */
        struct ebpfw_cl_ent *e = &l->ent[at];
        __builtin_memcpy(&e->key, &c->key, sizeof(c->key));
        e->jiffies = c->jif;
        e->cpu = c->cpu;
        l->count = at + 1;
    }
    __u32 count = l->count;
    /* connections == 0 (the collection for an ASSURED packet emptied the list): hotdrop. The
     * empty list stays, as the kernel's node stays until its tree collector frees it (here: a
     * new list taking its index slot, or the next apply), and hotdrops the key's ASSURED
     * packets until a new connection of the key is added */
    if (count == 0)
        return 2;
    return (count > m->limit) ^ m->invert;
}
#endif /* EBPFW_F_CONNLIMIT */

/* Walk chain `chain_id` (a built-in chain) for packet p; returns V_ACCEPT or V_DROP, or V_CONT
 * when this program's step budget is spent (the caller continues in a tail call, `resume`
 * then picks the walk up from the scratch record). */
static __always_inline int walk(__u32 slot, __u32 chain_id, struct pkt *p, struct vecs *v, int resume)
{
    __u32 ck = slot * EBPFW_CCAP + chain_id;
    struct ebpfw_chain *ch = ebpfw_chain.lookup(&ck);
    if (!ch)
        return V_DROP;
    __u32 base_policy = ch->policy;
    __u32 zero = 0;
    struct walkstate *ws = ebpfw_walk.lookup(&zero);
    if (!ws)
        return V_DROP;
    if (!resume) {
        ws->pos = ch->start;
        ws->end = ch->end;
        ws->sp = 0;
        /* read back from map memory inside the loop: one verifier state for every packet kind
         * (a continuation keeps the value: same CPU, same packet) */
        /* a cut-short L4 header hotdrops at any L4 match; a TCP fragment at offset 8 (parsed
         * as L4_TRUNC too) only at a tcp match, and other L4 matches just do not match it */
        __u32 hot = 0;
        if (p->l4 == L4_TRUNC)
            hot = p->frag == 1 ? (EBPFW_RF_TCP | EBPFW_HOT_FRAG1) : EBPFW_RF_NEEDS_L4;
#ifdef EBPFW_F_TCPMSS
        if (p->mss == MSS_BAD)
            hot |= EBPFW_RF_MSS;
#endif
#ifdef EBPFW_F_MAC
        if (!p->macok)
            hot |= EBPFW_RF_MAC;
#endif
        ws->hot = hot;
        ws->nlog = 0;
        ws->hlrk = 0;
        ws->hldone = 0;
        ws->rdone = 0;
        ws->cldone = 0;
        ws->setrk = 0;
        ws->setdone = 0;
        ws->slot = slot;
#ifdef EBPFW_F_RAW
        ws->untracked = 0;
#endif
    }
    __u32 *nresp = ebpfw_resn.lookup(&slot);
    if (!nresp)
        return V_DROP;
    __u32 nres = *nresp;

    for (__u32 step = 0; step < EBPFW_MAXSTEPS; step++) {
        __u32 pos = ws->pos, end = ws->end;
        if (pos >= end) {
            __u32 sp = ws->sp;
            if (sp == 0) {
                count(ebpfw_pcnt.lookup(&ck), p->len);
                return base_policy == EBPFW_ACT_ACCEPT ? V_ACCEPT : V_DROP;
            }
            sp--;
            if (sp >= EBPFW_MAXDEPTH)
                return V_DROP;
            ws->pos = ws->ret_pos[sp];
            ws->end = ws->ret_end[sp];
            ws->sp = sp;
            continue;
        }
        /* the next residual candidate: one summary word or one vector word per step */
        __u32 c = rank_of(slot, pos);
        __u32 gres = NO_RULE;      /* a residual rule that matches, >= pos */
        __u32 frontier = NO_RULE;  /* no residual match below this rule (when gres is none) */
        if (c < nres) {
            __u64 sw = c >> 12;
            asm volatile("" : "+r"(sw));
            if (sw >= EBPFW_NSUM)
                return V_DROP;
            __u64 sm = sum_and(v, sw) & (~0ULL << ((c >> 6) & 63));
            if (sm == 0) {
                frontier = unrank_of(slot, ((__u32)sw + 1) << 12, nres);
            } else {
                __u64 w = (sw << 6) + lowest_bit(sm);
                asm volatile("" : "+r"(w));
                if (w >= EBPFW_NWORDS)
                    return V_DROP;
                __u64 m = word_and(v, w);
                if (w == (c >> 6))
                    m &= ~0ULL << (c & 63);
                if (m == 0)
                    frontier = unrank_of(slot, ((__u32)w + 1) << 6, nres);
                else
                    gres = unrank_of(slot, ((__u32)w << 6) + lowest_bit(m), nres);
            }
        }
        __u32 r = gres;
#ifdef EBPFW_F_GROUPS
        __u32 h = next_hit(v->hits, pos);
        if (h < r && (gres != NO_RULE || h < frontier))
            r = h;
#endif
        if (r == NO_RULE) {
            /* nothing matches before the frontier: go on from there (or end the chain) */
            ws->pos = frontier < end ? frontier : end;
            continue;
        }
        if (r >= end) {
            ws->pos = end;
            continue;
        }
        /* rule r matches */
        __u32 rk = slot * EBPFW_RCAP + r;
        struct ebpfw_rule *rule = ebpfw_rule.lookup(&rk);
        if (!rule)
            return V_DROP;
        if ((ws->hot & EBPFW_HOT_FRAG1) && (rule->flags & EBPFW_RF_NEEDS_L4) && !(rule->flags & EBPFW_RF_TCP)) {
            ws->pos = r + 1;   /* xt_udp, xt_multiport, xt_icmp: a non-first fragment never matches */
            continue;
        }
#ifdef EBPFW_F_RAW
        /* -m conntrack / -m state in raw: conntrack has not run, the state is INVALID (RELATED
         * for a REJECT answer), UNTRACKED once a NOTRACK ran (xt_conntrack without a ct) */
        if ((rule->flags & EBPFW_RF_RAWCT) && !(rule->flags & (ws->untracked ? ws->rawct_nt : ws->rawct))) {
            ws->pos = r + 1;
            continue;
        }
#endif
        /* xt_tcp / xt_tcpmss hotdrop; -m mac without a source MAC fails closed */
        __u32 hit = rule->flags & ws->hot;
#ifdef EBPFW_F_SET
        /* iptables runs a rule's matches in order: a set match before the matches that can
         * hotdrop refuses the packet first; after them, their hotdrop comes first */
        if ((rule->flags & EBPFW_RF_SET) && (!hit || (rule->flags & EBPFW_RF_SETFIRST))) {
            int sp = set_pass(rk, ws);
            if (sp < 0) {
                /* have the continuation program judge it, then come back to this rule */
                ws->setrk = rk + 1;
                ws->setdone = 0;
                ws->pos = r;
                return V_CONT;
            }
            if (!sp) {
                ws->pos = r + 1;
                continue;
            }
        }
#endif
#ifdef EBPFW_F_MARK
        if ((rule->flags & EBPFW_RF_MARK) && !mark_pass(rk, hit)) {
            ws->pos = r + 1;
            continue;
        }
#endif
        if (hit) {
            stat_inc((hit & EBPFW_RF_MAC) ? EBPFW_STAT_MAC_UNKNOWN : EBPFW_STAT_HOTDROP);
            return V_DROP;
        }
#ifdef EBPFW_F_LIMIT
        /* the rule's other conditions hold; its limit match (always its last) may still fail */
        if ((rule->flags & EBPFW_RF_LIMIT) && !limit_pass(rk)) {
            ws->pos = r + 1;
            continue;
        }
#endif
#ifdef EBPFW_F_HASHLIMIT
        /* the same for a hashlimit match; a key it cannot read or a full table hotdrops */
        if (rule->flags & EBPFW_RF_HASHLIMIT) {
            if (!(ws->hldone && ws->hlrk == rk + 1)) {
                /* have the continuation program judge it, then come back to this rule */
                ws->hlrk = rk + 1;
                ws->hldone = 0;
                ws->pos = r;
                return V_CONT;
            }
            int hl = ws->hlres;
            ws->hlrk = 0;
            ws->hldone = 0;
            if (hl < 0) {
                stat_inc(EBPFW_STAT_HOTDROP);
                return V_DROP;
            }
            if (hl == 0) {
                ws->pos = r + 1;
                continue;
            }
        }
#endif
#ifdef EBPFW_F_RECENT
        /* likewise its recent match (always its last), which also updates the list; the list
         * is read by the recent program (a tail call with a stack and a verification of its
         * own), which resumes this walk at rule r with the answer */
        if (rule->flags & EBPFW_RF_RECENT) {
            if (ws->rdone != r + 1) {
                ws->rk = rk;
                ws->rrule = r + 1;
                ws->pos = r;
                return V_RECENT;
            }
            ws->rdone = 0;
            if (!ws->rres) {
                ws->pos = r + 1;
                continue;
            }
        }
#endif
#ifdef EBPFW_F_CONNLIMIT
        /* likewise its connlimit match (always its last): the connlimit program counts the
         * connections of the packet's key (adding the packet's own) and resumes the walk here */
        if (rule->flags & EBPFW_RF_CONNLIMIT) {
            if (ws->cldone != r + 1) {
                ws->clk = rk;
                ws->clrule = r + 1;
                ws->pos = r;
                return V_CONNLIMIT;
            }
            ws->cldone = 0;
            __u32 cl = ws->clres;
            if (cl == 2) {
                stat_inc(EBPFW_STAT_HOTDROP);
                return V_DROP;
            }
            if (!cl) {
                ws->pos = r + 1;
                continue;
            }
        }
#endif
        count(ebpfw_cnt.lookup(&rk), p->len);
        __u32 kind = rule->kind;
        if (kind == EBPFW_ACT_ACCEPT)
            return V_ACCEPT;
        if (kind == EBPFW_ACT_DROP)
            return V_DROP;
        if (kind == EBPFW_ACT_REJECT) {
#ifdef EBPFW_F_REJECT
            ws->arg = rule->arg;
            return V_REJECT;
#else
            return V_DROP;   /* never written without EBPFW_F_REJECT; fail closed */
#endif
        }
#ifdef EBPFW_F_LOG
        if (kind == EBPFW_ACT_LOG) {
            /* the event is written by the post program; the walk goes on */
            __u32 n = ws->nlog;
            if (n < EBPFW_MAXLOG) {
#ifdef EBPFW_F_MARK
                /* nf_log prints the mark as the LOG rule sees it; one store (the walk's stack is full) */
                ws->logs[n] = ((__u64)ws->mark << 32) | r;
#else
                ws->logs[n] = r;
#endif
                ws->nlog = n + 1;
            } else {
                stat_inc(EBPFW_STAT_LOG_LOST);
            }
        }
#endif
#ifdef EBPFW_F_MARK
        if (kind == EBPFW_ACT_MARK || kind == EBPFW_ACT_CONNMARK)
            mark_target(rk, kind);   /* the walk goes on with the next rule */
#endif
#ifdef EBPFW_F_RAW
        if (kind == EBPFW_ACT_NOTRACK)
            ws->untracked = 1;   /* notrack_tg: XT_CONTINUE */
#endif
        if (kind == EBPFW_ACT_RETURN) {
            ws->pos = end;
            continue;
        }
        ws->pos = r + 1;
        if (kind == EBPFW_ACT_JUMP || kind == EBPFW_ACT_GOTO) {
            __u32 tk = slot * EBPFW_CCAP + rule->arg;
            struct ebpfw_chain *tc = ebpfw_chain.lookup(&tk);
            if (!tc)
                return V_DROP;
            if (kind == EBPFW_ACT_JUMP) {
                __u32 sp = ws->sp;
                if (sp >= EBPFW_MAXDEPTH)
                    return V_DROP;
                ws->ret_pos[sp] = r + 1;
                ws->ret_end[sp] = end;
                ws->sp = sp + 1;
            }
            ws->pos = tc->start;
            ws->end = tc->end;
        }
    }
    return V_CONT;
}

#ifdef EBPFW_F_GROUPS
/* ---- exact-match rule groups (ebpfw/compiler/groups.py) ---------------------------------- */
struct ebpfw_grp {
    __u32 smask;         /* host order */
    __u32 dmask;
    __u8  use_proto;
    __u8  port;          /* EBPFW_GRP_PORT_* */
    __u8  active;
    __u8  use_iif;       /* the key includes the input interface */
    __u32 boff;          /* the group's Bloom filter: first word in the slot's part of ebpfw_gbloom */
    __u32 bmask;         /* bits - 1 (a power of two) */
};
#define EBPFW_GRP_PORT_NONE  0
#define EBPFW_GRP_PORT_SPORT 1
#define EBPFW_GRP_PORT_DPORT 2
#define EBPFW_GRP_PORT_ICMP  3
#define EBPFW_GRP_PORT_SRANGE 4   /* the key holds the interval id of the source port */
#define EBPFW_GRP_PORT_DRANGE 5   /* ... of the destination port */
#define EBPFW_GRP_IDS 4
struct ebpfw_grp_key {
    __u32 slot;
    __u32 gid;
    __u32 src;           /* network order, masked */
    __u32 dst;
    __u32 pp;            /* proto << 24 | port (or ICMP type) */
    __u32 iif;           /* interface class of the input interface, 0 when the group has none */
};
struct ebpfw_grp_val {
    __u32 id[EBPFW_GRP_IDS];   /* rule numbers, 0xffffffff = none */
};
BPF_ARRAY(ebpfw_grp, struct ebpfw_grp, NSLOTS * EBPFW_NGROUPS);
BPF_F_TABLE("hash", struct ebpfw_grp_key, struct ebpfw_grp_val, ebpfw_gent, NSLOTS * EBPFW_GCAP, BPF_F_NO_PREALLOC);
BPF_PERCPU_ARRAY(ebpfw_hits, struct hitvec, 1);
/* One Bloom filter (two bits per key) per group over its keys: a packet whose key is not in it
 * skips the hash lookup. Most packets miss most groups; a bit test is an inlined array access
 * where a hash lookup hashes and compares the whole key. ebpfw/compiler/groups.py: bloom_hash
 * computes the same hash. */
#define EBPFW_GBLOOM (EBPFW_GCAP / 2)   /* words per slot: 32 bits per key the map holds */
BPF_ARRAY(ebpfw_gbloom, __u64, NSLOTS * EBPFW_GBLOOM);

static __always_inline __u64 gmix(__u64 v)
{
    v ^= v >> 33;
    v *= 0xff51afd7ed558ccdULL;
    v ^= v >> 33;
    v *= 0xc4ceb9fe1a85ec53ULL;
    v ^= v >> 33;
    return v;
}

/* 0 when the key (src, dst host order and masked) is certainly not in group gd */
static __always_inline int bloom_maybe(__u32 slot, struct ebpfw_grp *gd, __u32 g, __u32 src, __u32 dst,
                                       __u32 pp, __u32 iif)
{
    __u64 h = gmix(((((__u64)src) << 32) | dst) ^ gmix(((((__u64)pp) << 32) | iif) + g));
    __u32 b = (__u32)h & gd->bmask;
    __u32 k = slot * EBPFW_GBLOOM + gd->boff + (b >> 6);
    __u64 *w = ebpfw_gbloom.lookup(&k);
    if (!w || !((*w >> (b & 63)) & 1))
        return 0;
    /* the second bit (the hash's upper half) is read only when the first one is set */
    b = (__u32)(h >> 32) & gd->bmask;
    k = slot * EBPFW_GBLOOM + gd->boff + (b >> 6);
    w = ebpfw_gbloom.lookup(&k);
    return w && ((*w >> (b & 63)) & 1);
}
#ifdef EBPFW_F_GRANGE
/* Range groups: port -> elementary-interval id (compiler/groups.py), four 16-bit ids per entry;
 * per slot the source ports, then the destination ports. */
#define EBPFW_GRNG_SIDE (65536 / 4)
#define EBPFW_GRNG_NONE 0x10000   /* no interval has this id: the key never matches */
BPF_ARRAY(ebpfw_grng, __u64, NSLOTS * 2 * EBPFW_GRNG_SIDE);

static __always_inline __u32 grng_id(__u32 slot, __u32 side, __u32 port)
{
    __u32 k = (slot * 2 + side) * EBPFW_GRNG_SIDE + ((port & 0xffff) >> 2);
    __u64 *e = ebpfw_grng.lookup(&k);
    return e ? (__u32)((*e >> ((port & 3) * 16)) & 0xffff) : EBPFW_GRNG_NONE;
}
#endif
/* the rule numbers set in ebpfw_hits, to clear them after the walk; kept in map memory (not on
 * the stack) so the verifier's states do not multiply with every group found or not found */
struct hit_list {
    __u32 n;
    __u32 pad;          /* per-CPU values are 8-byte multiples */
    __u32 id[EBPFW_NGROUPS * EBPFW_GRP_IDS];
};
BPF_PERCPU_ARRAY(ebpfw_htouch, struct hit_list, 1);

static __always_inline void hit_set(struct hitvec *h, __u32 id)
{
    __u64 w = id >> 6;
    asm volatile("" : "+r"(w));
    if (w >= EBPFW_GWORDS)
        return;
    h->w[w] |= 1ULL << (id & 63);
    __u64 sw = w >> 6;
    asm volatile("" : "+r"(sw));
    if (sw >= EBPFW_GSUM)
        return;
    h->s[sw] |= 1ULL << (w & 63);
    h->top |= 1ULL << (sw & 63);
}

/* clear the words of id (all bits set in them belong to listed ids, so whole words go) */
static __always_inline void hit_clear(struct hitvec *h, __u32 id)
{
    __u64 w = id >> 6;
    asm volatile("" : "+r"(w));
    if (w >= EBPFW_GWORDS)
        return;
    h->w[w] = 0;
    __u64 sw = w >> 6;
    asm volatile("" : "+r"(sw));
    if (sw >= EBPFW_GSUM)
        return;
    h->s[sw] = 0;
    h->top = 0;
}

/* One hash lookup per group; the rules found become candidates of the walk. Their numbers are
 * listed so the scratch vector can be cleared after the walk (it is per CPU, and the walk of one
 * packet is not interleaved with another's on the same CPU: XDP and TC run with BHs off). */
static __always_inline void group_hits(__u32 slot, struct pkt *p, struct hitvec *h, struct hit_list *hl)
{
    __u32 iif = p->ifc_grp[slot & 1];
    __u32 sa = ntohl(p->saddr), da = ntohl(p->daddr);
    hl->n = 0;
#ifdef EBPFW_F_GRANGE
    /* the packet's port intervals, looked up once for every range group */
    __u32 rs = EBPFW_GRNG_NONE, rd = EBPFW_GRNG_NONE;
    if (p->l4 == L4_OK && (p->proto == IPPROTO_TCP || p->proto == IPPROTO_UDP)) {
        rs = grng_id(slot, 0, p->sport);
        rd = grng_id(slot, 1, p->dport);
    }
#endif
#pragma unroll
    for (int g = 0; g < EBPFW_NGROUPS; g++) {
        __u32 gk = slot * EBPFW_NGROUPS + g;
        struct ebpfw_grp *gd = ebpfw_grp.lookup(&gk);
        if (!gd || !gd->active)
            continue;
        struct ebpfw_grp_key k = {};
        k.slot = slot;
        k.gid = g;
        k.src = htonl(sa & gd->smask);
        k.dst = htonl(da & gd->dmask);
        __u32 port = 0;
        if (gd->port != EBPFW_GRP_PORT_NONE) {
            /* a port (or ICMP type) needs the L4 header: fragments and cut headers never match */
            if (p->l4 != L4_OK)
                continue;
            if (gd->port == EBPFW_GRP_PORT_ICMP) {
                if (p->proto != IPPROTO_ICMP)
                    continue;
                port = p->sport >> 8;
            } else {
                if (p->proto != IPPROTO_TCP && p->proto != IPPROTO_UDP)
                    continue;
                __u32 kind = gd->port;
                if (kind == EBPFW_GRP_PORT_SPORT)
                    port = p->sport;
                else if (kind == EBPFW_GRP_PORT_DPORT)
                    port = p->dport;
#ifdef EBPFW_F_GRANGE
                else if (kind == EBPFW_GRP_PORT_SRANGE)
                    port = rs;
                else if (kind == EBPFW_GRP_PORT_DRANGE)
                    port = rd;
#endif
                else
                    continue;
            }
        }
        k.pp = (gd->use_proto ? ((__u32)p->proto << 24) : 0) | port;
        k.iif = gd->use_iif ? iif : 0;
        if (!bloom_maybe(slot, gd, g, sa & gd->smask, da & gd->dmask, k.pp, k.iif))
            continue;
        struct ebpfw_grp_val *val = ebpfw_gent.lookup(&k);
        if (!val)
            continue;
#pragma unroll
        for (int i = 0; i < EBPFW_GRP_IDS; i++) {
            __u32 id = val->id[i];
            if (id == 0xffffffff)
                break;
            hit_set(h, id);
            __u32 n = hl->n;
            asm volatile("" : "+r"(n));
            if (n < EBPFW_NGROUPS * EBPFW_GRP_IDS) {
                hl->id[n] = id;
                hl->n = n + 1;
            }
        }
    }
}

static __always_inline void group_clear(struct hitvec *h, struct hit_list *hl)
{
#pragma unroll
    for (int i = 0; i < EBPFW_NGROUPS * EBPFW_GRP_IDS; i++) {
        if (i >= hl->n)
            break;
        hit_clear(h, hl->id[i]);
    }
    hl->n = 0;
}
#endif /* EBPFW_F_GROUPS */

/* ---- long walks: continued in tail calls ---------------------------------------------------
 * A program verifies EBPFW_MAXSTEPS walk steps. A walk that needs more (a long chain of
 * candidate words, many matching non-terminal rules) saves what it needs here and tail-calls
 * the hook's continuation program, up to EBPFW_MAXCALLS times; only beyond that is the packet
 * dropped (fail closed, counted as walk_limit). */
#define EBPFW_MAXCALLS 30
struct cont {
    struct pkt p;
    __u32 slot;
    __u32 chain;
    __u32 iif;
    __u32 oif;
    __u32 calls;
    __u32 pad;
};
BPF_PERCPU_ARRAY(ebpfw_cont, struct cont, 1);
/* a program array serves one program type: one for XDP, one for TC */
BPF_PROG_ARRAY(ebpfw_jmpx, 1);
BPF_PROG_ARRAY(ebpfw_jmpt, 1);

static __always_inline void walk_abandon(void)
{
#ifdef EBPFW_F_GROUPS
    __u32 zero = 0;
    struct hitvec *h = ebpfw_hits.lookup(&zero);
    struct hit_list *hl = ebpfw_htouch.lookup(&zero);
    if (h && hl)
        group_clear(h, hl);
#endif
    stat_inc(EBPFW_STAT_WALK_LIMIT);
}

/* Classify p in chain `chain_id`: `resume` continues a walk saved in ebpfw_cont (same slot,
 * whatever the control map says now, so one packet never sees two rulesets). */
static __always_inline int classify(__u32 chain_id, struct pkt *p, __u32 iif, __u32 oif, int resume)
{
    __u32 zero = 0;
    __u32 slot;
    struct cont *c = ebpfw_cont.lookup(&zero);
    if (!c)
        return V_DROP;
    if (resume) {
        slot = c->slot & 1;
    } else {
#ifdef EBPFW_F_RAW
        /* the raw stage read the control map for this packet: raw and filter judge with one slot */
        struct rawres *rr = ebpfw_rawres.lookup(&zero);
        if (!rr)
            return V_DROP;
        slot = rr->slot & 1;
#else
        struct ebpfw_ctl *ctl = ebpfw_ctl.lookup(&zero);
        if (!ctl)
            return V_PASS;
        slot = ctl->active & 1;
#endif
    }
    struct vecs v = {};
    if (lookup_vecs(slot, p, iif, oif, &v) < 0)
        return V_DROP;
#ifdef EBPFW_F_GROUPS
    v.hits = ebpfw_hits.lookup(&zero);
    struct hit_list *hl = ebpfw_htouch.lookup(&zero);
    if (!v.hits || !hl)
        return V_DROP;
    if (!resume)
        group_hits(slot, p, v.hits, hl);
#endif
    int verdict = walk(slot, chain_id, p, &v, resume);
    if (verdict == V_CONT || verdict == V_RECENT || verdict == V_CONNLIMIT) {
        if (!resume) {
            __builtin_memcpy(&c->p, p, sizeof(*p));
            c->slot = slot;
            c->chain = chain_id;
            c->iif = iif;
            c->oif = oif;
            c->calls = 0;
        }
        return verdict;
    }
#ifdef EBPFW_F_GROUPS
    group_clear(v.hits, hl);
#endif
    return verdict;
}

#ifdef EBPFW_F_SET
/* a continuation program's first step: the answer of the set rule the walk stopped at (none
 * when setrk is 0: rule 0xffffffff has no set match), without a branch here, so the walk that
 * follows is verified from one state */
static __always_inline void set_resume(struct walkstate *ws, struct cont *c)
{
    ws->setres = set_slow(ws->setrk - 1, &c->p);
    ws->setdone = set_eq(ws->setrk, 0) ^ 1;
}
#endif

/* the body of every continuation program: resume the saved walk */
static __always_inline int classify_resume(void)
{
    __u32 zero = 0;
    struct cont *c = ebpfw_cont.lookup(&zero);
    if (!c)
        return V_DROP;
    c->calls += 1;
    if (c->calls > EBPFW_MAXCALLS)
        return V_CONT;
#if defined(EBPFW_F_HASHLIMIT) || defined(EBPFW_F_SET)
    struct walkstate *ws = ebpfw_walk.lookup(&zero);
    if (!ws)
        return V_DROP;
#endif
#ifdef EBPFW_F_HASHLIMIT
    if (ws->hlrk && !ws->hldone) {
        ws->hlres = hashlimit_pass(ws->hlrk - 1, &c->p);
        ws->hldone = 1;
    }
#endif
#ifdef EBPFW_F_SET
    set_resume(ws, c);
#endif
    return classify(c->chain, &c->p, c->iif, c->oif, 1);
}

static __always_inline int mac_differs(const __u8 *a, const __u8 *b)
{
    return (a[0] ^ b[0]) | (a[1] ^ b[1]) | (a[2] ^ b[2]) | (a[3] ^ b[3]) | (a[4] ^ b[4]) | (a[5] ^ b[5]);
}

#ifdef EBPFW_F_LOG
/* ---- LOG ------------------------------------------------------------------------------------
 * An event per packet that reaches a -j LOG rule: the rule's prefix and flags, the hook and
 * interfaces, and the first EBPFW_LOG_CAP bytes of the frame (MAC, IP and L4 headers, from
 * which `ebpfw log` prints nf_log_syslog's line). A per-CPU token bucket bounds the event
 * rate (a flood cannot overload the host); suppressed and lost events are counted. */
#ifndef EBPFW_LOG_PAGES
#define EBPFW_LOG_PAGES 256
#endif
BPF_RINGBUF_OUTPUT(ebpfw_logring, EBPFW_LOG_PAGES);
BPF_ARRAY(ebpfw_logcfg, struct ebpfw_logcfg, NSLOTS * EBPFW_RCAP);
BPF_ARRAY(ebpfw_logrlc, struct ebpfw_logrl_cfg, 1);
BPF_PERCPU_ARRAY(ebpfw_logrl, struct ebpfw_logrl, 1);

static __always_inline void log_event(struct walkstate *ws, __u32 r, __u32 mark, void *data, void *data_end)
{
    __u32 slot = ws->slot & 1;
    __u32 zero = 0;
    struct ebpfw_logrl_cfg *c = ebpfw_logrlc.lookup(&zero);
    struct ebpfw_logrl *b = ebpfw_logrl.lookup(&zero);
    if (!c || !b)
        return;
    __u64 now = bpf_ktime_get_ns();
    __u64 per = c->ns_per_event;
    if (per) {
        __u64 t = b->tokens + (now - b->last);
        b->last = now;
        if (t > c->burst_ns)
            t = c->burst_ns;
        if (t < per) {
            b->tokens = t;
            stat_inc(EBPFW_STAT_LOG_SUPPR);
            return;
        }
        b->tokens = t - per;
    }
    __u32 ck = slot * EBPFW_RCAP + r;
    struct ebpfw_logcfg *cfg = ebpfw_logcfg.lookup(&ck);
    if (!cfg)
        return;
    struct ebpfw_logev *ev = ebpfw_logring.ringbuf_reserve(sizeof(struct ebpfw_logev));
    if (!ev) {
        stat_inc(EBPFW_STAT_LOG_LOST);
        return;
    }
    ev->ts = now;
    ev->rule = r;
    ev->hook = ws->hook;
    ev->slot = slot;
    ev->iif = ws->iif;
    ev->oif = ws->oif;
    ev->pad = ws->egress;   /* 1: the frame was seen at TC egress (FORWARD: TTL already decremented) */
    ev->mark = mark;
    __builtin_memcpy(&ev->cfg, cfg, sizeof(struct ebpfw_logcfg));
    __u64 n = (__u64)(data_end - data);
    ev->wire_len = n;
    if (n > EBPFW_LOG_CAP)
        n = EBPFW_LOG_CAP;
    asm volatile("" : "+r"(n));
    n &= 0xff;
    if (n > EBPFW_LOG_CAP)
        n = EBPFW_LOG_CAP;
    ev->caplen = n;
    if (bpf_probe_read_kernel(ev->data, n, data) < 0)
        ev->caplen = 0;
    ebpfw_logring.ringbuf_submit(ev, 0);
    stat_inc(EBPFW_STAT_LOG);
}



/* the events of every LOG rule the packet reached, in rule order */
static __always_inline void log_events(struct walkstate *ws, __u32 mark, void *data, void *data_end)
{
    __u32 n = ws->nlog;
    for (int i = 0; i < EBPFW_MAXLOG; i++) {
        if (i >= n)
            break;
__u64 e = ws->logs[i];
        __u32 m = mark;
#ifdef EBPFW_F_MARK
        m = e >> 32;
#endif
        log_event(ws, (__u32)e, m, data, data_end);
    }
}
#endif

#ifdef EBPFW_F_REJECT
/* ---- REJECT -----------------------------------------------------------------------------------
 *
 * Contract: a packet that ends at -j REJECT is dropped and, when the kernel's REJECT would
 * answer it, its frame is rewritten in place into the answer and sent back:
 *   - an ICMP destination unreachable (code = the rule's arg) built as icmp_send() builds it:
 *     IP tos (tos & 0x1e) | 0xc0, no DF, ttl net.ipv4.ip_default_ttl, a fresh IP id, source
 *     the original destination at INPUT, the address the route back prefers at FORWARD (a
 *     fib lookup), the original destination at OUTPUT (the kernel: the local address, see
 *     reject_prepare); it quotes the original IP packet up to 576
 *     bytes in all (548 bytes of quote);
 *   - a TCP RST built as nf_send_reset() builds it: tos 0, id 0, DF, source the original
 *     destination; with the original's ACK: seq = its ack_seq; without: ACK set, ack_seq =
 *     its seq + SYN + FIN + payload length.
 * No answer (the kernel's rules): non-first fragments, a destination that is broadcast or
 * multicast (also at L2), an ICMP error (or unknown ICMP type) for ICMP errors, a RST for a RST,
 * a TCP header cut short, a source that cannot be answered (0/8, broadcast, multicast); ICMP
 * errors also follow the per-peer rate limit net.ipv4.icmp_ratelimit (burst 6, as
 * inet_peer_xrlim_allow), not applied to answers delivered locally.
 * Where it goes: XDP hands the packet to TC ingress (xdp_reject_handoff); TC ingress:
 * bpf_redirect to the same interface's egress; TC egress OUTPUT: to the local stack through
 * lo's ingress (as the kernel routes a reply to a local address); TC egress FORWARD: out of
 * the route back to the source (fib lookup). A helper failure drops the packet unanswered.
 * The answers redirected to an egress are judged there by OUTPUT (see struct rjpend); the
 * answers to OUTPUT, sent into lo, are not (ebpfw does not see lo). Not done: L4
 * checksums of the original are not verified (the kernel stays silent for a bad one), IP
 * options are not echoed, and the global ICMP rate limit (icmp_msgs_per_sec) is not applied.
 */
#ifndef BPF_FIB_LOOKUP_SRC
#define BPF_FIB_LOOKUP_SRC (1U << 4)
#endif
#define RJ_ROOM 548          /* icmp_send: 576 - IP header - ICMP header */
#define RJ_FIN 0x01
#define RJ_SYN 0x02
#define RJ_RST 0x04
#define RJ_ACK 0x10
#define RJ_LO_IFINDEX 1      /* lo is ifindex 1 in every network namespace */

BPF_ARRAY(ebpfw_rejcfg, struct ebpfw_rejcfg, 1);
BPF_TABLE("lru_hash", __u32, struct ebpfw_icmprl, ebpfw_icmprl, 16384);

/* what the answer needs, read from the original before its frame is rewritten */
struct rejinfo {
    __u8  mac_dst[6];     /* of the answer */
    __u8  mac_src[6];
    __u32 arg;            /* ICMP code or EBPFW_REJ_TCP_RESET */
    __u32 src;            /* the answer's IP source (network order) */
    __u32 dst;
    __u32 q;              /* ICMP: bytes of the original IP packet quoted */
    __u32 seq;            /* RST, network order */
    __u32 ack;
    __u16 sport;          /* RST, network order */
    __u16 dport;
    __u8  tos;
    __u8  ttl;
    __u8  tflags;         /* RST's TCP flags */
    __u8  ctorig;         /* the original's ctstate (EBPFW_F_CT): how OUTPUT labels the answer */
    __u32 ifindex;        /* TC: where to redirect */
    __u32 rflags;         /* TC: bpf_redirect flags */
};

static __always_inline int rj_icmp_is_error(__u8 type)
{
    return type > 18 || type == 3 || type == 4 || type == 5 || type == 11 || type == 12;
}

static __always_inline int rj_bad_source(__u32 saddr)
{
    __u32 s = ntohl(saddr);
    return (s >> 24) == 0 || s == 0xffffffff || (s >> 28) == 0xe;
}

/* inet_peer_xrlim_allow: a bucket of up to 6 * ratelimit of credit, one ratelimit per error */
static __always_inline int rj_rate_ok(struct ebpfw_rejcfg *cfg, __u32 peer)
{
    __u64 to = cfg->icmp_ratelimit_ns;
    if (!to)
        return 1;
    __u64 now = bpf_ktime_get_ns();
    struct ebpfw_icmprl *b = ebpfw_icmprl.lookup(&peer);
    if (!b) {
        struct ebpfw_icmprl nb = { .tokens = 5 * to, .last = now };
        ebpfw_icmprl.update(&peer, &nb);
        return 1;
    }
    __u64 t = b->tokens + (now - b->last);
    b->last = now;
    if (t > 6 * to)
        t = 6 * to;
    if (t >= to) {
        b->tokens = t - to;
        return 1;
    }
    b->tokens = t;
    return 0;
}

/* Decide whether the kernel would answer packet p rejected at `hook`, and gather what the
 * answer needs into ri. Returns 1 to answer, 0 to drop quietly. */
static __always_inline int reject_prepare(void *ctx, struct pkt *p, void *data, void *data_end,
                                          struct walkstate *ws, struct rejinfo *ri)
{
    __u32 zero = 0;
    struct ebpfw_rejcfg *cfg = ebpfw_rejcfg.lookup(&zero);
    if (!cfg)
        return 0;
    __u32 hook = ws->hook, l2host = ws->l2host, local = ws->local, ifindex = ws->iif, at_egress = ws->egress;
    __u32 arg = ws->arg;
    ri->arg = arg;
#ifdef EBPFW_F_CT
    ri->ctorig = p->ctstate;
#endif
    ri->ttl = cfg->ttl ? cfg->ttl : 64;
    if (p->frag == 1 || !l2host)
        return 0;
    __u32 d = ntohl(p->daddr);
    if (d == 0xffffffff || (d >> 28) == 0xe || rj_bad_source(p->saddr))
        return 0;
    if (hook == EBPFW_CHAIN_INPUT && !local)
        return 0;   /* a subnet broadcast: RTCF_BROADCAST */
    struct ethhdr *eth = data;
    if ((void *)(eth + 1) > data_end)
        return 0;
    ri->dst = p->saddr;
    __u64 off = p->l4off;
    asm volatile("" : "+r"(off));
    if (off > 74)
        return 0;
    if (arg == EBPFW_REJ_TCP_RESET) {
        if (p->proto != IPPROTO_TCP || p->l4 != L4_OK || (p->tcpflags & RJ_RST))
            return 0;
        struct tcphdr *th = data + off;
        if ((void *)(th + 1) > data_end)
            return 0;
        __u8 f = p->tcpflags;
        ri->sport = th->dest;
        ri->dport = th->source;
        if (f & RJ_ACK) {
            ri->seq = th->ack_seq;
            ri->ack = 0;
            ri->tflags = RJ_RST;
        } else {
            __u32 doff = ((__u8 *)th)[12] >> 4;
            __u32 n = ntohl(th->seq) + ((f & RJ_SYN) ? 1 : 0) + ((f & RJ_FIN) ? 1 : 0) + p->l4len - doff * 4;
            ri->seq = 0;
            ri->ack = htonl(n);
            ri->tflags = RJ_RST | RJ_ACK;
        }
        ri->src = p->daddr;
        ri->tos = 0;
        ri->q = 0;
    } else {
        if (p->proto == IPPROTO_ICMP) {
            __u8 *t = data + off;
            if (p->l4len < 1 || (void *)(t + 1) > data_end)
                return 0;
            if (rj_icmp_is_error(*t))
                return 0;
        }
        ri->q = p->len < RJ_ROOM ? p->len : RJ_ROOM;
        ri->tos = (p->tos & 0x1e) | 0xc0;
        if (hook == EBPFW_CHAIN_INPUT) {
            ri->src = p->daddr;
        } else if (hook == EBPFW_CHAIN_OUTPUT) {
            /* the kernel answers from the local address itself, but its answer keeps the route
             * it was sent with; ours enters through lo without one, and a packet from a local
             * address that needs an input route is a martian: answer from the destination */
            ri->src = p->daddr;
        } else {
            struct bpf_fib_lookup fib = {};
            fib.family = 2;
            fib.ifindex = ifindex;
            fib.ipv4_dst = p->saddr;
            int rc = bpf_fib_lookup(ctx, &fib, sizeof(fib), BPF_FIB_LOOKUP_SRC);
            if ((rc != BPF_FIB_LKUP_RET_SUCCESS && rc != BPF_FIB_LKUP_RET_NO_NEIGH) || !fib.ipv4_src)
                return 0;
            ri->src = fib.ipv4_src;
        }
        if (hook != EBPFW_CHAIN_OUTPUT && !rj_rate_ok(cfg, p->saddr)) {
            stat_inc(EBPFW_STAT_REJECT_RATE);
            return 0;
        }
    }
    if (at_egress && hook == EBPFW_CHAIN_OUTPUT) {
        __builtin_memset(ri->mac_dst, 0, 6);
        __builtin_memset(ri->mac_src, 0, 6);
        ri->ifindex = RJ_LO_IFINDEX;
        ri->rflags = BPF_F_INGRESS;
    } else if (at_egress) {
        /* FORWARD judged at egress: back along the route to the source */
        struct bpf_fib_lookup fib = {};
        fib.family = 2;
        fib.ifindex = ifindex;
        fib.ipv4_dst = p->saddr;
        if (bpf_fib_lookup(ctx, &fib, sizeof(fib), 0) != BPF_FIB_LKUP_RET_SUCCESS)
            return 0;
        __builtin_memcpy(ri->mac_dst, fib.dmac, 6);
        __builtin_memcpy(ri->mac_src, fib.smac, 6);
        ri->ifindex = fib.ifindex;
        ri->rflags = 0;
    } else {
        __builtin_memcpy(ri->mac_dst, eth->h_source, 6);
        __builtin_memcpy(ri->mac_src, eth->h_dest, 6);
        ri->ifindex = ifindex;
        ri->rflags = 0;
    }
    return 1;
}

static __always_inline __u16 rj_fold(__u64 s)
{
    s = (s & 0xffffffff) + (s >> 32);
    s = (s & 0xffffffff) + (s >> 32);
    s = (s & 0xffff) + (s >> 16);
    s = (s & 0xffff) + (s >> 16);
    return (__u16)s;
}

static __always_inline int rj_write_eth_ip(void *data, void *data_end, struct rejinfo *ri, __u8 proto,
                                           __u16 tot, __u16 id, __u16 frag)
{
    struct ethhdr *eth = data;
    struct iphdr *ip = data + sizeof(struct ethhdr);
    if ((void *)(ip + 1) > data_end)
        return -1;
    __builtin_memcpy(eth->h_dest, ri->mac_dst, 6);
    __builtin_memcpy(eth->h_source, ri->mac_src, 6);
    eth->h_proto = htons(ETH_P_IP);
    ((__u8 *)ip)[0] = 0x45;
    ip->tos = ri->tos;
    ip->tot_len = htons(tot);
    ip->id = id;
    ip->frag_off = frag;
    ip->ttl = ri->ttl;
    ip->protocol = proto;
    ip->check = 0;
    ip->saddr = ri->src;
    ip->daddr = ri->dst;
    __u16 *w = (__u16 *)ip;
    __u64 s = 0;
#pragma unroll
    for (int i = 0; i < 10; i++)
        s += w[i];
    ip->check = ~rj_fold(s);
    return 0;
}

/* Write the ICMP error into a frame already laid out as MAC + 20 + 8 + ri->q bytes, the
 * original IP packet at offset 42. */
static __always_inline int rj_write_icmp(void *data, void *data_end, struct rejinfo *ri)
{
    __u32 q = ri->q;
    if (q > RJ_ROOM)
        return -1;
    if (rj_write_eth_ip(data, data_end, ri, IPPROTO_ICMP, 28 + q, (__u16)bpf_get_prandom_u32(), 0) < 0)
        return -1;
    __u8 *ic = data + 34;
    if ((void *)(ic + 8) > data_end)
        return -1;
    ic[0] = 3;
    ic[1] = ri->arg;
    *(__u16 *)(ic + 2) = 0;
    *(__u32 *)(ic + 4) = 0;
    /* the checksum covers the ICMP header and the quote: 8 + q bytes from offset 34 */
    __u32 len = 8 + q;
    __u64 s = 0;
    for (__u32 i = 0; i < (8 + RJ_ROOM) / 4; i++) {
        __u32 o = i * 4;
        if (o + 4 > len)
            break;
        __u8 *w = ic + o;
        if ((void *)(w + 4) > data_end)
            return -1;
        s += *(__u32 *)w;
    }
    __u32 o = len & ~3U;
    if (o > 8 + RJ_ROOM)
        return -1;
    __u8 *t = ic + o;
    if (len & 2) {
        if ((void *)(t + 2) > data_end)
            return -1;
        s += *(__u16 *)t;
        t += 2;
    }
    if (len & 1) {
        if ((void *)(t + 1) > data_end)
            return -1;
        s += *t;   /* the last byte, padded with a zero byte: its native 16-bit value */
    }
    *(__u16 *)(ic + 2) = ~rj_fold(s);
    return 0;
}

/* Write the RST into a frame of exactly MAC + 20 + 20 bytes. */
static __always_inline int rj_write_rst(void *data, void *data_end, struct rejinfo *ri)
{
    if (rj_write_eth_ip(data, data_end, ri, IPPROTO_TCP, 40, 0, htons(0x4000)) < 0)
        return -1;
    __u8 *th = data + 34;
    if ((void *)(th + 20) > data_end)
        return -1;
    *(__u16 *)(th + 0) = ri->sport;
    *(__u16 *)(th + 2) = ri->dport;
    *(__u32 *)(th + 4) = ri->seq;
    *(__u32 *)(th + 8) = ri->ack;
    th[12] = 5 << 4;
    th[13] = ri->tflags;
    *(__u16 *)(th + 14) = 0;   /* window */
    *(__u16 *)(th + 16) = 0;   /* checksum */
    *(__u16 *)(th + 18) = 0;   /* urgent pointer */
    __u64 s = (__u64)ri->src + ri->dst + htons(IPPROTO_TCP) + htons(20);
#pragma unroll
    for (int i = 0; i < 5; i++)
        s += *(__u32 *)(th + i * 4);
    *(__u16 *)(th + 16) = ~rj_fold(s);
    return 0;
}

/* XDP cannot send the answer itself: XDP_TX frames are lost on a veth whose peer runs no NAPI,
 * and the answer must pass the OUTPUT judgement (TC egress). So the XDP program hands a
 * rejected packet to the TC ingress program ebpfw_tc_xdprej (attached next to the XDP program
 * whenever the ruleset has REJECT): XDP_PASS with this record in the XDP metadata, which the
 * kernel keeps in front of the skb's data. Nothing else writes metadata in front of our frames;
 * the TC program drops every packet that carries the record, answered or not. */
#define RJ_META_MAGIC 0xeb4f7e1aU
struct rejmeta {
    __u32 magic;
    __u32 arg;
    __u8  hook;
    __u8  l2host;
    __u8  local;
    __u8  ct;             /* the packet's ctstate (EBPFW_F_CT) */
    __u32 pad2;
};

static __always_inline int xdp_reject_handoff(struct xdp_md *ctx, struct walkstate *ws, struct pkt *p)
{
    __u8 ct = 0;
#ifdef EBPFW_F_CT
    ct = p->ctstate;
#endif
    if (bpf_xdp_adjust_meta(ctx, -(int)sizeof(struct rejmeta)))
        goto fail;
    void *data = (void *)(long)ctx->data;
    struct rejmeta *m = (void *)(long)ctx->data_meta;
    if ((void *)(m + 1) > data)
        goto fail;
    m->magic = RJ_META_MAGIC;
    m->arg = ws->arg;
    m->hook = ws->hook;
    m->l2host = ws->l2host;
    m->local = ws->local;
    m->ct = ct;
    m->pad2 = 0;
    return XDP_PASS;
fail:
    stat_inc(EBPFW_STAT_REJECT_FAIL);
    return XDP_DROP;
}

/* The kernel sends its answers through LOCAL_OUT: OUTPUT judges them, RELATED to the original's
 * connection, which the kernel attaches to the answer (nf_send_reset and icmp_glue_bits call
 * nf_ct_attach), or labelled by conntrack when the original had none (INVALID). An answer
 * tc_reject redirects to an interface's egress is judged there by ebpfw_tc_egress as OUTPUT:
 * the redirect runs synchronously on this CPU right after the program returns, before any other
 * egress program, so this per-CPU record names the answer to the next egress run, which takes
 * it (one shot) and checks it against the packet (interface, addresses, length, IP id and
 * checksum). */
struct rjpend {
    __u32 ifindex;      /* 0: none */
    __u32 saddr;
    __u32 daddr;
    __u16 tot_len;
    __u16 id;
    __u16 check;
    __u8  proto;
    __u8  ct;           /* the original's ctstate */
};
BPF_PERCPU_ARRAY(ebpfw_rjpend, struct rjpend, 1);

static __always_inline void rj_note_pending(void *data, void *data_end, __u32 ifindex, __u8 ct)
{
    __u32 zero = 0;
    struct rjpend *pd = ebpfw_rjpend.lookup(&zero);
    struct iphdr *ip = data + sizeof(struct ethhdr);
    if (!pd || (void *)(ip + 1) > data_end)
        return;
    pd->ifindex = ifindex;
    pd->saddr = ip->saddr;
    pd->daddr = ip->daddr;
    pd->tot_len = ip->tot_len;
    pd->id = ip->id;
    pd->check = ip->check;
    pd->proto = ip->protocol;
    pd->ct = ct;
}

/* At egress: the original's ctstate when this packet is the answer tc_reject just redirected
 * here, else -1. */
static __always_inline int rj_take_pending(struct __sk_buff *skb)
{
    __u32 zero = 0;
    struct rjpend *pd = ebpfw_rjpend.lookup(&zero);
    if (!pd || pd->ifindex == 0)
        return -1;
    __u32 want = pd->ifindex;
    pd->ifindex = 0;
    if (want != skb->ifindex)
        return -1;
    void *data = (void *)(long)skb->data;
    void *data_end = (void *)(long)skb->data_end;
    struct iphdr *ip = data + sizeof(struct ethhdr);
    if ((void *)(ip + 1) > data_end)
        return -1;
    if (ip->saddr == pd->saddr && ip->daddr == pd->daddr && ip->tot_len == pd->tot_len &&
        ip->id == pd->id && ip->check == pd->check && ip->protocol == pd->proto)
        return pd->ct;
    return -1;
}

/* TC: rewrite the skb into the answer and redirect it. */
static __always_inline int tc_reject(struct __sk_buff *skb, struct rejinfo *ri)
{
    void *data, *data_end;
    if (ri->arg == EBPFW_REJ_TCP_RESET) {
        if (bpf_skb_change_tail(skb, 54, 0))
            goto fail;
        if (bpf_skb_pull_data(skb, 54))
            goto fail;
        data = (void *)(long)skb->data;
        data_end = (void *)(long)skb->data_end;
        if (rj_write_rst(data, data_end, ri) < 0)
            goto fail;
    } else {
        __u32 q = ri->q;
        if (skb->len > 14 + q && bpf_skb_change_tail(skb, 14 + q, 0))
            goto fail;
        if (bpf_skb_adjust_room(skb, 28, BPF_ADJ_ROOM_MAC, 0))
            goto fail;
        if (bpf_skb_pull_data(skb, 42 + q))
            goto fail;
        data = (void *)(long)skb->data;
        data_end = (void *)(long)skb->data_end;
        if (rj_write_icmp(data, data_end, ri) < 0)
            goto fail;
    }
    stat_inc(EBPFW_STAT_REJECT_SENT);
    /* IP4_REPLY_MARK: the kernel's answer has mark 0, or with net.ipv4.fwmark_reflect the
     * mark of the packet it answers (as the rules left it at the REJECT) */
    __u32 zero = 0;
    struct ebpfw_rejcfg *cfg = ebpfw_rejcfg.lookup(&zero);
    __u32 mark = 0;
#ifdef EBPFW_F_MARK
    struct walkstate *ws = ebpfw_walk.lookup(&zero);
    if (ws && cfg && (cfg->flags & EBPFW_REJCFG_FWMARK_REFLECT))
        mark = ws->mark;
#else
    if (cfg && (cfg->flags & EBPFW_REJCFG_FWMARK_REFLECT))
        mark = skb->mark;
#endif
    skb->mark = mark;
    if (!(ri->rflags & BPF_F_INGRESS))
        rj_note_pending(data, data_end, ri->ifindex, ri->ctorig);   /* OUTPUT judges it at that egress */
    return bpf_redirect(ri->ifindex, ri->rflags);
fail:
    stat_inc(EBPFW_STAT_REJECT_FAIL);
    return TC_ACT_SHOT;
}
#endif /* EBPFW_F_REJECT */

/* Before the walk: what the post programs need to know about the hook. */
static __always_inline void post_note(__u32 hook, __u32 iif, __u32 oif, __u32 l2host, __u32 local, __u32 egress)
{
#ifdef EBPFW_POST
    __u32 zero = 0;
    struct walkstate *ws = ebpfw_walk.lookup(&zero);
    if (!ws)
        return;
    ws->hook = hook;
    ws->iif = iif;
    ws->oif = oif;
    ws->l2host = l2host;
    ws->local = local;
    ws->egress = egress;
#endif
}

/* After the verdict: 1 when a post program must run (a REJECT answer, LOG events). */
static __always_inline int post_due(int v)
{
#ifdef EBPFW_POST
    __u32 zero = 0;
    struct walkstate *ws = ebpfw_walk.lookup(&zero);
    if (!ws)
        return 0;
    if (v != V_REJECT && ws->nlog == 0)
        return 0;
    ws->verdict = v;
    return 1;
#else
    return 0;
#endif
}

/* Ingress: INPUT for local destinations, FORWARD for routed ones, as the kernel decides. */
static __always_inline int judge_ingress(void *ctx, void *data, void *data_end, __u32 wire_len, __u32 ifindex,
                                         __u32 mark)
{
    __u32 pz = 0;
    struct pkt *p = ebpfw_pkt.lookup(&pz);   /* per-CPU scratch: the stack is small */
    if (!p)
        return V_PASS;
    int r = parse(data, data_end, wire_len, p, 1);
    if (r == 1) {
        stat_inc(EBPFW_STAT_NOTIP);
        return V_PASS;
    }
    if (r == 2) {
        stat_inc(EBPFW_STAT_MALFORMED);
        return V_PASS;
    }
    stat_inc(EBPFW_STAT_SEEN);
    struct ethhdr *eth = data;
    int l2host = 1;
    struct ebpfw_ifinfo *ii = ebpfw_ifinfo.lookup(&ifindex);
    if (eth->h_dest[0] & 1) {
        l2host = 0;  /* broadcast / multicast */
    } else if (ii && mac_differs(ii->mac, eth->h_dest)) {
        stat_inc(EBPFW_STAT_OTHERHOST);
        return V_PASS;
    }
    note_iif(p, ii);
    note_oif(p, 0);
    /* eth_type_trans(): what -m pkttype sees; ip_forward() only forwards PACKET_HOST */
    /* branch-free, so the verifier does not split every later state on the packet type */
    __u32 group = eth->h_dest[0] & 1;
    __u32 allones = ((__u32)(eth->h_dest[0] & eth->h_dest[1] & eth->h_dest[2] & eth->h_dest[3] &
                             eth->h_dest[4] & eth->h_dest[5]) + 1) >> 8;
    p->pkttype = group * (2 - allones);   /* 0 PACKET_HOST, 1 BROADCAST, 2 MULTICAST */
    __builtin_memcpy(p->smac, eth->h_source, 6);
    p->macok = 1;
    /* one call site of classify(): the walk is inlined once, which keeps verification cheap */
    __u32 chain = EBPFW_CHAIN_INPUT, oif = 0;
    __u32 d = ntohl(p->daddr);
    int local = ebpfw_local.lookup(&p->daddr) != 0;
    if (!(local || d == 0xffffffff || (d >> 28) == 0xe)) {
        struct bpf_fib_lookup fib = {};
        fib.family = 2; /* AF_INET */
        fib.l4_protocol = p->proto;
        fib.tos = p->tos;
        fib.tot_len = p->df ? p->len : 0;
        fib.ifindex = ifindex;
        fib.ipv4_src = p->saddr;
        fib.ipv4_dst = p->daddr;
        int rc = bpf_fib_lookup(ctx, &fib, sizeof(fib), 0);
        if (rc == BPF_FIB_LKUP_RET_SUCCESS || rc == BPF_FIB_LKUP_RET_NO_NEIGH) {
            /* ip_forward() drops these before the FORWARD hook */
            if (!l2host || p->ttl <= 1) {
                stat_inc(EBPFW_STAT_NOHOOK);
                return V_PASS;
            }
            chain = EBPFW_CHAIN_FORWARD;
            oif = fib.ifindex;
            p->ttl -= 1;   /* ip_forward() decrements the TTL before the FORWARD hook */
#ifdef EBPFW_F_OIF
            note_oif(p, ebpfw_ifinfo.lookup(&oif));
#endif
        } else if (rc != BPF_FIB_LKUP_RET_NOT_FWDED && rc != BPF_FIB_LKUP_RET_FWD_DISABLED) {
            /* blackhole, unreachable, prohibit, fragmentation needed: no filter hook runs */
            stat_inc(EBPFW_STAT_NOHOOK);
            return V_PASS;
        }
    }
    post_note(chain, ifindex, oif, l2host, local, 0);
#ifdef EBPFW_F_CT
#ifdef EBPFW_F_RAW
    if (raw_untracked())
        p->ctstate = ct_untrack(p);
    else
#endif
    p->ctstate = ct_label(p, data, data_end);
    if (p->ctstate == EBPFW_CT_INVALID)
        ctstat_inc(EBPFW_CTSTAT_INVALID);
    mark_in(mark);
    int v = classify(chain, p, ifindex, oif, 0);
    ct_commit(v);
    return v;
#else
    mark_in(mark);
    return classify(chain, p, ifindex, oif, 0);
#endif
}

int ebpfw_xdp_ingress(struct xdp_md *ctx)
{
#ifdef EBPFW_F_RAW
    if (raw_first(0)) {
        ebpfw_rawx.call(ctx, 0);
        stat_inc(EBPFW_STAT_WALK_LIMIT);   /* the raw program is missing: fail closed */
        return XDP_DROP;
    }
#endif
    void *data = (void *)(long)ctx->data;
    void *data_end = (void *)(long)ctx->data_end;
    /* XDP runs before there is an skb: its mark is 0 (rulesets that set marks run at TC) */
    int v = judge_ingress(ctx, data, data_end, (__u32)(data_end - data), ctx->ingress_ifindex, 0);
    if (v == V_CONT) {
        ebpfw_jmpx.call(ctx, 0);
        walk_abandon();
        return XDP_DROP;
    }
#ifdef EBPFW_F_RECENT
    if (v == V_RECENT) {
        ebpfw_rcx.call(ctx, 0);
        walk_abandon();
        return XDP_DROP;
    }
#endif
#ifdef EBPFW_F_CONNLIMIT
    if (v == V_CONNLIMIT) {
        ebpfw_clx.call(ctx, 0);
        walk_abandon();
        return XDP_DROP;
    }
#endif
#ifdef EBPFW_POST
    if (post_due(v))
        ebpfw_post_xdp.call(ctx, 0);   /* does not return unless the program is missing */
#endif
    return (v == V_DROP || v == V_REJECT) ? XDP_DROP : XDP_PASS;
}

int ebpfw_xdp_cont(struct xdp_md *ctx)
{
    int v = classify_resume();
    if (v == V_CONT) {
        ebpfw_jmpx.call(ctx, 0);
        walk_abandon();
        return XDP_DROP;
    }
#ifdef EBPFW_F_RECENT
    if (v == V_RECENT) {
        ebpfw_rcx.call(ctx, 0);
        walk_abandon();
        return XDP_DROP;
    }
#endif
#ifdef EBPFW_F_CONNLIMIT
    if (v == V_CONNLIMIT) {
        ebpfw_clx.call(ctx, 0);
        walk_abandon();
        return XDP_DROP;
    }
#endif
#ifdef EBPFW_F_CT
    ct_commit(v);
#endif
#ifdef EBPFW_POST
    if (post_due(v))
        ebpfw_post_xdp.call(ctx, 0);
#endif
    return (v == V_DROP || v == V_REJECT) ? XDP_DROP : XDP_PASS;
}

/* make the headers parse() and the matches read direct-access (TC: the skb may be non-linear) */
static __always_inline void pull_headers(struct __sk_buff *skb, void *data, void *data_end)
{
#ifdef EBPFW_F_TCPMSS
    /* Ethernet + IP header with options + TCP header with options: at most 134 bytes */
    __u32 want = skb->len < 134 ? skb->len : 134;
    if (data + want > data_end)
        bpf_skb_pull_data(skb, want);
#else
    if (data + 64 > data_end)
        bpf_skb_pull_data(skb, skb->len < 128 ? skb->len : 128);
#endif
}

int ebpfw_tc_ingress(struct __sk_buff *skb)
{
#ifdef EBPFW_F_RAW
    if (raw_first(0)) {
        ebpfw_rawt.call(skb, 0);
        stat_inc(EBPFW_STAT_WALK_LIMIT);   /* the raw program is missing: fail closed */
        return TC_ACT_SHOT;
    }
#endif
    void *data = (void *)(long)skb->data;
    void *data_end = (void *)(long)skb->data_end;
    pull_headers(skb, data, data_end);
    data = (void *)(long)skb->data;
    data_end = (void *)(long)skb->data_end;
    int v = judge_ingress(skb, data, data_end, skb->len, skb->ifindex, skb->mark);
    if (v == V_CONT) {
        ebpfw_jmpt.call(skb, 0);
        walk_abandon();
        return TC_ACT_SHOT;
    }
#ifdef EBPFW_F_RECENT
    if (v == V_RECENT) {
        ebpfw_rct.call(skb, 0);
        walk_abandon();
        return TC_ACT_SHOT;
    }
#endif
#ifdef EBPFW_F_CONNLIMIT
    if (v == V_CONNLIMIT) {
        ebpfw_clt.call(skb, 0);
        walk_abandon();
        return TC_ACT_SHOT;
    }
#endif
    mark_out(skb, v);
#ifdef EBPFW_POST
    if (post_due(v))
        ebpfw_post_tc.call(skb, 0);
#endif
    return (v == V_DROP || v == V_REJECT) ? TC_ACT_SHOT : TC_ACT_OK;
}

/* one continuation serves TC ingress and egress: both end the same way */
int ebpfw_tc_cont(struct __sk_buff *skb)
{
    int v = classify_resume();
    if (v == V_CONT) {
        ebpfw_jmpt.call(skb, 0);
        walk_abandon();
        return TC_ACT_SHOT;
    }
#ifdef EBPFW_F_RECENT
    if (v == V_RECENT) {
        ebpfw_rct.call(skb, 0);
        walk_abandon();
        return TC_ACT_SHOT;
    }
#endif
#ifdef EBPFW_F_CONNLIMIT
    if (v == V_CONNLIMIT) {
        ebpfw_clt.call(skb, 0);
        walk_abandon();
        return TC_ACT_SHOT;
    }
#endif
    mark_out(skb, v);
#ifdef EBPFW_F_CT
    ct_commit(v);
#endif
#ifdef EBPFW_POST
    if (post_due(v))
        ebpfw_post_tc.call(skb, 0);
#endif
    return (v == V_DROP || v == V_REJECT) ? TC_ACT_SHOT : TC_ACT_OK;
}

/* Egress: OUTPUT for locally generated packets; FORWARD for packets that came in through an
 * interface our ingress program does not judge; already-judged forwarded packets pass. */
int ebpfw_tc_egress(struct __sk_buff *skb)
{
    __u32 in = skb->ingress_ifindex;
    __u32 chain = EBPFW_CHAIN_OUTPUT;
    __u32 pz = 0;
    struct pkt *p = ebpfw_pkt.lookup(&pz);   /* per-CPU scratch: the stack is small */
    if (!p)
        return TC_ACT_OK;
#ifdef EBPFW_F_RAW
    /* second: tail-called back by the raw stage, which judged this packet already */
    int second = !raw_first(1);
    struct rawres *rr = ebpfw_rawres.lookup(&pz);
    if (!rr)
        return TC_ACT_SHOT;
#endif
#ifdef EBPFW_F_REJECT
    /* a REJECT answer built by this datapath: locally generated, OUTPUT judges it */
#ifdef EBPFW_F_RAW
    int ctorig = second ? rr->ctorig : rj_take_pending(skb);
#else
    int ctorig = rj_take_pending(skb);
#endif
    int answer = ctorig >= 0;
    if (answer)
        in = 0;
#else
    int ctorig = -1, answer = 0;
#endif
    if (in != 0) {
        struct ebpfw_ifinfo *ii = ebpfw_ifinfo.lookup(&in);
        if (ii && ii->attached_in) {
            stat_inc(EBPFW_STAT_JUDGED_FWD);
            return TC_ACT_OK;
        }
        chain = EBPFW_CHAIN_FORWARD;
        note_iif(p, ii);
    } else {
        note_iif(p, 0);   /* OUTPUT: no input interface */
    }
#ifdef EBPFW_F_RAW
    if (!second) {
        /* raw PREROUTING for a forwarded packet (its ingress was not judged), else raw OUTPUT */
        rr->hook = chain == EBPFW_CHAIN_FORWARD ? RAW_HOOK_PRE : RAW_HOOK_OUT;
        rr->iif = chain == EBPFW_CHAIN_FORWARD ? in : 0;
        rr->ctorig = ctorig;
        ebpfw_rawt.call(skb, 0);
        stat_inc(EBPFW_STAT_WALK_LIMIT);   /* the raw program is missing: fail closed */
        return TC_ACT_SHOT;
    }
#endif
    void *data = (void *)(long)skb->data;
    void *data_end = (void *)(long)skb->data_end;
    pull_headers(skb, data, data_end);
    data = (void *)(long)skb->data;
    data_end = (void *)(long)skb->data_end;
    int r = parse(data, data_end, skb->len, p, 0);
    if (r != 0) {
        stat_inc(r == 1 ? EBPFW_STAT_NOTIP : EBPFW_STAT_MALFORMED);
        return TC_ACT_OK;
    }
    stat_inc(EBPFW_STAT_SEEN);
    /* recent_mt: "use TTL as seen before forwarding", ttl + 1 after the hook's output
     * interface is known unless a local socket sent the packet */
    if (!skb->sk && !answer)
        p->rttl += 1;
#ifdef EBPFW_F_OIF
    __u32 out = skb->ifindex;
    note_oif(p, ebpfw_ifinfo.lookup(&out));
#else
    note_oif(p, 0);
#endif
#ifdef EBPFW_F_CT
#ifdef EBPFW_F_RAW
    /* the answer to an untracked packet gets no connection either (nf_ct_attach: none to
     * attach), conntrack labels it as it labels the answer to an INVALID one */
    if (answer && ctorig != EBPFW_CT_INVALID && ctorig != EBPFW_CT_UNTRACKED) {
#else
    if (answer && ctorig != EBPFW_CT_INVALID) {
#endif
        /* the kernel attaches the original's connection to its answer (nf_send_reset, and
         * icmp_glue_bits for an error): RELATED (or RELATED_REPLY), which OUTPUT's conntrack
         * keeps; the answer never creates or changes a connection. An original without one
         * (INVALID) leaves the answer to conntrack, as ct_label below does. */
        struct ctwork *w = ebpfw_ctw.lookup(&pz);
        if (w) {
            w->pending = 0;
            w->hasct = 0;
        }
        p->ctstate = EBPFW_CT_RELATED;
    } else {
#ifdef EBPFW_F_RAW
        if (raw_untracked())
            p->ctstate = ct_untrack(p);
        else
#endif
        p->ctstate = ct_label(p, data, data_end);
        if (p->ctstate == EBPFW_CT_INVALID)
            ctstat_inc(EBPFW_CTSTAT_INVALID);
    }
#endif
    post_note(chain, chain == EBPFW_CHAIN_FORWARD ? in : 0, skb->ifindex, 1, 1, 1);
    /* locally generated: the socket's mark (SO_MARK), as the OUTPUT hook sees it */
    mark_in(skb->mark);
    int v = classify(chain, p, chain == EBPFW_CHAIN_FORWARD ? in : 0, skb->ifindex, 0);
    if (v == V_CONT) {
        ebpfw_jmpt.call(skb, 0);
        walk_abandon();
        return TC_ACT_SHOT;
    }
#ifdef EBPFW_F_RECENT
    if (v == V_RECENT) {
        ebpfw_rct.call(skb, 0);
        walk_abandon();
        return TC_ACT_SHOT;
    }
#endif
#ifdef EBPFW_F_CONNLIMIT
    if (v == V_CONNLIMIT) {
        ebpfw_clt.call(skb, 0);
        walk_abandon();
        return TC_ACT_SHOT;
    }
#endif
    mark_out(skb, v);
#ifdef EBPFW_F_CT
    ct_commit(v);
#endif
#ifdef EBPFW_POST
    if (post_due(v))
        ebpfw_post_tc.call(skb, 0);
#endif
    return (v == V_DROP || v == V_REJECT) ? TC_ACT_SHOT : TC_ACT_OK;
}

#ifdef EBPFW_POST
/* ---- post programs: tail-called after the verdict (see EBPFW_MAXLOG) ---------------------- */
int ebpfw_xdp_post(struct xdp_md *ctx)
{
    __u32 zero = 0;
    struct walkstate *ws = ebpfw_walk.lookup(&zero);
    struct pkt *p = ebpfw_pkt.lookup(&zero);   /* the packet judge_ingress parsed */
    if (!ws || !p)
        return XDP_DROP;
    void *data = (void *)(long)ctx->data;
    void *data_end = (void *)(long)ctx->data_end;
#ifdef EBPFW_F_LOG
    log_events(ws, 0, data, data_end);   /* no skb mark before the stack (XDP) */
#endif
    __u32 v = ws->verdict;
#ifdef EBPFW_F_RAW
    if (v == V_RAWPASS) {
        /* the raw stage accepted the packet and left its result in ebpfw_rawres */
        ebpfw_mainx.call(ctx, 0);
        struct rawres *rr = ebpfw_rawres.lookup(&zero);
        if (rr)
            rr->state = RAW_NONE;
        stat_inc(EBPFW_STAT_WALK_LIMIT);   /* the entry program is missing: fail closed */
        return XDP_DROP;
    }
#endif
#ifdef EBPFW_F_REJECT
    if (v == V_REJECT)
        return xdp_reject_handoff(ctx, ws, p);   /* ebpfw_tc_xdprej answers (or not) and drops it */
#endif
    return (v == V_DROP || v == V_REJECT) ? XDP_DROP : XDP_PASS;
}

/* one post program serves TC ingress and egress (walkstate.egress tells them apart) */
int ebpfw_tc_post(struct __sk_buff *skb)
{
    __u32 zero = 0;
    struct walkstate *ws = ebpfw_walk.lookup(&zero);
    struct pkt *p = ebpfw_pkt.lookup(&zero);
    if (!ws || !p)
        return TC_ACT_SHOT;
    void *data = (void *)(long)skb->data;
    void *data_end = (void *)(long)skb->data_end;
#ifdef EBPFW_F_LOG
    log_events(ws, skb->mark, data, data_end);
#endif
    __u32 v = ws->verdict;
#ifdef EBPFW_F_RAW
    if (v == V_RAWPASS) {
        struct rawres *rr = ebpfw_rawres.lookup(&zero);
        if (!rr)
            return TC_ACT_SHOT;
        ebpfw_maint.call(skb, rr->egress ? 1 : 0);
        rr->state = RAW_NONE;
        stat_inc(EBPFW_STAT_WALK_LIMIT);   /* the entry program is missing: fail closed */
        return TC_ACT_SHOT;
    }
#endif
#ifdef EBPFW_F_REJECT
    if (v == V_REJECT) {
        struct rejinfo ri = {};
        if (reject_prepare(skb, p, data, data_end, ws, &ri))
            return tc_reject(skb, &ri);
        stat_inc(EBPFW_STAT_REJECT_QUIET);
    }
#endif
    return (v == V_DROP || v == V_REJECT) ? TC_ACT_SHOT : TC_ACT_OK;
}
#endif /* EBPFW_POST */

/* TC ingress next to an XDP program: the rejected packets the XDP program handed over (see
 * xdp_reject_handoff) get their answer here; everything else passes (the XDP program judged it). */
int ebpfw_tc_xdprej(struct __sk_buff *skb)
{
#ifdef EBPFW_F_REJECT
    struct rejmeta *m = (void *)(long)skb->data_meta;
    if ((void *)(m + 1) > (void *)(long)skb->data || m->magic != RJ_META_MAGIC)
        return TC_ACT_OK;
    __u32 arg = m->arg, hook = m->hook, l2host = m->l2host, local = m->local, ct = m->ct;
    __u32 zero = 0;
    struct walkstate *ws = ebpfw_walk.lookup(&zero);
    struct pkt *p = ebpfw_pkt.lookup(&zero);
    if (!ws || !p)
        return TC_ACT_SHOT;
    void *data = (void *)(long)skb->data;
    void *data_end = (void *)(long)skb->data_end;
    pull_headers(skb, data, data_end);
    data = (void *)(long)skb->data;
    data_end = (void *)(long)skb->data_end;
    if (parse(data, data_end, skb->len, p, 0) != 0) {
        stat_inc(EBPFW_STAT_REJECT_FAIL);
        return TC_ACT_SHOT;
    }
#ifdef EBPFW_F_CT
    p->ctstate = ct;
#endif
    ws->arg = arg;
    ws->hook = hook;
    ws->iif = skb->ifindex;
    ws->oif = 0;
    ws->l2host = l2host;
    ws->local = local;
    ws->egress = 0;
    struct rejinfo ri = {};
    if (reject_prepare(skb, p, data, data_end, ws, &ri))
        return tc_reject(skb, &ri);
    stat_inc(EBPFW_STAT_REJECT_QUIET);
    return TC_ACT_SHOT;
#else
    return TC_ACT_OK;
#endif
}

#ifdef EBPFW_F_RECENT
/* ---- the recent programs: tail-called when the walk reaches a -m recent rule -------------
 * They judge the rule's recent match (recent_pass, for walkstate.rk), leave the answer in the
 * walk state and tail-call the hook's continuation, which resumes the walk at that rule. Each
 * costs one tail call and one continuation of the packet's EBPFW_MAXCALLS: a packet that
 * reaches more recent rules than that is dropped (walk_limit), never let through unjudged. */
static __always_inline int recent_step(void)
{
    __u32 zero = 0;
    struct walkstate *ws = ebpfw_walk.lookup(&zero);
    if (!ws || ws->rrule == 0)
        return 0;
    ws->rres = recent_pass(ws->rk);
    ws->rdone = ws->rrule;
    ws->rrule = 0;
    return 1;
}

int ebpfw_xdp_recent(struct xdp_md *ctx)
{
    if (recent_step())
        ebpfw_jmpx.call(ctx, 0);
    walk_abandon();
    return XDP_DROP;
}

int ebpfw_tc_recent(struct __sk_buff *skb)
{
    if (recent_step())
        ebpfw_jmpt.call(skb, 0);
    walk_abandon();
    return TC_ACT_SHOT;
}
#endif

#ifdef EBPFW_F_RAW
/* ---- the raw programs: the raw table's stage, tail-called by the entry programs -----------
 * Returns V_ACCEPT when the packet goes on to the filter table (also for packets the filter
 * stage passes unjudged: not IPv4, malformed, for another host), V_DROP, or V_CONT when the walk
 * continues in a tail call of the raw continuation program (`resume`, a constant per program,
 * so each program verifies one way into the walk). Raw rules have no LOG, REJECT, recent,
 * hashlimit or mark (the compiler refuses them), so no other verdict comes out of the walk. */
static __always_inline int raw_judge(void *data, void *data_end, __u32 wire_len, __u32 ifindex,
                                     __u32 mark, struct rawres *rr, const int resume)
{
    __u32 zero = 0;
    struct walkstate *ws = ebpfw_walk.lookup(&zero);
    struct cont *c = ebpfw_cont.lookup(&zero);
    struct pkt *p = ebpfw_pkt.lookup(&zero);
    if (!ws || !c || !p)
        return V_DROP;
    __u32 chain, iif = 0, oif = 0;
    if (resume) {
        c->calls += 1;
        if (c->calls > EBPFW_MAXCALLS)
            return V_CONT;
#ifdef EBPFW_F_SET
        set_resume(ws, c);      /* a raw rule's -m set too */
#endif
        return classify(c->chain, &c->p, c->iif, c->oif, 1);
    }
    ws->untracked = 0;
    struct ebpfw_ctl *ctl = ebpfw_ctl.lookup(&zero);
    if (!ctl)
        return V_ACCEPT;          /* nothing applied: the filter stage passes it too */
    __u32 slot = ctl->active & 1;
    rr->slot = slot;
    struct ebpfw_meta *m = ebpfw_meta.lookup(&slot);
    if (!m || m->raw == 0)
        return V_ACCEPT;          /* this slot's ruleset has no raw table */
    int egress = rr->egress != 0;
    if (parse(data, data_end, wire_len, p, !egress) != 0)
        return V_ACCEPT;          /* not IPv4, or dropped by ip_rcv before PREROUTING */
    if (!egress) {
        struct ethhdr *eth = data;
        struct ebpfw_ifinfo *ii = ebpfw_ifinfo.lookup(&ifindex);
        if (!(eth->h_dest[0] & 1) && ii && mac_differs(ii->mac, eth->h_dest))
            return V_ACCEPT;      /* PACKET_OTHERHOST: ip_rcv drops it before PREROUTING */
        note_iif(p, ii);
        __u32 group = eth->h_dest[0] & 1;
        __u32 allones = ((__u32)(eth->h_dest[0] & eth->h_dest[1] & eth->h_dest[2] & eth->h_dest[3] &
                                 eth->h_dest[4] & eth->h_dest[5]) + 1) >> 8;
        p->pkttype = group * (2 - allones);
        __builtin_memcpy(p->smac, eth->h_source, 6);
        p->macok = 1;
        note_oif(p, 0);           /* PREROUTING: no output interface yet */
        chain = m->raw & 0xffff;
        iif = ifindex;
        post_note(EBPFW_CHAIN_INPUT, ifindex, 0, 1, 0, 0);   /* LOG prints IN= and MAC= as for INPUT */
    } else if (rr->hook == RAW_HOOK_PRE) {
        /* a forwarded packet whose ingress ebpfw does not judge: raw PREROUTING saw it with
         * the TTL before ip_forward's decrement and no output interface */
        iif = rr->iif;
        note_iif(p, ebpfw_ifinfo.lookup(&iif));
        note_oif(p, 0);
        p->ttl += 1;
        chain = m->raw & 0xffff;
        post_note(EBPFW_HOOK_RAW_PRE_EGRESS, iif, 0, 1, 0, 1);
    } else {
        note_iif(p, 0);
#ifdef EBPFW_F_OIF
        note_oif(p, ebpfw_ifinfo.lookup(&ifindex));
#else
        note_oif(p, 0);
#endif
        oif = ifindex;
        chain = m->raw >> 16;
        post_note(EBPFW_CHAIN_OUTPUT, 0, ifindex, 1, 1, 1);
    }
    p->ctstate = EBPFW_CT_INVALID;   /* raw rules have no conntrack atom: the walk judges them */
    /* a REJECT answer of a tracked original carries its connection (RELATED), and NOTRACK leaves
     * every answer alone (it has an nfct); other packets are INVALID until a NOTRACK */
    int rel = rr->ctorig >= 0 && rr->ctorig != EBPFW_CT_INVALID && rr->ctorig != EBPFW_CT_UNTRACKED;
    ws->rawct = rel ? EBPFW_RF_CT_REL_OK : EBPFW_RF_CT_INV_OK;
    ws->rawct_nt = rr->ctorig >= 0 ? ws->rawct : EBPFW_RF_CT_UNT_OK;
#ifdef EBPFW_F_MARK
    /* the packet's mark as raw sees it (skb->mark at TC, 0 at XDP); there is no connection yet,
     * so CONNMARK does nothing and -m connmark never matches (xt_connmark without a ct) */
    ws->mark = mark;
    ws->hasct = 0;
    ws->ctmark = 0;
    ws->ctmark_in = 0;
#endif
    return classify(chain, p, iif, oif, 0);
}

/* the raw stage's result: V_ACCEPT hands the packet back to the entry program */
static __always_inline void raw_result(struct rawres *rr)
{
    __u32 zero = 0;
    struct walkstate *ws = ebpfw_walk.lookup(&zero);
    /* notrack_tg does nothing to a packet that has a connection attached already: a REJECT
     * answer carries its original's (nf_ct_attach) */
    rr->state = (ws && ws->untracked && rr->ctorig < 0) ? RAW_UNTRACKED : RAW_TRACKED;
}

static __always_inline int raw_xdp(struct xdp_md *ctx, const int resume)
{
    __u32 zero = 0;
    struct rawres *rr = ebpfw_rawres.lookup(&zero);
    if (!rr)
        return XDP_DROP;
    void *data = (void *)(long)ctx->data;
    void *data_end = (void *)(long)ctx->data_end;
    int v = raw_judge(data, data_end, (__u32)(data_end - data), ctx->ingress_ifindex, 0, rr, resume);
    if (v == V_CONT) {
        ebpfw_rawcx.call(ctx, 0);
        walk_abandon();
        return XDP_DROP;
    }
    if (v != V_ACCEPT) {
#ifdef EBPFW_POST
        if (post_due(V_DROP))
            ebpfw_post_xdp.call(ctx, 0);   /* LOG events of the raw rules, then the drop */
#endif
        return XDP_DROP;
    }
    raw_result(rr);
#ifdef EBPFW_POST
    if (post_due(V_RAWPASS))
        ebpfw_post_xdp.call(ctx, 0);       /* LOG events, then the post program hands it on */
#endif
    ebpfw_mainx.call(ctx, 0);
    rr->state = RAW_NONE;
    stat_inc(EBPFW_STAT_WALK_LIMIT);   /* the entry program is missing: fail closed */
    return XDP_DROP;
}

static __always_inline int raw_tc(struct __sk_buff *skb, const int resume)
{
    __u32 zero = 0;
    struct rawres *rr = ebpfw_rawres.lookup(&zero);
    if (!rr)
        return TC_ACT_SHOT;
    void *data = (void *)(long)skb->data;
    void *data_end = (void *)(long)skb->data_end;
    if (!resume) {
        pull_headers(skb, data, data_end);
        data = (void *)(long)skb->data;
        data_end = (void *)(long)skb->data_end;
    }
    int v = raw_judge(data, data_end, skb->len, skb->ifindex, skb->mark, rr, resume);
    if (v == V_CONT) {
        ebpfw_rawct.call(skb, 0);
        walk_abandon();
        return TC_ACT_SHOT;
    }
    if (v != V_ACCEPT) {
#ifdef EBPFW_POST
        if (post_due(V_DROP))
            ebpfw_post_tc.call(skb, 0);    /* LOG events of the raw rules, then the drop */
#endif
        return TC_ACT_SHOT;
    }
    mark_out(skb, V_ACCEPT);   /* a raw MARK: the filter stage reads skb->mark again */
    raw_result(rr);
#ifdef EBPFW_POST
    if (post_due(V_RAWPASS))
        ebpfw_post_tc.call(skb, 0);        /* LOG events, then the post program hands it on */
#endif
    ebpfw_maint.call(skb, rr->egress ? 1 : 0);
    rr->state = RAW_NONE;
    stat_inc(EBPFW_STAT_WALK_LIMIT);   /* the entry program is missing: fail closed */
    return TC_ACT_SHOT;
}

int ebpfw_xdp_raw(struct xdp_md *ctx)
{
    return raw_xdp(ctx, 0);
}

int ebpfw_xdp_rawc(struct xdp_md *ctx)
{
    return raw_xdp(ctx, 1);
}

int ebpfw_tc_raw(struct __sk_buff *skb)
{
    return raw_tc(skb, 0);
}

int ebpfw_tc_rawc(struct __sk_buff *skb)
{
    return raw_tc(skb, 1);
}
#endif /* EBPFW_F_RAW */

#ifdef EBPFW_F_CONNLIMIT
/* ---- the connlimit programs: tail-called when the walk reaches a -m connlimit rule ---------
 * Like the recent programs: judge the rule's connlimit match (connlimit_pass, for
 * walkstate.clk and the saved packet), leave the answer in the walk state and tail-call the
 * hook's continuation, which resumes the walk at that rule. */
static __always_inline int connlimit_step(void)
{
    __u32 zero = 0;
    struct walkstate *ws = ebpfw_walk.lookup(&zero);
    struct cont *c = ebpfw_cont.lookup(&zero);
    if (!ws || !c || ws->clrule == 0)
        return 0;
    ws->clres = connlimit_pass(ws->clk, &c->p);
    ws->cldone = ws->clrule;
    ws->clrule = 0;
    return 1;
}

int ebpfw_xdp_connlimit(struct xdp_md *ctx)
{
    if (connlimit_step())
        ebpfw_jmpx.call(ctx, 0);
    walk_abandon();
    return XDP_DROP;
}

int ebpfw_tc_connlimit(struct __sk_buff *skb)
{
    if (connlimit_step())
        ebpfw_jmpt.call(skb, 0);
    walk_abandon();
    return TC_ACT_SHOT;
}
#endif
