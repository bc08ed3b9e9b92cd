"""Test worker: runs inside a test-made network namespace, owns one loaded datapath, and
answers JSON-line requests on stdin, so one bcc build serves many rulesets (each load is a
maps-only rewrite of the inactive slot, followed by a flip, exactly as `apply` does).

Requests:
  {"op": "load", "rules": TEXT}                      -> {"ok": true} or {"error": TEXT}
  {"op": "run", "prog": "xdp"|"tc_ingress"|"tc_egress", "frame": HEX,
   "ifindex": N, "ingress_ifindex": N, "mark": N}    -> {"ret": R, "rules": [[idx, p, b]...],
                                                         "chains": [[cid, p, b]...], "stats": {...},
                                                         "out": HEX (the frame after the program),
                                                         "mark": skb->mark after a TC program}
With EBPFW_TEST_CT=1 in the environment the programs have connection tracking compiled in
(a private, unpinned table) and these requests work too:
  {"op": "ct_list"}                                  -> {"entries": [Entry as dict...]}
  {"op": "ct_flush"}                                 -> {"flushed": N}
  {"op": "ct_stats"}                                 -> ebpfw.conntrack.Table.stats()
  {"op": "ct_config", "timeouts": {NAME: SECONDS}, "tcp_loose": BOOL} -> {"ok": true}
  {"op": "bench", "prog": ..., "frame": HEX, "ifindex": N, "repeat": N} -> {"ns": per-packet ns}
-m recent lists (a private, unpinned table array; a load keeps the lists its rules still name):
  {"op": "recent_list", "name": NAME}                -> {"mask": ..., "entries": [ebpfw.recent.Entry as dict...]}
  {"op": "recent_reset"}                             -> {"freed": [NAME...]} (every list dropped)
Sets (private, unpinned maps): "load" takes "sets": TEXT (ipset save format) to load first, and
  {"op": "set_add"|"set_del", "name": NAME, "element": TEXT} -> {"n": entries, "seconds": time}
  {"op": "set_list", "name": NAME}                    -> {"text": ipset save text}
  {"op": "set_gc"}                                    -> {"freed": {name: n}, "counts": {name: count}, "keys": n}
  {"op": "run_cpus", "frame": HEX, "ifindex": N, "repeat": N, "cpus": [0, 1]} -> {"rules": [[p, b]...]}
    (the XDP program on several CPUs at once, for per-CPU safety tests)
{"op": "run_frames_cpus", "jobs": {CPU: [HEX...]}, "ifindex": N} -> {"rets": {CPU: [ret...]}}
    (different frames through the XDP program on several CPUs at once, one run each)
-m hashlimit: {"op": "hl_list"} -> {"entries": [bucket as dict...], "j0": {table: jiffies it was made}}
With EBPFW_TEST_CONNLIMIT=1 the programs have conntrack and -m connlimit compiled in (lists of
128 connections), and {"op": "cl_lists"} -> {"lists": [[rule, address, [entry...]]...]} reads
the active slot's connlimit lists (entry: a_addr, b_addr, a_port, b_port, proto, jiffies, cpu).
EBPFW_TEST_CL_KEYS=N makes room for N connlimit lists (a power of two; default 16384).
EBPFW_TEST_CPU=N pins the worker (and so every test run) to CPU N.
"""

from __future__ import annotations

import dataclasses
import json
import os
import struct
import sys

from ebpfw.compiler import compile_plan
from ebpfw.datapath import Datapath, Shape
from ebpfw.datapath import bpfsys
from ebpfw.datapath import ct as ctdata
from ebpfw.datapath.abi import CT_KEY, CT_VAL
from ebpfw.errors import EbpfwError
from ebpfw.iptables import parse_ruleset
from ebpfw.netlink import host

# one shape big enough for every test ruleset, with every field compiled in
SHAPE = Shape(nwords=32, vcap=4096, rcap=2048, ccap=64, lpm_cap=4096, ifc_cap=64, maxdepth=16,
              fields=("src", "dst", "proto", "sport", "dport", "tcpfl", "icmp", "iif", "oif", "xport", "groups", "grange",
                      "length", "ttl", "tos", "frag", "tcpmss", "pkttype", "mac", "atsrc", "atdst", "reject", "log",
                      "limit", "set", "hashlimit", "mark", "recent"),
              ngroups=16, gcap=4096, mac_cap=64, gwords=32, hl_cap=1 << 14)
if os.environ.get("EBPFW_TEST_CT") == "1":
    SHAPE = dataclasses.replace(SHAPE, fields=SHAPE.fields + ("ct",), ct_size=4096)
# with EBPFW_TEST_RAW=1 the programs have the raw table's stage and "load" compiles a *raw table
if os.environ.get("EBPFW_TEST_RAW") == "1":
    SHAPE = dataclasses.replace(SHAPE, fields=SHAPE.fields + ("raw",))
if os.environ.get("EBPFW_TEST_CONNLIMIT") == "1":
    SHAPE = dataclasses.replace(SHAPE, fields=tuple(dict.fromkeys(SHAPE.fields + ("ct", "connlimit"))),
                                ct_size=4096, cl_conns=128, cl_keys=int(os.environ.get("EBPFW_TEST_CL_KEYS", "0")))


def skb_ctx(ifindex: int, ingress_ifindex: int, mark: int = 0) -> bytes:
    # struct __sk_buff: mark at offset 8, ingress_ifindex at 36, ifindex at 40 (uapi/linux/bpf.h)
    ctx = bytearray(192)
    struct.pack_into("<I", ctx, 8, mark)
    struct.pack_into("<I", ctx, 36, ingress_ifindex)
    struct.pack_into("<I", ctx, 40, ifindex)
    return bytes(ctx)


def xdp_ctx(ifindex: int, size: int) -> bytes:
    # struct xdp_md: data, data_end (must equal the frame size), data_meta, ingress_ifindex,
    # rx_queue_index, egress_ifindex
    return struct.pack("<IIIIII", 0, size, 0, ifindex, 0, 0)


def main() -> None:
    if os.environ.get("EBPFW_TEST_CPU"):
        os.sched_setaffinity(0, {int(os.environ["EBPFW_TEST_CPU"])})   # every test run on that CPU
    dp = Datapath.build(SHAPE)
    from ebpfw.sets import SetStore
    from ebpfw.ipset import parse_ipsets
    store = SetStore(fds=(dp.ct_maps["ebpfw_sets"], dp.ct_maps["ebpfw_setdef"]))
    from ebpfw.recent import RecentStore, host_params
    recent = RecentStore(dp.ct_maps["ebpfw_recent"])
    plan = None
    judged = set()
    for line in sys.stdin:
        req = json.loads(line)
        try:
            if req["op"] == "load":
                links = host.links()
                rs = parse_ruleset(req["rules"], "test.rules")
                if "sets" in req:
                    store.load(parse_ipsets(req["sets"], "test.sets"))
                defs = {n: d[1] for n, d in store.definitions().items()}
                filt = rs.table("filter")
                if filt is None:        # a raw-only file: filter accepts everything, as after iptables-restore
                    filt = parse_ruleset("*filter\nCOMMIT\n", "test.rules").table("filter")
                plan = compile_plan(filt, {l.name: l.ifindex for l in links}, group=req.get("group", True),
                                    sets=defs, raw=rs.table("raw"))
                plan.set_ids = {n: d[0] for n, d in store.definitions().items()}
                plan.recent_ids = recent.prepare(plan.recent, host_params()[1])
                slot = 1 - dp.active()[0]
                dp.write_slot(slot, plan, links)
                judged = {l.ifindex for l in links if l.name in req.get("judged", [])}
                dp.write_host(links, host.local_addresses(), judged)
                dp.flip(slot)
                recent.release_unused({m.name for m in plan.recent.values()})
                out = {"ok": True, "chains": plan.chain_names, "rule_chain": plan.rule_chain,
                       "grouped": plan.summary()["grouped_rules"], "groups": len(plan.group_shapes),
                       "group_ports": [g.port for g in plan.group_shapes], "resid": len(plan.resid)}
            elif req["op"] == "run":
                slot = dp.active()[0]
                before = dp.read_counters(slot, plan.nrules, len(plan.chain_names))
                frame = bytes.fromhex(req["frame"])
                if req["prog"] == "xdp":
                    ctx = xdp_ctx(req["ifindex"], len(frame))
                else:
                    ctx = skb_ctx(req["ifindex"], req.get("ingress_ifindex", 0), req.get("mark", 0))
                ret, _, out_frame, ctx_out = bpfsys.test_run_ctx(dp.progs[req["prog"]], frame, 1, ctx)
                after = dp.read_counters(slot, plan.nrules, len(plan.chain_names))
                rules = [[i, a[0] - b[0], a[1] - b[1]] for i, (a, b) in enumerate(zip(after[0], before[0])) if a != b]
                chains = [[i, a[0] - b[0], a[1] - b[1]] for i, (a, b) in enumerate(zip(after[1], before[1])) if a != b]
                out = {"ret": ret, "rules": rules, "chains": chains, "stats": dp.read_stats(), "out": out_frame.hex()}
                if req["prog"] != "xdp":
                    out["mark"] = struct.unpack_from("<I", ctx_out, 8)[0]
            elif req["op"] == "run_cpus":
                # the same frame through the XDP program `repeat` times on each CPU at once
                import threading
                frame = bytes.fromhex(req["frame"])
                rets: dict = {}
                go = threading.Barrier(len(req["cpus"]))

                def on_cpu(cpu: int) -> None:
                    os.sched_setaffinity(0, {cpu})
                    go.wait()
                    rets[cpu] = bpfsys.test_run(dp.progs["xdp"], frame, req["repeat"],
                                                xdp_ctx(req["ifindex"], len(frame)))[0]
                threads = [threading.Thread(target=on_cpu, args=(c,)) for c in req["cpus"]]
                for t in threads:
                    t.start()
                for t in threads:
                    t.join()
                slot = dp.active()[0]
                rc = dp.read_counters(slot, plan.nrules, len(plan.chain_names))[0]
                out = {"rets": rets, "rules": [list(c) for c in rc]}
            elif req["op"] == "cl_lists":
                lists = dp.connlimit_lists(dp.active()[0])
                out = {"lists": sorted([r, a, e] for (r, a), e in lists.items())}
            elif req["op"] == "run_frames_cpus":
                # different frames through the XDP program on several CPUs at once, one run each
                import threading
                jobs = {int(c): [bytes.fromhex(x) for x in fs] for c, fs in req["jobs"].items()}
                rets: dict = {}
                go = threading.Barrier(len(jobs))

                def on_cpu(cpu: int) -> None:
                    os.sched_setaffinity(0, {cpu})
                    go.wait()
                    rets[cpu] = [bpfsys.test_run(dp.progs["xdp"], f, 1, xdp_ctx(req["ifindex"], len(f)))[0]
                                 for f in jobs[cpu]]
                threads = [threading.Thread(target=on_cpu, args=(c,)) for c in jobs]
                for t in threads:
                    t.start()
                for t in threads:
                    t.join()
                out = {"rets": {str(c): r for c, r in rets.items()}}
            elif req["op"] == "hl_list":
                slot = dp.active()[0]
                names = [t.name for t in plan.hl_tables]
                out = {"entries": dp.hashlimit_entries(slot, names),
                       "j0": {n: v[1] for n, v in dp.hashlimit_tables(slot, names).items()}}
            elif req["op"] in ("set_add", "set_del"):
                import time
                t0 = time.perf_counter()
                fn = store.add if req["op"] == "set_add" else store.delete
                n = fn(req["name"], req["element"])
                out = {"n": n, "seconds": time.perf_counter() - t0}
            elif req["op"] == "set_gc":
                freed = store.gc_expired()
                out = {"freed": freed, "counts": {n: d[2] for n, d in store.definitions().items()},
                       "keys": len(bpfsys.keys(store.trie, 16))}
            elif req["op"] == "set_list":
                from ebpfw.ipset import save_ipsets
                out = {"text": save_ipsets([store.get(req["name"])])}
            elif req["op"] == "recent_list":
                lst = recent.get(req["name"])
                out = {"mask": lst.mask, "nstamps": lst.nstamps,
                       "entries": [dataclasses.asdict(e) for e in lst.entries]}
            elif req["op"] == "recent_reset":
                out = {"freed": recent.release_unused(set())}
            elif req["op"] == "ct_list":
                fd = dp.ct_maps["ebpfw_ct"]
                entries = []
                for k in bpfsys.keys(fd, CT_KEY.size):
                    v = bpfsys.lookup(fd, k, CT_VAL.size)
                    if v is not None:
                        e = dataclasses.asdict(ctdata.decode(k, v))
                        e["key"] = k.hex()
                        entries.append(e)
                out = {"entries": entries}
            elif req["op"] == "ct_stats":
                from ebpfw.conntrack import Table
                out = Table(dp.ct_maps["ebpfw_ct"], dp.ct_maps["ebpfw_ctstat"]).stats()
            elif req["op"] == "ct_flush":
                from ebpfw.conntrack import Table
                out = {"flushed": Table(dp.ct_maps["ebpfw_ct"], dp.ct_maps["ebpfw_ctstat"]).flush()}
            elif req["op"] == "ct_config":
                t = ctdata.timeouts_from_env({})
                for name, secs in req.get("timeouts", {}).items():
                    t[ctdata.SHORT_NAMES.get(name, name)] = secs
                dp.write_ct_config(t, req.get("tcp_loose", True))
                out = {"ok": True}
            elif req["op"] == "bench":
                frame = bytes.fromhex(req["frame"])
                ctx = xdp_ctx(req["ifindex"], len(frame)) if req["prog"] == "xdp" else skb_ctx(req["ifindex"], 0)
                ret, ns, _ = bpfsys.test_run(dp.progs[req["prog"]], frame, req.get("repeat", 100000), ctx)
                out = {"ret": ret, "ns": ns}
            else:
                out = {"error": f"unknown op {req['op']}"}
        except EbpfwError as exc:
            out = {"error": exc.render()}
        print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
