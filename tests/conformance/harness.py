"""Differential conformance harness: play one packet script against real iptables and against
ebpfw, each in its own CLIENT--DUT--SERVER topology, and compare what they counted and let
through.

    side = IptablesSide(topo_i)       # or EbpfwSide(topo_e, bpffs_dir, state_dir)
    ref = run_case(side, case)        # RunResult: final counters + per-step deliveries/hits
    diffs = compare(case, ref, got)   # [] when ebpfw behaves exactly like iptables
    print(render_report(case, ref, got, diffs))

Counters are read with `iptables-save -c` and `ebpfw save --counters` (same canonical format,
parsed by counters.parse_save) and compared rule by rule, packets and bytes, plus every
built-in chain's policy counter. "Deliveries" are what each step made arrive at the far
endpoint (AF_PACKET tap), at the DUT's own stack (raw sockets: after INPUT) and what the real
socket flows reported (connected / refused / timeout).
"""

from __future__ import annotations

import ipaddress
import os
import shlex
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from .counters import Snapshot, delta, has_raw, parse_save, parse_save_with_raw
from .packets import (CRAFTED_TTL, Connect, Case, Send, SetOp, Tagged, Udp, describe_ip, frame_ip,
                      summarize)
from .topology import (ADDR, CLI_IF, DUT_IN, DUT_OUT, DUT_ROUTES_TO_SRV, MAC, SRV_IF, Topology, TopologyError,
                       nsenter, run)

REPO = Path(__file__).resolve().parents[2]
ROLE_ADDR = {"cli": ADDR[CLI_IF], "srv": ADDR[SRV_IF], "dut": "0.0.0.0"}
ROLE_L2 = {"cli": (CLI_IF, MAC[CLI_IF], MAC[DUT_IN]), "srv": (SRV_IF, MAC[SRV_IF], MAC[DUT_OUT])}
SETTLE = float(os.environ.get("CONFORMANCE_SETTLE", "0.003"))
CONNECT_TIMEOUT = 0.25


class ImportRefused(Exception):
    """`ebpfw import` refused the ruleset cleanly (FILE:LINE problems); str() is its output.
    A crash (a Python traceback) raises SideError instead."""


class SideError(RuntimeError):
    pass


# ---------------------------------------------------------------------------------------------
# the two firewalls under comparison

class IptablesSide:
    """The reference. Backend "legacy" (default) is the kernel's x_tables, i.e. exactly the
    semantics of the matches ebpfw promises; "nft" is iptables-nft, which translates rules to
    nftables and has translation bugs of its own (see docs/CONFORMANCE.md)."""

    name = "iptables"

    def __init__(self, topo: Topology, backend: Optional[str] = None) -> None:
        self.topo = topo
        self.backend = backend or os.environ.get("CONFORMANCE_IPTABLES", "legacy")
        if self.backend not in ("legacy", "nft"):
            raise ValueError(f"CONFORMANCE_IPTABLES must be legacy or nft, not {self.backend!r}")
        self.cmd = "iptables-legacy" if self.backend == "legacy" else "iptables-nft"
        self.raw = False        # the loaded ruleset has a *raw table

    def version(self) -> str:
        return run([self.cmd, "--version"]).stdout.strip()

    def load(self, ruleset: str, sets: str = "") -> None:
        if self.raw and not has_raw(ruleset):
            # a restore replaces only the tables it names: the previous case's raw table would
            # stay, its NOTRACK rules exempting packets and keeping conntrack (and its
            # defragmentation) on for every later case
            self.topo.in_dut([f"{self.cmd}-restore", "-w"], input=RAW_EMPTY)
            self.raw = False
        if sets:
            # rules naming the old sets go first, then the sets are replaced by the case's
            self.unload()
            self.topo.in_dut(["ipset", "destroy"], check=False)
            self.topo.in_dut(["ipset", "restore"], input=sets)
        self.topo.in_dut([f"{self.cmd}-restore", "-w"], input=ruleset)
        self.topo.in_dut([self.cmd, "-w", "-Z"])
        self.raw = has_raw(ruleset)
        if self.raw:
            self.topo.in_dut([self.cmd, "-w", "-t", "raw", "-Z"])
        # a previous case may have left conntrack entries (no entries / no module is fine)
        self.topo.in_dut(["conntrack", "-F"], check=False)

    def snapshot(self) -> Snapshot:
        if self.raw:
            return parse_save_with_raw(self.topo.in_dut([f"{self.cmd}-save", "-c"]).stdout)
        return parse_save(self.topo.in_dut([f"{self.cmd}-save", "-c", "-t", "filter"]).stdout)

    def set_op(self, op: str, name: str, element: str) -> None:
        self.topo.in_dut(["ipset", op, name] + ([element] if element else []))

    def unload(self) -> None:
        self.topo.in_dut([f"{self.cmd}-restore", "-w"], input=(
            "*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\nCOMMIT\n"))
        if self.raw:
            self.topo.in_dut([f"{self.cmd}-restore", "-w"], input=RAW_EMPTY)
            self.raw = False


RAW_EMPTY = "*raw\n:PREROUTING ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\nCOMMIT\n"


def ebpfw_argv() -> list[str]:
    """How to run the ebpfw CLI: $EBPFW_PY (e.g. '/work/main/.venv/bin/ebpfw'), else this
    interpreter running ebpfw.cli:main from the repository (PYTHONPATH is set to it)."""
    env = os.environ.get("EBPFW_PY")
    if env:
        return shlex.split(env)
    return [sys.executable, "-c", "import sys; from ebpfw.cli import main; sys.exit(main())"]


def ebpfw_unavailable() -> Optional[str]:
    """None if the ebpfw CLI runs, else the reason it does not (for pytest.skip)."""
    if "EBPFW_PY" not in os.environ and not (REPO / "ebpfw" / "cli.py").exists():
        return f"ebpfw CLI not built yet ({REPO / 'ebpfw' / 'cli.py'} missing)"
    env = dict(os.environ, PYTHONPATH=str(REPO))
    try:
        proc = subprocess.run(ebpfw_argv() + ["--help"], capture_output=True, text=True,
                              timeout=60, cwd=REPO, env=env)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"ebpfw CLI does not run: {exc}"
    if proc.returncode != 0:
        return f"`ebpfw --help` exited {proc.returncode}: {(proc.stderr or proc.stdout).strip()[-400:]}"
    for cmd in ("import", "apply", "save", "detach"):
        if cmd not in proc.stdout:
            return f"ebpfw CLI has no `{cmd}` command yet"
    return None


class EbpfwSide:
    name = "ebpfw"

    def __init__(self, topo: Topology, bpffs: Path, state_dir: Path,
                 mode: Optional[str] = None) -> None:
        self.topo = topo
        self.bpffs = Path(bpffs)
        self.state_dir = Path(state_dir)
        self.default_mode = mode or os.environ.get("CONFORMANCE_MODE", "auto")
        self.mode = self.default_mode
        self.workdir = Path(tempfile.mkdtemp(prefix="ebpfw-cf-"))
        self.attached = False
        self.raw = False        # the loaded ruleset has a *raw table

    def _env(self) -> dict:
        return dict(os.environ, PYTHONPATH=str(REPO), EBPFW_BPFFS=str(self.bpffs),
                    EBPFW_STATE_DIR=str(self.state_dir))

    def _cli(self, args: list[str], input: Optional[str] = None, in_dut: bool = True,
             check: bool = True, timeout: float = 180.0) -> subprocess.CompletedProcess:
        argv = (nsenter(self.topo.dut) if in_dut else []) + ebpfw_argv() + args
        proc = subprocess.run(argv, input=input, capture_output=True, text=True,
                              timeout=timeout, cwd=REPO, env=self._env())
        if check and proc.returncode != 0:
            raise SideError(f"`ebpfw {' '.join(args)}` exited {proc.returncode}:\n"
                            f"{proc.stdout}{proc.stderr}")
        return proc

    def version(self) -> str:
        return f"ebpfw (mode {self.mode})"

    def import_ruleset(self, ruleset: str, sets: str = "") -> Path:
        src = self.workdir / "case.rules"
        out = self.workdir / "case.ebpfw"
        src.write_text(ruleset)
        extra = []
        if sets:
            (self.workdir / "case.sets").write_text(sets)
            extra = ["--sets", str(self.workdir / "case.sets")]
        proc = self._cli(["import", str(src), "-o", str(out)] + extra, in_dut=False, check=False)
        if proc.returncode != 0:
            text = (proc.stderr or proc.stdout).strip()
            if "Traceback (most recent call last)" in text:
                # a crash is a bug, never an "unsupported yet" refusal to xfail on
                raise SideError(f"`ebpfw import` crashed instead of refusing:\n{text}")
            raise ImportRefused(text)
        return out

    def load(self, ruleset: str, sets: str = "") -> None:
        out = self.import_ruleset(ruleset, sets)
        if self.attached:
            # start from nothing so counters restart at zero like iptables-restore's do
            self.unload()
        extra = ["--sets", str(self.workdir / "case.sets")] if sets else []
        self._cli(["apply", str(out), "--iface", DUT_IN, "--iface", DUT_OUT, "--mode", self.mode] + extra)
        self.attached = True
        self.raw = has_raw(ruleset)

    def set_op(self, op: str, name: str, element: str) -> None:
        self._cli(["set", op, name] + ([element] if element else []))

    def snapshot(self) -> Snapshot:
        text = self._cli(["save", "--counters"]).stdout
        return parse_save_with_raw(text) if self.raw else parse_save(text)

    def unload(self) -> None:
        self._cli(["detach"], check=False)
        self.attached = False


# ---------------------------------------------------------------------------------------------
# running a script

@dataclass
class StepRecord:
    label: str
    deliveries: list                          # sorted summaries
    hits: Optional[dict] = None               # key -> (packets, bytes) this step added
    notes: list = field(default_factory=list)  # shown in reports, never compared (errnos)


@dataclass
class RunResult:
    side: str
    version: str
    final: Snapshot
    steps: list                               # [StepRecord]
    tags: dict = field(default_factory=dict)  # tag -> Tagged

    def unhit(self) -> list[str]:
        return [k for k, (p, _b) in self.final.counters().items() if p == 0]


def _step_label(i: int, step, tagged: list[Tagged]) -> str:
    if step.label:
        return f"step {i}: {step.label}"
    if isinstance(step, Send):
        texts = [f"#{t.tag} {t.text}" for t in tagged[:3]]
        more = f" (+{len(tagged) - 3} more)" if len(tagged) > 3 else ""
        return f"step {i}: {step.role} sends " + "; ".join(texts) + more
    if isinstance(step, SetOp):
        return f"step {i}: set {step.op} {step.name} {step.element}".rstrip()
    kind = "tcp connect" if isinstance(step, Connect) else "udp datagram"
    return f"step {i}: {kind} from {step.role} to {step.dst}:{step.dport}"


def _drain(topo: Topology, tags: dict[int, Tagged]) -> list[str]:
    seen = []
    for role in ("cli", "srv", "dut"):
        reply = topo.agents[role].call("drain")
        if reply["drops"]:
            raise TopologyError(f"capture in {role} dropped {reply['drops']} frames "
                                "(socket buffer overflow): the observation is incomplete")
        for where, hexdata in reply["frames"]:
            frame = bytes.fromhex(hexdata)
            ip = frame_ip(where, frame)
            if not ip:
                seen.append(f"{where}: non-IPv4 frame {frame[:14].hex()} (noise?)")
                continue
            seen.append(summarize(where, ip, tags))
    return seen


def _quiesce(topo: Topology, tags: dict[int, Tagged]) -> list[str]:
    """Everything observed until the network is quiet (veth delivery runs in the sender's
    softirq, so it is normally complete when the send returns; wait a little anyway)."""
    seen: list[str] = []
    time.sleep(SETTLE)
    for _ in range(50):
        got = _drain(topo, tags)
        seen += got
        if not got:
            break
        time.sleep(SETTLE)
    return sorted(seen)


def default_src(role: str, dst: str) -> str:
    """The address the role's stack would use as source towards dst."""
    if role != "dut":
        return ROLE_ADDR[role]
    d = ipaddress.ip_address(dst)
    to_srv = any(d in ipaddress.ip_network(p) for p in DUT_ROUTES_TO_SRV)
    return ADDR[DUT_OUT] if to_srv else ADDR[DUT_IN]


def _tag_packets(step: Send, step_idx: int, next_tag: int,
                 tags: dict) -> tuple[list[bytes], list[Tagged], int]:
    """Give each crafted packet its tag (IP ID), source and TTL defaults. Fragments of one
    datagram (same src, dst, proto and IP ID as built) share one tag, so the DUT can still
    reassemble them."""
    from scapy.layers.inet import IP  # imported lazily: scapy takes ~1 s to import

    raws: list[bytes] = []
    per_packet: list[Tagged] = []
    groups: dict[tuple, Tagged] = {}
    for pkt in step.packets:
        pkt = pkt.copy()
        ip = pkt[IP]
        if "src" not in ip.fields:
            # scapy would pick a source from the ROOT namespace's routes: never let it
            ip.src = default_src(step.role, ip.dst)
        if "ttl" not in ip.fields:
            ip.ttl = CRAFTED_TTL
        is_fragment = bool(ip.flags.MF) or ip.frag != 0
        group = (ip.src, ip.dst, ip.proto, ip.id) if is_fragment else None
        tagged = groups.get(group) if group else None
        if tagged is None:
            if next_tag > 0xFFFF:
                raise ValueError("a case may send at most 65535 crafted packets")
            ip.id = next_tag
            raw = bytes(pkt)
            text = describe_ip(raw)
            if is_fragment:
                text = text.split(" frag@")[0] + " (fragmented)"
            tagged = Tagged(next_tag, step_idx, ip.src, ip.dst, raw[9], text)
            tags[next_tag] = tagged
            next_tag += 1
            if group:
                groups[group] = tagged
        else:
            ip.id = tagged.tag
            raw = bytes(pkt)
        raws.append(raw)
        per_packet.append(tagged)
    return raws, per_packet, next_tag


def run_case(side, case: Case, stepwise: bool = True) -> RunResult:
    """Load the case's ruleset on `side`, play its script, return what was counted and seen.
    stepwise=True snapshots the counters after every step (to attribute hits to steps)."""
    topo = side.topo
    for agent in topo.agents.values():
        agent.call("reset_listeners")
    _quiesce(topo, {})
    side.load(case.ruleset, case.sets)
    for lis in case.listen:
        topo.agents[lis.role].call("tcp_listen", addr=lis.addr, port=lis.port)
    _quiesce(topo, {})
    before = side.snapshot()
    nonzero = {k: v for k, v in before.counters().items() if v != (0, 0)}
    if nonzero:
        raise SideError(f"{side.name}: counters are not zero right after loading: {nonzero}")

    tags: dict[int, Tagged] = {}
    next_tag = 1
    records = []
    prev = before
    for i, step in enumerate(case.steps, 1):
        tagged: list[Tagged] = []
        extra: list[str] = []
        notes: list[str] = []
        if isinstance(step, Send):
            raws, tagged, next_tag = _tag_packets(step, i, next_tag, tags)
            if step.role == "dut":
                reply = topo.agents["dut"].call("send3", packets=[r.hex() for r in raws])
                notes += [f"send of #{tagged[i].tag} failed: {err}" for i, err in reply["errors"]]
            else:
                from scapy.layers.l2 import Ether

                iface, smac, dmac = ROLE_L2[step.role]
                hdr = bytes(Ether(src=smac, dst=dmac, type=0x0800))
                topo.agents[step.role].call("sendp", iface=iface,
                                            frames=[(hdr + r).hex() for r in raws])
        elif isinstance(step, Connect):
            reply = topo.agents[step.role].call(
                "tcp_connect", src=step.src or ROLE_ADDR[step.role], sport=step.sport or 40000 + i,
                dst=step.dst, dport=step.dport, timeout=CONNECT_TIMEOUT)
            result = reply["result"]
            if result.startswith("error"):
                notes.append(f"connect: {result}")
                result = "error"
            extra.append(f"{step.role}: tcp connect {result}")
        elif isinstance(step, Udp):
            reply = topo.agents[step.role].call(
                "udp_send", src=step.src or ROLE_ADDR[step.role], sport=step.sport or 40000 + i,
                dst=step.dst, dport=step.dport, payload=step.payload.hex())
            if reply.get("send_error"):
                notes.append(f"udp send failed: {reply['send_error']}")
        elif isinstance(step, SetOp):
            side.set_op(step.op, step.name, step.element)
        else:
            raise TypeError(f"unknown step type {type(step).__name__}")
        seen = sorted(_quiesce(topo, tags) + extra)
        rec = StepRecord(_step_label(i, step, tagged), seen, notes=notes)
        if stepwise:
            snap = side.snapshot()
            rec.hits = delta(snap, prev)
            prev = snap
        records.append(rec)
    final = prev if stepwise else side.snapshot()
    return RunResult(side.name, side.version(), final, records, tags)


# ---------------------------------------------------------------------------------------------
# comparing

@dataclass
class Difference:
    kind: str          # structure | text | counters | delivery
    key: str           # counter key, or "step N"
    detail: str


# iptables-save drops `! -i +` / `! -o +` from its output (print_iface skips an empty mask)
# although the kernel keeps the inversion: such a rule never matches, and its saved text, if
# restored, matches everything. ebpfw prints what the rule means; the counters are compared
# as usual, only the text comparison treats the two spellings as the same.
_LOSSY_IPTABLES_SAVE = (" ! -i +", " ! -o +")


def _norm(text: str) -> str:
    text = " ".join(text.split())
    for lost in _LOSSY_IPTABLES_SAVE:
        text = text.replace(lost, "")
    return text


def compare(case: Case, ref: RunResult, got: RunResult) -> list[Difference]:
    diffs: list[Difference] = []
    rc, gc = ref.final.chains, got.final.chains
    if set(rc) != set(gc):
        diffs.append(Difference("structure", "chains",
                                f"{ref.side} has {sorted(rc)}, {got.side} has {sorted(gc)}"))
    for name, chain in rc.items():
        other = gc.get(name)
        if other is None:
            continue
        if chain.policy != other.policy:
            diffs.append(Difference("structure", f"{name}:policy",
                                    f"policy {chain.policy} vs {other.policy}"))
        if len(chain.rules) != len(other.rules):
            diffs.append(Difference("structure", name,
                                    f"{len(chain.rules)} rules vs {len(other.rules)} rules"))
        for i, (a, b) in enumerate(zip(chain.rules, other.rules), 1):
            if _norm(a[0]) != _norm(b[0]):
                diffs.append(Difference("text", f"{name}:{i}", f"{ref.side}: {a[0]}\n"
                                                               f"{got.side}: {b[0]}"))
    ra, ga = ref.final.counters(), got.final.counters()
    for key, val in ra.items():
        if key in ga and ga[key] != val:
            diffs.append(Difference("counters", key,
                                    f"{ref.side} [{val[0]}:{val[1]}] vs {got.side} "
                                    f"[{ga[key][0]}:{ga[key][1]}]"))
    for a, b in zip(ref.steps, got.steps):
        if a.deliveries != b.deliveries:
            diffs.append(Difference("delivery", a.label, _delivery_diff(a.deliveries, b.deliveries,
                                                                         ref.side, got.side)))
    return diffs


def _delivery_diff(a: list[str], b: list[str], an: str, bn: str) -> str:
    only_a = [x for x in a if x not in b]
    only_b = [x for x in b if x not in a]
    lines = [f"only under {an}: {x}" for x in only_a] + [f"only under {bn}: {x}" for x in only_b]
    if not lines:   # same set, different multiplicity
        lines = [f"{an}: {a}", f"{bn}: {b}"]
    return "\n".join(lines)


def hits_of(result: RunResult, key: str) -> list[str]:
    """The steps that moved counter `key` in this run (needs a stepwise run)."""
    out = []
    for rec in result.steps:
        if rec.hits is None:
            return ["(not recorded: run was not stepwise)"]
        if key in rec.hits:
            p, b = rec.hits[key]
            out.append(f"{rec.label}  (+{p} pkts, +{b} bytes)")
    return out


def render_report(case: Case, ref: RunResult, got: Optional[RunResult],
                  diffs: list[Difference], limit: int = 8) -> str:
    head = f"== {case.name}"
    if got is None:
        return head + f": {ref.side} only ({ref.version})"
    if not diffs:
        return head + f": match ({len(ref.final.counters())} counters, {len(ref.steps)} steps)"
    lines = [head + f": {len(diffs)} difference(s) between {ref.side} ({ref.version}) "
                    f"and {got.side} ({got.version})"]
    counter_diffs = [d for d in diffs if d.kind == "counters"]
    if counter_diffs:
        first = counter_diffs[0]
        lines.append(f"first counter difference: {first.key}")
        lines.append(f"    rule: {ref.final.text_of(first.key)}")
        lines.append(f"    {first.detail}")
        for side in (ref, got):
            lines.append(f"    steps that hit it under {side.side}:")
            lines += [f"      {h}" for h in hits_of(side, first.key)] or ["      (none)"]
    shown = 0
    for d in diffs:
        if d is (counter_diffs[0] if counter_diffs else None):
            continue
        if shown >= limit:
            lines.append(f"... and {len(diffs) - shown - (1 if counter_diffs else 0)} more")
            break
        text = ref.final.text_of(d.key) if d.kind == "counters" else ""
        lines.append(f"[{d.kind}] {d.key}{(': ' + text) if text else ''}")
        lines += ["    " + x for x in d.detail.splitlines()]
        shown += 1
    return "\n".join(lines)


def coverage_report(case: Case, ref: RunResult) -> list[str]:
    """Rules and policies the script never reached under iptables (minus declared ones)."""
    missing = []
    for key in ref.unhit():
        if key in case.expect_unhit:
            continue
        missing.append(f"{key}: {ref.final.text_of(key)}")
    return missing
