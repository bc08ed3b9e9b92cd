"""load: build the programs for a shape (bcc), pin them, and read/write their maps.

A `Datapath` is a set of map fds (and, when freshly built, program fds) for one generation of
programs. It is made either by `build()` (bcc compile + verifier, ~1 s) or by `open_pinned()`
(a later process: no compile). All ruleset tables are written into one slot; `flip()` makes
that slot the one packets read.
"""

from __future__ import annotations

import ctypes as ct
import os
import struct
import time
from array import array
from pathlib import Path

from ..compiler.groups import bloom_words
from ..errors import KernelError
from . import bpfsys
from . import ct as ctdata
from .abi import (
    ATYPE_CAP, ATYPE_KEY, ATYPE_SLOTS, ATYPE_VAL, CHAIN, COUNTER, CT_SLOTS, CT_STAT, CT_STATS, CT_TABLE, CTL,
    FRAG_SLOTS, IFINFO, LENGTH_SLOTS, LPM_KEY, MAC_KEY, META, MSS_SLOTS, NSLOTS, PKTTYPE_SLOTS,
    PORT_SLOTS, PROGRAMS, XDP_REJECT_PROGRAM, PROTO_SLOTS, RULE, SOURCE, STATS, TCPFL_SLOTS, TOS_SLOTS, TTL_SLOTS,
    U32, Shape,
    GRP, GRP_IDS, GRP_KEY, GRP_VAL, GRNG_SLOTS, CONT_PROGRAMS, LIMIT, host_hz, limit_entry,
    SETDEF_PIN, SETM, SETS_PIN, MARKC, RECENT_PIN, RECENT_PROGRAMS, RECENTM, RAW_MAIN, RAW_PROGRAMS, raw_meta,
    CL_KEY, CLM, CONNLIMIT_PROGRAMS,
    HL_BYTES, HL_CFG, HL_CNT_SIZE, HL_MODE, HL_RATE, HL_KEY, HL_NAME, HL_NT, HL_SLOTS, HL_RULE, HL_VAL, hl_name_hash,
    hashlimit_table_config, jiffies_now,
    LOG_CFG, LOG_RL_CFG, LOGF_IPOPT, LOGF_MACDEC, LOGF_TCPOPT, LOGF_TCPSEQ, POST_ACTIONS, POST_PROGRAMS, REJ_CFG,
    REJCFG_FWMARK_REFLECT,
)

def _sysctl(name: str, default: int) -> int:
    try:
        return int(Path("/proc/sys/net/ipv4", name).read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return default


def log_rate_from_env() -> tuple[int, int]:
    """EBPFW_LOG_RATE: LOG events per second and per CPU the datapath writes (default 1000; 0 =
    unlimited), burst = one second's worth. Returns (ns per event, burst in ns)."""
    from ..errors import EbpfwError
    raw = os.environ.get("EBPFW_LOG_RATE", "").strip()
    try:
        rate = int(raw) if raw else 1000
    except ValueError:
        rate = -1
    if rate < 0 or rate > 10_000_000:
        raise EbpfwError(f"EBPFW_LOG_RATE={raw!r} is not usable, expected LOG events per second and CPU "
                         "from 0 (unlimited) to 10000000, e.g. 1000")
    if rate == 0:
        return 0, 0
    per = 1_000_000_000 // rate
    return per, max(per, 1_000_000_000)


def log_cfg_bytes(t) -> bytes:
    """struct ebpfw_logcfg of a LogTarget."""
    flags = ((LOGF_TCPSEQ if t.tcp_sequence else 0) | (LOGF_TCPOPT if t.tcp_options else 0)
             | (LOGF_IPOPT if t.ip_options else 0) | (LOGF_MACDEC if t.macdecode else 0))
    return LOG_CFG.pack(t.prefix.encode()[:31], t.level, flags, 0, 0)


# how long to wait after a flip before the old slot may be rewritten: BPF programs run in
# RCU read-side sections of at most microseconds; this is many orders of magnitude more
GRACE_SECONDS = 0.02


_FOLD_MASKS: dict[int, list[tuple[int, int]]] = {}
_BITS_TABLE = bytes.maketrans(b"\x00\x01", b"01")


def _fold_masks(nwords: int) -> list[tuple[int, int]]:
    """(shift, mask) pairs that OR every 64-bit word of a vector down into its bit 0."""
    m = _FOLD_MASKS.get(nwords)
    if m is None:
        m = []
        for shift in (32, 16, 8, 4, 2, 1):
            word = (1 << shift) - 1
            rep = int.from_bytes(word.to_bytes(8, "little") * nwords, "little")
            m.append((shift, rep))
        _FOLD_MASKS[nwords] = m
    return m


def _vec_bytes(v: int, nwords: int, nsum: int) -> bytes:
    """The map value of a vector: summary words (bit b = word b is not zero), then the words.
    Big-int folds keep this linear and in C: 12,000 vectors of 10,000 rules take ~0.1 s."""
    t = v
    for shift, mask in _fold_masks(nwords):
        t = (t | (t >> shift)) & mask
    flags = t.to_bytes(nwords * 8, "little")[::8]          # one 0/1 byte per word
    summary = int(flags.translate(_BITS_TABLE)[::-1], 2) if flags else 0
    return summary.to_bytes(nsum * 8, "little") + v.to_bytes(nwords * 8, "little")


def _changed_u32(old: bytes, new: bytes) -> list[int]:
    """Indexes of the u32 entries that differ between two equally long arrays (compared
    4 KiB at a time, then entry by entry inside the blocks that differ)."""
    out: list[int] = []
    step = 4096
    for off in range(0, len(new), step):
        a, b = old[off:off + step], new[off:off + step]
        if a != b:
            first = off // 4
            for i in range(0, len(b), 4):
                if a[i:i + 4] != b[i:i + 4]:
                    out.append(first + i // 4)
    return out


class SlotBase:
    """What a slot holds: the plan and links write_slot last wrote into it, with its group keys
    deleted after the flip away from it (see Datapath.write_slot)."""
    __slots__ = ("plan", "links")

    def __init__(self, plan, links):
        self.plan = plan
        self.links = list(links)


class Datapath:
    def __init__(self, shape: Shape, maps: dict[str, int], progs: dict[str, int], bpf=None,
                 ct_maps: dict[str, int] | None = None):
        self.shape = shape
        self.maps = maps
        self.progs = progs
        self.ct_maps = ct_maps or {}   # ebpfw_ct, ebpfw_ctstat: pinned outside the generation
        self._bpf = bpf  # keeps a freshly built object (and its fds) alive

    # ---- building and pinning ------------------------------------------------------------
    @classmethod
    def build(cls, shape: Shape, ct_dir: Path | None = None) -> "Datapath":
        """Compile and load the programs for `shape`. With conntrack in the shape and `ct_dir`
        given, the table and its statistics are pinned at ct_dir/ct and ct_dir/ct_stat (bcc
        opens them when they exist, so every generation shares one table); without `ct_dir`
        they are private to this object (tests)."""
        try:
            from bcc import BPF
        except ImportError as exc:
            raise KernelError("bcc is not importable from this Python",
                              hint="run ebpfw from the venv made by `make setup` (it sees Debian's python3-bpfcc)") from exc
        cflags = shape.cflags()
        if "set" in shape.fields and ct_dir is not None:
            ct_dir.mkdir(parents=True, exist_ok=True)
            cflags += [f'-DEBPFW_SET_PATH="{ct_dir / SETS_PIN}"', f'-DEBPFW_SETDEF_PATH="{ct_dir / SETDEF_PIN}"']
            from ..sets import migrate_pins
            migrate_pins(ct_dir)      # pins of an older layout move aside; restored below
        if "recent" in shape.fields:
            from ..recent import host_params
            cflags.append(f"-DEBPFW_RECENT_ENTRIES={host_params()[0]}")
            if ct_dir is not None:
                ct_dir.mkdir(parents=True, exist_ok=True)
                cflags.append(f'-DEBPFW_RECENT_PATH="{ct_dir / RECENT_PIN}"')
        if "ct" in shape.fields and ct_dir is not None:
            ct_dir.mkdir(parents=True, exist_ok=True)
            cflags += [f'-DEBPFW_CT_PATH="{ct_dir / CT_TABLE}"', f'-DEBPFW_CTSTAT_PATH="{ct_dir / CT_STAT}"']
        try:
            bpf = BPF(src_file=str(SOURCE).encode(), cflags=cflags)
        except Exception as exc:
            raise KernelError(f"compiling {SOURCE} with bcc failed: {exc}",
                              hint="`ebpfw doctor` checks the kernel headers bcc needs") from exc
        progs = {}
        for key, fn in PROGRAMS.items():
            ptype = BPF.XDP if key == "xdp" else BPF.SCHED_CLS
            try:
                progs[key] = bpf.load_func(fn.encode(), ptype).fd
            except Exception as exc:
                raise KernelError(f"the kernel refused program {fn}: {exc}",
                                  hint="rerun with EBPFW_DEBUG=1 for the verifier log") from exc
        if "reject" in shape.fields:
            key, fn = XDP_REJECT_PROGRAM
            try:
                progs[key] = bpf.load_func(fn.encode(), BPF.SCHED_CLS).fd
            except Exception as exc:
                raise KernelError(f"the kernel refused program {fn}: {exc}",
                                  hint="rerun with EBPFW_DEBUG=1 for the verifier log") from exc
        maps = {name: bpf.get_table(name).get_fd() for name in shape.maps()}
        # the continuation programs live in program arrays (pinned with the maps, which keeps them)
        # and so do the programs the verdict tail-calls for REJECT and LOG
        post = POST_PROGRAMS if set(POST_ACTIONS) & set(shape.fields) else {}
        if "recent" in shape.fields:
            post = {**post, **RECENT_PROGRAMS}
        if "raw" in shape.fields:
            post = {**post, **RAW_PROGRAMS}
            for key, (array_name, idx) in RAW_MAIN.items():
                bpf.get_table(array_name)[ct.c_int(idx)] = ct.c_int(progs[key])
        if "connlimit" in shape.fields:
            post = {**post, **CONNLIMIT_PROGRAMS}
        for fn, array_name in {**CONT_PROGRAMS, **post}.items():
            try:
                fd = bpf.load_func(fn.encode(), BPF.XDP if "xdp" in fn else BPF.SCHED_CLS).fd
            except Exception as exc:
                raise KernelError(f"the kernel refused program {fn}: {exc}",
                                  hint="rerun with EBPFW_DEBUG=1 for the verifier log") from exc
            bpf.get_table(array_name)[ct.c_int(0)] = ct.c_int(fd)
        ct_maps = {}
        if "ct" in shape.fields:
            ct_maps = {name: bpf.get_table(name).get_fd() for name in ("ebpfw_ct", "ebpfw_ctstat")}
        if "set" in shape.fields:
            ct_maps.update({name: bpf.get_table(name).get_fd() for name in ("ebpfw_sets", "ebpfw_setdef")})
            if ct_dir is not None:
                from ..sets import restore_migrated
                restore_migrated(ct_dir, ct_maps["ebpfw_sets"], ct_maps["ebpfw_setdef"])
        if "recent" in shape.fields:
            ct_maps["ebpfw_recent"] = bpf.get_table("ebpfw_recent").get_fd()
        return cls(shape, maps, progs, bpf, ct_maps)

    def pin_all(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        for name, fd in self.maps.items():
            bpfsys.pin(fd, str(directory / name))
        for key, fd in self.progs.items():
            bpfsys.pin(fd, str(directory / f"prog_{key}"))

    @classmethod
    def open_pinned(cls, directory: Path, shape: Shape, with_progs: bool = False) -> "Datapath":
        """Open generation `directory`; the conntrack table, when the shape has one, is
        opened from the directory above it (where Datapath.build pinned it)."""
        maps = {}
        for name in shape.maps():
            path = directory / name
            if not path.exists():
                raise KernelError(f"pinned map {path} is missing",
                                  hint="the pinned state is damaged; `ebpfw detach` then apply again")
            maps[name] = bpfsys.get(str(path))
        progs = {}
        if with_progs:
            for key in PROGRAMS:
                progs[key] = bpfsys.get(str(directory / f"prog_{key}"))
            key = XDP_REJECT_PROGRAM[0]
            if "reject" in shape.fields and (directory / f"prog_{key}").exists():
                progs[key] = bpfsys.get(str(directory / f"prog_{key}"))
        ct_maps = {}
        if "ct" in shape.fields:
            for name, pin in (("ebpfw_ct", CT_TABLE), ("ebpfw_ctstat", CT_STAT)):
                path = directory.parent / pin
                if path.exists():
                    ct_maps[name] = bpfsys.get(str(path))
        if "recent" in shape.fields and (directory.parent / RECENT_PIN).exists():
            ct_maps["ebpfw_recent"] = bpfsys.get(str(directory.parent / RECENT_PIN))
        return cls(shape, maps, progs, ct_maps=ct_maps)

    def close(self) -> None:
        if self._bpf is None:
            for fd in list(self.maps.values()) + list(self.progs.values()) + list(self.ct_maps.values()):
                try:
                    os.close(fd)
                except OSError:
                    pass
        else:
            self._bpf.cleanup()
        self.maps, self.progs, self.ct_maps, self._bpf = {}, {}, {}, None

    # ---- control -----------------------------------------------------------------------------
    def active(self) -> tuple[int, int]:
        raw = bpfsys.lookup(self.maps["ebpfw_ctl"], U32.pack(0), CTL.size)
        if raw is None:
            return 0, 0
        a, g = CTL.unpack(raw)
        return a & 1, g

    def flip(self, slot: int, cleanup: bool = True) -> int:
        """Make `slot` the one packets read. With `cleanup` (default), wait GRACE_SECONDS and
        delete the old slot's group keys; without it the caller must call
        cleanup_after_flip(slot, flip time) before that slot is written again."""
        _, gen = self.active()
        bpfsys.update(self.maps["ebpfw_ctl"], U32.pack(0), CTL.pack(slot, gen + 1), "control map")
        if cleanup:
            self.cleanup_after_flip(slot, time.monotonic())
        return gen + 1

    def cleanup_after_flip(self, slot: int, flipped_at: float) -> None:
        """Once no packet can still be reading the old slot (GRACE_SECONDS after the flip),
        delete its group keys and its -m connlimit lists: until the next write they would only
        cost memory (and the lists room in ebpfw_cl, shared by both slots)."""
        wait = flipped_at + GRACE_SECONDS - time.monotonic()
        if wait > 0:
            time.sleep(wait)
        self.clear_groups(1 - slot)
        if "connlimit" in self.shape.fields and "ebpfw_cl" in self.maps:
            self.clear_connlimit(1 - slot)

    # ---- writing one slot -------------------------------------------------------------------
    def _batch(self, name: str, keys: list[int], values: list[bytes]) -> None:
        if not keys:
            return
        kb = array("I", keys).tobytes()
        bpfsys.update_batch(self.maps[name], kb, b"".join(values), len(keys), name)

    def _fill_array(self, name: str, slot: int, per_slot: int, classes: list[int] | None,
                    old: list[int] | None | bool = False) -> None:
        """Write a u32 array table of `slot`; `old` (when not False) is what the slot holds
        now (None: all zero), and only the entries that differ are written."""
        if classes is None:
            classes = [0] * per_slot
        base = slot * per_slot
        if old is not False:
            if old is None:
                old = [0] * per_slot
            if old is classes or old == classes:
                return
            idx = _changed_u32(array("I", old).tobytes(), array("I", classes).tobytes())
            if len(idx) < per_slot // 2:
                self._batch(name, [base + i for i in idx], [U32.pack(classes[i]) for i in idx])
                return
        keys = array("I", range(base, base + per_slot)).tobytes()
        vals = array("I", classes).tobytes()
        bpfsys.update_batch(self.maps[name], keys, vals, per_slot, name)

    def write_slot(self, slot: int, plan, links, initial_counters=None, base: "SlotBase | None" = None) -> None:
        """Write every ruleset table of `plan` into `slot` (not yet active). `base`, when
        given, is what the slot holds now: it was written from base.plan and base.links by
        this method and its group keys were deleted after the flip away from it (flip or
        cleanup_after_flip). Then only the entries that differ are written; the slot's
        content is the same as after a full write."""
        sh = self.shape
        if len(plan.vectors) > sh.vcap or plan.nrules > sh.rcap or len(plan.chain_names) > sh.ccap:
            raise KernelError("internal: the plan does not fit the loaded programs' shape")
        if getattr(plan, "raw_chains", None) is not None and "raw" not in sh.fields:
            # programs without the raw stage would never walk the raw chains: refuse, never ignore
            raise KernelError("internal: the plan has a raw table but the loaded programs have no raw stage")
        ncpu = bpfsys.possible_cpus()
        bp = base.plan if base is not None else None
        # vectors
        if bp is None:
            changed = range(len(plan.vectors))
        elif bp.vectors is plan.vectors:
            changed = ()
        else:
            ov = bp.vectors
            changed = [c for c, v in enumerate(plan.vectors) if c >= len(ov) or ov[c] != v]
        keys = [slot * sh.vcap + c for c in changed]
        vals = [_vec_bytes(plan.vectors[c], sh.nwords, sh.nsum) for c in changed]
        self._batch("ebpfw_vec", keys, vals)
        # rules and their counters
        rows = list(zip(plan.rule_kind, plan.rule_flags, plan.rule_arg))
        if bp is None or bp.nrules != plan.nrules:
            changed = range(plan.nrules)
        else:
            orow = list(zip(bp.rule_kind, bp.rule_flags, bp.rule_arg))
            changed = [r for r in range(plan.nrules) if rows[r] != orow[r]]
        self._batch("ebpfw_rule", [slot * sh.rcap + r for r in changed], [RULE.pack(*rows[r]) for r in changed])
        keys = [slot * sh.rcap + r for r in range(plan.nrules)]
        zero_pc = COUNTER.pack(0, 0) * ncpu

        def pc(p: int, b: int) -> bytes:
            return COUNTER.pack(p, b) + COUNTER.pack(0, 0) * (ncpu - 1)

        rc = initial_counters.get("rules") if initial_counters else None
        if rc:
            self._batch("ebpfw_cnt", keys, [pc(*rc[r]) for r in range(plan.nrules)])
        elif keys:
            bpfsys.update_batch(self.maps["ebpfw_cnt"], array("I", keys).tobytes(), zero_pc * len(keys), len(keys),
                                "ebpfw_cnt")
        # chains and policy counters
        keys = [slot * sh.ccap + c for c in range(len(plan.chain_names))]
        self._batch("ebpfw_chain", keys, [CHAIN.pack(s, e, p, 0) for (s, e), p in
                                          zip(plan.chain_ranges, plan.chain_policy)])
        cc = initial_counters.get("chains") if initial_counters else None
        self._batch("ebpfw_pcnt", keys, [pc(*cc[c]) if cc else zero_pc for c in range(len(plan.chain_names))])
        # array-indexed fields (a field in the shape but not in the plan gets class 0 = all rules)
        f = set(sh.fields)

        def was(attr: str):
            return False if bp is None else getattr(bp, attr, None)
        if "proto" in f:
            self._fill_array("ebpfw_proto", slot, PROTO_SLOTS, plan.proto, was("proto"))
        if "sport" in f:
            self._fill_array("ebpfw_sport", slot, PORT_SLOTS, plan.sport, was("sport"))
        if "dport" in f:
            self._fill_array("ebpfw_dport", slot, PORT_SLOTS, plan.dport, was("dport"))
        if "xport" in f:
            self._fill_array("ebpfw_xsport", slot, PORT_SLOTS, plan.xsport, was("xsport"))
            self._fill_array("ebpfw_xdport", slot, PORT_SLOTS, plan.xdport, was("xdport"))
        if "tcpfl" in f:
            self._fill_array("ebpfw_tcpfl", slot, TCPFL_SLOTS, plan.tcpfl, was("tcpfl"))
        if "icmp" in f:
            self._fill_array("ebpfw_icmp", slot, PORT_SLOTS, plan.icmp, was("icmp"))
        if "ct" in f:
            self._fill_array("ebpfw_ctcls", slot, CT_SLOTS, getattr(plan, "ct", None), was("ct"))
            self.write_ct_config()
        for name, per_slot in (("length", LENGTH_SLOTS), ("ttl", TTL_SLOTS), ("tos", TOS_SLOTS),
                               ("frag", FRAG_SLOTS), ("tcpmss", MSS_SLOTS), ("pkttype", PKTTYPE_SLOTS),
                               ("atsrc", ATYPE_SLOTS), ("atdst", ATYPE_SLOTS)):
            if name in f:
                self._fill_array(f"ebpfw_{name}", slot, per_slot, getattr(plan, name, None), was(name))
        if "mac" in f:
            self._write_mac(slot, getattr(plan, "mac", None))
        if "reject" in f:
            self.write_reject_config()
        if "log" in f:
            logs = getattr(plan, "log", {}) or {}
            if logs:
                self._batch("ebpfw_logcfg", [slot * sh.rcap + r for r in logs],
                            [log_cfg_bytes(t) for t in logs.values()])
            bpfsys.update(self.maps["ebpfw_logrlc"], U32.pack(0), LOG_RL_CFG.pack(*log_rate_from_env()),
                          "ebpfw_logrlc")
        if "limit" in f:
            self._write_limits(slot, getattr(plan, "limits", {}) or {})
        if "set" in f:
            self._write_setm(slot, plan)
        if "hashlimit" in f:
            self._write_hashlimit(slot, plan)
        if "mark" in f:
            self._write_marks(slot, getattr(plan, "marks", {}) or {})
        if "recent" in f:
            self._write_recentm(slot, plan)
        if "connlimit" in f:
            self._write_connlimit(slot, plan)
        # prefix tries: drop this slot's old prefixes, then insert the new ones
        for name, attr in (("ebpfw_src", "src"), ("ebpfw_dst", "dst")):
            if name not in self.maps:
                continue
            entries = getattr(plan, attr)
            fd = self.maps[name]
            slot_be = struct.pack(">I", slot)
            want = {LPM_KEY.pack(32 + plen, slot_be, struct.pack(">I", addr)): U32.pack(cls)
                    for addr, plen, cls in entries or []}
            if bp is None:
                have = {k: None for k in bpfsys.keys(fd, LPM_KEY.size) if k[4:8] == slot_be}
            else:
                have = {LPM_KEY.pack(32 + plen, slot_be, struct.pack(">I", addr)): U32.pack(cls)
                        for addr, plen, cls in getattr(bp, attr) or []}
            for k in have:
                if k not in want:
                    bpfsys.delete(fd, k)
            for k, v in want.items():
                if have.get(k) != v:
                    bpfsys.update(fd, k, v, name)
        # interfaces: their classes in this slot go into their ebpfw_ifinfo entries
        iif_default = plan.iif[""] if plan.iif is not None else 0
        oif_default = plan.oif[""] if plan.oif is not None else 0
        gclass = getattr(plan, "group_ifclass", None) or {}
        gin_default = gclass.get("", 0)
        same_ifc = (bp is not None and base.links == list(links) and bp.iif == plan.iif and bp.oif == plan.oif
                    and (getattr(bp, "group_ifclass", None) or {}) == gclass)
        if not same_ifc:
            fd = self.maps["ebpfw_ifinfo"]
            for link in links:
                key = U32.pack(link.ifindex)
                raw = bpfsys.lookup(fd, key, IFINFO.size)
                if raw is None:
                    vals = [(link.mac + b"\0" * 6)[:6], 0, 0, *self._default_classes()]
                else:
                    vals = list(IFINFO.unpack(raw))
                vals[3 + slot] = plan.iif.get(link.name, iif_default) if plan.iif is not None else 0
                vals[5 + slot] = plan.oif.get(link.name, oif_default) if plan.oif is not None else 0
                vals[7 + slot] = gclass.get(link.name, gin_default)
                bpfsys.update(fd, key, IFINFO.pack(*vals), "ebpfw_ifinfo")
        if bp is None or bp.resid != plan.resid or bp.nrules != plan.nrules:
            self._write_ranks(slot, plan)
        if "groups" in sh.fields:
            self._write_groups(slot, plan, cleared=bp is not None,
                               ranges_same=bp is not None and getattr(bp, "group_ranges", None) == plan.group_ranges)
        bpfsys.update(self.maps["ebpfw_meta"], U32.pack(slot),
                      META.pack(plan.nrules, len(plan.chain_names), iif_default, oif_default, gin_default,
                                raw_meta(plan)),
                      "ebpfw_meta")

    def _write_limits(self, slot: int, limits: dict) -> None:
        """Every rule's bucket of this slot: full for a limit rule (a fresh rule in iptables
        starts full too), zero (never matches) for the others, which never read it."""
        hz = host_hz()
        now = time.monotonic_ns()      # CLOCK_MONOTONIC: bpf_ktime_get_ns's clock
        sh = self.shape
        empty = LIMIT.pack(0, 0, 0, 0, 0, 0, 0, 0)
        keys = [slot * sh.rcap + r for r in range(sh.rcap)]
        vals = [limit_entry(limits[r].avg, limits[r].burst, hz, now) if r in limits else empty
                for r in range(sh.rcap)]
        self._batch("ebpfw_limit", keys, vals)

    def _write_hashlimit(self, slot: int, plan) -> None:
        """This slot's hashlimit tables and which one each hashlimit rule uses. As in the
        kernel, where a restore's new rules find the table the old rules still hold by its
        name: a table the active slot uses under the same name is shared as it is (its buckets,
        its config, its collector's clock); another one is made as htable_create makes it
        (empty, configured from plan.hl_tables, the collector starting now) in a table id
        neither slot uses. Table ids are global (0 .. 2*HL_NT-1); `slots` in each config says
        which slots use it."""
        sh = self.shape
        tables = getattr(plan, "hl_tables", []) or []
        rules = getattr(plan, "hashlimits", {}) or {}
        if len(tables) > HL_NT:
            raise KernelError(f"internal: {len(tables)} hashlimit tables, the programs hold {HL_NT}")
        ntid = 2 * HL_NT
        raw = bpfsys.lookup_array(self.maps["ebpfw_hlcfg"], 0, ntid, HL_CFG.size)
        cfgs = [list(HL_CFG.unpack_from(raw, t * HL_CFG.size)) for t in range(ntid)]
        mine, other = 1 << slot, 1 << (1 - slot)
        for c in cfgs:
            c[HL_SLOTS] &= ~mine
        active = {c[HL_NAME]: t for t, c in enumerate(cfgs) if c[HL_SLOTS] & other}
        free = [t for t, c in enumerate(cfgs) if not c[HL_SLOTS]]
        hz = host_hz()
        j0 = jiffies_now()
        for t in tables:
            # rules of another mode on a kept table: the kernel would run the old table's
            # buckets with the new rules' byte or rate-match branches; refused before any write
            tid = active.get(hl_name_hash(t.name))
            want = hashlimit_table_config(t, hz, j0, 0)[HL_MODE]
            if tid is not None and cfgs[tid][HL_MODE] != want:
                def kind(m: int) -> str:
                    return ("a byte " if m & HL_BYTES else "a packet ") + ("rate-match" if m & HL_RATE else "rate")
                raise KernelError(f"hashlimit table {t.name!r} is in use with {kind(cfgs[tid][HL_MODE])}, the new "
                                  f"rules give it {kind(want)}: the kernel would keep the old table and mix the two",
                                  hint="rename the --hashlimit-name, or apply a ruleset without it first")
        tids, fresh = [], []
        for t in tables:
            h = hl_name_hash(t.name)
            tid = active.get(h)
            if tid is None:
                tid = free.pop(0)
                fresh.append(tid)
                cfgs[tid] = hashlimit_table_config(t, hz, j0, h)
            cfgs[tid][HL_SLOTS] |= mine
            tids.append(tid)
        self.clear_hashlimit(fresh)
        for tid in fresh:       # an empty table: nothing counted (struct ebpfw_hlcnt)
            bpfsys.update(self.maps["ebpfw_hlcnt"], U32.pack(tid), bytes(HL_CNT_SIZE), "ebpfw_hlcnt")
        self._batch("ebpfw_hlcfg", list(range(ntid)), [HL_CFG.pack(*c) for c in cfgs])
        empty = HL_RULE.pack(0, 0)
        self._batch("ebpfw_hlrule", [slot * sh.rcap + r for r in range(sh.rcap)],
                    [HL_RULE.pack(tids[rules[r][0]], int(rules[r][1])) if r in rules else empty
                     for r in range(sh.rcap)])

    def clear_hashlimit(self, tids) -> int:
        """Delete the buckets of table ids `tids`."""
        if "ebpfw_hl" not in self.maps or not tids:
            return 0
        fd = self.maps["ebpfw_hl"]
        tids = set(tids)
        mine = [k for k in bpfsys.hash_keys(fd, HL_KEY.size, HL_VAL.size) if U32.unpack_from(k)[0] in tids]
        bpfsys.delete_batch(fd, b"".join(mine), len(mine))
        return len(mine)

    def hashlimit_tables(self, slot: int, names) -> dict:
        """name -> (table id, jiffies when the table was made) of `slot`'s tables among `names`."""
        ntid = 2 * HL_NT
        raw = bpfsys.lookup_array(self.maps["ebpfw_hlcfg"], 0, ntid, HL_CFG.size)
        by_hash = {hl_name_hash(n): n for n in names}
        out = {}
        for t in range(ntid):
            c = HL_CFG.unpack_from(raw, t * HL_CFG.size)
            if c[HL_SLOTS] & (1 << slot) and c[HL_NAME] in by_hash:
                out[by_hash[c[HL_NAME]]] = (t, c[5])
        return out

    def hashlimit_entries(self, slot: int, names) -> list[dict]:
        """The buckets of `slot`'s tables (like /proc/net/ipt_hashlimit/NAME): table name, key,
        expires, prev (jiffies), credit, credit_cap, cost."""
        import socket
        tables = {tid: name for name, (tid, _) in self.hashlimit_tables(slot, names).items()}
        fd = self.maps["ebpfw_hl"]
        out = []
        for k in bpfsys.hash_keys(fd, HL_KEY.size, HL_VAL.size):
            tid, src, dst, sport, dport = HL_KEY.unpack(k)
            if tid not in tables:
                continue
            v = bpfsys.lookup(fd, k, HL_VAL.size)
            if v is None:
                continue
            expires, prev, credit, cap, cost, win = HL_VAL.unpack(v)
            out.append({"table": tables[tid], "src": socket.inet_ntoa(src), "dst": socket.inet_ntoa(dst),
                        "sport": sport, "dport": dport, "expires": expires, "prev": prev, "credit": credit,
                        "credit_cap": cap, "cost": cost, "win": win})
        return out

    def _write_marks(self, slot: int, marks: dict) -> None:
        """Every rule's struct ebpfw_markc of this slot (zero for rules without marks: they have
        neither the rule flag nor a MARK/CONNMARK kind, so the walk never reads it)."""
        sh = self.shape
        empty = MARKC.pack(0, 0, 0, 0, 0, 0, 0, 0, 0, 0)
        keys = [slot * sh.rcap + r for r in range(sh.rcap)]
        vals = []
        for r in range(sh.rcap):
            m = marks.get(r)
            vals.append(MARKC.pack(*m[:5], 0, *m[5:]) if m else empty)
        self._batch("ebpfw_markc", keys, vals)

    def _write_setm(self, slot: int, plan) -> None:
        """Which set each -m set rule of this slot reads (ids from ebpfw.sets, in plan.set_ids)."""
        setm = getattr(plan, "setm", {}) or {}
        ids = getattr(plan, "set_ids", None) or {}
        missing = sorted({m[0] for m in setm.values()} - set(ids))
        if missing:
            raise KernelError(f"internal: no set id for {', '.join(missing)}")
        sh = self.shape
        empty = SETM.pack(0, 0, 0, 0, 0)
        keys = [slot * sh.rcap + r for r in range(sh.rcap)]
        vals = [SETM.pack(ids[setm[r][0]], *setm[r][1:]) if r in setm else empty for r in range(sh.rcap)]
        self._batch("ebpfw_setm", keys, vals)

    def _write_recentm(self, slot: int, plan) -> None:
        """Which list each -m recent rule of this slot reads and what it does (table ids from
        ebpfw.recent, in plan.recent_ids); zero (the rule never matches) for the others."""
        from ..recent import rule_entry
        recent = getattr(plan, "recent", {}) or {}
        ids = getattr(plan, "recent_ids", None) or {}
        missing = sorted({m.name for m in recent.values()} - set(ids))
        if missing:
            raise KernelError(f"internal: no recent table for {', '.join(missing)}")
        hz = host_hz() if recent else 0
        sh = self.shape
        empty = bytes(RECENTM.size)
        keys = [slot * sh.rcap + r for r in range(sh.rcap)]
        vals = [rule_entry(recent[r], ids[recent[r].name], hz) if r in recent else empty for r in range(sh.rcap)]
        self._batch("ebpfw_recentm", keys, vals)

    def _write_connlimit(self, slot: int, plan) -> None:
        """Each -m connlimit rule's settings in this slot (zero for the other rules: never
        reached), and the slot's lists emptied: iptables-restore gives every rule new ones."""
        cls = getattr(plan, "connlimits", {}) or {}
        sh = self.shape
        empty = bytes(CLM.size)
        keys = [slot * sh.rcap + r for r in range(sh.rcap)]
        vals = []
        for r in range(sh.rcap):
            m = cls.get(r)
            if m is None:
                vals.append(empty)
                continue
            mask = (0xFFFFFFFF << (32 - m.mask)) & 0xFFFFFFFF if m.mask else 0
            vals.append(CLM.pack(struct.pack(">I", mask), m.limit, int(m.daddr), int(not m.above), 0))
        self._batch("ebpfw_clm", keys, vals)
        self.clear_connlimit(slot)

    def clear_connlimit(self, slot: int) -> int:
        """Delete the -m connlimit lists of `slot` (not the active one: packets may be adding);
        returns how many there were."""
        from .abi import CL_KEYS, CL_SLOT
        fd = self.maps["ebpfw_cl"]
        lo, hi = slot * self.shape.rcap, (slot + 1) * self.shape.rcap
        gone = [k for k in bpfsys.keys(fd, CL_KEY.size) if lo <= CL_KEY.unpack(k)[0] < hi]
        bpfsys.delete_batch(fd, b"".join(gone), len(gone))
        # their index slots (ebpfw_clidx) are free again
        nkeys = self.shape.cl_keys or CL_KEYS
        raw = bpfsys.lookup_array(self.maps["ebpfw_clidx"], 0, nkeys, CL_SLOT.size)
        free = [i for i in range(nkeys)
                if CL_SLOT.unpack_from(raw, i * CL_SLOT.size)[2]
                and lo <= CL_SLOT.unpack_from(raw, i * CL_SLOT.size)[0] < hi]
        if free:
            self._batch("ebpfw_clidx", free, [bytes(CL_SLOT.size)] * len(free))
        return len(gone)

    def copy_connlimit(self, src: int, dst: int) -> int:
        """Copy slot `src`'s -m connlimit lists to slot `dst` (the same ruleset written into both:
        rule numbers agree), each into an index slot of its own as the datapath would pick it
        (cl_claim); returns how many were copied. Packets still add to `src` meanwhile: what they
        add between this copy and the flip is not carried over."""
        import sys
        from .abi import CL_ENT, CL_HDR, CL_KEYS, CL_SLOT
        sh = self.shape
        fd, ifd = self.maps["ebpfw_cl"], self.maps["ebpfw_clidx"]
        nkeys = sh.cl_keys or CL_KEYS
        vsize = CL_HDR.size + CL_ENT.size * (sh.cl_conns or 128)
        raw = bytearray(bpfsys.lookup_array(ifd, 0, nkeys, CL_SLOT.size))
        used = [CL_SLOT.unpack_from(raw, i * CL_SLOT.size)[2] != 0 for i in range(nkeys)]
        copied = 0
        for k in list(bpfsys.keys(fd, CL_KEY.size)):
            rk, addr = CL_KEY.unpack(k)
            if rk // sh.rcap != src:
                continue
            val = bpfsys.lookup(fd, k, vsize)
            if val is None:
                continue
            nrk = dst * sh.rcap + rk % sh.rcap
            # cl_claim's hash of the key (the address as the datapath reads its u32)
            a = int.from_bytes(addr, sys.byteorder)
            h = ((a * 0x9E3779B1) ^ (nrk * 0x85EBCA6B)) & 0xFFFFFFFF
            h ^= h >> 15
            at = next(((h + i) & (nkeys - 1) for i in range(8) if not used[(h + i) & (nkeys - 1)]), None)
            if at is None:
                continue
            used[at] = True
            nk = CL_KEY.pack(nrk, addr)
            count, last_gc, last_gc_count, _idx, _busy = CL_HDR.unpack_from(val)
            nval = CL_HDR.pack(count, last_gc, last_gc_count, at, 0) + val[CL_HDR.size:]
            bpfsys.update(ifd, struct.pack("<I", at), CL_SLOT.pack(nrk, addr, 1, 0), "ebpfw_clidx")
            bpfsys.update(fd, nk, nval, "ebpfw_cl")
            copied += 1
        return copied

    def connlimit_lists(self, slot: int) -> dict[tuple[int, str], list]:
        """The -m connlimit lists of `slot`: (rule, address group) -> [(a_addr, b_addr, a_port,
        b_port, proto, jiffies, cpu)] in list order (tests, diagnostics)."""
        from .abi import CL_ENT, CL_HDR
        import ipaddress
        fd = self.maps["ebpfw_cl"]
        vsize = CL_HDR.size + CL_ENT.size * (self.shape.cl_conns or 128)
        out = {}
        for k in list(bpfsys.keys(fd, CL_KEY.size)):
            rk, addr = CL_KEY.unpack(k)
            if rk // self.shape.rcap != slot:
                continue
            raw = bpfsys.lookup(fd, k, vsize)
            if raw is None:
                continue
            count = CL_HDR.unpack_from(raw)[0]
            ents = []
            for i in range(count):
                a, b, ap, bp, proto, _kind, _pad, jif, cpu = CL_ENT.unpack_from(raw, CL_HDR.size + i * CL_ENT.size)
                ents.append((str(ipaddress.IPv4Address(a)), str(ipaddress.IPv4Address(b)), ap, bp, proto, jif, cpu))
            out[(rk % self.shape.rcap, str(ipaddress.IPv4Address(addr)))] = ents
        return out

    def _write_ranks(self, slot: int, plan) -> None:
        """Residual bit k <-> rule number: unrank[k] = resid[k]; rank[p] = bits of rules < p."""
        sh = self.shape
        resid = plan.resid
        if len(resid) > sh.nwords * 64:
            raise KernelError("internal: the plan's residual rules do not fit the loaded programs' shape")
        rank = [0] * (plan.nrules + 1)
        k = 0
        for p in range(plan.nrules + 1):
            rank[p] = k
            if k < len(resid) and resid[k] == p:
                k += 1
        base = slot * (sh.rcap + 1)
        bpfsys.update_batch(self.maps["ebpfw_rank"], array("I", range(base, base + len(rank))).tobytes(),
                            array("I", rank).tobytes(), len(rank), "ebpfw_rank")
        base = slot * sh.rcap
        bpfsys.update_batch(self.maps["ebpfw_unrank"], array("I", range(base, base + len(resid))).tobytes(),
                            array("I", resid).tobytes(), len(resid), "ebpfw_unrank")
        bpfsys.update(self.maps["ebpfw_resn"], U32.pack(slot), U32.pack(len(resid)), "ebpfw_resn")

    def _write_groups(self, slot: int, plan, cleared: bool = False, ranges_same: bool = False) -> None:
        """`cleared`: the slot has no group keys (deleted after the flip away from it);
        `ranges_same`: its port interval table already holds the plan's."""
        sh = self.shape
        shapes = plan.group_shapes
        if len(shapes) > sh.ngroups or len(plan.group_entries) > sh.gcap:
            raise KernelError("internal: the plan's groups do not fit the loaded programs' shape")
        if not cleared:
            self.clear_groups(slot)
        # the groups' Bloom filters (compiler/groups.py: bloom_words)
        words = sh.gcap // 2
        layout, bloom = bloom_words(plan.group_entries, len(shapes), words)
        base = slot * words
        bpfsys.update_batch(self.maps["ebpfw_gbloom"], array("I", range(base, base + words)).tobytes(),
                            array("Q", bloom).tobytes(), words, "ebpfw_gbloom")
        keys, vals = [], []
        for g in range(sh.ngroups):
            keys.append(slot * sh.ngroups + g)
            if g < len(shapes):
                gs = shapes[g]
                vals.append(GRP.pack(gs.src_mask, gs.dst_mask, 1 if gs.proto else 0, gs.port, 1, 1 if gs.iif else 0,
                                     *layout[g]))
            else:
                vals.append(GRP.pack(0, 0, 0, 0, 0, 0, 0, 0))
        self._batch("ebpfw_grp", keys, vals)
        none = [0xFFFFFFFF] * GRP_IDS
        kb = b"".join(GRP_KEY.pack(slot, gid, struct.pack(">I", src), struct.pack(">I", dst), pp, iif)
                      for gid, src, dst, pp, iif in plan.group_entries)
        vb = b"".join(GRP_VAL.pack(*(ids + none)[:GRP_IDS]) for ids in plan.group_entries.values())
        bpfsys.update_batch(self.maps["ebpfw_gent"], kb, vb, len(plan.group_entries), "ebpfw_gent")
        if "grange" in sh.fields:
            if not ranges_same:
                self._write_ranges(slot, getattr(plan, "group_ranges", None) or [None, None])

    def _write_ranges(self, slot: int, ranges: list) -> None:
        """Port -> interval id of the range groups, per side (a side without range groups: 0),
        four 16-bit ids per 64-bit entry."""
        ids = array("H")
        for b in ranges:
            side = array("H", bytes(2 * 65536))
            if b is not None:
                if len(b) - 1 > 65536:
                    raise KernelError("internal: more port intervals than the datapath's 16-bit ids")
                for i in range(len(b) - 1):
                    side[b[i]:b[i + 1]] = array("H", [i]) * (b[i + 1] - b[i])
            ids.extend(side)
        base = slot * GRNG_SLOTS
        keys = array("I", range(base, base + GRNG_SLOTS)).tobytes()
        raw = ids.tobytes()   # little endian: id of port 4k + j in bits 16j..16j+15 of entry k
        bpfsys.update_batch(self.maps["ebpfw_grng"], keys, raw, GRNG_SLOTS, "ebpfw_grng")

    def clear_groups(self, slot: int) -> int:
        """Delete `slot`'s group keys (after a flip the old slot's keys only cost memory)."""
        if "ebpfw_gent" not in self.maps:
            return 0
        fd = self.maps["ebpfw_gent"]
        mine = [k for k in bpfsys.hash_keys(fd, GRP_KEY.size, GRP_VAL.size) if U32.unpack_from(k)[0] == slot]
        bpfsys.delete_batch(fd, b"".join(mine), len(mine))
        return len(mine)

    def _write_mac(self, slot: int, classes: dict[bytes, int] | None) -> None:
        """(slot, MAC) -> class for every MAC rules name, and the slot's default entry."""
        fd = self.maps["ebpfw_mac"]
        classes = classes if classes is not None else {b"": 0}
        if len(classes) - 1 > self.shape.mac_cap:
            raise KernelError("internal: more MAC addresses than the loaded programs' map holds")
        for k in bpfsys.keys(fd, MAC_KEY.size):
            if MAC_KEY.unpack(k)[0] == slot:
                bpfsys.delete(fd, k)
        for mac, cls in classes.items():
            key = MAC_KEY.pack(slot, mac if mac else b"\0" * 6, 0 if mac else 1, 0)
            bpfsys.update(fd, key, U32.pack(cls), "ebpfw_mac")

    def write_reject_config(self) -> None:
        """REJECT follows this namespace's net.ipv4.icmp_ratelimit, ip_default_ttl and fwmark_reflect."""
        rl_ms = _sysctl("icmp_ratelimit", 1000)
        ttl = _sysctl("ip_default_ttl", 64)
        flags = REJCFG_FWMARK_REFLECT if _sysctl("fwmark_reflect", 0) else 0
        bpfsys.update(self.maps["ebpfw_rejcfg"], U32.pack(0), REJ_CFG.pack(rl_ms * 1_000_000, ttl, flags),
                      "ebpfw_rejcfg")

    def write_ct_config(self, timeouts: dict[str, int] | None = None, tcp_loose: bool | None = None) -> None:
        """Timeouts (EBPFW_CT_TIMEOUTS over netfilter's defaults) and the TCP transition table."""
        if tcp_loose is None:
            tcp_loose = ctdata.tcp_loose_from_env()
        bpfsys.update(self.maps["ebpfw_ctcfg"], U32.pack(0), ctdata.config_bytes(timeouts, tcp_loose),
                      "ebpfw_ctcfg")

    # ---- the host view ----------------------------------------------------------------------
    def _default_classes(self) -> tuple[int, ...]:
        """in_class[2], out_class[2], grp_class[2] of an interface no ruleset knew by name: each
        slot's defaults (ebpfw_meta; 0 for a slot never written)."""
        per = []
        for slot in range(NSLOTS):
            raw = bpfsys.lookup(self.maps["ebpfw_meta"], U32.pack(slot), META.size)
            per.append(META.unpack(raw)[2:5] if raw is not None else (0, 0, 0))
        return tuple(per[s][i] for i in range(3) for s in range(NSLOTS))

    def write_host(self, links, local_addrs, judged_ifindexes: set[int]) -> None:
        """MAC and attachment of every interface (their per-slot classes, written by write_slot,
        are kept; a new interface gets the slots' defaults), and the local addresses."""
        fd = self.maps["ebpfw_ifinfo"]
        want = {}
        for link in links:
            mac = (link.mac + b"\0" * 6)[:6]
            key = U32.pack(link.ifindex)
            raw = bpfsys.lookup(fd, key, IFINFO.size)
            classes = IFINFO.unpack(raw)[3:] if raw is not None else self._default_classes()
            want[key] = IFINFO.pack(mac, 1 if link.ifindex in judged_ifindexes else 0, 0, *classes)
        for k in bpfsys.keys(fd, 4):
            if k not in want:
                bpfsys.delete(fd, k)
        for k, v in want.items():
            bpfsys.update(fd, k, v, "ebpfw_ifinfo")
        fd = self.maps["ebpfw_local"]
        want_local = {struct.pack(">I", a) for _, a, _ in local_addrs}
        for k in bpfsys.keys(fd, 4):
            if k not in want_local:
                bpfsys.delete(fd, k)
        for k in want_local:
            bpfsys.update(fd, k, b"\x01", "ebpfw_local")
        if "ebpfw_atype" in self.maps:
            self.write_addrtypes(addrtype_routes())

    def write_addrtypes(self, routes: dict[tuple[int, int], tuple[int, int]]) -> None:
        """Replace the addrtype trie: (address, prefixlen) -> (RTN type, ifindex)."""
        if len(routes) > ATYPE_CAP:
            raise KernelError(f"{len(routes)} routes decide address types (-m addrtype), more than the "
                              f"{ATYPE_CAP} the datapath holds",
                              hint="rules with -m addrtype need a routing table with fewer local, broadcast, "
                                   "anycast and multicast routes")
        fd = self.maps["ebpfw_atype"]
        want = {ATYPE_KEY.pack(plen, struct.pack(">I", addr)): ATYPE_VAL.pack(t, ifx)
                for (addr, plen), (t, ifx) in routes.items()}
        for k in bpfsys.keys(fd, ATYPE_KEY.size):
            if k not in want:
                bpfsys.delete(fd, k)
        for k, v in want.items():
            bpfsys.update(fd, k, v, "ebpfw_atype")

    # ---- reading ------------------------------------------------------------------------------
    def slot_image(self, slot: int) -> dict[str, object]:
        """Everything the datapath reads of `slot`, with the slot taken out of the keys: the
        live part of each table (vectors up to the class count, rules, ranks and counters up
        to the rule count, ...). Two slots written from the same plan have equal images."""
        sh = self.shape
        meta = bpfsys.lookup(self.maps["ebpfw_meta"], U32.pack(slot), META.size) or b""
        nrules, nchains = META.unpack(meta)[:2] if meta else (0, 0)
        resn = U32.unpack(bpfsys.lookup(self.maps["ebpfw_resn"], U32.pack(slot), 4) or b"\0\0\0\0")[0]
        img: dict[str, object] = {"meta": meta, "resn": resn}

        def arr(name: str, per_slot: int, count: int, size: int) -> bytes:
            return bpfsys.lookup_array(self.maps[name], slot * per_slot, count, size) if count else b""

        rules = arr("ebpfw_rule", sh.rcap, nrules, RULE.size)
        img["rule"] = rules
        img["cnt"] = self._percpu_range("ebpfw_cnt", slot * sh.rcap, nrules)
        img["chain"] = arr("ebpfw_chain", sh.ccap, nchains, CHAIN.size)
        img["pcnt"] = self._percpu_range("ebpfw_pcnt", slot * sh.ccap, nchains)
        img["rank"] = arr("ebpfw_rank", sh.rcap + 1, nrules + 1, 4)
        img["unrank"] = arr("ebpfw_unrank", sh.rcap, resn, 4)
        used: set[int] = {0}
        for name, per_slot in (("ebpfw_proto", PROTO_SLOTS), ("ebpfw_sport", PORT_SLOTS), ("ebpfw_dport", PORT_SLOTS),
                               ("ebpfw_xsport", PORT_SLOTS), ("ebpfw_xdport", PORT_SLOTS),
                               ("ebpfw_tcpfl", TCPFL_SLOTS), ("ebpfw_icmp", PORT_SLOTS), ("ebpfw_ctcls", CT_SLOTS),
                               ("ebpfw_length", LENGTH_SLOTS), ("ebpfw_ttl", TTL_SLOTS), ("ebpfw_tos", TOS_SLOTS),
                               ("ebpfw_frag", FRAG_SLOTS), ("ebpfw_tcpmss", MSS_SLOTS),
                               ("ebpfw_pkttype", PKTTYPE_SLOTS), ("ebpfw_atsrc", ATYPE_SLOTS),
                               ("ebpfw_atdst", ATYPE_SLOTS)):
            if name in self.maps:
                raw = arr(name, per_slot, per_slot, 4)
                img[name] = raw
                used.update(array("I", raw))
        slot_be = struct.pack(">I", slot)
        for name in ("ebpfw_src", "ebpfw_dst"):
            if name in self.maps:
                fd = self.maps[name]
                img[name] = {k[:4] + k[8:]: bpfsys.lookup(fd, k, 4) for k in bpfsys.keys(fd, LPM_KEY.size)
                             if k[4:8] == slot_be}
                used.update(U32.unpack(v)[0] for v in img[name].values())
        # the interfaces' classes in this slot (in, out, group)
        fd = self.maps["ebpfw_ifinfo"]
        img["ifclass"] = {}
        for k in bpfsys.keys(fd, 4):
            v = bpfsys.lookup(fd, k, IFINFO.size)
            if v is not None:
                c = IFINFO.unpack(v)[3:]
                img["ifclass"][k] = (c[slot], c[2 + slot], c[4 + slot])
                used.update((c[slot], c[2 + slot]))
        if "ebpfw_mac" in self.maps:
            fd = self.maps["ebpfw_mac"]
            img["ebpfw_mac"] = {k[4:]: bpfsys.lookup(fd, k, 4) for k in bpfsys.keys(fd, MAC_KEY.size)
                                if MAC_KEY.unpack(k)[0] == slot}
            used.update(U32.unpack(v)[0] for v in img["ebpfw_mac"].values())
        if meta:
            used.update(META.unpack(meta)[2:5])   # the default classes (not .raw)
        # the vectors of every class some table names
        fd = self.maps["ebpfw_vec"]
        img["vec"] = {c: bpfsys.lookup(fd, U32.pack(slot * sh.vcap + c), sh.vec_bytes) for c in sorted(used)
                      if c < sh.vcap}
        if "ebpfw_gent" in self.maps:
            fd = self.maps["ebpfw_gent"]
            img["ebpfw_grp"] = arr("ebpfw_grp", sh.ngroups, sh.ngroups, GRP.size)
            img["ebpfw_gbloom"] = arr("ebpfw_gbloom", sh.gcap // 2, sh.gcap // 2, 8)
            img["ebpfw_gent"] = {k[4:]: bpfsys.lookup(fd, k, GRP_VAL.size)
                                 for k in bpfsys.hash_keys(fd, GRP_KEY.size, GRP_VAL.size)
                                 if U32.unpack_from(k)[0] == slot}
        if "ebpfw_grng" in self.maps:
            img["ebpfw_grng"] = arr("ebpfw_grng", GRNG_SLOTS, GRNG_SLOTS, 8)
        if "ebpfw_setm" in self.maps:
            img["ebpfw_setm"] = arr("ebpfw_setm", sh.rcap, nrules, SETM.size)
        # not compared: -m limit buckets and hashlimit tables start from the time of the write
        return img

    def _percpu_range(self, name: str, first: int, count: int) -> list[tuple[int, int]]:
        ncpu = bpfsys.possible_cpus()
        raw = bpfsys.lookup_array(self.maps[name], first, count, COUNTER.size * ncpu)
        out = []
        for k in range(count):
            p = b = 0
            base = k * COUNTER.size * ncpu
            for i in range(ncpu):
                pp, bb = COUNTER.unpack_from(raw, base + i * COUNTER.size)
                p += pp
                b += bb
            out.append((p, b))
        return out

    def read_counters(self, slot: int, nrules: int, nchains: int) -> tuple[list, list]:
        sh = self.shape
        return (self._percpu_range("ebpfw_cnt", slot * sh.rcap, nrules),
                self._percpu_range("ebpfw_pcnt", slot * sh.ccap, nchains))

    def read_ct_stats(self) -> dict[str, int]:
        fd = self.ct_maps.get("ebpfw_ctstat")
        if fd is None:
            return {}
        ncpu = bpfsys.possible_cpus()
        out = {}
        for i, name in enumerate(CT_STATS):
            raw = bpfsys.lookup(fd, U32.pack(i), 8 * ncpu)
            out[name] = sum(struct.unpack(f"<{ncpu}Q", raw)) if raw else 0
        return out

    def read_stats(self) -> dict[str, int]:
        ncpu = bpfsys.possible_cpus()
        out = {}
        for i, name in enumerate(STATS):
            raw = bpfsys.lookup(self.maps["ebpfw_stat"], U32.pack(i), 8 * ncpu)
            out[name] = sum(struct.unpack(f"<{ncpu}Q", raw)) if raw else 0
        return out


# ---- -m addrtype: the host's routes as inet_dev_addr_type() sees them -----------------------------
RT_TABLE_MAIN, RT_TABLE_LOCAL = 254, 255
RTN_UNICAST = 1
# route types whose lookup fails in fib_table_lookup (blackhole, unreachable, prohibit, throw,
# nat, xresolve): inet_dev_addr_type() then answers RTN_UNICAST
_RTN_ERROR = {6, 7, 8, 9, 10, 11}
RTNH_F_DEAD = 1


def _mask(plen: int) -> int:
    return (0xFFFFFFFF << (32 - plen)) & 0xFFFFFFFF if plen else 0


def addrtype_routes(dump=None) -> dict[tuple[int, int], tuple[int, int]]:
    """The routes that decide xt_addrtype's answer, as {(address, prefixlen): (RTN type,
    ifindex of the first next hop)}.

    inet_dev_addr_type() looks the address up in the local table (tos 0) and answers the
    route's type, RTN_UNICAST when no route matches or the route is an error route, and
    RTN_UNICAST when a device is given that is not the route's. While no policy-routing rule
    was added the kernel keeps the local and main tables in one trie, so main routes take part
    too. Only routes that answer something else than UNICAST matter, and unicast ones nested
    inside them (they shadow them); the rest is left out. `dump` (for tests) is a list of
    (table, type, dst, prefixlen, tos, priority, flags, ifindex); by default it is read from
    the kernel."""
    if dump is None:
        dump, merged = _dump_routes()
    else:
        merged = True
    tables = (RT_TABLE_LOCAL, RT_TABLE_MAIN) if merged else (RT_TABLE_LOCAL,)
    best: dict[tuple[int, int], tuple] = {}
    for table, rtype, dst, plen, tos, prio, flags, ifx in dump:
        if table not in tables or tos or flags & RTNH_F_DEAD:
            continue
        key = (dst & _mask(plen), plen)
        rank = (prio, tables.index(table))
        if key not in best or rank < best[key][0]:
            best[key] = (rank, RTN_UNICAST if rtype in _RTN_ERROR else rtype, ifx)
    special = [k for k, v in best.items() if v[1] != RTN_UNICAST]
    out = {}
    for (addr, plen), (_, rtype, ifx) in best.items():
        if rtype == RTN_UNICAST and not any(sp <= plen and (addr & _mask(sp)) == sa for sa, sp in special):
            continue
        out[(addr, plen)] = (rtype, ifx)
    return out


def _dump_routes() -> tuple[list, bool]:
    """All IPv4 routes of this namespace, and whether the local and main tables are merged
    (only the three default rules: local, main, default)."""
    import socket
    try:
        from pyroute2 import IPRoute
        with IPRoute() as ipr:
            msgs = ipr.get_routes(family=socket.AF_INET)   # every table
            rules = ipr.get_rules(family=socket.AF_INET)
    except Exception as exc:
        raise KernelError(f"cannot read the routing tables (for -m addrtype): {exc}") from exc
    out = []
    for m in msgs:
        table = m.get_attr("RTA_TABLE") or m["table"]
        dst = m.get_attr("RTA_DST")
        addr = int.from_bytes(socket.inet_aton(dst), "big") if dst else 0
        ifx = m.get_attr("RTA_OIF") or 0
        mp = m.get_attr("RTA_MULTIPATH")
        if not ifx and mp:
            ifx = mp[0]["oif"]
        out.append((table, m["type"], addr, m["dst_len"], m["tos"], m.get_attr("RTA_PRIORITY") or 0,
                    m["flags"], ifx))
    merged = {(r.get_attr("FRA_TABLE") or r["table"]) for r in rules} <= {RT_TABLE_LOCAL, RT_TABLE_MAIN, 253} \
        and len(rules) <= 3
    return out, merged
