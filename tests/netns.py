"""Network-namespace sandboxes for kernel tests.

Contract: everything here creates namespaces and veth pairs whose BOTH ends live inside
namespaces the test made; nothing touches the root namespace's interfaces. Names are unique
per process and call (prefix + pid + random), short enough that `name + 3 chars` is still a
valid interface name (15 chars). IPv6 is disabled inside every namespace made here (no router
solicitations or DAD traffic in counters). Cleanup is the caller's job; the `netns` fixture in
conftest.py does it for you, even when the test fails.

Processes enter a namespace with `nsenter --net=/run/netns/NAME`, which switches only the
network namespace and keeps the mounts (so a bpffs mounted anywhere stays visible);
`ip netns exec` would remount /sys and hide /sys/fs/bpf.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shlex
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

NETNS_RUN_DIR = Path("/run/netns")
_LIVE: set[str] = set()  # namespaces this process made and has not deleted yet
MAX_NS_NAME = 12  # leaves 3 characters for interface names derived from it (IFNAMSIZ-1 = 15)


class CommandFailed(subprocess.CalledProcessError):
    """A command run in a namespace failed; str() shows its output (pytest prints it)."""

    def __str__(self) -> str:
        return (
            f"command {self.cmd!r} exited with {self.returncode}\n"
            f"--- stdout\n{self.stdout or ''}--- stderr\n{self.stderr or ''}"
        )


def _base36(n: int) -> str:
    digits = "0123456789abcdefghijklmnopqrstuvwxyz"
    out = ""
    while True:
        n, r = divmod(n, 36)
        out = digits[r] + out
        if n == 0:
            return out


def unique_name(prefix: str) -> str:
    """prefix (first 3 chars) + pid (base 36) + random, at most MAX_NS_NAME characters."""
    pid = _base36(os.getpid())[-5:]
    head = prefix[:3]
    rnd_len = max(2, MAX_NS_NAME - len(head) - len(pid))
    rnd = "".join(secrets.choice("0123456789abcdefghijklmnopqrstuvwxyz") for _ in range(rnd_len))
    return (head + pid + rnd)[:MAX_NS_NAME]


def _run(argv: Sequence[str], check: bool = True, timeout: float = 30.0,
         input: str | None = None, env: dict | None = None) -> subprocess.CompletedProcess:
    proc = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout,
                          input=input, env=env)
    if check and proc.returncode != 0:
        raise CommandFailed(proc.returncode, list(argv), proc.stdout, proc.stderr)
    return proc


def ns_path(ns: str) -> str:
    return str(NETNS_RUN_DIR / ns)


def nsenter_argv(ns: str) -> list[str]:
    """argv prefix that runs a command in namespace `ns` (network namespace only)."""
    return ["nsenter", f"--net={ns_path(ns)}"]


def make_ns(prefix: str = "t") -> str:
    """Create a uniquely named network namespace with lo up and IPv6 disabled; return its name."""
    for _ in range(5):
        name = unique_name(prefix)
        if not (NETNS_RUN_DIR / name).exists():
            break
    else:  # pragma: no cover - five random collisions in a row
        raise RuntimeError(f"could not find a free namespace name for prefix {prefix!r}")
    _run(["ip", "netns", "add", name])
    _LIVE.add(name)
    try:
        run_in(name, ["sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1"])
        run_in(name, ["sysctl", "-qw", "net.ipv6.conf.default.disable_ipv6=1"])
        run_in(name, ["ip", "link", "set", "lo", "up"])
    except BaseException:
        delete_ns(name)
        raise
    return name


def delete_ns(ns: str) -> None:
    """Delete a namespace (idempotent). Its veths and attached programs go with it once the
    last process inside it has exited."""
    if (NETNS_RUN_DIR / ns).exists():
        _run(["ip", "netns", "delete", ns], check=False)
    if not (NETNS_RUN_DIR / ns).exists():
        _LIVE.discard(ns)


def delete_leftovers() -> list[str]:
    """Delete every namespace this process made and did not delete; returns their names."""
    left = sorted(_LIVE)
    for ns in left:
        delete_ns(ns)
    return left


def run_in(ns: str, cmd: str | Sequence[str], check: bool = True, timeout: float = 30.0,
           input: str | None = None, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run a command (argv list, or a string split with shlex) inside namespace `ns`."""
    argv = shlex.split(cmd) if isinstance(cmd, str) else list(cmd)
    return _run(nsenter_argv(ns) + argv, check=check, timeout=timeout, input=input, env=env)


def python_in(ns: str, code: str, check: bool = True, timeout: float = 60.0,
              env: dict | None = None) -> subprocess.CompletedProcess:
    """Run Python source with this interpreter (the venv, so bcc imports) inside `ns`."""
    full_env = dict(os.environ)
    if env:
        full_env.update(env)
    return run_in(ns, [sys.executable, "-c", code], check=check, timeout=timeout, env=full_env)


def veth(ns_a: str, name_a: str, ns_b: str, name_b: str, addr_a: str | None = None,
         addr_b: str | None = None, up: bool = True) -> None:
    """Create a veth pair with `name_a` inside ns_a and `name_b` inside ns_b (created there
    directly, never in the root namespace). addr_*: optional 'A.B.C.D/len'."""
    for n in (name_a, name_b):
        if len(n) > 15:
            raise ValueError(f"interface name {n!r} is longer than 15 characters")
    _run(["ip", "link", "add", "name", name_a, "netns", ns_a, "type", "veth",
          "peer", "name", name_b, "netns", ns_b])
    for ns, name, addr in ((ns_a, name_a, addr_a), (ns_b, name_b, addr_b)):
        if addr:
            run_in(ns, ["ip", "addr", "add", addr, "dev", name])
        if up:
            run_in(ns, ["ip", "link", "set", name, "up"])


def ifindex_in(ns: str, name: str) -> int:
    out = run_in(ns, ["cat", f"/sys/class/net/{name}/ifindex"], check=False)
    if out.returncode == 0:
        return int(out.stdout)
    # /sys shows the namespace that mounted it, so ask netlink inside the namespace instead
    out = run_in(ns, ["ip", "-o", "link", "show", "dev", name])
    return int(out.stdout.split(":", 1)[0])


def is_bpffs(path: str | os.PathLike) -> bool:
    try:
        out = _run(["stat", "-f", "-c", "%T", str(path)], check=False)
    except OSError:
        return False
    return out.stdout.strip() == "bpf_fs"


@contextlib.contextmanager
def ns_bpffs(tmpdir: str | os.PathLike | None = None) -> Iterator[Path]:
    """Mount a private bpffs at a fresh directory (under tmpdir) and unmount it afterwards.
    Pins made there vanish with the mount (objects live on while something still uses them)."""
    base = Path(tempfile.mkdtemp(prefix="ebpfw-bpffs-", dir=tmpdir))
    _run(["mount", "-t", "bpf", "bpf", str(base)])
    try:
        yield base
    finally:
        _run(["umount", "-l", str(base)], check=False)
        with contextlib.suppress(OSError):
            base.rmdir()


class NetnsFactory:
    """Creates namespaces and remembers them; cleanup() deletes every one of them."""

    def __init__(self) -> None:
        self.created: list[str] = []

    def __call__(self, prefix: str = "t") -> str:
        name = make_ns(prefix)
        self.created.append(name)
        return name

    # conveniences so a test needs only the fixture
    veth = staticmethod(veth)
    run = staticmethod(run_in)
    python = staticmethod(python_in)
    ifindex = staticmethod(ifindex_in)

    def pair(self, prefix: str = "t", addr_a: str | None = "10.199.0.1/24",
             addr_b: str | None = "10.199.0.2/24") -> tuple[str, str, str, str]:
        """Two namespaces joined by a veth pair: returns (ns_a, if_a, ns_b, if_b)."""
        ns_a, ns_b = self(prefix), self(prefix)
        if_a, if_b = ns_a[:12] + "a", ns_b[:12] + "b"
        veth(ns_a, if_a, ns_b, if_b, addr_a, addr_b)
        return ns_a, if_a, ns_b, if_b

    def cleanup(self) -> list[str]:
        """Delete every namespace made here; returns the names that could not be deleted."""
        left = []
        for name in reversed(self.created):
            delete_ns(name)
            if (NETNS_RUN_DIR / name).exists():
                left.append(name)
        self.created.clear()
        return left
