"""Where ebpfw keeps things, per network namespace, and the lock that serialises applies.

Contract:
- Pins live under `pin_dir()` = <bpffs>/ebpfw/<netns_key>, where <bpffs> is $EBPFW_BPFFS or
  /sys/fs/bpf and must be a mounted bpffs (checked by its statfs magic).
- Files live under `state_dir()` = ($EBPFW_STATE_DIR or /var/lib/ebpfw)/<netns_key>.
  Keying both by the network namespace means instances in different namespaces never see
  each other's pins or files even when they share both roots.
- `ApplyLock` is an exclusive flock on state_dir()/apply.lock holding the owner's pid; a second
  apply waits up to a timeout, then fails naming the pid that holds it.
- `write_json_atomic` never leaves a half-written file: write tmp, fsync, rename, fsync dir.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import functools
import json
import os
import shutil
import threading
import time
from pathlib import Path
from typing import Any

from ebpfw.errors import EbpfwError, StateError
from ebpfw.netlink.host import netns_key

BPFFS_MAGIC = 0xCAFE4A11
DEFAULT_BPFFS = "/sys/fs/bpf"
DEFAULT_STATE_DIR = "/var/lib/ebpfw"
LOCK_NAME = "apply.lock"


@functools.lru_cache(maxsize=1)
def _libc() -> ctypes.CDLL:
    # the symbols already in this process (libc among them): find_library("c") would run
    # `ldconfig -p` in a subprocess on every call
    return ctypes.CDLL(None, use_errno=True)


def _fs_magic(path: Path) -> int:
    """statfs(2) f_type of `path` (os.statvfs does not expose it)."""
    libc = _libc()
    buf = ctypes.create_string_buffer(256)  # struct statfs is 120 bytes on 64-bit Linux
    if libc.statfs(os.fsencode(str(path)), buf) != 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e), str(path))
    return ctypes.c_long.from_buffer(buf).value & 0xFFFFFFFF


def bpffs_root() -> Path:
    """$EBPFW_BPFFS or /sys/fs/bpf, checked to be a mounted bpffs."""
    root = Path(os.environ.get("EBPFW_BPFFS") or DEFAULT_BPFFS)
    try:
        magic = _fs_magic(root)
    except OSError as exc:
        raise EbpfwError(f"BPF filesystem root {root} is not usable: {exc.strerror}",
                         hint=f"mount -t bpf bpf {root}") from None
    if magic != BPFFS_MAGIC:
        raise EbpfwError(f"{root} is not a BPF filesystem (bpffs), so nothing can be pinned there",
                         hint=f"mount -t bpf bpf {root}")
    return root


def pin_dir(create: bool = False) -> Path:
    """<bpffs>/ebpfw/<netns_key>; created (mode 0700) when `create`."""
    path = bpffs_root() / "ebpfw" / netns_key()
    if create:
        try:
            path.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as exc:
            raise StateError(f"cannot create pin directory {path}: {exc.strerror}") from None
    return path


def pin_path(name: str, create_dir: bool = False) -> Path:
    """Path of pinned object `name` inside pin_dir()."""
    return pin_dir(create=create_dir) / _plain_name(name)


def state_root() -> Path:
    return Path(os.environ.get("EBPFW_STATE_DIR") or DEFAULT_STATE_DIR)


def state_dir(create: bool = False) -> Path:
    """($EBPFW_STATE_DIR or /var/lib/ebpfw)/<netns_key>; created (mode 0700) when `create`."""
    path = state_root() / netns_key()
    if create:
        try:
            path.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as exc:
            raise StateError(f"cannot create state directory {path}: {exc.strerror}",
                             hint="run as root, or set EBPFW_STATE_DIR to a writable directory") from None
    return path


def _plain_name(name: str) -> str:
    if not name or "/" in name or name in (".", "..") or "\0" in name:
        raise EbpfwError(f"invalid state or pin name {name!r}: expected a plain file name")
    return name


# --- JSON files -------------------------------------------------------------------------------------

def read_json(name: str, default: Any = None) -> Any:
    """Parsed content of state_dir()/name, or `default` if the file does not exist."""
    path = state_dir() / _plain_name(name)
    try:
        text = path.read_text()
    except FileNotFoundError:
        return default
    except OSError as exc:
        raise StateError(f"cannot read {path}: {exc.strerror}") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise StateError(f"{path}:{exc.lineno}: invalid JSON state file, expected what ebpfw wrote, "
                         f"found {exc.msg}",
                         hint=f"move {path} away and re-apply the ruleset") from None


def _dumps(obj: Any) -> str:
    """JSON text, one top-level key per line, each value on one line. json's C encoder only
    runs without `indent`; the indenting one is pure Python and took 50 ms for the 10,000
    rule entries of a 10k ruleset's current.json."""
    if not isinstance(obj, dict) or not obj:
        return json.dumps(obj, sort_keys=True) + "\n"
    lines = [f"  {json.dumps(str(k))}: {json.dumps(v, sort_keys=True)}" for k, v in sorted(obj.items())]
    return "{\n" + ",\n".join(lines) + "\n}\n"


def write_json_atomic(name: str, obj: Any) -> Path:
    """Replace state_dir()/name with `obj` as JSON, atomically and durably; returns the path."""
    directory = state_dir(create=True)
    path = directory / _plain_name(name)
    tmp = directory / f".{name}.tmp.{os.getpid()}"
    data = _dumps(obj).encode()
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(tmp, path)
        dfd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError as exc:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise StateError(f"cannot write {path}: {exc.strerror}") from None
    return path


# --- pins ---------------------------------------------------------------------------------------------

def unpin(path: str | os.PathLike) -> bool:
    """Remove one pin; True if it existed. The object lives on while something still uses it."""
    try:
        os.unlink(path)
        return True
    except FileNotFoundError:
        return False
    except OSError as exc:
        raise StateError(f"cannot unpin {path}: {exc.strerror}") from None


def remove_pin_dir() -> bool:
    """Unpin everything under pin_dir() and remove it; True if it existed."""
    path = pin_dir()
    if not path.exists():
        return False
    try:
        shutil.rmtree(path)
    except OSError as exc:
        raise StateError(f"cannot remove pin directory {path}: {exc.strerror}") from None
    return True


# --- the apply lock -------------------------------------------------------------------------------------

class ApplyLock:
    """`with ApplyLock(timeout=30):` — exclusive across processes (flock), per namespace."""

    def __init__(self, timeout: float = 30.0, poll: float = 0.05):
        self.timeout = timeout
        self.poll = poll
        self.fd: int | None = None
        self.path: Path | None = None

    def _holder(self) -> str:
        try:
            pid = os.pread(self.fd, 32, 0).decode().strip() if self.fd is not None else ""
        except OSError:
            pid = ""
        return pid or "unknown"

    def acquire(self) -> "ApplyLock":
        if self.fd is not None:
            raise EbpfwError("ApplyLock is not re-entrant")
        wait_background()     # an apply of this process still finishing holds the lock
        self.path = state_dir(create=True) / LOCK_NAME
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise StateError(f"cannot open lock file {self.path}: {exc.strerror}") from None
        self.fd = fd
        deadline = time.monotonic() + self.timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as exc:
                if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                    self._close()
                    raise StateError(f"cannot lock {self.path}: {exc.strerror}") from None
                if time.monotonic() >= deadline:
                    holder = self._holder()
                    self._close()
                    raise EbpfwError(f"another ebpfw apply is running (pid {holder})",
                                     hint=f"wait for it to finish; the lock is {self.path}") from None
                time.sleep(self.poll)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        return self

    def _close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

    def release(self) -> None:
        if self.fd is None:
            return
        try:
            os.ftruncate(self.fd, 0)
            fcntl.flock(self.fd, fcntl.LOCK_UN)
        finally:
            self._close()

    def __enter__(self) -> "ApplyLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


# --- work that finishes an apply after it returned --------------------------------------------------

_BACKGROUND: list[threading.Thread] = []


def finish_in_background(lock: ApplyLock, work) -> None:
    """Run `work()` in a thread that then releases `lock` (held by the caller). The next
    ApplyLock of this process waits for it first, other processes wait on the lock, and the
    interpreter waits for it at exit (it is not a daemon thread)."""
    def run() -> None:
        try:
            work()
        finally:
            lock.release()

    t = threading.Thread(target=run, name="ebpfw-apply-finish")
    _BACKGROUND.append(t)
    t.start()


def wait_background() -> None:
    """Wait until the work handed to finish_in_background is done."""
    while _BACKGROUND:
        t = _BACKGROUND.pop(0)
        if t is not threading.current_thread():
            t.join()
