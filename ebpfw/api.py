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
from dataclasses import replace
import os
import shutil
import time
from pathlib import Path
from typing import Optional

from . import conntrack, state
from .check import check_rules, check_ruleset, table_hooks
from .compiler import compile_plan
from .compiler.incremental import recompile
from .compiler.plan import compile_state
from .datapath import Datapath, Shape, shape_for
from .datapath.maps import SlotBase
from .errors import EbpfwError, KernelError, RulesetError, StateError
from .iptables import parse_ruleset, save_ruleset
from .iptables.parse import parse_rule_line
from .iptables.save import format_rule
from .netlink import attach as nl
from .netlink import host
from .ruleset import BUILTIN_CHAINS, Chain, Counters, Pos, Ruleset, Table, chain_key

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
        if rs.table("raw") is not None:     # iptables-restore of a raw-only file: filter accepts all
            return Table("filter", tuple(Chain(n, "ACCEPT", (), Pos(filename, 0)) for n in BUILTIN_CHAINS["filter"]),
                         Pos(filename, 0))
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
    compile_plan(t, sets=defs, raw=rs.table("raw"))  # refuse here what the datapath cannot enforce
    return save_ruleset(rs, header=f"ebpfw ruleset imported from {filename}")


@_gc_paused
def check(text: str, filename: str, sets_text: Optional[str] = None, sets_filename: Optional[str] = None) -> dict:
    rs = _parse(text, filename)
    links = host.links()
    defs, _ = _sets_for(rs, sets_text, sets_filename)
    plan = compile_plan(_filter_table(rs, filename), {l.name: l.ifindex for l in links}, sets=defs,
                        raw=rs.table("raw"))
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
                rec["ingress"] = nl.attach_xdp(link.ifindex, dp.progs["xdp"], mode)
                # the XDP program hands REJECTed packets to this TC ingress program, which
                # answers them (XDP_TX answers are lost on veth and would skip OUTPUT)
                if "tc_xdprej" in dp.progs:
                    rec["created_clsact"] |= nl.attach_tc(link.ifindex, dp.progs["tc_xdprej"], "ingress",
                                                          "ebpfw_ingress")
                    rec["tc_reject"] = True
                elif (old and (old.get("ingress") == "tc" or old.get("tc_reject"))):
                    nl.detach_tc(link.ifindex, "ingress")
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
                    if old.get("tc_reject") and "tc_xdprej" in old_dp.progs:
                        nl.attach_tc(rec["ifindex"], old_dp.progs["tc_xdprej"], "ingress", "ebpfw_ingress")
                    else:
                        nl.detach_tc(rec["ifindex"], "ingress")
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
        if rec.get("tc_reject") and nl.detach_tc(idx, "ingress"):
            out.append(f"{rec['name']}: removed the TC ingress filter that answers REJECT")
    elif nl.detach_tc(idx, "ingress"):
        out.append(f"{rec['name']}: removed the TC ingress filter")
    if nl.detach_tc(idx, "egress"):
        out.append(f"{rec['name']}: removed the TC egress filter")
    if rec.get("created_clsact") and nl.remove_clsact(idx):
        out.append(f"{rec['name']}: removed the clsact qdisc ebpfw created")
    return out


def _initial_counters(plan, table: Table, raw: Optional[Table] = None) -> dict:
    by_name = {c.name: c for c in table.chains}
    by_name.update({chain_key("raw", c.name): c for c in (raw.chains if raw is not None else ())})
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


# ---- what this process applied last: the base of the next apply's incremental path ----------------

class _Session:
    """The last ruleset this process applied in one namespace, and what each slot of its
    programs holds. A later apply of a text that differs from it only in some rule lines
    (changed in place, no jump changed) parses, checks and compiles only those lines
    (compiler/incremental.py), and writes only the map entries that differ from what the
    inactive slot holds (Datapath.write_slot's base)."""

    def __init__(self, key, lines, rs, cstate, canonical, links_sig, sets, like: "Optional[_Session]" = None):
        self.key = key                      # str(state_dir()): the namespace
        self.lines = lines                  # the applied text, split on "\n"
        self.rs = rs
        self.cstate = cstate                # CompileState of the applied plan
        self.canonical = canonical          # save_ruleset(rs) as lines (no "\n")
        self.links_sig = links_sig          # ((name, ifindex), ...) the plan was compiled for
        self.sets = sets                    # the set definitions it was compiled with
        # the kernel side (set after the maps are written)
        self.gen_dir: Optional[str] = None
        self.applied_at: Optional[float] = None
        self.token: Optional[str] = None
        self.slots: dict[int, SlotBase] = {}
        if like is not None:     # an in-place edit of `like`: same lines, chains, jumps, numbering
            self.hooks, self.line_rule, self.canon_at = like.hooks, like.line_rule, like.canon_at
            return
        self.hooks = table_hooks(rs.table("filter"))
        table = rs.table("filter")
        number = {ci: r for r, ci in enumerate(cstate.plan.rule_chain)}
        self.line_rule: dict[int, tuple[str, int, int]] = {}   # line -> (chain, index, rule number)
        self.canon_at: dict[int, int] = {}                      # rule number -> canonical line
        pos = 1 + len(table.chains)     # save_ruleset: "*filter", the chain lines, the rules
        for c in table.chains:
            for i, rule in enumerate(c.rules):
                r = number[(c.name, i)]
                self.line_rule[rule.pos.line] = (c.name, i, r)
                self.canon_at[r] = pos
                pos += 1


_SESSION: Optional[_Session] = None
SLOT_TOKEN = "slots.token"


def _ignorable(line: str) -> bool:
    s = line.strip()
    return not s or s.startswith("#")


def _incremental(sess: _Session, text: str, filename: str, links_sig, set_defs):
    """(rs, CompileState, canonical lines) of `text` from the session, or None when it is not
    an in-place edit of the session's rule lines (the caller then does the full work). The
    result is the one the full path gives, except that unchanged rules keep the positions
    (file name) of the text they were parsed from; positions only appear in problems, and
    problems can only come from the changed rules."""
    if links_sig != sess.links_sig or set_defs != sess.sets:
        return None
    lines = text.split("\n")
    old = sess.lines
    if len(lines) != len(old):
        return None
    diffs = [i for i, (a, b) in enumerate(zip(lines, old)) if a != b]
    table = sess.rs.table("filter")
    names = frozenset(c.name for c in table.chains)
    edits: dict[str, dict[int, object]] = {}
    changed: dict[int, object] = {}
    problems: list[str] = []
    for i in diffs:
        at = sess.line_rule.get(i + 1)
        if at is None:
            if _ignorable(lines[i]) and _ignorable(old[i]):
                continue
            return None
        s = lines[i].strip()
        if not s.startswith("-"):
            return None             # a [p:b] prefix, a chain line, ...: the full path
        try:
            chain, rule = parse_rule_line(lines[i], filename, i + 1, "filter", names)
        except RulesetError as exc:
            problems += exc.problems
            continue
        name, idx, r = at
        if chain != name:
            return None
        was = table.chains[[c.name for c in table.chains].index(name)].rules[idx].target
        if (was.kind in ("JUMP", "GOTO") or rule.target.kind in ("JUMP", "GOTO")) and was != rule.target:
            return None
        edits.setdefault(name, {})[idx] = (rule, r)
        changed[r] = rule
    if problems:
        raise RulesetError(f"{len(problems)} problem{'s' if len(problems) != 1 else ''} in {filename}",
                           problems=problems)
    from dataclasses import replace
    chains = []
    for c in table.chains:
        e = edits.get(c.name)
        if e:
            rules = list(c.rules)
            for idx, (rule, _) in e.items():
                rules[idx] = rule
            c = replace(c, rules=tuple(rules))
        chains.append(c)
    new_table = replace(table, chains=tuple(chains))
    rs = replace(sess.rs, tables=tuple(new_table if t is table else t for t in sess.rs.tables))
    check_rules(new_table, [(name, rule) for name, e in edits.items() for rule, _ in e.values()],
                sess.hooks, allow_conntrack=True)
    cstate = recompile(sess.cstate, changed) if changed else sess.cstate
    if cstate is None:
        return None
    canonical = list(sess.canonical)
    for name, e in edits.items():
        for rule, r in e.values():
            canonical[sess.canon_at[r]] = format_rule(name, rule)
    return rs, cstate, canonical, lines


def _read_token() -> Optional[str]:
    try:
        return (state.state_dir() / SLOT_TOKEN).read_text()
    except OSError:
        return None


def _write_token() -> str:
    """Mark that a slot is about to be written: a session's picture of the slots is only
    trusted while the token is the one it wrote (no other process wrote a slot since)."""
    token = f"{os.getpid()} {time.monotonic_ns()} {os.urandom(8).hex()}"
    path = state.state_dir() / SLOT_TOKEN
    tmp = path.with_name(f".{SLOT_TOKEN}.{os.getpid()}")
    tmp.write_text(token)
    os.replace(tmp, path)
    return token


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
    global _SESSION
    state.wait_background()     # the previous apply of this process has finished (and its session)
    links = host.links()
    by_name = {l.name: l for l in links}
    missing = [i for i in ifaces if i not in by_name]
    if missing:
        raise EbpfwError(f"no interface {', '.join(repr(m) for m in missing)} in this network namespace",
                         hint="`ip link` lists the interfaces; ebpfw applies to the namespace it runs in")
    if len(set(ifaces)) != len(ifaces):
        raise EbpfwError("an interface is given twice with --iface")
    links_sig = tuple((l.name, l.ifindex) for l in links)
    key = str(state.state_dir())
    sess = _SESSION if _SESSION is not None and _SESSION.key == key else None
    fast = None
    if sess is not None and sets_text is None:
        set_defs, set_load = _sets_for(sess.rs, None, None)
        fast = _incremental(sess, text, filename, links_sig, set_defs)
    if fast is not None:
        rs, cstate, canonical_lines, lines = fast
        table = rs.table("filter")
    else:
        rs = _parse(text, filename)
        table = _filter_table(rs, filename)
        set_defs, set_load = _sets_for(rs, sets_text, sets_filename)
        cstate = compile_state(table, {l.name: l.ifindex for l in links}, sets=set_defs, raw=rs.table("raw"))
        canonical_lines = save_ruleset(rs).split("\n")[:-1]
        lines = text.split("\n")
    plan = replace(cstate.plan, set_ids={})     # _load_sets fills set_ids of this apply's copy
    mode, modes = resolve_modes(plan, ifaces, mode, modes)
    need = shape_for(plan, len(links))
    init = _initial_counters(plan, table, rs.table("raw")) if counters else None
    canonical = "\n".join(canonical_lines) + "\n"
    pins = state.pin_dir(create=True)
    state.state_dir(create=True)
    new_sess = _Session(key, lines, rs, cstate, canonical_lines, links_sig, set_defs,
                        like=sess if fast is not None else None) \
        if len(rs.tables) == 1 and rs.table("filter") is not None and sets_text is None else None

    lock = state.ApplyLock().acquire()
    finish = None       # the old slot's clean-up, run after the lock is handed on
    base = None         # what the written slot held, when this process knows it
    try:
        cur = state.read_json(CURRENT)
        if expect_applied_at is not None and (cur or {}).get("applied_at", 0.0) != expect_applied_at:
            raise ChangedMeanwhile("another apply changed the enforced ruleset meanwhile; nothing was changed",
                                   hint="read the state again and retry")
        _SESSION = None         # trusted again only once this apply has succeeded
        prev_ifaces = {r["name"]: r for r in cur["ifaces"]} if cur else {}
        targets = [(by_name[i], modes.get(i, mode)) for i in ifaces]
        judged = {by_name[i].ifindex for i in ifaces}
        addrs = host.local_addresses()
        cur_shape = Shape.from_json(cur["shape"]) if cur else None
        reuse = (cur is not None and cur_shape.fits(need) and Path(cur["gen_dir"]).is_dir())
        # the slots as the last apply of this process left them, if no other process wrote
        # one since (each writer changes the token first)
        known = (sess is not None and cur is not None and sess.gen_dir == cur["gen_dir"]
                 and sess.applied_at == cur.get("applied_at") and sess.token is not None
                 and sess.token == _read_token())
        if reuse:
            dp = Datapath.open_pinned(Path(cur["gen_dir"]), cur_shape, with_progs=True)
            try:
                _load_sets(plan, pins, set_defs, set_load)
                _load_recent(plan, dp)
                slot = 1 - dp.active()[0]
                base = sess.slots.get(slot) if known else None
                token = _write_token()
                dp.write_slot(slot, plan, links, init, base=base)
                if ("connlimit" in cur_shape.fields and counters and expect_applied_at is not None
                        and _enforced_canonical() == canonical):
                    # the enforced ruleset again, re-applied by the agent (an interface changed,
                    # or a reload of the same file): iptables' rules, and their connlimit lists,
                    # would not have changed, so the lists go on in the new slot
                    dp.copy_connlimit(1 - slot, slot)
                # the union while interfaces change, so no forwarded packet escapes judgement
                dp.write_host(links, addrs, judged | {r["ifindex"] for r in prev_ifaces.values()})
                # an interface re-created under the same name has a new ifindex: attach again
                same = {(r["name"], r["ifindex"], r.get("mode")) for r in prev_ifaces.values()} == {
                    (link.name, link.ifindex, m) for link, m in targets}
                records = list(prev_ifaces.values()) if same else _attach_all(dp, targets, prev_ifaces)
                dp.flip(slot, cleanup=False)
                flipped_at = time.monotonic()
                dp.write_host(links, addrs, judged)
                gen = cur["generation"]
                gen_dir = cur["gen_dir"]
                shape = cur_shape

                def finish(dp=dp, slot=slot, flipped_at=flipped_at):
                    try:
                        dp.cleanup_after_flip(slot, flipped_at)
                    except BaseException:
                        global _SESSION
                        _SESSION = None      # the old slot's keys may be left: no base for it
                        raise
                    finally:
                        dp.close()
            except BaseException:
                if finish is None:
                    dp.close()
                raise
            slots = dict(sess.slots) if known else {}
            slots[slot] = SlotBase(plan, links)
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
                token = _write_token()
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
            slots = {0: SlotBase(plan, links)}
        modes = {link.name: m for link, m in targets}
        for rec in records:
            rec["mode"] = modes[rec["name"]]
        # interfaces that were in the previous apply but not in this one
        for name, old in prev_ifaces.items():
            if name not in ifaces:
                _detach_iface(old)
        _release_recent(plan, pins)
        (state.state_dir() / RULES_FILE).write_text(canonical)
        applied_at = time.time()
        state.write_json_atomic(CURRENT, {
            "generation": gen, "gen_dir": gen_dir, "shape": shape.to_json(), "slot": slot,
            "ifaces": records, "rule_chain": plan.rule_chain, "chains": plan.chain_names,
            "applied_at": applied_at, "source": filename,
        })
        if cur and cur["gen_dir"] != gen_dir:
            shutil.rmtree(cur["gen_dir"], ignore_errors=True)
        if new_sess is not None:
            new_sess.gen_dir, new_sess.applied_at, new_sess.token, new_sess.slots = gen_dir, applied_at, token, slots
            _SESSION = new_sess
    except BaseException:
        try:
            if finish is not None:
                finish()      # the flip happened: still clean the old slot up, then give the lock back
        finally:
            lock.release()
        raise
    if finish is not None:
        # the new ruleset enforces now; the old slot's group keys go GRACE_SECONDS after the
        # flip, while this process still holds the apply lock
        state.finish_in_background(lock, finish)
    else:
        lock.release()
    return {"generation": gen, "recompiled": not reuse,
            "ifaces": [{"name": r["name"], "ingress": r["ingress"]} for r in records],
            "rules": plan.nrules, "seconds": round(time.monotonic() - t0, 3),
            # only the changed lines parsed and compiled / only changed map entries written
            "incremental": fast is not None, "maps_diffed": reuse and base is not None}


def _enforced_canonical() -> Optional[str]:
    try:
        return (state.state_dir() / RULES_FILE).read_text()
    except OSError:
        return None


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

def reapply_enforced() -> Optional[dict]:
    """Apply the enforced ruleset again, counters kept, on the same interfaces in the same
    modes (compare-and-swap on the state read here: ChangedMeanwhile if another apply lands
    first): for changes the rules read at apply time, such as which set id a set name stands
    for after `ebpfw set swap`. None when nothing is enforced."""
    cur = status()
    if not cur or not Path(cur.get("gen_dir", "")).is_dir():
        return None
    text = save(counters=True)
    names = [r["name"] for r in cur["ifaces"]]
    modes = {r["name"]: r.get("mode") or "auto" for r in cur["ifaces"]}
    return apply(text, cur.get("source") or "<enforced>", names, counters=True, modes=modes,
                 expect_applied_at=cur.get("applied_at", 0.0))


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
    chains = []
    k = 0
    for t in rs.tables:         # save_ruleset's order, so rule_lines line up
        for c in t.chains:
            key = chain_key(t.name, c.name)
            rules = []
            for i, _ in enumerate(c.rules):
                cn = cnt.get((key, i), Counters())
                line = rule_lines[k] if k < len(rule_lines) else ""
                k += 1
                rules.append({"num": i + 1, "text": line, "packets": cn.packets, "bytes": cn.bytes})
            pc = cnt.get((key, None), Counters())
            chains.append({"name": c.name, "table": t.name, "policy": c.policy or "-", "packets": pc.packets,
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
