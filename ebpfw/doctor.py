"""`ebpfw doctor`: can this host run ebpfw, and if not, what exactly to do about it.

Contract: run_checks() inspects the machine and returns one Check per topic, each with a
truthful detail and, when not ok, the command that fixes it. It changes nothing on the host,
except for the live XDP/TC probe, which runs in a throwaway network namespace (veth with both
ends inside it) that it always deletes. A check that cannot run (not root) says so
(ok=True, warning=True, detail 'skipped: ...') instead of pretending it passed.
"""

from __future__ import annotations

import json
import os
import platform
import secrets
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from ebpfw.errors import EbpfwError

MIN_KERNEL = (5, 10)
DEBIAN_PYTHON = "/usr/bin/python3"
CAP_NET_ADMIN, CAP_SYS_ADMIN, CAP_PERFMON, CAP_BPF = 12, 21, 38, 39


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str
    fix: str = ""
    warning: bool = False  # ok, but the user should know (or the check was skipped)


def _caps() -> int:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("CapEff:"):
                return int(line.split()[1], 16)
    except OSError:
        pass
    return 0


def check_privileges() -> Check:
    caps = _caps()
    have = [n for n, bit in (("CAP_BPF", CAP_BPF), ("CAP_NET_ADMIN", CAP_NET_ADMIN),
                             ("CAP_SYS_ADMIN", CAP_SYS_ADMIN), ("CAP_PERFMON", CAP_PERFMON))
            if caps >> bit & 1]
    enough = (caps >> CAP_SYS_ADMIN & 1 or caps >> CAP_BPF & 1) and caps >> CAP_NET_ADMIN & 1
    who = "root" if os.geteuid() == 0 else f"uid {os.geteuid()}"
    detail = f"running as {who}; effective capabilities: {', '.join(have) or 'none of the BPF ones'}"
    if enough:
        return Check("privileges", True, detail)
    return Check("privileges", False, detail + "; loading and attaching programs needs CAP_BPF "
                 "(or CAP_SYS_ADMIN) and CAP_NET_ADMIN", fix="run ebpfw as root (sudo ebpfw ...)")


def _kernel_tuple(release: str) -> tuple[int, int]:
    parts = release.split("-", 1)[0].split(".")
    try:
        return int(parts[0]), int(parts[1])
    except (IndexError, ValueError):
        return (0, 0)


def check_kernel(release: str | None = None) -> Check:
    release = release or platform.release()
    ver = _kernel_tuple(release)
    need = ".".join(map(str, MIN_KERNEL))
    if ver >= MIN_KERNEL:
        return Check("kernel", True, f"Linux {release} (ebpfw needs {need} or newer)")
    return Check("kernel", False, f"Linux {release} is older than {need}: XDP program replacement, "
                 "BTF and the helpers ebpfw uses are missing", fix="boot a newer kernel (Debian 12: linux-image-amd64)")


def check_btf(path: str = "/sys/kernel/btf/vmlinux") -> Check:
    if os.path.exists(path):
        return Check("btf", True, f"{path} present")
    return Check("btf", False, f"{path} missing: the kernel was built without CONFIG_DEBUG_INFO_BTF",
                 fix="use a kernel with BTF (Debian's kernels have it)")


def check_bcc() -> list[Check]:
    out = []
    try:
        import bcc  # noqa: F401
        ver = getattr(bcc, "__version__", "unknown version")
        out.append(Check("bcc", True, f"bcc {ver} imports in {sys.executable}"))
    except Exception as exc:
        out.append(Check("bcc", False, f"bcc does not import in {sys.executable}: {exc}",
                         fix="apt-get install python3-bpfcc, and run ebpfw with Debian's /usr/bin/python3 "
                             "or a venv made with `/usr/bin/python3 -m venv --system-site-packages`"))
    on_path = shutil.which("python3")
    real = os.path.realpath(on_path) if on_path else None
    if real is None:
        out.append(Check("python3 on PATH", True, "no python3 on PATH (ebpfw uses its own interpreter)",
                         warning=True))
    elif real != os.path.realpath(DEBIAN_PYTHON):
        out.append(Check("python3 on PATH", True,
                         f"python3 on PATH is {on_path} ({real}), not Debian's {DEBIAN_PYTHON}: bcc "
                         "does not import there, so run ebpfw through its own entry point "
                         "(/usr/local/sbin/ebpfw or .venv/bin/ebpfw), not `python3 -m ebpfw`",
                         warning=True))
    else:
        out.append(Check("python3 on PATH", True, f"python3 on PATH is Debian's ({real})"))
    return out


def _newest_headers() -> tuple[str | None, str | None]:
    cands = sorted(Path("/usr/src").glob("linux-headers-*-amd64"),
                   key=lambda p: [int(x) if x.isdigit() else x for x in p.name.replace("-", ".").split(".")])
    for hdr in reversed(cands):
        common = Path(str(hdr)[: -len("-amd64")] + "-common")
        if common.is_dir():
            return str(hdr), str(common)
    return (str(cands[-1]), None) if cands else (None, None)


def check_headers(modules_dir: str | os.PathLike | None = None) -> Check:
    """bcc compiles against <modules_dir>/build (generated headers) and <modules_dir>/source."""
    release = platform.release()
    mdir = Path(modules_dir) if modules_dir else Path("/lib/modules") / release
    build, source = mdir / "build", mdir / "source"
    autoconf = build / "include" / "generated" / "autoconf.h"
    kconfig_src, kconfig_build = source / "include/linux/kconfig.h", build / "include/linux/kconfig.h"
    if autoconf.exists() and (kconfig_src.exists() or kconfig_build.exists()):
        target = os.path.realpath(build)
        detail = f"{build} -> {target}"
        hdr_ver = Path(target).name.removeprefix("linux-headers-")
        if hdr_ver and hdr_ver != release and not hdr_ver.startswith(release):
            detail += (f" (headers {hdr_ver}, running kernel {release}: bcc compiles against them; "
                       "the mismatch matters only to programs reading kernel-internal structures)")
        return Check("kernel headers", True, detail)
    hdr, common = _newest_headers()
    missing = [str(p) for p in (autoconf, kconfig_src) if not p.exists()]
    detail = f"bcc needs kernel headers at {build} and {source}; missing: {', '.join(missing)}"
    if hdr and common:
        fix = f"mkdir -p {mdir} && ln -sfn {hdr} {build} && ln -sfn {common} {source}"
    else:
        fix = (f"apt-get install linux-headers-amd64, then: mkdir -p {mdir} && "
               f"ln -sfn /usr/src/linux-headers-VERSION-amd64 {build} && "
               f"ln -sfn /usr/src/linux-headers-VERSION-common {source}")
    return Check("kernel headers", False, detail, fix=fix)


def check_bpffs() -> Check:
    from ebpfw.state import bpffs_root
    try:
        root = bpffs_root()
    except EbpfwError as exc:
        return Check("bpffs", False, str(exc), fix=exc.hint or "")
    return Check("bpffs", True, f"{root} is a mounted bpffs")


_PROBE = r"""
import json
from bcc import BPF
from ebpfw.netlink import attach_xdp, attach_tc, attached_prog_ids, detach_xdp, detach_tc, remove_clsact, ifindex
b = BPF(text="int p_xdp(struct xdp_md *c) { return XDP_PASS; } int p_tc(struct __sk_buff *s) { return 0; }")
i = ifindex(IFACE)
res = {}
for mode in ("xdp", "xdp-generic"):
    try:
        attach_xdp(i, b.load_func("p_xdp", BPF.XDP).fd, mode); detach_xdp(i, mode); res[mode] = "ok"
    except Exception as e:
        res[mode] = str(e)
try:
    created = attach_tc(i, b.load_func("p_tc", BPF.SCHED_CLS).fd, "ingress", "ebpfw_doctor")
    detach_tc(i, "ingress"); remove_clsact(i); res["clsact"] = "ok"
except Exception as e:
    res["clsact"] = str(e)
print(json.dumps(res))
"""


def check_hooks(timeout: float = 60.0) -> list[Check]:
    """Load a trivial XDP and TC program and attach them, in a throwaway namespace."""
    if os.geteuid() != 0:
        return [Check("xdp/tc attach", True, "skipped: needs root", warning=True)]
    ns = f"ebpfwdoc{os.getpid() % 10000}{secrets.token_hex(2)}"  # unique per process and call
    iface = "ebpfwdoc0"

    def run(argv: list[str], **kw) -> subprocess.CompletedProcess:
        return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, **kw)

    try:
        made = run(["ip", "netns", "add", ns])
        if made.returncode != 0:
            return [Check("xdp/tc attach", False, f"cannot create a test namespace: {made.stderr.strip()}")]
        steps = [["ip", "link", "add", iface, "netns", ns, "type", "veth", "peer", "name", "ebpfwdoc1", "netns", ns],
                 ["ip", "-n", ns, "link", "set", iface, "up"], ["ip", "-n", ns, "link", "set", "ebpfwdoc1", "up"]]
        for argv in steps:
            r = run(argv)
            if r.returncode != 0:
                return [Check("xdp/tc attach", False, f"{' '.join(argv)} failed: {r.stderr.strip()}")]
        r = run(["nsenter", f"--net=/run/netns/{ns}", sys.executable, "-c", f"IFACE={iface!r}\n" + _PROBE])
        if r.returncode != 0:
            tail = (r.stderr.strip().splitlines() or ["(no output)"])[-1]
            return [Check("xdp/tc attach", False, f"probe program failed: {tail}",
                          fix="see the bcc and kernel headers checks above")]
        res = json.loads(r.stdout.strip().splitlines()[-1])
    except subprocess.TimeoutExpired:
        return [Check("xdp/tc attach", False, f"probe timed out after {timeout:.0f}s")]
    finally:
        if os.path.exists(f"/run/netns/{ns}"):
            run(["ip", "netns", "delete", ns])
    out = []
    for key, label, fix in (("xdp", "xdp native (veth)", "use --xdp-mode xdp-generic, or TC ingress"),
                            ("xdp-generic", "xdp generic", "the kernel lacks XDP: use TC ingress"),
                            ("clsact", "tc clsact + bpf", "the kernel needs CONFIG_NET_SCH_INGRESS and CONFIG_NET_CLS_BPF")):
        ok = res.get(key) == "ok"
        out.append(Check(label, ok, "attached and detached a trivial program in a throwaway namespace"
                         if ok else str(res.get(key)), fix="" if ok else fix))
    return out


def _count_iptables(save_cmd: str) -> int | None:
    exe = shutil.which(save_cmd)
    if exe is None:
        return None
    r = subprocess.run([exe], capture_output=True, text=True, timeout=30)
    if r.returncode != 0:
        return None
    return sum(1 for line in r.stdout.splitlines() if line.startswith("-A "))


def check_other_firewalls() -> Check:
    """iptables/nftables rules in this namespace still filter packets after ebpfw's verdict."""
    if os.geteuid() != 0:
        return Check("other firewalls", True, "skipped: reading iptables/nftables rules needs root", warning=True)
    found = []
    for cmd in ("iptables-save", "ip6tables-save", "iptables-legacy-save"):
        n = _count_iptables(cmd)
        if n:
            found.append(f"{n} rule(s) in {cmd}")
    nft = shutil.which("nft")
    if nft:
        r = subprocess.run([nft, "list", "ruleset"], capture_output=True, text=True, timeout=30)
        n_tables, n_rules, in_chain = 0, 0, False
        for line in r.stdout.splitlines():
            if line.startswith("table "):
                n_tables += 1
            elif line.startswith("\tchain "):
                in_chain = True
            elif line.startswith("\t}"):
                in_chain = False
            elif in_chain and line.startswith("\t\t") and not line.strip().startswith(("type ", "policy ", "comment ")):
                n_rules += 1
        if r.returncode == 0 and n_rules:
            found.append(f"{n_rules} nftables rule(s) in {n_tables} table(s)")
    if not found:
        return Check("other firewalls", True, "no iptables or nftables rules in this network namespace")
    return Check("other firewalls", True, "; ".join(found) + ": they still apply to packets ebpfw "
                 "accepts (both must let a packet through)",
                 fix="after moving them to ebpfw (ebpfw import), flush them: iptables -F; nft flush ruleset",
                 warning=True)


def run_checks(modules_dir: str | os.PathLike | None = None, live: bool = True) -> list[Check]:
    """Every check, in the order a user should fix them. `live=False` skips the attach probe."""
    checks = [check_privileges(), check_kernel(), check_btf(), *check_bcc(),
              check_headers(modules_dir), check_bpffs()]
    if live:
        checks += check_hooks()
    checks.append(check_other_firewalls())
    return checks
