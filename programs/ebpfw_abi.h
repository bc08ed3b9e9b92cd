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

/* rule flags */
#define EBPFW_RF_NEEDS_L4 1   /* has a tcp/udp/icmp/multiport match: truncated L4 header hotdrops */

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

struct ebpfw_ctl {
    __u32 active;        /* active slot, 0 or 1 */
    __u32 generation;    /* bumped at every flip, for observers */
};

/* per-slot facts that are not per rule */
struct ebpfw_meta {
    __u32 nrules;
    __u32 nchains;
    __u32 iif_default;   /* class for an input interface not in ebpfw_ifc */
    __u32 oif_default;
};

struct ebpfw_lpm_key {
    __u32 prefixlen;     /* 32 (slot) + address prefix length */
    __u32 slot;          /* network byte order, so the trie splits on it first */
    __u32 addr;          /* network byte order */
};

struct ebpfw_ifc_key {
    __u32 slot;
    __u32 ifindex;
};

struct ebpfw_ifc_val {
    __u32 in_class;
    __u32 out_class;
};

struct ebpfw_rule {
    __u8  kind;          /* EBPFW_ACT_* */
    __u8  flags;         /* EBPFW_RF_* */
    __u16 pad;
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

/* host view kept by userspace (not per slot) */
struct ebpfw_ifinfo {
    __u8  mac[6];
    __u8  attached_in;   /* our ingress program judges packets arriving here */
    __u8  pad;
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
#define EBPFW_NSTATS           8

#endif /* EBPFW_ABI_H */
