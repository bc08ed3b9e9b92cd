"""The library API behind the CLI: import, check, apply, save, show, detach, status.

apply is a staged transaction: parse -> check -> compile (nothing touched yet) -> either
rewrite the inactive slot of the loaded programs (shape fits: no compile, no re-attach) or build
new programs (bcc + verifier) -> flip/attach -> record state. Any failure before the flip or the
first attach leaves the enforced ruleset as it was; a failure while attaching new programs puts
the previous programs back on the interfaces already switched.
"""

from __future__ import annotations

import functools
import gc
import os
import shutil
import time
from pathlib import Path
from typing import Optional

from . import conntrack, state
from .check import check_ruleset
from .compiler import compile_plan
from .datapath import Datapath, Shape, shape_for
from .errors import EbpfwError, KernelError, RulesetError, StateError
from .iptables import parse_ruleset, save_ruleset
from .netlink import attach as nl
from .netlink import host
from .ruleset import Counters, Ruleset, Table

CURRENT = "current.json"
RULES_FILE = "ruleset.rules"
MODES = ("auto", "xdp", "xdp-generic", "tc")


class ChangedMeanwhile(StateError):
    """apply(expect_applied_at=...) found another apply had happened since the caller looked."""


def _gc_paused(fn):
    """Run `fn` with Python's cyclic garbage collector off. Parsing and compiling allocate
    millions of small objects, none of them in cycles, and every collection walks the whole
    heap (the parse cache included): at 100k rules the collector was half of the time."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        if not gc.isenabled():
            return fn(*args, **kwargs)
        gc.disable()
        try:
            return fn(*args, **kwargs)
        finally:
            gc.enable()
    return wrapper


def _parse(text: str, filename: str) -> Ruleset:
    rs = parse_ruleset(text, filename)
    check_ruleset(rs, allow_conntrack=True)   # the datapath tracks connections
    return rs


def _filter_table(rs: Ruleset, filename: str) -> Table:
    t = rs.table("filter")
    if t is None:
        raise EbpfwError(f"{filename}: no *filter table, expected an iptables-save file with '*filter'")
    return t


def _sets_for(rs: Ruleset, sets_text: Optional[str], sets_filename: Optional[str]) -> tuple[dict, Optional[dict]]:
    """(the set definitions -m set rules may name, the sets to load or None): from the --sets
    file when given, else the sets already loaded in this namespace (ebpfw.sets)."""
    if sets_text is not None:
        from .ipset import parse_ipsets
        from .sets import refuse_unsupported
        new = parse_ipsets(sets_text, sets_filename or "<sets>")
        problems = []
        for st in new.values():      # before anything is built or touched
            try:
                refuse_unsupported(st)
            except RulesetError as exc:
                problems += exc.problems
        if problems:
            raise RulesetError(f"{len(problems)} problem(s) in {sets_filename or '<sets>'}", problems=problems)
        check_ruleset(rs, allow_conntrack=True, sets=new)
        return new, new
    from . import sets as live
    return live.loaded_definitions(), None


@_gc_paused
def import_ruleset(text: str, filename: str, sets_text: Optional[str] = None,
                   sets_filename: Optional[str] = None) -> str:
    rs = _parse(text, filename)
    t = _filter_table(rs, filename)
    defs, _ = _sets_for(rs, sets_text, sets_filename)
    compile_plan(t, sets=defs)  # refuse here what the datapath cannot enforce, not at apply time
    return save_ruleset(rs, header=f"ebpfw ruleset imported from {filename}")


@_gc_paused
def check(text: str, filename: str, sets_text: Optional[str] = None, sets_filename: Optional[str] = None) -> dict:
    rs = _parse(text, filename)
    links = host.links()
    defs, _ = _sets_for(rs, sets_text, sets_filename)
    plan = compile_plan(_filter_table(rs, filename), {l.name: l.ifindex for l in links}, sets=defs)
    out = plan.summary()
    out["shape"] = shape_for(plan, len(links)).to_json()
    return out


# ---- apply ---------------------------------------------------------------------------------------

def _gen_dir(gen: int) -> Path:
    return state.pin_dir(create=True) / f"g{gen}"


def _attach_all(dp: Datapath, targets: list[tuple[host.Link, str]], prev_ifaces: dict) -> list[dict]:
    """Attach dp's programs to every (link, mode); returns the iface records. On failure, the
    interfaces already switched get their previous programs back (or none) and it re-raises."""
    done: list[dict] = []
    try:
        for link, mode in targets:
            rec = {"name": link.name, "ifindex": link.ifindex, "created_clsact": False}
            old = prev_ifaces.get(link.name)
            if mode == "tc":
                if old and old.get("ingress", "").startswith("xdp"):
                    nl.detach_xdp(link.ifindex, old["ingress"])
                rec["created_clsact"] |= nl.attach_tc(link.ifindex, dp.progs["tc_ingress"], "ingress", "ebpfw_ingress")
                rec["ingress"] = "tc"
            else:
                if old and old.get("ingress") == "tc":
                    nl.detach_tc(link.ifindex, "ingress")
                rec["ingress"] = nl.attach_xdp(link.ifindex, dp.progs["xdp"], mode)
            rec["created_clsact"] |= nl.attach_tc(link.ifindex, dp.progs["tc_egress"], "egress", "ebpfw_egress")
            if old:
                rec["created_clsact"] |= bool(old.get("created_clsact"))
            done.append(rec)
    except Exception:
        _restore_ifaces(done, prev_ifaces)
        raise
    return done


def _restore_ifaces(done: list[dict], prev_ifaces: dict) -> None:
    """Best effort: put back what was attached before this apply on the switched interfaces."""
    cur = state.read_json(CURRENT)
    old_dp = None
    if cur:
        try:
            old_dp = Datapath.open_pinned(Path(cur["gen_dir"]), Shape.from_json(cur["shape"]), with_progs=True)
        except EbpfwError:
            old_dp = None
    for rec in done:
        old = prev_ifaces.get(rec["name"])
        try:
            if old and old_dp is not None:
                if old["ingress"] == "tc":
                    nl.attach_tc(rec["ifindex"], old_dp.progs["tc_ingress"], "ingress", "ebpfw_ingress")
                else:
                    nl.attach_xdp(rec["ifindex"], old_dp.progs["xdp"], old["ingress"])
                nl.attach_tc(rec["ifindex"], old_dp.progs["tc_egress"], "egress", "ebpfw_egress")
            else:
                _detach_iface(rec)
        except EbpfwError:
            pass
    if old_dp is not None:
        old_dp.close()


def _detach_iface(rec: dict) -> list[str]:
    out = []
    idx = rec["ifindex"]
    try:
        host_names = {l.ifindex: l.name for l in host.links()}
    except EbpfwError:
        host_names = {}
    if host_names.get(idx) != rec["name"]:
        return [f"{rec['name']}: gone from this namespace, nothing to detach"]
    if rec.get("ingress", "").startswith("xdp"):
        if nl.detach_xdp(idx, rec["ingress"]):
            out.append(f"{rec['name']}: removed the XDP program ({rec['ingress']})")
    elif nl.detach_tc(idx, "ingress"):
        out.append(f"{rec['name']}: removed the TC ingress filter")
    if nl.detach_tc(idx, "egress"):
        out.append(f"{rec['name']}: removed the TC egress filter")
    if rec.get("created_clsact") and nl.remove_clsact(idx):
        out.append(f"{rec['name']}: removed the clsact qdisc ebpfw created")
    return out


def _initial_counters(plan, table: Table) -> dict:
    by_name = {c.name: c for c in table.chains}
    rules = []
    for chain, i in plan.rule_chain:
        c = by_name[chain].rules[i].counters
        rules.append((c.packets, c.bytes))
    chains = []
    for name in plan.chain_names:
        c = by_name.get(name)
        chains.append((c.counters.packets, c.counters.bytes) if c is not None else (0, 0))
    return {"rules": rules, "chains": chains}


def resolve_modes(plan, ifaces: list[str], mode: str, modes: dict[str, str]) -> tuple[str, dict[str, str]]:
    """The ingress mode of every interface for this plan. A ruleset that reads or writes the
    packet's mark (-j MARK, -m mark, CONNMARK --save-mark/--restore-mark) needs an skb, which XDP
    does not have: "auto" becomes "tc", and an explicit XDP mode is refused naming the first
    such rule (nothing is touched yet)."""
    if not plan.skb_mark_rule:
        return mode, modes
    xdp = sorted({i for i in ifaces if modes.get(i, mode) in ("xdp", "xdp-generic")})
    if xdp:
        asked = modes.get(xdp[0], mode)
        raise EbpfwError(
            f"--mode {asked} cannot enforce this ruleset on {', '.join(xdp)}: XDP runs before the kernel "
            f"has an skb, so there is no packet mark to read or set; the first rule that needs it is "
            f"{plan.skb_mark_rule}",
            hint="use --mode tc (or auto, which picks TC ingress for rulesets with marks)")
    return ("tc" if mode == "auto" else mode), {i: ("tc" if m == "auto" else m) for i, m in modes.items()}


@_gc_paused
def apply(text: str, filename: str, ifaces: list[str], mode: str = "auto", counters: bool = False,
          modes: Optional[dict[str, str]] = None, expect_applied_at: Optional[float] = None,
          sets_text: Optional[str] = None, sets_filename: Optional[str] = None) -> dict:
    """`modes` optionally gives some interfaces another ingress mode than `mode`.
    `expect_applied_at` (compare-and-swap for callers that re-apply what they read, like the
    agent): raise ChangedMeanwhile, changing nothing, unless the enforced state is still the one
    applied at that time (0.0: nothing applied). `sets_text` (ipset save format) gives the sets
    -m set rules name; each set in it is loaded with exactly its elements (ebpfw.sets), before the
    new rules take effect; without it the rules name sets already loaded."""
    t0 = time.monotonic()
    modes = dict(modes or {})
    for m in [mode, *modes.values()]:
        if m not in MODES:
            raise EbpfwError(f"unknown --mode {m!r}, expected one of {', '.join(MODES)}")
    if not ifaces:
        raise EbpfwError("no interface given, expected at least one --iface IF")
    rs = _parse(text, filename)
    table = _filter_table(rs, filename)
    links = host.links()
    by_name = {l.name: l for l in links}
    missing = [i for i in ifaces if i not in by_name]
    if missing:
        raise EbpfwError(f"no interface {', '.join(repr(m) for m in missing)} in this network namespace",
                         hint="`ip link` lists the interfaces; ebpfw applies to the namespace it runs in")
    if len(set(ifaces)) != len(ifaces):
        raise EbpfwError("an interface is given twice with --iface")
    set_defs, set_load = _sets_for(rs, sets_text, sets_filename)
    plan = compile_plan(table, {l.name: l.ifindex for l in links}, sets=set_defs)
    mode, modes = resolve_modes(plan, ifaces, mode, modes)
    need = shape_for(plan, len(links))
    init = _initial_counters(plan, table) if counters else None
    canonical = save_ruleset(rs)
    pins = state.pin_dir(create=True)
    state.state_dir(create=True)

    with state.ApplyLock():
        cur = state.read_json(CURRENT)
        if expect_applied_at is not None and (cur or {}).get("applied_at", 0.0) != expect_applied_at:
            raise ChangedMeanwhile("another apply changed the enforced ruleset meanwhile; nothing was changed",
                                   hint="read the state again and retry")
        prev_ifaces = {r["name"]: r for r in cur["ifaces"]} if cur else {}
        targets = [(by_name[i], modes.get(i, mode)) for i in ifaces]
        judged = {by_name[i].ifindex for i in ifaces}
        addrs = host.local_addresses()
        cur_shape = Shape.from_json(cur["shape"]) if cur else None
        reuse = (cur is not None and cur_shape.fits(need) and Path(cur["gen_dir"]).is_dir())
        if reuse:
            dp = Datapath.open_pinned(Path(cur["gen_dir"]), cur_shape, with_progs=True)
            try:
                _load_sets(plan, pins, set_defs, set_load)
                _load_recent(plan, dp)
                slot = 1 - dp.active()[0]
                dp.write_slot(slot, plan, links, init)
                # the union while interfaces change, so no forwarded packet escapes judgement
                dp.write_host(links, addrs, judged | {r["ifindex"] for r in prev_ifaces.values()})
                # an interface re-created under the same name has a new ifindex: attach again
                same = {(r["name"], r["ifindex"], r.get("mode")) for r in prev_ifaces.values()} == {
                    (link.name, link.ifindex, m) for link, m in targets}
                records = list(prev_ifaces.values()) if same else _attach_all(dp, targets, prev_ifaces)
                dp.flip(slot)
                dp.write_host(links, addrs, judged)
                gen = cur["generation"]
                gen_dir = cur["gen_dir"]
                shape = cur_shape
            finally:
                dp.close()
        else:
            gen = (cur["generation"] + 1) if cur else 1
            gdir = pins / f"g{gen}"
            if gdir.exists():
                shutil.rmtree(gdir, ignore_errors=True)
            shape = need
            dp = conntrack.build_datapath(shape, pins)   # shares the pinned conntrack table
            try:
                _load_sets(plan, pins, set_defs, set_load)
                _load_recent(plan, dp)
                dp.write_slot(0, plan, links, init)
                dp.write_host(links, addrs, judged | {r["ifindex"] for r in prev_ifaces.values()})
                dp.flip(0)
                slot = 0
                dp.pin_all(gdir)
                try:
                    records = _attach_all(dp, targets, prev_ifaces)
                except Exception:
                    shutil.rmtree(gdir, ignore_errors=True)
                    raise
                dp.write_host(links, addrs, judged)
            finally:
                dp.close()
            gen_dir = str(gdir)
        modes = {link.name: m for link, m in targets}
        for rec in records:
            rec["mode"] = modes[rec["name"]]
        # interfaces that were in the previous apply but not in this one
        for name, old in prev_ifaces.items():
            if name not in ifaces:
                _detach_iface(old)
        _release_recent(plan, pins)
        (state.state_dir() / RULES_FILE).write_text(canonical)
        state.write_json_atomic(CURRENT, {
            "generation": gen, "gen_dir": gen_dir, "shape": shape.to_json(), "slot": slot,
            "ifaces": records, "rule_chain": plan.rule_chain, "chains": plan.chain_names,
            "applied_at": time.time(), "source": filename,
        })
        if cur and cur["gen_dir"] != gen_dir:
            shutil.rmtree(cur["gen_dir"], ignore_errors=True)
    return {"generation": gen, "recompiled": not reuse,
            "ifaces": [{"name": r["name"], "ingress": r["ingress"]} for r in records],
            "rules": plan.nrules, "seconds": round(time.monotonic() - t0, 3)}


def _load_recent(plan, dp: Datapath) -> None:
    """Give the plan's -m recent names their tables (ebpfw.recent): a name the enforced
    ruleset already uses keeps its list."""
    if not plan.recent:
        return
    from .recent import RecentStore, host_params
    fd = dp.ct_maps.get("ebpfw_recent")
    if fd is None:
        raise KernelError("internal: the programs have -m recent but the recent tables are not open")
    plan.recent_ids = RecentStore(fd).prepare(plan.recent, host_params()[1])


def _release_recent(plan, pins: Path) -> None:
    """Once the new ruleset is in force: flush and free the lists no rule names any more (the
    kernel frees a list with its last rule)."""
    from .datapath.abi import RECENT_PIN
    if not (pins / RECENT_PIN).exists():
        return
    from .recent import RecentStore
    with RecentStore.open(pins) as store:
        store.release_unused({m.name for m in plan.recent.values()})


def _load_sets(plan, pins: Path, set_defs: dict, set_load: Optional[dict]) -> None:
    """Load the --sets file's sets (when given) and give the plan their ids. The set maps exist
    once programs with -m set are built (pinned at pins/sets, pins/set_defs)."""
    if not plan.setm and not set_load:
        return
    from . import sets as live
    if not (pins / "sets").exists():
        if plan.setm:
            raise KernelError("internal: the programs have -m set but the set maps are not pinned")
        return   # a --sets file but no rule names a set: nothing to load into
    with live.SetStore(pins) as store:
        ids = store.load(set_load) if set_load else {n: d[0] for n, d in store.definitions().items()}
    plan.set_ids = ids


# ---- reading back --------------------------------------------------------------------------------

def status() -> Optional[dict]:
    """The applied state of this namespace, or None when nothing is applied. A damaged
    state file is an error (StateError with the file and line), not "nothing applied"."""
    return state.read_json(CURRENT)


def _load_applied() -> tuple[dict, Ruleset, Datapath]:
    cur = state.read_json(CURRENT)
    if not cur:
        raise StateError("no ruleset is applied in this network namespace",
                         hint="ebpfw apply RULESET --iface IF")
    path = state.state_dir() / RULES_FILE
    try:
        text = path.read_text()
    except OSError as exc:
        raise StateError(f"cannot read the applied ruleset {path}: {exc.strerror}") from None
    rs = parse_ruleset(text, str(path))
    dp = Datapath.open_pinned(Path(cur["gen_dir"]), Shape.from_json(cur["shape"]))
    return cur, rs, dp


def _counters(cur: dict, dp: Datapath) -> tuple[dict, list]:
    slot, _ = dp.active()
    rc, cc = dp.read_counters(slot, len(cur["rule_chain"]), len(cur["chains"]))
    out: dict = {}
    for (chain, i), (p, b) in zip(cur["rule_chain"], rc):
        out[(chain, i)] = Counters(p, b)
    for name, (p, b) in zip(cur["chains"], cc):
        out[(name, None)] = Counters(p, b)
    return out, rc


@_gc_paused
def save(counters: bool = False) -> str:
    cur, rs, dp = _load_applied()
    try:
        cnt = _counters(cur, dp)[0] if counters else None
    finally:
        dp.close()
    return save_ruleset(rs, counters=cnt)


@_gc_paused
def show() -> dict:
    cur, rs, dp = _load_applied()
    try:
        cnt, _ = _counters(cur, dp)
        stats = dp.read_stats()
        slot, flips = dp.active()
    finally:
        dp.close()
    text = save_ruleset(rs).splitlines()
    rule_lines = [l for l in text if l.startswith("-A ")]
    t = rs.table("filter")
    chains = []
    k = 0
    for c in t.chains:
        rules = []
        for i, _ in enumerate(c.rules):
            cn = cnt.get((c.name, i), Counters())
            line = rule_lines[k] if k < len(rule_lines) else ""
            k += 1
            rules.append({"num": i + 1, "text": line, "packets": cn.packets, "bytes": cn.bytes})
        pc = cnt.get((c.name, None), Counters())
        chains.append({"name": c.name, "policy": c.policy or "-", "packets": pc.packets,
                       "bytes": pc.bytes, "rules": rules})
    return {"generation": cur["generation"], "slot": slot, "flips": flips, "source": cur.get("source"),
            "ifaces": [{"name": r["name"], "ingress": r["ingress"]} for r in cur["ifaces"]],
            "chains": chains, "stats": stats}


def detach() -> list[str]:
    out: list[str] = []
    with state.ApplyLock():
        cur = state.read_json(CURRENT)
        if cur:
            for rec in cur["ifaces"]:
                out += _detach_iface(rec)
        try:
            removed = state.remove_pin_dir()
        except EbpfwError:
            removed = False
        if removed:
            out.append(f"removed pinned maps and programs under {state.pin_dir()}")
        for name in (CURRENT, RULES_FILE):
            p = state.state_dir() / name
            if p.exists():
                p.unlink()
                out.append(f"removed {p}")
    if not out:
        out.append("nothing was applied in this network namespace")
    return out
