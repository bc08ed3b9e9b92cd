"""Thin ctypes layer over libbpf's low-level map/object calls.

bcc compiles and loads programs; everything after that (filling maps, pinning, reading
counters from a later process, BPF_PROG_TEST_RUN) goes through these functions so that a
rules-only apply, `save` and `show` never need a bcc compile. Errors become KernelError
with the operation, the object and the errno text.
"""

from __future__ import annotations

import ctypes as ct
import ctypes.util
import os
import struct
from functools import lru_cache

from ..errors import KernelError

_lib = ct.CDLL(ctypes.util.find_library("bpf") or "libbpf.so.1", use_errno=True)

_lib.bpf_map_update_elem.argtypes = [ct.c_int, ct.c_void_p, ct.c_void_p, ct.c_uint64]
_lib.bpf_map_lookup_elem.argtypes = [ct.c_int, ct.c_void_p, ct.c_void_p]
_lib.bpf_map_delete_elem.argtypes = [ct.c_int, ct.c_void_p]
_lib.bpf_map_get_next_key.argtypes = [ct.c_int, ct.c_void_p, ct.c_void_p]
_lib.bpf_map_update_batch.argtypes = [ct.c_int, ct.c_void_p, ct.c_void_p, ct.POINTER(ct.c_uint32), ct.c_void_p]
_lib.bpf_map_lookup_batch.argtypes = [ct.c_int, ct.c_void_p, ct.c_void_p, ct.c_void_p, ct.c_void_p,
                                      ct.POINTER(ct.c_uint32), ct.c_void_p]
_lib.bpf_map_delete_batch.argtypes = [ct.c_int, ct.c_void_p, ct.POINTER(ct.c_uint32), ct.c_void_p]
_lib.bpf_obj_pin.argtypes = [ct.c_int, ct.c_char_p]
_lib.bpf_obj_get.argtypes = [ct.c_char_p]
_lib.bpf_obj_get_info_by_fd.argtypes = [ct.c_int, ct.c_void_p, ct.POINTER(ct.c_uint32)]
_lib.libbpf_num_possible_cpus.argtypes = []


class BpfMapInfo(ct.Structure):
    _fields_ = [
        ("type", ct.c_uint32), ("id", ct.c_uint32), ("key_size", ct.c_uint32),
        ("value_size", ct.c_uint32), ("max_entries", ct.c_uint32), ("map_flags", ct.c_uint32),
        ("name", ct.c_char * 16), ("ifindex", ct.c_uint32), ("btf_vmlinux_value_type_id", ct.c_uint32),
        ("netns_dev", ct.c_uint64), ("netns_ino", ct.c_uint64), ("btf_id", ct.c_uint32),
        ("btf_key_type_id", ct.c_uint32), ("btf_value_type_id", ct.c_uint32), ("pad", ct.c_uint32),
        ("map_extra", ct.c_uint64),
    ]


class BpfProgInfo(ct.Structure):
    _fields_ = [("type", ct.c_uint32), ("id", ct.c_uint32), ("tag", ct.c_uint8 * 8),
                ("jited_prog_len", ct.c_uint32), ("xlated_prog_len", ct.c_uint32),
                ("rest", ct.c_uint8 * 200)]


class TestRunOpts(ct.Structure):
    _fields_ = [
        ("sz", ct.c_size_t), ("data_in", ct.c_void_p), ("data_out", ct.c_void_p),
        ("data_size_in", ct.c_uint32), ("data_size_out", ct.c_uint32),
        ("ctx_in", ct.c_void_p), ("ctx_out", ct.c_void_p),
        ("ctx_size_in", ct.c_uint32), ("ctx_size_out", ct.c_uint32),
        ("retval", ct.c_uint32), ("repeat", ct.c_int), ("duration", ct.c_uint32),
        ("flags", ct.c_uint32), ("cpu", ct.c_uint32), ("batch_size", ct.c_uint32),
    ]


def _fail(what: str) -> KernelError:
    err = ct.get_errno()
    return KernelError(f"{what}: {os.strerror(err)} (errno {err})")


@lru_cache(maxsize=1)
def possible_cpus() -> int:
    n = _lib.libbpf_num_possible_cpus()
    if n <= 0:
        raise KernelError("cannot count possible CPUs for per-CPU maps")
    return n


def update(fd: int, key: bytes, value: bytes, what: str = "map") -> None:
    if _lib.bpf_map_update_elem(fd, key, value, 0) != 0:
        raise _fail(f"updating {what}")


def lookup(fd: int, key: bytes, value_size: int) -> bytes | None:
    buf = ct.create_string_buffer(value_size)
    if _lib.bpf_map_lookup_elem(fd, key, buf) != 0:
        if ct.get_errno() == 2:  # ENOENT
            return None
        raise _fail("map lookup")
    return buf.raw


def delete(fd: int, key: bytes) -> bool:
    if _lib.bpf_map_delete_elem(fd, key) != 0:
        if ct.get_errno() == 2:
            return False
        raise _fail("map delete")
    return True


def keys(fd: int, key_size: int) -> list[bytes]:
    out: list[bytes] = []
    cur = None
    nxt = ct.create_string_buffer(key_size)
    while True:
        if _lib.bpf_map_get_next_key(fd, cur, nxt) != 0:
            if ct.get_errno() == 2:
                return out
            raise _fail("map iteration")
        out.append(nxt.raw)
        cur = ct.create_string_buffer(nxt.raw, key_size)


def update_batch(fd: int, keys_blob: bytes, values_blob: bytes, count: int, what: str = "map") -> None:
    """One syscall for `count` entries (arrays and hashes); falls back to single updates
    where the map type has no batch operation."""
    if count == 0:
        return
    n = ct.c_uint32(count)
    if _lib.bpf_map_update_batch(fd, keys_blob, values_blob, ct.byref(n), None) == 0:
        return
    err = ct.get_errno()
    if err not in (22, 95, 524):  # EINVAL, EOPNOTSUPP, ENOTSUPP: no batch op for this map
        raise _fail(f"batch update of {what}")
    ks = len(keys_blob) // count
    vs = len(values_blob) // count
    for i in range(count):
        update(fd, keys_blob[i * ks:(i + 1) * ks], values_blob[i * vs:(i + 1) * vs], what)


def lookup_array(fd: int, first: int, count: int, value_size: int) -> bytes:
    """Values of array entries [first, first+count) in as few syscalls as the kernel allows
    (batch lookup), falling back to one lookup per entry. Per-CPU values are ncpu * value_size."""
    if count <= 0:
        return b""
    out = bytearray()
    batch = ct.c_uint32(first - 1)
    keys = ct.create_string_buffer(4 * count)
    vals = ct.create_string_buffer(value_size * count)
    token = ct.c_uint32(0)
    n = ct.c_uint32(count)
    # in_batch is the key *before* the first one returned (generic_map_lookup_batch calls
    # get_next_key on it); NULL starts at index 0
    rc = _lib.bpf_map_lookup_batch(fd, ct.byref(batch) if first else None, ct.byref(token), keys, vals,
                                   ct.byref(n), None)
    if rc == 0 or (ct.get_errno() == 2 and n.value):
        out += vals.raw[:value_size * n.value]
        if len(out) == value_size * count:
            return bytes(out)
    # fallback: the rest one by one
    start = first + len(out) // value_size
    for i in range(start, first + count):
        v = lookup(fd, struct.pack("<I", i), value_size)
        out += v if v is not None else bytes(value_size)
    return bytes(out)


def hash_keys(fd: int, key_size: int, value_size: int, chunk: int = 8192) -> list[bytes]:
    """All keys of a hash map in few syscalls (batch lookup); falls back to key iteration."""
    out: list[bytes] = []
    keys_buf = ct.create_string_buffer(key_size * chunk)
    vals_buf = ct.create_string_buffer(value_size * chunk)
    token_in = ct.c_uint32(0)
    token_out = ct.c_uint32(0)
    first = True
    while True:
        n = ct.c_uint32(chunk)
        rc = _lib.bpf_map_lookup_batch(fd, None if first else ct.byref(token_in), ct.byref(token_out),
                                       keys_buf, vals_buf, ct.byref(n), None)
        err = ct.get_errno() if rc != 0 else 0
        if rc != 0 and err != 2:
            if first and err in (22, 95, 524):
                return keys(fd, key_size)
            raise _fail("batch lookup")
        raw = keys_buf.raw
        out.extend(raw[i * key_size:(i + 1) * key_size] for i in range(n.value))
        if rc != 0:           # ENOENT: that was the last batch
            return out
        token_in.value = token_out.value
        first = False


def delete_batch(fd: int, keys_blob: bytes, count: int) -> None:
    if count == 0:
        return
    n = ct.c_uint32(count)
    if _lib.bpf_map_delete_batch(fd, keys_blob, ct.byref(n), None) == 0:
        return
    ks = len(keys_blob) // count
    for i in range(count):
        delete(fd, keys_blob[i * ks:(i + 1) * ks])


def pin(fd: int, path: str) -> None:
    if _lib.bpf_obj_pin(fd, path.encode()) != 0:
        raise _fail(f"pinning {path}")


def get(path: str) -> int:
    fd = _lib.bpf_obj_get(path.encode())
    if fd < 0:
        raise _fail(f"opening pinned object {path}")
    return fd


def map_info(fd: int) -> BpfMapInfo:
    info = BpfMapInfo()
    n = ct.c_uint32(ct.sizeof(info))
    if _lib.bpf_obj_get_info_by_fd(fd, ct.byref(info), ct.byref(n)) != 0:
        raise _fail("reading map info")
    return info


def prog_id(fd: int) -> int:
    info = BpfProgInfo()
    n = ct.c_uint32(ct.sizeof(info))
    if _lib.bpf_obj_get_info_by_fd(fd, ct.byref(info), ct.byref(n)) != 0:
        raise _fail("reading program info")
    return info.id


def test_run(prog_fd: int, packet: bytes, repeat: int = 1, ctx: bytes | None = None) -> tuple[int, int, bytes]:
    """BPF_PROG_TEST_RUN: returns (retval, ns per run, packet out)."""
    ret, ns, out, _ = test_run_ctx(prog_fd, packet, repeat, ctx)
    return ret, ns, out


def test_run_ctx(prog_fd: int, packet: bytes, repeat: int = 1,
                 ctx: bytes | None = None) -> tuple[int, int, bytes, bytes]:
    """BPF_PROG_TEST_RUN: (retval, ns per run, packet out, context out: the struct __sk_buff or
    xdp_md after the program, e.g. the skb's mark; empty without `ctx`)."""
    out = ct.create_string_buffer(len(packet) + 256)
    opts = TestRunOpts()
    opts.sz = ct.sizeof(opts)
    inbuf = ct.create_string_buffer(packet, len(packet))
    opts.data_in = ct.cast(inbuf, ct.c_void_p)
    opts.data_size_in = len(packet)
    opts.data_out = ct.cast(out, ct.c_void_p)
    opts.data_size_out = len(out)
    cout = None
    if ctx is not None:
        cbuf = ct.create_string_buffer(ctx, len(ctx))
        opts.ctx_in = ct.cast(cbuf, ct.c_void_p)
        opts.ctx_size_in = len(ctx)
        cout = ct.create_string_buffer(len(ctx))
        opts.ctx_out = ct.cast(cout, ct.c_void_p)
        opts.ctx_size_out = len(ctx)
    opts.repeat = repeat
    _lib.bpf_prog_test_run_opts.argtypes = [ct.c_int, ct.POINTER(TestRunOpts)]
    if _lib.bpf_prog_test_run_opts(prog_fd, ct.byref(opts)) != 0:
        raise _fail("BPF_PROG_TEST_RUN")
    ctx_out = cout.raw[:opts.ctx_size_out] if cout is not None else b""
    return opts.retval, opts.duration, out.raw[:opts.data_size_out], ctx_out
