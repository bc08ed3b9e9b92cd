"""Shared pieces of the ebpfw benchmarks: namespace sandboxes, private bpffs, memcgs, bounded
subprocesses, medians and result files.

Safety contract (same as tests/netns.py and the shared kit):
- every namespace and veth is created here, with both veth ends inside our namespaces
  (`ip link add d0 netns A type veth peer name p0 netns B`); the root namespace is never touched;
- names are unique per process (prefix "ebwb" + pid + random), so two runs never collide;
- every child process runs under a time limit and is killed by its own process-group id;
- `Sandbox.down()` (called from `with`, also on errors and Ctrl-C) deletes the namespaces,
  unmounts the private bpffs and removes the temporary and memcg directories it made.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
PY = str(ROOT / ".venv" / "bin" / "python")
MEMCG_ROOT = Path("/sys/fs/cgroup/memory")

DUT_ADDR = "10.0.0.2"   # on d0 in the DUT namespace
PEER_ADDR = "10.0.0.1"  # on p0 in the peer namespace


def exit_on_term() -> None:
    """SIGTERM (run.sh stopping a step) becomes SystemExit, so every `with Sandbox()` cleans up."""
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))


def register(kind: str, what: str) -> None:
    """Note an object we created in $BENCH_REGISTRY, so run.sh's trap can remove it even if
    this process is killed before its own cleanup runs."""
    reg = os.environ.get("BENCH_REGISTRY")
    if reg:
        with open(reg, "a") as f:
            f.write(f"{kind} {what}\n")


def log(msg: str) -> None:
    """stderr, and $BENCH_OUT/bench.log (workers inherit BENCH_OUT, so their progress survives
    a timeout kill)."""
    line = f"[bench {time.strftime('%H:%M:%S')}] {msg}"
    print(line, file=sys.stderr, flush=True)
    d = os.environ.get("BENCH_OUT")
    if d:
        try:
            with open(Path(d) / "bench.log", "a") as f:
                f.write(line + "\n")
        except OSError:
            pass


def median(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def run(argv, timeout: float = 60.0, env=None, check: bool = True, input_text=None) -> subprocess.CompletedProcess:
    """Run argv in its own process group; on timeout the group (ours) is killed by its id."""
    p = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                         stdin=subprocess.PIPE if input_text is not None else subprocess.DEVNULL,
                         start_new_session=True)
    try:
        out, err = p.communicate(input_text, timeout=timeout)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(p.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        out, err = p.communicate()
        raise TimeoutError(f"{argv[0]} ... timed out after {timeout:.0f} s") from None
    except BaseException:
        try:
            os.killpg(p.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        p.communicate()
        raise
    cp = subprocess.CompletedProcess(argv, p.returncode, out, err)
    if check and p.returncode != 0:
        raise RuntimeError(f"{' '.join(map(str, argv))} exited with {p.returncode}: {err.strip()[-400:]}")
    return cp


def _base36(n: int) -> str:
    d = "0123456789abcdefghijklmnopqrstuvwxyz"
    s = ""
    while True:
        n, r = divmod(n, 36)
        s = d[r] + s
        if n == 0:
            return s


def unique(prefix: str = "ebwb") -> str:
    return (prefix + _base36(os.getpid())[-4:] + "".join(secrets.choice("abcdefghjkmnpqrstuvwxyz23456789")
                                                       for _ in range(4)))[:12]


class Memcg:
    """A memcg-v1 group for one measured process; kmem usage tells the kernel memory it charged."""

    def __init__(self, tag: str, limit_bytes: int | None = None):
        self.path = MEMCG_ROOT / f"{unique('ebwm')}_{tag}"[:60]
        self.ok = False
        try:
            self.path.mkdir()
            register("memcg", str(self.path))
            self.ok = True
            if limit_bytes:
                (self.path / "memory.limit_in_bytes").write_text(str(limit_bytes))
        except OSError as exc:
            log(f"memcg {self.path}: {exc}; kernel memory will not be measured")

    def kmem(self) -> int | None:
        if not self.ok:
            return None
        try:
            return int((self.path / "memory.kmem.usage_in_bytes").read_text())
        except (OSError, ValueError):
            return None

    def oom_killed(self) -> bool:
        try:
            txt = (self.path / "memory.oom_control").read_text()
        except OSError:
            return False
        for line in txt.splitlines():
            if line.startswith("oom_kill "):
                return int(line.split()[1]) > 0
        return False

    def remove(self) -> None:
        if not self.ok:
            return
        for _ in range(20):  # bounded: tasks may take a moment to leave
            try:
                self.path.rmdir()
                return
            except OSError:
                time.sleep(0.1)
        log(f"could not remove memcg {self.path}")


class Sandbox:
    """Two namespaces joined by one veth: DUT (d0, 10.0.0.2/24) and PEER (p0, 10.0.0.1/24),
    plus a private bpffs and state dir for ebpfw. Use as a context manager."""

    def __init__(self, tag: str = "x", forward: bool = False):
        self.forward = forward  # also d1 10.0.1.1/24 <-> p1 10.0.1.2/24, forwarding on in DUT
        self.dut = unique("ebwb")
        self.peer = unique("ebwp")
        self.tag = tag
        self.tmp = Path(tempfile.mkdtemp(prefix=f"ebwb-{tag}-"))
        self.bpffs = self.tmp / "bpffs"
        self.state = self.tmp / "state"
        self._made: list[str] = []
        self._mounted = False

    def __enter__(self) -> "Sandbox":
        try:
            self.up()
        except BaseException:
            self.down()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.down()

    def up(self) -> None:
        for ns in (self.dut, self.peer):
            if Path("/run/netns", ns).exists():
                raise RuntimeError(f"namespace {ns} exists already; refusing to touch it")
            register("netns", ns)
            run(["ip", "netns", "add", ns])
            self._made.append(ns)
        run(["ip", "link", "add", "d0", "netns", self.dut, "type", "veth", "peer", "name", "p0", "netns", self.peer])
        for ns, dev, addr in ((self.dut, "d0", DUT_ADDR), (self.peer, "p0", PEER_ADDR)):
            self.ns_run(ns, ["sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1"])
            run(["ip", "-n", ns, "link", "set", "lo", "up"])
            run(["ip", "-n", ns, "addr", "add", f"{addr}/24", "dev", dev])
            run(["ip", "-n", ns, "link", "set", dev, "up"])
        if self.forward:
            run(["ip", "link", "add", "d1", "netns", self.dut, "type", "veth", "peer", "name", "p1",
                 "netns", self.peer])
            for ns, dev, addr in ((self.dut, "d1", "10.0.1.1"), (self.peer, "p1", "10.0.1.2")):
                run(["ip", "-n", ns, "addr", "add", f"{addr}/24", "dev", dev])
                run(["ip", "-n", ns, "link", "set", dev, "up"])
            # per-namespace sysctl of the DUT namespace we created (nothing global)
            self.ns_run(self.dut, ["sysctl", "-qw", "net.ipv4.ip_forward=1"])
        self.bpffs.mkdir()
        self.state.mkdir()
        register("mount", str(self.bpffs))
        run(["mount", "-t", "bpf", "bpf", str(self.bpffs)])
        self._mounted = True

    def env(self) -> dict:
        e = dict(os.environ)
        e["EBPFW_BPFFS"] = str(self.bpffs)
        e["EBPFW_STATE_DIR"] = str(self.state)
        e["PYTHONPATH"] = f"{os.environ.get('EBPFW_SRC') or ROOT}:{BENCH}"
        return e

    def ns_run(self, ns: str, argv, timeout: float = 60.0, check: bool = True, input_text=None):
        return run(["nsenter", f"--net=/run/netns/{ns}", *argv], timeout=timeout, env=self.env(),
                   check=check, input_text=input_text)

    def dut_run(self, argv, **kw):
        return self.ns_run(self.dut, argv, **kw)

    def worker(self, script: str, args: dict, timeout: float) -> dict:
        """Run `script --worker JSON` inside the DUT namespace; returns its last JSON line."""
        cp = self.dut_run([PY, str(BENCH / script), "--worker", json.dumps(args)], timeout=timeout, check=False)
        lines = [l for l in cp.stdout.splitlines() if l.startswith("{")]
        if lines:
            return json.loads(lines[-1])
        tail = cp.stderr.strip().splitlines()[-3:]
        if cp.returncode < 0:
            last = tail[-1].split("] ", 1)[-1].strip() if tail else ""
            return {"error": f"killed by signal {-cp.returncode}" + (f" during '{last}'" if last else "")}
        return {"error": f"worker exited {cp.returncode}: {' | '.join(tail) or 'no output'}"}

    def down(self) -> None:
        for ns in self._made:
            subprocess.run(["ip", "netns", "del", ns], stderr=subprocess.DEVNULL, timeout=30)
        self._made = []
        if self._mounted:
            subprocess.run(["umount", "-l", str(self.bpffs)], stderr=subprocess.DEVNULL, timeout=30)
            self._mounted = False
        subprocess.run(["rm", "-rf", str(self.tmp)], timeout=60)


def results_dir() -> Path:
    d = os.environ.get("BENCH_OUT")
    p = Path(d) if d else ROOT / "bench-results" / time.strftime("%Y%m%d-%H%M%S")
    p.mkdir(parents=True, exist_ok=True)
    return p


def write_json(path: Path, obj) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(obj, indent=1, sort_keys=True) + "\n")
    tmp.replace(path)


def bpftool_json(argv, timeout: float = 30.0):
    cp = run(["bpftool", "-j", *argv], timeout=timeout, check=False)
    if cp.returncode != 0:
        return None
    try:
        return json.loads(cp.stdout)
    except json.JSONDecodeError:
        return None


if __name__ == "__main__" and sys.argv[1:] == ["--which-ebpfw"]:
    import ebpfw
    print(ebpfw.__file__)
