#!/usr/bin/env python3
"""Per-packet cost of ebpfw's full XDP ingress program (BPF_PROG_TEST_RUN), with the kernel
memory, map memlock and verifier sizes of the same apply.

    testrun.py [--shapes mixed,blocklist] [--sizes 1,10,100,1000,10000,100000] [--runs 7]
               [--timeout 240] [--mem-limit-gb 10] [--out DIR]

For every (shape, N) a fresh sandbox (two namespaces, one veth, private bpffs; benchlib.py)
is built and a worker process inside the DUT namespace, in its own memcg:
  1. generates the ruleset (gen_rules.py: the only matching rule is the LAST one) and applies
     it with ebpfw.api.apply(..., ["d0"], "xdp") - a cold apply, bcc compile included;
  2. loads a trivial XDP_PASS program (2 instructions, raw BPF_PROG_LOAD) in the same process;
  3. runs both with BPF_PROG_TEST_RUN on the same 64-byte frame (eth dst = d0's MAC, UDP
     10.10.1.1:40000 -> 10.0.0.2:9000, valid IPv4 checksum) and the same xdp_md context
     (ingress_ifindex = d0), alternating ebpfw / trivial, `runs` times each; repeat is
     calibrated so one run takes ~50 ms; the medians are reported;
  4. checks the verdict: XDP_PASS expected, the last rule's counter must have grown by
     exactly the number of ebpfw runs (so the walk really reached rule N), no walk-limit drops;
  5. reads xlated/jited/verified instruction counts (bpftool prog show) and the maps'
     memlock bytes (bpftool map show).
After the worker exits, the memcg's kmem usage is what the pinned programs and maps keep.
A point that fails (compile error, verifier, ENOMEM, memcg OOM, timeout, wrong verdict) is
recorded with its error; nothing is skipped silently.
"""

from __future__ import annotations

import argparse
import ctypes as ct
import json
import socket
import struct
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchlib as B  # noqa: E402

XDP_PASS = 2
XDP_DROP = 1
PKT_SRC = "10.10.1.1"
SPORT, DPORT = 40000, 9000


# ---- worker side (runs inside the DUT namespace) ------------------------------------------------

def build_frame(dst_mac: bytes, src_ip: str, dst_ip: str) -> bytes:
    eth = dst_mac + bytes.fromhex("02eb0f000001") + b"\x08\x00"
    payload = b"\x00" * 18  # 14 + 20 + 8 + 18 = 60 bytes (64 on the wire)
    udp = struct.pack("!HHHH", SPORT, DPORT, 8 + len(payload), 0)
    tot = 20 + len(udp) + len(payload)
    hdr = struct.pack("!BBHHHBBH4s4s", 0x45, 0, tot, 1, 0x4000, 64, 17, 0,
                      socket.inet_aton(src_ip), socket.inet_aton(dst_ip))
    s = sum(struct.unpack("!10H", hdr))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    hdr = hdr[:10] + struct.pack("!H", ~s & 0xFFFF) + hdr[12:]
    return eth + hdr + udp + payload


def load_trivial_xdp_pass() -> int:
    """BPF_PROG_LOAD of `r0 = XDP_PASS; exit` (no bcc needed)."""
    from ebpfw.datapath import bpfsys
    lib = bpfsys._lib
    insns = struct.pack("<BBhi", 0xB7, 0, 0, XDP_PASS) + struct.pack("<BBhi", 0x95, 0, 0, 0)
    buf = ct.create_string_buffer(insns, len(insns))
    lib.bpf_prog_load.argtypes = [ct.c_int, ct.c_char_p, ct.c_char_p, ct.c_void_p, ct.c_size_t, ct.c_void_p]
    fd = lib.bpf_prog_load(6, b"ebwb_pass", b"GPL", buf, 2, None)  # BPF_PROG_TYPE_XDP = 6
    if fd < 0:
        raise OSError(-fd, "loading the trivial XDP_PASS program failed")
    return fd


def verified_insns(fd: int) -> int | None:
    """bpf_prog_info.verified_insns (offset 216, kernel >= 5.16; bpftool 7.1 does not print it)."""
    from ebpfw.datapath import bpfsys
    buf = ct.create_string_buffer(232)
    n = ct.c_uint32(232)
    if bpfsys._lib.bpf_obj_get_info_by_fd(fd, buf, ct.byref(n)) != 0 or n.value < 220:
        return None
    return struct.unpack_from("<I", buf.raw, 216)[0]


def time_phases(phases: dict) -> None:
    """Wrap the stages of ebpfw.api.apply so each one's wall time lands in `phases` (and the
    log, so a point that times out still shows how far it got)."""
    from ebpfw import api, state
    from ebpfw.datapath import Datapath

    def wrap(obj, name: str, label: str) -> None:
        f = getattr(obj, name)

        def w(*args, **kw):
            t = time.monotonic()
            B.log(f"  {label} ...")
            try:
                return f(*args, **kw)
            finally:
                phases[label] = round(phases.get(label, 0) + time.monotonic() - t, 3)
                B.log(f"  {label}: {phases[label]} s")
        setattr(obj, name, w)

    wrap(api, "_parse", "parse+check")
    wrap(api, "compile_plan", "compile")
    wrap(api, "save_ruleset", "canonical text")
    wrap(Datapath, "build", "bcc compile+verifier+maps")
    wrap(Datapath, "write_slot", "write slot")
    wrap(Datapath, "write_host", "write host")
    wrap(Datapath, "pin_all", "pin")
    wrap(api, "_attach_all", "attach")
    wrap(state, "write_json_atomic", "state file")


def worker(a: dict) -> dict:
    import os
    from gen_rules import generate

    from ebpfw import api
    from ebpfw.datapath import Datapath, Shape, bpfsys
    from ebpfw.netlink import host

    out: dict = {"shape": a["shape"], "n": a["n"]}
    if a.get("memcg"):
        Path(a["memcg"], "tasks").write_text(str(os.getpid()))
    t0 = time.monotonic()
    text = generate(a["shape"], a["n"], iif="d0", dst=B.DUT_ADDR)
    out["gen_s"] = round(time.monotonic() - t0, 3)
    out["phases"] = {}
    time_phases(out["phases"])
    t0 = time.monotonic()
    try:
        res = api.apply(text, f"{a['shape']}-{a['n']}.rules", ["d0"], "xdp")
    except Exception as exc:  # any failure of the product is a result, not a crash
        out["error"] = f"apply: {type(exc).__name__}: {exc}"
        return out
    out["apply_cold_s"] = round(time.monotonic() - t0, 3)
    out["ingress"] = res["ifaces"][0]["ingress"]
    cur = api.status()
    gen_dir = Path(cur["gen_dir"])
    nrules = len(cur["rule_chain"])
    shape = Shape.from_json(cur["shape"])
    out["shape_json"] = cur["shape"]
    prog_path = gen_dir / "prog_xdp"
    prog = bpfsys.get(str(prog_path))
    link = {l.name: l for l in host.links()}["d0"]
    frame = build_frame(link.mac, PKT_SRC, a.get("dst_ip") or B.DUT_ADDR)
    ctx = struct.pack("<6I", 0, len(frame), 0, link.ifindex, 0, 0)  # struct xdp_md
    trivial = load_trivial_xdp_pass()

    def one(fd: int, repeat: int) -> tuple[int, int]:
        rv, ns, _ = bpfsys.test_run(fd, frame, repeat, ctx)
        return rv, ns

    # calibrate: ~50 ms per run, bounded repeat
    rv, ns = one(prog, 1000)
    out["retval"] = rv
    repeat = int(min(2_000_000, max(1000, 50e6 / max(ns, 1))))
    out["repeat"] = repeat
    total_runs = 1000
    e_ns, t_ns = [], []
    deadline = time.monotonic() + a.get("measure_budget_s", 30)
    for _ in range(a["runs"]):
        rv, ns = one(prog, repeat)
        total_runs += repeat
        if rv != out["retval"]:
            out["retval_changed"] = rv
        e_ns.append(ns)
        t_ns.append(one(trivial, repeat)[1])
        if time.monotonic() > deadline:
            out["note"] = f"measurement budget reached after {len(e_ns)} runs"
            break
    out["ns"] = B.median(e_ns)
    out["ns_runs"] = e_ns
    out["trivial_ns"] = B.median(t_ns)
    out["trivial_runs"] = t_ns
    os.close(trivial)
    # the verdict and the proof that rule N was reached
    dp = Datapath.open_pinned(gen_dir, shape)
    try:
        slot, _ = dp.active()
        rc, _ = dp.read_counters(slot, nrules, 3)
        stats = dp.read_stats()
    finally:
        dp.close()
    out["last_rule_packets"] = rc[-1][0]
    out["expected_packets"] = total_runs
    out["stats"] = stats
    problems = []
    if out["retval"] != XDP_PASS:
        problems.append(f"verdict {'XDP_DROP' if out['retval'] == XDP_DROP else out['retval']}, expected "
                        f"XDP_PASS (last rule ACCEPT)")
    if rc[-1][0] != total_runs:
        problems.append(f"last rule counted {rc[-1][0]} of {total_runs} packets")
    if stats.get("walk_limit"):
        problems.append(f"walk step limit hit {stats['walk_limit']} times (fail-closed drop)")
    if problems:
        out["error"] = "; ".join(problems)
    # verifier and memory facts
    pj = B.bpftool_json(["prog", "show", "pinned", str(prog_path)])
    if pj:
        out["prog"] = {k: pj.get(k) for k in ("id", "bytes_xlated", "bytes_jited", "bytes_memlock")}
        out["prog"]["verified_insns"] = verified_insns(prog)
    for p in ("prog_tc_ingress", "prog_tc_egress"):
        pj = B.bpftool_json(["prog", "show", "pinned", str(gen_dir / p)])
        if pj:
            out[p] = {k: pj.get(k) for k in ("bytes_xlated", "bytes_jited")}
            fd = bpfsys.get(str(gen_dir / p))
            out[p]["verified_insns"] = verified_insns(fd)
            os.close(fd)
    memlock = 0
    maps = {}
    for m in sorted(gen_dir.iterdir()):
        if m.name.startswith("prog_"):
            continue
        mj = B.bpftool_json(["map", "show", "pinned", str(m)])
        if mj:
            maps[m.name] = mj.get("bytes_memlock")
            memlock += int(mj.get("bytes_memlock") or 0)
    out["maps_memlock"] = maps
    out["memlock_bytes"] = memlock
    os.close(prog)
    return out


# ---- orchestrator ---------------------------------------------------------------------------

def measure_point(shape: str, n: int, runs: int, timeout: float, mem_limit: int) -> dict:
    from gen_rules import FWD_DST
    cg = B.Memcg(f"tr_{shape}_{n}", mem_limit)
    t0 = time.monotonic()
    fwd = shape == "f-fwd"
    try:
        with B.Sandbox(f"tr{n}", forward=fwd) as sb:
            k0 = cg.kmem()
            try:
                r = sb.worker("testrun.py", {"shape": shape, "n": n, "runs": runs,
                                             "memcg": str(cg.path) if cg.ok else None,
                                             "dst_ip": FWD_DST if fwd else None,
                                             "measure_budget_s": 40}, timeout)
            except TimeoutError as exc:
                r = {"shape": shape, "n": n, "error": f"timeout: {exc}"}
            time.sleep(0.3)  # RCU-deferred frees of the worker's transient objects
            k1 = cg.kmem()
            if k0 is not None and k1 is not None and "apply_cold_s" in r:
                r["kmem_bytes"] = k1 - k0
            if cg.oom_killed():
                r["error"] = f"memcg limit {mem_limit >> 30} GiB reached (OOM kill): " + r.get("error", "")
    finally:
        cg.remove()
    r["wall_s"] = round(time.monotonic() - t0, 1)
    r.setdefault("shape", shape)
    r.setdefault("n", n)
    return r


def main() -> int:
    ap = argparse.ArgumentParser(description="ebpfw BPF_PROG_TEST_RUN benchmark")
    ap.add_argument("--worker")
    ap.add_argument("--shapes", default="mixed,blocklist")
    ap.add_argument("--sizes", default="1,10,100,1000,10000,100000")
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--timeout", type=float, default=240, help="seconds per (shape, N) point")
    ap.add_argument("--mem-limit-gb", type=float, default=10)
    ap.add_argument("--fields", action="store_true",
                    help="also the one-rule, one-field rulesets (f-none, f-src, ...): fixed cost per field")
    ap.add_argument("--out")
    a = ap.parse_args()
    B.exit_on_term()
    if a.worker:
        print(json.dumps(worker(json.loads(a.worker))), flush=True)
        return 0
    out = Path(a.out) if a.out else B.results_dir()
    out.mkdir(parents=True, exist_ok=True)
    results = []
    points = [(shape, int(n)) for shape in a.shapes.split(",") for n in a.sizes.split(",")]
    if a.fields:
        from gen_rules import FIELD_RULES
        points += [(f, 1) for f in FIELD_RULES]
    for shape, n in points:
        B.log(f"testrun {shape} N={n} ...")
        r = measure_point(shape, n, a.runs, a.timeout, int(a.mem_limit_gb * (1 << 30)))
        B.log(f"testrun {shape} N={n}: ns={r.get('ns')} trivial={r.get('trivial_ns')} "
              f"apply={r.get('apply_cold_s')}s kmem={r.get('kmem_bytes')} err={r.get('error')}")
        results.append(r)
        B.write_json(out / "testrun.json", results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
