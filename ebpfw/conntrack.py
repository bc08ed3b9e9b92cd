"""Connection tracking, the operator's side: list, flush and count the pinned table, build the
programs around it, and seed it from the kernel's own conntrack when ebpfw starts enforcing on
a live host.

Contract:
- The table is `<pin_dir>/ct` (an LRU hash, struct ebpfw_ct_key -> struct ebpfw_ct_val) and its
  statistics `<pin_dir>/ct_stat`; both live outside the generation directories, so re-applies
  and program swaps keep every connection. `ebpfw detach` removes them with the pin directory.
- `build_datapath(shape, pins)` is what apply calls instead of `Datapath.build`: when the shape
  tracks connections it keeps the pinned table (bcc reopens it), replaces it by one of the new
  size when EBPFW_CT_SIZE changed (copying the entries that fit), and seeds a table it created
  from the kernel's conntrack (pyroute2), so connections made before ebpfw are not cut
  (EBPFW_CT_SEED=0 turns seeding off).
- Evictions: the kernel's LRU drops entries silently when the table is full, so ebpfw derives
  them: every entry the datapath or userspace inserted and nobody deleted, but that is no
  longer in the table, was evicted (created + seeded - deleted - flushed - entries now).
"""

from __future__ import annotations

import ctypes as ctt
import os
import socket
import time
from pathlib import Path
from typing import Optional

from . import state
from .datapath import Datapath, Shape, bpfsys
from .datapath import ct as ctdata
from .datapath.abi import CT_KEY, CT_STAT, CT_STATS, CT_TABLE, CT_VAL, U32
from .errors import EbpfwError, KernelError, StateError

IPS_SEEN_REPLY = 1 << 1
IPS_ASSURED = 1 << 2


def _now_ns() -> int:
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC)   # the clock of bpf_ktime_get_ns


# ---- raw table access ----------------------------------------------------------------------------

def dump(fd: int, chunk: int = 4096) -> list[tuple[bytes, bytes]]:
    """Every (key, value) of the conntrack table, with batched lookups."""
    ks, vs = CT_KEY.size, CT_VAL.size
    lib = bpfsys._lib
    out: list[tuple[bytes, bytes]] = []
    keys = ctt.create_string_buffer(ks * chunk)
    vals = ctt.create_string_buffer(vs * chunk)
    token_in = None
    token_out = ctt.create_string_buffer(16)
    while True:
        n = ctt.c_uint32(chunk)
        rc = lib.bpf_map_lookup_batch(fd, token_in, token_out, keys, vals, ctt.byref(n), None)
        err = ctt.get_errno() if rc != 0 else 0
        kr, vr = keys.raw, vals.raw
        for i in range(n.value):
            out.append((kr[i * ks:(i + 1) * ks], vr[i * vs:(i + 1) * vs]))
        if rc != 0:
            if err == 2:        # ENOENT: the end of the table
                return out
            if not out and err in (22, 95, 524):   # no batch operation: one key at a time
                return _dump_slow(fd)
            raise KernelError(f"reading the conntrack table: {os.strerror(err)} (errno {err})")
        token_in = ctt.create_string_buffer(token_out.raw, 16)


def _dump_slow(fd: int) -> list[tuple[bytes, bytes]]:
    out = []
    for k in bpfsys.keys(fd, CT_KEY.size):
        v = bpfsys.lookup(fd, k, CT_VAL.size)
        if v is not None:
            out.append((k, v))
    return out


def _stat_add(fd: int, index: int, n: int) -> None:
    """Add n to CPU 0's slot of a per-CPU statistic (only userspace writes these indexes)."""
    ncpu = bpfsys.possible_cpus()
    raw = bpfsys.lookup(fd, U32.pack(index), 8 * ncpu) or b"\0" * (8 * ncpu)
    first = int.from_bytes(raw[:8], "little") + n
    bpfsys.update(fd, U32.pack(index), first.to_bytes(8, "little") + raw[8:], "conntrack statistics")


def _stats(fd: int) -> dict[str, int]:
    ncpu = bpfsys.possible_cpus()
    out = {}
    for i, name in enumerate(CT_STATS):
        raw = bpfsys.lookup(fd, U32.pack(i), 8 * ncpu)
        out[name] = ctdata.unpack_stat_values(raw, ncpu) if raw else 0
    return out


class Table:
    """The pinned conntrack table of this network namespace (opened read-write)."""

    def __init__(self, ct_fd: int, stat_fd: Optional[int]):
        self.fd = ct_fd
        self.stat_fd = stat_fd

    @classmethod
    def open(cls) -> "Table":
        try:
            pins = state.pin_dir()
        except EbpfwError:
            pins = None
        path = pins / CT_TABLE if pins else None
        if path is None or not path.exists():
            raise StateError("no connection tracking table in this network namespace",
                             hint="conntrack runs once an applied ruleset uses -m conntrack or -m state")
        stat = pins / CT_STAT
        return cls(bpfsys.get(str(path)), bpfsys.get(str(stat)) if stat.exists() else None)

    def close(self) -> None:
        for fd in (self.fd, self.stat_fd):
            if fd is not None:
                os.close(fd)

    def __enter__(self) -> "Table":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def entries(self) -> list[ctdata.Entry]:
        return [ctdata.decode(k, v) for k, v in dump(self.fd)]

    def flush(self) -> int:
        n = 0
        for k, _ in dump(self.fd):
            n += bpfsys.delete(self.fd, k)
        if self.stat_fd is not None and n:
            _stat_add(self.stat_fd, CT_STATS.index("flushed"), n)
        return n

    def stats(self) -> dict:
        info = bpfsys.map_info(self.fd)
        now = _now_ns()
        rows = dump(self.fd)
        expired = sum(1 for _, v in rows if CT_VAL.unpack(v)[0] <= now)
        out = {"entries": len(rows), "expired_not_removed": expired, "size": info.max_entries}
        if self.stat_fd is not None:
            s = _stats(self.stat_fd)
            out.update(s)
            out["evictions"] = max(0, s["created"] + s["seeded"] - s["deleted"] - s["flushed"] - len(rows))
        return out


# ---- listing -------------------------------------------------------------------------------------

def entry_dict(e: ctdata.Entry, now_ns: Optional[int] = None) -> dict:
    now_ns = _now_ns() if now_ns is None else now_ns
    flags = []
    if not e.seen_reply:
        flags.append("UNREPLIED")
    if e.assured:
        flags.append("ASSURED")
    if e.status & ctdata.STATUS_SEEDED:
        flags.append("SEEDED")
    return {
        "proto": e.proto_name, "protonum": e.proto, "state": e.state or None,
        "timeout": max(0, (e.expires_ns - now_ns) // 1_000_000_000),
        "expired": e.expires_ns <= now_ns,
        "original": {**e.orig(), "packets": e.packets[0], "bytes": e.bytes[0]},
        "reply": {**e.reply(), "packets": e.packets[1], "bytes": e.bytes[1]},
        "flags": flags,
        "mark": e.mark,
    }


def format_entry(d: dict) -> str:
    """One line in the style of `conntrack -L`."""
    def side(t: dict) -> str:
        parts = [f"src={t['src']}", f"dst={t['dst']}"]
        if "sport" in t:
            parts += [f"sport={t['sport']}", f"dport={t['dport']}"]
        if "type" in t:
            parts += [f"type={t['type']}", "code=0", f"id={t['id']}"]
        parts += [f"packets={t['packets']}", f"bytes={t['bytes']}"]
        return " ".join(parts)

    head = f"{d['proto']:<8} {d['protonum']} {d['timeout']}"
    if d["state"]:
        head += f" {d['state']}"
    orig, reply = side(d["original"]), side(d["reply"])
    flags = [f for f in d["flags"] if f != "UNREPLIED"]
    out = f"{head} {orig}" + (" [UNREPLIED]" if "UNREPLIED" in d["flags"] else "") + f" {reply}"
    for f in flags:
        if f != "SEEDED":
            out += f" [{f}]"
    out += f" mark={d.get('mark', 0)}"      # conntrack -L prints the mark after the flags
    if "SEEDED" in flags:
        out += " [SEEDED]"
    return out


def list_entries(include_expired: bool = False) -> list[dict]:
    with Table.open() as t:
        rows = t.entries()
    now = _now_ns()
    out = [entry_dict(e, now) for e in rows]
    if not include_expired:
        out = [d for d in out if not d["expired"]]
    out.sort(key=lambda d: (d["protonum"], d["original"]["src"], d["original"]["dst"],
                            d["original"].get("sport", 0), d["original"].get("dport", 0)))
    return out


def flush() -> int:
    with Table.open() as t:
        return t.flush()


def stats() -> dict:
    with Table.open() as t:
        return t.stats()


# ---- building the programs around the pinned table ----------------------------------------------

def build_datapath(shape: Shape, pins: Path) -> Datapath:
    """Datapath.build for apply: share, resize or create-and-seed the pinned table."""
    if "ct" not in shape.fields:
        return Datapath.build(shape, ct_dir=pins)   # pins also holds the live sets (ebpfw.sets)
    path = pins / CT_TABLE
    old_fd = None
    if path.exists():
        fd = bpfsys.get(str(path))
        info = bpfsys.map_info(fd)
        if info.key_size != CT_KEY.size or info.value_size != CT_VAL.size:
            os.close(fd)         # a table of another ebpfw version: start afresh
            path.unlink()
        elif info.max_entries != shape.ct_size:
            old_fd = fd          # resized: move the entries over once the new table exists
            path.unlink()
        else:
            os.close(fd)
    fresh = not path.exists()
    try:
        dp = Datapath.build(shape, ct_dir=pins)
    except Exception:
        if old_fd is not None and not path.exists():
            bpfsys.pin(old_fd, str(path))
        raise
    if old_fd is not None:
        try:
            rows = dump(old_fd)
            for k, v in rows:
                try:
                    bpfsys.update(dp.ct_maps["ebpfw_ct"], k, v, "conntrack table")
                except KernelError:
                    break
        finally:
            os.close(old_fd)
    elif fresh and os.environ.get("EBPFW_CT_SEED", "1").strip() not in ("0", "no", "false"):
        seed_from_kernel(dp.ct_maps["ebpfw_ct"], dp.ct_maps.get("ebpfw_ctstat"))
    return dp


# ---- seeding from the kernel's conntrack ---------------------------------------------------------

def kernel_entries() -> list:
    """The kernel's conntrack entries in this network namespace (IPv4), or [] when the kernel
    tracks nothing here (no nf_conntrack module, or no entries)."""
    try:
        from pyroute2 import Conntrack
    except ImportError:
        return []
    try:
        ct = Conntrack()
    except Exception:
        return []
    try:
        return [e for e in ct.dump_entries() if e.tuple_orig.family == socket.AF_INET]
    except Exception:
        return []
    finally:
        ct.close()


def seed_value(e, now_ns: int, timeouts: dict[str, int]) -> Optional[tuple[bytes, bytes]]:
    """(key, value) for a kernel conntrack entry, or None when ebpfw cannot represent it
    (NAT, where the reply tuple is not the inverted original)."""
    o, r = e.tuple_orig, e.tuple_reply
    if r.saddr != o.daddr or r.daddr != o.saddr:
        return None
    proto = o.proto
    if proto in (6, 17) and (r.sport != o.dport or r.dport != o.sport):
        return None
    if proto == 1:
        if o.icmp_type not in ctdata.ICMP_REPLY:
            return None
        key, orig_a = ctdata.make_key(1, o.saddr, o.daddr, icmp_type=o.icmp_type, icmp_id=o.icmp_id or 0)
    else:
        key, orig_a = ctdata.make_key(proto, o.saddr, o.daddr, o.sport or 0, o.dport or 0)
    tcp_state = 0
    if proto == 6:
        tcp_state = e.protoinfo.state if e.protoinfo is not None and e.protoinfo.state is not None else 3
        if tcp_state > 9:
            return None
    status = ctdata.STATUS_SEEDED
    if (e.status or 0) & IPS_SEEN_REPLY:
        status |= ctdata.STATUS_SEEN_REPLY
    if (e.status or 0) & IPS_ASSURED:
        status |= ctdata.STATUS_ASSURED
    left = int(e.timeout or 0)
    if left <= 0:
        return None
    val = ctdata.encode_value(orig_a, tcp_state, status, now_ns + left * 1_000_000_000,
                              now_ns - 3 * 1_000_000_000,   # older than 2 s: UDP streams stay streams
                              mark=int(getattr(e, "mark", 0) or 0))   # the kernel's ct mark goes along
    return key, val


def seed_from_kernel(ct_fd: int, stat_fd: Optional[int]) -> dict:
    """Copy the kernel's tracked connections into an ebpfw table; returns counts."""
    entries = kernel_entries()
    now = _now_ns()
    timeouts = ctdata.timeouts_from_env()
    seeded = skipped = 0
    for e in entries:
        kv = seed_value(e, now, timeouts)
        if kv is None:
            skipped += 1
            continue
        if bpfsys.lookup(ct_fd, kv[0], CT_VAL.size) is not None:
            continue
        try:
            bpfsys.update(ct_fd, kv[0], kv[1], "conntrack table")
        except KernelError:
            skipped += 1
            continue
        seeded += 1
    if stat_fd is not None and seeded:
        _stat_add(stat_fd, CT_STATS.index("seeded"), seeded)
    return {"kernel_entries": len(entries), "seeded": seeded, "skipped": skipped}


__all__ = ["Table", "build_datapath", "dump", "entry_dict", "flush", "format_entry", "kernel_entries",
           "list_entries", "seed_from_kernel", "stats"]
