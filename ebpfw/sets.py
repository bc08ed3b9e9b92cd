"""Live ipsets for `-m set --match-set NAME src|dst[,...]`: load, add, delete, list, flush.

Every set lives in one BPF LPM trie pinned at <pin_dir>/sets, and the definitions (name, type,
element count, maxelem, bitmap:port range) in an array pinned at <pin_dir>/set_defs, both
outside the generation directories (like the conntrack table), so they outlive re-applies and
an `add`/`del` is one map update that packets see at once. Key of an element (programs/ebpfw.c
struct ebpfw_set_key): prefix length 64 + address prefix (64 for bitmap:port), then set id,
proto << 16 | port (0 for hash:ip / hash:net; the port alone for bitmap:port) and the address,
all big endian: a packet's key (full length) finds an element exactly as the kernel's set
types test it (no `nomatch` elements; sets with timeouts are refused).

`ebpfw apply --sets FILE` calls `load` with the sets of FILE (each set named there gets exactly
the file's elements; other loaded sets stay as they are); without --sets the loaded sets stay
as they are and the rules may name any of them. The maps exist once programs with a -m set rule
have been built (the first apply of such a ruleset).
"""

from __future__ import annotations

import os
import struct
from dataclasses import replace
from pathlib import Path
from typing import Optional

from . import state
from .datapath import bpfsys
from .datapath.abi import NSETS, SETDEF, SETDEF_PIN, SETS_PIN
from .errors import EbpfwError, RulesetError
from .ipset import IpSet, IpSetEntry, parse_ipsets, save_ipsets

TYPES = {"hash:ip": 1, "hash:net": 2, "hash:ip,port": 3, "hash:net,port": 4, "bitmap:port": 5}
TYPE_NAMES = {v: k for k, v in TYPES.items()}
KEY = struct.Struct("<I4s4s4s")            # prefixlen; id, pp, addr (big endian)
VAL = struct.Struct("<I")


def element_key(set_id: int, st_type: str, e: IpSetEntry) -> bytes:
    be = struct.Struct(">I").pack
    if st_type == "bitmap:port":
        return KEY.pack(64, be(set_id), be(e.port or 0), be(0))
    pp = ((e.proto or 0) << 16 | (e.port or 0)) if st_type.endswith(",port") else 0
    return KEY.pack(64 + e.prefixlen, be(set_id), be(pp), be(e.addr or 0))


def _entry_of(st_type: str, key: bytes) -> IpSetEntry:
    plen, _, pp_b, addr_b = KEY.unpack(key)
    pp, addr = struct.unpack(">I", pp_b)[0], struct.unpack(">I", addr_b)[0]
    if st_type == "bitmap:port":
        return IpSetEntry(port=pp)
    if st_type.endswith(",port"):
        return IpSetEntry(addr=addr, prefixlen=plen - 64, proto=pp >> 16, port=pp & 0xFFFF)
    return IpSetEntry(addr=addr, prefixlen=plen - 64)


def refuse_unsupported(st: IpSet) -> None:
    """RulesetError (FILE:LINE) for what the datapath does not reproduce: timeouts, IPv6."""
    if st.timeout is not None or any(e.timeout is not None for e in st.entries):
        raise RulesetError(f"set '{st.name}' has timeouts", problems=[
            f"{st.pos}: set '{st.name}' with timeout is not supported by the datapath yet, expected a set "
            "without timeout, found 'timeout'"])
    if st.family != "inet":
        raise RulesetError(f"set '{st.name}' is not IPv4", problems=[
            f"{st.pos}: set '{st.name}' of family {st.family}, expected family inet"])


class SetStore:
    """The pinned set maps of one network namespace (pin_dir)."""

    def __init__(self, pins: Optional[Path] = None, fds: Optional[tuple[int, int]] = None):
        self._own = fds is None
        if fds is None:
            pins = pins or state.pin_dir()
            tpath, dpath = pins / SETS_PIN, pins / SETDEF_PIN
            if not tpath.exists() or not dpath.exists():
                raise EbpfwError("no sets are loaded in this network namespace",
                                 hint="apply a ruleset with a -m set rule and `--sets FILE` (ipset save format)")
            fds = (bpfsys.get(str(tpath)), bpfsys.get(str(dpath)))
        self.trie, self.defs = fds
        self._cache: Optional[dict[str, tuple[int, IpSet, int]]] = None

    def close(self) -> None:
        if self._own:
            for fd in (self.trie, self.defs):
                os.close(fd)
        self.trie = self.defs = -1

    def __enter__(self) -> "SetStore":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ---- definitions ---------------------------------------------------------------------------
    def definitions(self) -> dict[str, tuple[int, IpSet, int]]:
        """name -> (id, the set without elements, element count)."""
        if self._cache is None:
            raw = bpfsys.lookup_array(self.defs, 0, NSETS, SETDEF.size)
            out = {}
            for i in range(NSETS):
                name_b, typ, count, maxelem, first, last, hashsize = SETDEF.unpack_from(raw, i * SETDEF.size)
                if typ == 0:
                    continue
                name = name_b.rstrip(b"\0").decode()
                tname = TYPE_NAMES[typ]
                from .ruleset import Pos
                st = IpSet(name=name, type=tname, pos=Pos("<loaded>", 0),  # type: ignore[arg-type]
                           hashsize=None if tname == "bitmap:port" else hashsize,
                           maxelem=None if tname == "bitmap:port" else maxelem,
                           range=(first, last) if tname == "bitmap:port" else None)
                out[name] = (i, st, count)
            self._cache = out
        return self._cache

    def _write_def(self, set_id: int, st: IpSet, count: int) -> None:
        first, last = st.range or (0, 0)
        maxelem = (last - first + 1) if st.type == "bitmap:port" else (st.maxelem or 65536)
        bpfsys.update(self.defs, struct.pack("<I", set_id),
                      SETDEF.pack(st.name.encode(), TYPES[st.type], count, maxelem, first, last, st.hashsize or 0),
                      "set definitions")
        self._cache = None

    def _get(self, name: str) -> tuple[int, IpSet, int]:
        d = self.definitions().get(name)
        if d is None:
            raise EbpfwError(f"set '{name}' does not exist, expected one of: "
                             + (", ".join(self.definitions()) or "(no sets loaded)"))
        return d

    def _keys_of(self, set_id: int) -> list[bytes]:
        idb = struct.pack(">I", set_id)
        return [k for k in bpfsys.keys(self.trie, KEY.size) if k[4:8] == idb]

    # ---- operations ------------------------------------------------------------------------------
    def load(self, sets: dict[str, IpSet]) -> dict[str, int]:
        """Make each set in `sets` hold exactly its elements (created when new, its type replaced
        when it changed); returns name -> id of every loaded set."""
        for st in sets.values():
            refuse_unsupported(st)
        defs = self.definitions()
        used = {i for i, _, _ in defs.values()}
        for st in sets.values():
            if st.name in defs:
                set_id = defs[st.name][0]
            else:
                free = [i for i in range(1, NSETS) if i not in used]
                if not free:
                    raise EbpfwError(f"no room for set '{st.name}': at most {NSETS - 1} sets")
                set_id = free[0]
                used.add(set_id)
            want = {element_key(set_id, st.type, e) for e in st.entries}
            for k in self._keys_of(set_id):
                if k not in want:
                    bpfsys.delete(self.trie, k)
            one = VAL.pack(1)
            for k in want:
                bpfsys.update(self.trie, k, one, f"set {st.name}")
            self._write_def(set_id, st, len(want))
            defs = self.definitions()
        return {n: d[0] for n, d in self.definitions().items()}

    def _parse_element(self, st: IpSet, element: str) -> list[IpSetEntry]:
        text = save_ipsets([replace(st, entries=())]) + f"add {st.name} {element}\n"
        try:
            parsed = parse_ipsets(text, "<element>")
        except RulesetError as exc:
            msg = "; ".join(p.split(": ", 1)[-1] for p in exc.problems)
            raise EbpfwError(f"bad element for {st.type} set '{st.name}': {msg}") from None
        entries = list(parsed[st.name].entries)
        if any(e.timeout is not None for e in entries):
            raise EbpfwError("element timeouts are not supported by the datapath yet")
        return entries

    def add(self, name: str, element: str, exist: bool = False) -> int:
        """Add ELEMENT (ipset syntax, ranges expand); returns how many entries were new.
        An element already present is an error unless `exist` (ipset add -exist)."""
        set_id, st, count = self._get(name)
        keys = [element_key(set_id, st.type, e) for e in self._parse_element(st, element)]
        new = [k for k in keys if bpfsys.lookup(self.trie, k, VAL.size) is None]
        if not new and not exist:
            raise EbpfwError(f"element {element} is already in set '{name}'", hint="use --exist to ignore")
        maxelem = (st.range[1] - st.range[0] + 1) if st.range else (st.maxelem or 65536)
        if count + len(new) > maxelem:
            raise EbpfwError(f"set '{name}' is full ({count} of maxelem {maxelem})")
        one = VAL.pack(1)
        for k in new:
            bpfsys.update(self.trie, k, one, f"set {name}")
        if new:
            self._write_def(set_id, st, count + len(new))
        return len(new)

    def delete(self, name: str, element: str, exist: bool = False) -> int:
        set_id, st, count = self._get(name)
        keys = [element_key(set_id, st.type, e) for e in self._parse_element(st, element)]
        gone = sum(1 for k in keys if bpfsys.delete(self.trie, k))
        if not gone and not exist:
            raise EbpfwError(f"element {element} is not in set '{name}'", hint="use --exist to ignore")
        if gone:
            self._write_def(set_id, st, max(0, count - gone))
        return gone

    def flush(self, name: str) -> int:
        set_id, st, _ = self._get(name)
        n = sum(1 for k in self._keys_of(set_id) if bpfsys.delete(self.trie, k))
        self._write_def(set_id, st, 0)
        return n

    def get(self, name: str) -> IpSet:
        set_id, st, _ = self._get(name)
        entries = sorted((_entry_of(st.type, k) for k in self._keys_of(set_id)),
                         key=lambda e: (e.addr or 0, e.prefixlen, e.proto or 0, e.port or 0))
        return replace(st, entries=tuple(entries))


# ---- library functions behind `ebpfw set ...` (one namespace: the caller's) ----------------------

def _store() -> SetStore:
    return SetStore(state.pin_dir())


def add(name: str, element: str, exist: bool = False) -> int:
    """Add an element to a loaded set; effective for the next packet. Returns new entries."""
    with state.ApplyLock(timeout=10), _store() as s:
        return s.add(name, element, exist)


def delete(name: str, element: str, exist: bool = False) -> int:
    with state.ApplyLock(timeout=10), _store() as s:
        return s.delete(name, element, exist)


def flush(name: str) -> int:
    with state.ApplyLock(timeout=10), _store() as s:
        return s.flush(name)


def list_sets(name: Optional[str] = None) -> str:
    """The loaded sets (or one) in `ipset save` format."""
    with _store() as s:
        names = [name] if name else list(s.definitions())
        return save_ipsets([s.get(n) for n in names])


def loaded_definitions(pins: Optional[Path] = None) -> dict[str, IpSet]:
    """The loaded sets by name (no elements), {} when none are loaded."""
    try:
        pins = pins or state.pin_dir()
        if not (pins / SETS_PIN).exists():
            return {}
    except (OSError, EbpfwError):     # no bpffs, or not readable (not root): nothing loaded here
        return {}
    with SetStore(pins) as s:
        return {n: d[1] for n, d in s.definitions().items()}

