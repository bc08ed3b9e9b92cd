"""The lists of `-m recent` (xt_recent): one table per --name, shared by every rule that names it.

All tables live in one BPF array pinned at <pin_dir>/recent, outside the generation directories
(like the conntrack table and the sets), so a re-apply whose ruleset still names a list keeps
it, as the kernel keeps /proc/net/xt_recent/NAME across an iptables-restore that keeps the
name; a list no rule names any more is flushed and its table freed after the new ruleset took
effect (recent_mt_destroy when the last rule goes). `ebpfw detach` removes the pin directory,
and with it every list (the kernel too loses them when the rules go).

A table (programs/ebpfw.c struct ebpfw_recent_tbl) holds up to ip_list_tot addresses (the
host's xt_recent parameter, read from /sys/module/xt_recent/parameters: 100 unless the module
was loaded with another value), each with its TTL and its last 32 times in jiffies. What the
kernel fixes when a table is made is kept as it does: the address --mask of the rule that made
the list (a re-apply with another --mask keeps the old one, as the kernel does), and the
number of stamps per entry (nstamps_max_mask), which only grows; when a new ruleset needs more
stamps than the table has, the kernel flushes the list, and so does `prepare`.
"""

from __future__ import annotations

import ctypes as ct
import ipaddress
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from . import state
from .datapath import bpfsys
from .datapath.abi import (
    RECENT_CMDS, RECENT_ENT_HDR, RECENT_ENT_SIZE, RECENT_HDR, RECENT_PIN, RECENT_STAMPS, RECENT_TABLES, RECENTM,
    U32, recent_value_size,
)
from .errors import EbpfwError, KernelError

PARAMS = Path("/sys/module/xt_recent/parameters")
DEFAULT_LIST_TOT = 100        # xt_recent.c: ip_list_tot
MAX_LIST_TOT = 1024           # the datapath scans a table per packet: bounded for the verifier
XT_RECENT_MAX_NSTAMPS = 65536
BPF_F_LOCK = 4

bpfsys._lib.bpf_map_lookup_elem_flags.argtypes = [ct.c_int, ct.c_void_p, ct.c_void_p, ct.c_uint64]


def host_params(params: Path = PARAMS) -> tuple[int, int]:
    """(ip_list_tot, ip_pkt_list_tot) of the host's xt_recent; its defaults when the module is
    not there (it would be loaded with them)."""
    def read(name: str, default: int) -> int:
        try:
            return int((params / name).read_text().strip())
        except (OSError, ValueError):
            return default
    tot, pkt = read("ip_list_tot", DEFAULT_LIST_TOT), read("ip_pkt_list_tot", 0)
    if not 1 <= tot <= MAX_LIST_TOT:
        raise KernelError(f"xt_recent's ip_list_tot is {tot} on this host, expected 1-{MAX_LIST_TOT} for the "
                          "datapath's -m recent (it scans a list per packet)",
                          hint="load xt_recent with ip_list_tot=100 (the default), or keep -m recent in iptables")
    return tot, pkt


def _roundup_pow2(n: int) -> int:
    return 1 << (n - 1).bit_length()


def nstamps_mask(hitcount: int, ip_pkt_list_tot: int) -> int:
    """recent_mt_check's nstamp_mask for a rule."""
    if ip_pkt_list_tot and hitcount < ip_pkt_list_tot:
        return _roundup_pow2(ip_pkt_list_tot) - 1
    if hitcount:
        return _roundup_pow2(hitcount) - 1
    return 32 - 1


def window_jiffies(seconds: int, hz: int) -> int:
    """recent_mt's `info->seconds * HZ`: an unsigned int product, which wraps at 2^32."""
    return (seconds * hz) & 0xFFFFFFFF


def rule_entry(m, table_id: int, hz: int) -> bytes:
    """struct ebpfw_recentm of a rule."""
    return RECENTM.pack(table_id, RECENT_CMDS[m.command], int(m.invert), int(m.side == "dest"), int(m.rttl),
                        int(m.reap), m.hitcount, window_jiffies(m.seconds, hz))


def _ip(addr: bytes) -> str:
    return str(ipaddress.IPv4Address(addr))


@dataclass
class Entry:
    addr: str
    ttl: int
    last_seen: int            # jiffies
    stamps: list[int]         # jiffies, oldest first
    order: int                # LRU position: 0 = the entry evicted or reaped first


@dataclass
class RecentList:
    id: int
    name: str
    mask: str
    nstamps: int              # the kernel's stamps per entry (nstamps_max_mask + 1)
    entries: list[Entry] = field(default_factory=list)


class RecentStore:
    """The table array of one namespace (pinned) or of one Datapath (its fd)."""

    def __init__(self, fd: int, own: bool = False):
        self.fd = fd
        self._own = own
        info = bpfsys.map_info(fd)
        self.vsize = info.value_size
        self.capacity = (self.vsize - RECENT_HDR.size) // RECENT_ENT_SIZE
        if recent_value_size(self.capacity) != self.vsize or info.max_entries != RECENT_TABLES:
            raise KernelError(f"the recent table map has an unexpected layout (value size {self.vsize})",
                              hint="`ebpfw detach` then apply again")

    @classmethod
    def open(cls, pins: Optional[Path] = None) -> "RecentStore":
        path = (pins or state.pin_dir()) / RECENT_PIN
        if not path.exists():
            raise EbpfwError("no -m recent lists exist in this network namespace",
                             hint="they are made by the first apply of a ruleset with a -m recent rule")
        return cls(bpfsys.get(str(path)), own=True)

    def close(self) -> None:
        if self._own:
            import os
            os.close(self.fd)
            self._own = False

    def __enter__(self) -> "RecentStore":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ---- raw access (under the table's spin lock, so a list is never read half-updated) ----
    def _read(self, tid: int) -> bytes:
        buf = ct.create_string_buffer(self.vsize)
        if bpfsys._lib.bpf_map_lookup_elem_flags(self.fd, U32.pack(tid), buf, BPF_F_LOCK) != 0:
            raise bpfsys._fail("reading a recent list")
        return buf.raw

    def _write(self, tid: int, value: bytes) -> None:
        if bpfsys._lib.bpf_map_update_elem(self.fd, U32.pack(tid), value, BPF_F_LOCK) != 0:
            raise bpfsys._fail("writing a recent list")

    def _fresh(self, name: str, mask: int, kmask: int) -> bytes:
        hdr = RECENT_HDR.pack(0, 0, mask.to_bytes(4, "big"), kmask, 1, 0, name.encode())
        return hdr + bytes(self.vsize - RECENT_HDR.size)

    def headers(self) -> dict[str, tuple[int, tuple]]:
        """name -> (id, header fields) of every table a name owns."""
        out = {}
        for tid in range(RECENT_TABLES):
            hdr = RECENT_HDR.unpack_from(self._read(tid))
            if hdr[4]:
                out[hdr[6].rstrip(b"\0").decode()] = (tid, hdr)
        return out

    # ---- apply ------------------------------------------------------------------------------
    def prepare(self, recent: dict, ip_pkt_list_tot: int) -> dict[str, int]:
        """Give every --name of the plan's recent rules (rule number -> RecentMatch) a table:
        the existing one (flushed when the rules need more stamps per entry than it has, as
        recent_mt_check does), or a new one with the rules' mask. Returns name -> id."""
        need: dict[str, tuple[int, int]] = {}
        for m in recent.values():
            k = nstamps_mask(m.hitcount, ip_pkt_list_tot)
            mask, kmax = need.get(m.name, (m.mask, 0))
            need[m.name] = (mask, max(kmax, k))
        have = self.headers()
        used = {tid for tid, _ in have.values()}
        free = [t for t in range(RECENT_TABLES) if t not in used]
        ids = {}
        for name, (mask, kmask) in need.items():
            if name in have:
                tid, hdr = have[name]
                if kmask > hdr[3]:
                    self._write(tid, self._fresh(name, int.from_bytes(hdr[2], "big"), kmask))
                ids[name] = tid
                continue
            if not free:
                raise EbpfwError(f"too many -m recent lists: at most {RECENT_TABLES} names at once",
                                 hint="use fewer --name values")
            tid = free.pop(0)
            self._write(tid, self._fresh(name, mask, kmask))
            ids[name] = tid
        return ids

    def release_unused(self, names: set[str]) -> list[str]:
        """Flush and free the tables of names no rule uses any more; returns those names."""
        gone = []
        for name, (tid, _) in self.headers().items():
            if name not in names:
                self._write(tid, bytes(self.vsize))
                gone.append(name)
        return sorted(gone)

    # ---- the `ebpfw recent` commands --------------------------------------------------------
    def _get(self, name: str) -> tuple[int, tuple]:
        have = self.headers()
        if name not in have:
            known = ", ".join(sorted(have)) or "none"
            raise EbpfwError(f"no -m recent list named {name!r} in this network namespace, expected one of: {known}")
        return have[name]

    def get(self, name: str) -> RecentList:
        tid, _ = self._get(name)
        raw = self._read(tid)
        _, nent, mask, kmask, _, _, _ = RECENT_HDR.unpack_from(raw)
        out = RecentList(tid, name, _ip(mask), kmask + 1)
        rows = []
        for i in range(self.capacity):
            off = RECENT_HDR.size + i * RECENT_ENT_SIZE
            addr, used, ttl, index, nstamps, seq = RECENT_ENT_HDR.unpack_from(raw, off)
            if not used:
                continue
            stamps = list(struct.unpack_from(f"<{RECENT_STAMPS}Q", raw, off + RECENT_ENT_HDR.size))
            # the ring, oldest first: slots index..31 then 0..index-1 when it has wrapped
            n = nstamps
            ring = stamps[index:n] + stamps[:index] if n == RECENT_STAMPS else stamps[:n]
            ring = ring[-(kmask + 1):]    # what the kernel's smaller ring would still hold
            rows.append((seq, Entry(_ip(addr), ttl, ring[-1], ring, 0)))
        rows.sort(key=lambda r: r[0])
        for order, (_, e) in enumerate(rows):
            e.order = order
            out.entries.append(e)
        return out

    def flush(self, name: str) -> int:
        """Empty one list, like `echo / > /proc/net/xt_recent/NAME`; returns the entries dropped."""
        tid, hdr = self._get(name)
        n = RECENT_HDR.unpack_from(self._read(tid))[1]
        self._write(tid, self._fresh(name, int.from_bytes(hdr[2], "big"), hdr[3]))
        return n


def format_list(lst: RecentList) -> str:
    """/proc/net/xt_recent/NAME's lines, oldest entry first: src, ttl, last_seen, the stamps."""
    lines = []
    for e in lst.entries:
        lines.append(f"src={e.addr} ttl: {e.ttl} last_seen: {e.last_seen} oldest_pkt: {len(e.stamps)} "
                     + ", ".join(str(s) for s in e.stamps))
    return "\n".join(lines) + ("\n" if lines else "")
