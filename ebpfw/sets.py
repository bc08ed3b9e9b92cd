"""Live ipsets for `-m set --match-set NAME src|dst[,...]`: load, add, delete, list, flush.

Every set lives in one BPF LPM trie pinned at <pin_dir>/sets, and the definitions (name, type,
element count, maxelem, bitmap:port range) in an array pinned at <pin_dir>/set_defs, both
outside the generation directories (like the conntrack table), so they outlive re-applies and
an `add`/`del` is one map update that packets see at once. Key of an element (programs/ebpfw.c
struct ebpfw_set_key): prefix length 64 + address prefix (64 for bitmap:port), then set id,
proto << 16 | port (0 for hash:ip / hash:net; the port alone for bitmap:port) and the address,
all big endian. The value (struct ebpfw_set_val) is the element's expiry, its own key prefix
length and its flags (`nomatch`). A packet's key (full length) is looked up as the kernel's
set types test it: the longest live element covering it decides, a match unless it is a
`nomatch` element (hash:net types; mtype_test_cidrs tries the set's prefix lengths from the
longest down, skipping expired elements); the datapath repeats the lookup with a shorter key
length after an expired element (programs/ebpfw.c, set_member).

Timeouts (ip_set_timeout.h): the expiry is in CLOCK_BOOTTIME ns (the clock
bpf_ktime_get_boot_ns() reads in the datapath), 0 = permanent. A set created with
`timeout D` gives each added element D seconds unless the add says `timeout N`; `timeout 0` is
permanent; an expired element does not match (a shorter live prefix covering it still does,
and so does a `nomatch` one), is not listed and counts as absent for add/del (it is deleted
lazily: on list, flush, add and when the set looks full; the datapath never deletes). The
kernel keeps jiffies: its element lives up to one jiffy (1/HZ) longer than here.

Upgrades: the pinned maps of older versions had a smaller value (4 bytes: no expiry; 8 bytes:
the expiry alone) and a shorter definition record. `migrate_pins()` (called before the
programs are built) renames such pins aside, and `restore_migrated()` (after the build created
the new maps) copies their elements (with their expiry when they had one) and definitions
over and removes the old pins, so an apply over an old pin keeps the live sets.

`ebpfw apply --sets FILE` calls `load` with the sets of FILE (each set named there gets exactly
the file's elements; other loaded sets stay as they are); without --sets the loaded sets stay
as they are and the rules may name any of them. The maps exist once programs with a -m set rule
have been built (the first apply of such a ruleset).
"""

from __future__ import annotations

import os
import struct
import time
from dataclasses import replace
from pathlib import Path
from typing import Optional

from . import state
from .datapath import bpfsys
from .datapath.abi import NSETS, SET_NOMATCH, SET_VAL, SETDEF, SETDEF_PIN, SETS_PIN
from .errors import EbpfwError, RulesetError
from .ipset import IpSet, IpSetEntry, parse_ipsets, save_ipsets

TYPES = {"hash:ip": 1, "hash:net": 2, "hash:ip,port": 3, "hash:net,port": 4, "bitmap:port": 5}
TYPE_NAMES = {v: k for k, v in TYPES.items()}
KEY = struct.Struct("<I4s4s4s")            # prefixlen; id, pp, addr (big endian)
VAL = SET_VAL
NS = 1_000_000_000
MAX_TIMEOUT = 2147483                     # IPSET_MAX_TIMEOUT: (UINT_MAX >> 1) / MSEC_PER_SEC
DEF_TIMEOUT = 1                           # struct ebpfw_setdef flags: EBPFW_SETDEF_TIMEOUT


def now_ns() -> int:
    """The datapath's clock (bpf_ktime_get_boot_ns)."""
    return time.clock_gettime_ns(time.CLOCK_BOOTTIME)


def expiry_of(timeout: Optional[int], now: int) -> int:
    """The value of an element with `timeout` seconds left (None or 0: permanent)."""
    return now + timeout * NS if timeout else 0


def remaining(expiry: int, now: int) -> Optional[int]:
    """ip_set_timeout_get: the whole seconds left (at least 1), 0 for permanent, None when expired."""
    if expiry == 0:
        return 0
    if now > expiry:
        return None
    return max(1, (expiry - now) // NS)


def element_key(set_id: int, st_type: str, e: IpSetEntry) -> bytes:
    be = struct.Struct(">I").pack
    if st_type == "bitmap:port":
        return KEY.pack(64, be(set_id), be(e.port or 0), be(0))
    pp = ((e.proto or 0) << 16 | (e.port or 0)) if st_type.endswith(",port") else 0
    return KEY.pack(64 + e.prefixlen, be(set_id), be(pp), be(e.addr or 0))


def element_value(key: bytes, e: IpSetEntry, now: int) -> bytes:
    """The trie value of element `e` whose key is `key`."""
    return VAL.pack(expiry_of(e.timeout, now), KEY.unpack(key)[0], SET_NOMATCH if e.nomatch else 0)


def _entry_of(st_type: str, key: bytes) -> IpSetEntry:
    plen, _, pp_b, addr_b = KEY.unpack(key)
    pp, addr = struct.unpack(">I", pp_b)[0], struct.unpack(">I", addr_b)[0]
    if st_type == "bitmap:port":
        return IpSetEntry(port=pp)
    if st_type.endswith(",port"):
        return IpSetEntry(addr=addr, prefixlen=plen - 64, proto=pp >> 16, port=pp & 0xFFFF)
    return IpSetEntry(addr=addr, prefixlen=plen - 64)


def refuse_unsupported(st: IpSet) -> None:
    """RulesetError (FILE:LINE) for what the datapath does not reproduce: IPv6."""
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
        # pins of an older version (no expiry in the value, a shorter definition record): their
        # definitions are readable (an apply compiles against them and then migrates them)
        self._defsize = bpfsys.map_info(self.defs).value_size
        self.old_layout = self._defsize != SETDEF.size or bpfsys.map_info(self.trie).value_size != VAL.size

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
            raw = bpfsys.lookup_array(self.defs, 0, NSETS, self._defsize)
            out = {}
            for i in range(NSETS):
                rec = raw[i * self._defsize:(i + 1) * self._defsize].ljust(SETDEF.size, b"\0")
                name_b, typ, count, maxelem, first, last, hashsize, tmo, flags = SETDEF.unpack_from(rec)
                if typ == 0:
                    continue
                name = name_b.rstrip(b"\0").decode()
                tname = TYPE_NAMES[typ]
                from .ruleset import Pos
                st = IpSet(name=name, type=tname, pos=Pos("<loaded>", 0),  # type: ignore[arg-type]
                           hashsize=None if tname == "bitmap:port" else hashsize,
                           maxelem=None if tname == "bitmap:port" else maxelem,
                           range=(first, last) if tname == "bitmap:port" else None,
                           timeout=tmo if flags & DEF_TIMEOUT else None)
                out[name] = (i, st, count)
            self._cache = out
        return self._cache

    def _write_def(self, set_id: int, st: IpSet, count: int) -> None:
        first, last = st.range or (0, 0)
        maxelem = (last - first + 1) if st.type == "bitmap:port" else (st.maxelem or 65536)
        bpfsys.update(self.defs, struct.pack("<I", set_id),
                      SETDEF.pack(st.name.encode(), TYPES[st.type], count, maxelem, first, last, st.hashsize or 0,
                                  st.timeout or 0, DEF_TIMEOUT if st.timeout is not None else 0),
                      "set definitions")
        self._cache = None

    def _get(self, name: str) -> tuple[int, IpSet, int]:
        self._check_layout()
        d = self.definitions().get(name)
        if d is None:
            raise EbpfwError(f"set '{name}' does not exist, expected one of: "
                             + (", ".join(self.definitions()) or "(no sets loaded)"))
        return d

    def _keys_of(self, set_id: int) -> list[bytes]:
        idb = struct.pack(">I", set_id)
        return [k for k in bpfsys.keys(self.trie, KEY.size) if k[4:8] == idb]

    def _value(self, key: bytes) -> Optional[tuple[int, int]]:
        """The element's (expiry (0 = permanent), flags), None when it is not in the trie. An LPM
        lookup answers with the longest element covering the key: it is this very element only
        when its prefix length is the key's."""
        v = bpfsys.lookup(self.trie, key, VAL.size)
        if v is None:
            return None
        expiry, plen, flags = VAL.unpack(v)
        if plen != KEY.unpack(key)[0]:
            return None
        return expiry, flags

    def _expiry(self, key: bytes) -> Optional[int]:
        """The element's expiry (0 = permanent), None when it is not in the trie."""
        v = self._value(key)
        return None if v is None else v[0]

    def _live(self, set_id: int, now: int) -> dict[bytes, tuple[int, int]]:
        """The set's elements that have not expired (key -> (expiry, flags)); expired ones are
        deleted."""
        out = {}
        for k in self._keys_of(set_id):
            v = self._value(k)
            if v is None:
                continue
            if remaining(v[0], now) is None:
                bpfsys.delete(self.trie, k)
            else:
                out[k] = v
        return out

    def gc(self, name: str) -> int:
        """Delete the expired elements of set NAME (and correct its count); returns how many."""
        set_id, st, count = self._get(name)
        before = len(self._keys_of(set_id))
        live = self._live(set_id, now_ns())
        if len(live) != count:
            self._write_def(set_id, st, len(live))
        return before - len(live)

    def gc_expired(self) -> dict[str, int]:
        """What the kernel's ipset garbage collector does, for every set with timeouts at once:
        delete the expired elements and correct the counts (one pass over the trie's keys).
        Returns name -> elements deleted, for the sets that had some; {} for old pins."""
        if self.old_layout:
            return {}
        timed = {i: (name, st, count) for name, (i, st, count) in self.definitions().items()
                 if st.timeout is not None}
        if not timed:
            return {}
        now = now_ns()
        live = {i: 0 for i in timed}
        freed: dict[int, int] = {}
        for k in bpfsys.keys(self.trie, KEY.size):
            set_id = struct.unpack(">I", k[4:8])[0]
            if set_id not in timed:
                continue
            v = self._value(k)
            if v is None:
                continue
            if remaining(v[0], now) is None:
                bpfsys.delete(self.trie, k)
                freed[set_id] = freed.get(set_id, 0) + 1
            else:
                live[set_id] += 1
        for set_id, (name, st, count) in timed.items():
            if live[set_id] != count:
                self._write_def(set_id, st, live[set_id])
        return {timed[i][0]: n for i, n in freed.items()}

    def _check_layout(self) -> None:
        if self.old_layout:
            raise EbpfwError("the set maps were pinned by an older ebpfw (elements without timeouts)",
                             hint="run `ebpfw apply` once: it migrates them, keeping every set and element")

    # ---- operations ------------------------------------------------------------------------------
    def load(self, sets: dict[str, IpSet]) -> dict[str, int]:
        """Make each set in `sets` hold exactly its elements (created when new, its type replaced
        when it changed); returns name -> id of every loaded set."""
        self._check_layout()
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
            # `ipset save` prints the seconds left: each element expires that long from now
            now = now_ns()
            want = {}
            for e in st.entries:
                k = element_key(set_id, st.type, e)
                want[k] = element_value(k, e, now)
            for k in self._keys_of(set_id):
                if k not in want:
                    bpfsys.delete(self.trie, k)
            for k, v in want.items():
                bpfsys.update(self.trie, k, v, f"set {st.name}")
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
        return list(parsed[st.name].entries)

    def add(self, name: str, element: str, exist: bool = False) -> int:
        """Add ELEMENT (ipset syntax, ranges expand, optionally followed by `timeout N` in a set
        created with a timeout and `nomatch` in a hash:net type); returns how many entries were
        new. An element already present (and not expired) is an error unless `exist` (ipset add
        -exist), which renews its timeout and sets its nomatch flag as the add says, as ipset
        does."""
        set_id, st, count = self._get(name)
        entries = self._parse_element(st, element)
        now = now_ns()
        items = []
        for e in entries:
            k = element_key(set_id, st.type, e)
            items.append((k, element_value(k, e, now)))
        present = {k for k, _ in items if (x := self._expiry(k)) is not None and remaining(x, now) is not None}
        new = [(k, x) for k, x in items if k not in present]
        if not new and not exist:
            raise EbpfwError(f"element {element} is already in set '{name}'", hint="use --exist to ignore")
        maxelem = (st.range[1] - st.range[0] + 1) if st.range else (st.maxelem or 65536)
        if count + len(new) > maxelem and st.timeout is not None:
            count = len(self._live(set_id, now))       # the kernel's gc frees expired elements first
            if count + len(new) > maxelem:
                self._write_def(set_id, st, count)
        if count + len(new) > maxelem:
            raise EbpfwError(f"set '{name}' is full ({count} of maxelem {maxelem})")
        # an expired element still in the trie is replaced (it was counted already)
        stale = sum(1 for k, _ in new if self._expiry(k) is not None)
        for k, x in (items if exist else new):
            bpfsys.update(self.trie, k, x, f"set {name}")
        if len(new) - stale:
            self._write_def(set_id, st, count + len(new) - stale)
        return len(new)

    def delete(self, name: str, element: str, exist: bool = False) -> int:
        set_id, st, count = self._get(name)
        keys = [element_key(set_id, st.type, e) for e in self._parse_element(st, element)]
        now = now_ns()
        gone = stale = 0
        for k in keys:
            x = self._expiry(k)
            if x is not None and bpfsys.delete(self.trie, k):
                if remaining(x, now) is None:
                    stale += 1          # expired: deleted, but it was not there for ipset
                else:
                    gone += 1
        if not gone and not exist:
            if stale:
                self._write_def(set_id, st, max(0, count - stale))
            raise EbpfwError(f"element {element} is not in set '{name}'", hint="use --exist to ignore")
        if gone or stale:
            self._write_def(set_id, st, max(0, count - gone - stale))
        return gone

    def flush(self, name: str) -> int:
        set_id, st, _ = self._get(name)
        n = sum(1 for k in self._keys_of(set_id) if bpfsys.delete(self.trie, k))
        self._write_def(set_id, st, 0)
        return n

    def swap_names(self, a: str, b: str) -> None:
        """ipset swap's part in the set maps: the two definitions exchange their names, each
        keeping its elements and settings, so name A now stands for B's set. Rules read sets by
        id: until they are written again (swap() below) they still read the same elements. Only
        sets of the same type (ipset: the same features and family); symmetric (a second call
        undoes the first)."""
        ia, sa, ca = self._get(a)
        ib, sb, cb = self._get(b)
        if ia == ib:
            raise EbpfwError(f"cannot swap set '{a}' with itself")
        if sa.type != sb.type:
            raise EbpfwError(f"sets '{a}' ({sa.type}) and '{b}' ({sb.type}) cannot be swapped: their type "
                             "does not match", hint="ipset swaps only sets of the same type")
        self._write_def(ia, replace(sa, name=b), ca)
        self._write_def(ib, replace(sb, name=a), cb)

    def get(self, name: str) -> IpSet:
        """The set with its live elements, each with the seconds it has left when the set has
        timeouts (as `ipset save` prints them); expired elements are deleted here."""
        set_id, st, count = self._get(name)
        now = now_ns()
        live = self._live(set_id, now)
        if len(live) != count:
            self._write_def(set_id, st, len(live))
        timed = st.timeout is not None
        entries = sorted((replace(_entry_of(st.type, k), timeout=remaining(x, now) if timed else None,
                                  nomatch=bool(flags & SET_NOMATCH))
                          for k, (x, flags) in live.items()),
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


def swap(a: str, b: str) -> Optional[dict]:
    """`ebpfw set swap A B` (ipset swap): the sets exchange their names, then the enforced
    ruleset is applied again with its counters (maps only when the programs fit) so that rules
    naming A read the set now called A: every rule switches at once, at the slot flip, as
    every apply does. Returns api.apply's result (None when nothing is enforced). If that
    apply fails the names are swapped back and the error is raised."""
    from . import api
    with state.ApplyLock(timeout=10), _store() as s:
        s.swap_names(a, b)
    try:
        res = None
        for attempt in range(3):
            try:
                res = api.reapply_enforced()
                break
            except api.ChangedMeanwhile:
                if attempt == 2:
                    raise
        state.wait_background()
        return res
    except BaseException:
        with state.ApplyLock(timeout=10), _store() as s:
            s.swap_names(a, b)
        raise


def list_sets(name: Optional[str] = None) -> str:
    """The loaded sets (or one) in `ipset save` format (expired elements are deleted on the
    way, so the list takes the apply lock like the changes do)."""
    with state.ApplyLock(timeout=10), _store() as s:
        names = [name] if name else list(s.definitions())
        return save_ipsets([s.get(n) for n in names])


def gc_expired(pins: Optional[Path] = None) -> dict[str, int]:
    """Delete the expired elements of every loaded set (the caller holds the apply lock);
    name -> elements deleted. {} when no sets are loaded here."""
    pins = pins or state.pin_dir()
    if not (pins / SETS_PIN).exists():
        return {}
    with SetStore(pins) as s:
        return s.gc_expired()


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



# ---- pins of an older layout (upgrades) -----------------------------------------------------------

OLD_SUFFIX = "_old"         # bpffs refuses names with a dot


def migrate_pins(pins: Path) -> None:
    """Before the programs are built: rename pinned set maps whose layout differs from this
    version's (value size: the expiry; definition record size) to NAME_old, so bcc creates new
    ones; restore_migrated() moves their contents over after the build."""
    tpath, dpath = pins / SETS_PIN, pins / SETDEF_PIN
    if not tpath.exists() or not dpath.exists():
        return
    tfd, dfd = bpfsys.get(str(tpath)), bpfsys.get(str(dpath))
    try:
        same = (bpfsys.map_info(tfd).value_size == VAL.size and bpfsys.map_info(dfd).value_size == SETDEF.size)
    finally:
        os.close(tfd)
        os.close(dfd)
    if same:
        return
    for p in (tpath, dpath):
        old = p.with_name(p.name + OLD_SUFFIX)
        if old.exists():        # a previous migration did not finish: keep its older copy
            p.unlink()
        else:
            os.rename(p, old)


def restore_migrated(pins: Path, trie_fd: int, defs_fd: int) -> int:
    """After the build: copy the elements (with their expiry when the old value had one, else
    permanent; none was `nomatch`: older versions had no such flag) and the definitions of
    renamed old pins into the new maps, then delete the old pins. Returns how many elements
    were copied."""
    tpath, dpath = pins / (SETS_PIN + OLD_SUFFIX), pins / (SETDEF_PIN + OLD_SUFFIX)
    if not tpath.exists() or not dpath.exists():
        return 0
    otfd, odfd = bpfsys.get(str(tpath)), bpfsys.get(str(dpath))
    try:
        osize = bpfsys.map_info(odfd).value_size
        raw = bpfsys.lookup_array(odfd, 0, NSETS, osize)
        for i in range(NSETS):
            rec = raw[i * osize:(i + 1) * osize]
            if struct.unpack_from("<I", rec, 32)[0] == 0:
                continue
            # name..hashsize in every layout; the timeout and its flag since timeouts exist
            rec = rec[:SETDEF.size].ljust(SETDEF.size, b"\0")
            bpfsys.update(defs_fd, struct.pack("<I", i), rec, "set definitions")
        vsize = bpfsys.map_info(otfd).value_size
        n = 0
        for k in bpfsys.keys(otfd, KEY.size):
            v = bpfsys.lookup(otfd, k, vsize)
            if v is None:
                continue
            expiry = struct.unpack_from("<Q", v)[0] if vsize >= 8 else 0   # 4 bytes: no timeouts
            bpfsys.update(trie_fd, k, VAL.pack(expiry, KEY.unpack(k)[0], 0), "sets")
            n += 1
    finally:
        os.close(otfd)
        os.close(odfd)
    tpath.unlink()
    dpath.unlink()
    return n
