"""-j MARK, -j CONNMARK, -m mark and -m connmark: parsed into the IR iptables stores, printed
byte for byte as iptables-save 1.8.9 prints them (checked against iptables-legacy and
iptables-nft in a test-made namespace when run as root)."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

from ebpfw.errors import RulesetError
from ebpfw.iptables import parse_ruleset, save_ruleset
from ebpfw.marks import ConnmarkMatch, MarkMatch, mark_holds, xmark
from ebpfw.ruleset import ConnmarkTarget, MarkTarget
from netns import delete_ns, make_ns

HEAD = "*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n"

# (written, iptables-save's line) as iptables-legacy 1.8.9 restores and prints them
CASES = [
    ("-A INPUT -j MARK --set-mark 5", "-A INPUT -j MARK --set-xmark 0x5/0xffffffff"),
    ("-A INPUT -j MARK --set-mark 5/0xff", "-A INPUT -j MARK --set-xmark 0x5/0xff"),
    ("-A INPUT -j MARK --set-mark 0x100/0xff", "-A INPUT -j MARK --set-xmark 0x100/0x1ff"),
    ("-A INPUT -j MARK --set-xmark 0x5", "-A INPUT -j MARK --set-xmark 0x5/0xffffffff"),
    ("-A INPUT -j MARK --set-xmark 7/0xf0", "-A INPUT -j MARK --set-xmark 0x7/0xf0"),
    ("-A INPUT -j MARK --and-mark 0xf0", "-A INPUT -j MARK --set-xmark 0x0/0xffffff0f"),
    ("-A INPUT -j MARK --or-mark 0x3", "-A INPUT -j MARK --set-xmark 0x3/0x3"),
    ("-A INPUT -j MARK --xor-mark 0x3", "-A INPUT -j MARK --set-xmark 0x3/0x0"),
    ("-A INPUT -m mark --mark 5", "-A INPUT -m mark --mark 0x5"),
    ("-A INPUT -m mark --mark 0", "-A INPUT -m mark --mark 0x0"),
    ("-A INPUT -m mark ! --mark 0x5/0xff", "-A INPUT -m mark ! --mark 0x5/0xff"),
    ("-A INPUT -m mark --mark 0x100/0xff", "-A INPUT -m mark --mark 0x100/0xff"),
    ("-A INPUT -m mark --mark 4294967295/0xffffffff", "-A INPUT -m mark --mark 0xffffffff"),
    ("-A INPUT -p tcp -m mark --mark 010 -m tcp --dport 22 -j ACCEPT",
     "-A INPUT -p tcp -m mark --mark 0x8 -m tcp --dport 22 -j ACCEPT"),
    ("-A INPUT -m connmark --mark 7/0xf", "-A INPUT -m connmark --mark 0x7/0xf"),
    ("-A INPUT -m connmark ! --mark 7", "-A INPUT -m connmark ! --mark 0x7"),
    ("-A INPUT -j CONNMARK --set-mark 5", "-A INPUT -j CONNMARK --set-xmark 0x5/0xffffffff"),
    ("-A INPUT -j CONNMARK --set-mark 5/0xff", "-A INPUT -j CONNMARK --set-xmark 0x5/0xff"),
    ("-A INPUT -j CONNMARK --set-mark 5 --mask 0xff", "-A INPUT -j CONNMARK --set-xmark 0x5/0xff"),
    ("-A INPUT -j CONNMARK --set-xmark 5/0xff", "-A INPUT -j CONNMARK --set-xmark 0x5/0xff"),
    ("-A INPUT -j CONNMARK --and-mark 0xf", "-A INPUT -j CONNMARK --set-xmark 0x0/0xfffffff0"),
    ("-A INPUT -j CONNMARK --or-mark 0xf", "-A INPUT -j CONNMARK --set-xmark 0xf/0xf"),
    ("-A INPUT -j CONNMARK --save-mark",
     "-A INPUT -j CONNMARK --save-mark --nfmask 0xffffffff --ctmask 0xffffffff"),
    ("-A INPUT -j CONNMARK --restore-mark",
     "-A INPUT -j CONNMARK --restore-mark --nfmask 0xffffffff --ctmask 0xffffffff"),
    ("-A INPUT -j CONNMARK --save-mark --mask 0xff", "-A INPUT -j CONNMARK --save-mark --nfmask 0xff --ctmask 0xff"),
    ("-A INPUT -j CONNMARK --restore-mark --nfmask 0xf --ctmask 0xf0",
     "-A INPUT -j CONNMARK --restore-mark --nfmask 0xf --ctmask 0xf0"),
    ("-A OUTPUT -m mark --mark 0x1/0x1 -m connmark ! --mark 0x2/0x2 -j MARK --set-xmark 0x4/0x4",
     "-A OUTPUT -m mark --mark 0x1/0x1 -m connmark ! --mark 0x2/0x2 -j MARK --set-xmark 0x4/0x4"),
]


def _save(text: str) -> str:
    out = save_ruleset(parse_ruleset(HEAD + text + "\nCOMMIT\n", "t.rules"))
    return [line for line in out.splitlines() if line.startswith("-A")][0]


@pytest.mark.parametrize("written,saved", CASES)
def test_printed_as_iptables_save(written, saved):
    assert _save(written) == saved
    assert _save(saved) == saved          # the canonical form reads back to itself


def test_ir_values():
    rs = parse_ruleset(HEAD + "-A INPUT -m mark ! --mark 0x5/0xff -m connmark --mark 7 -j MARK --and-mark 0xf0\n"
                       "-A INPUT -j CONNMARK --restore-mark --nfmask 0xf --ctmask 0xf0\nCOMMIT\n", "t")
    r0, r1 = rs.table("filter").chain("INPUT").rules
    assert r0.matches == (MarkMatch(5, 0xFF, True), ConnmarkMatch(7, 0xFFFFFFFF, False))
    assert r0.target.ext == MarkTarget(0, 0xFFFFFF0F)
    assert r1.target.ext == ConnmarkTarget("restore", 0, ctmask=0xF0, nfmask=0xF)


@pytest.mark.parametrize("line,word", [
    ("-A INPUT -m mark --mark 0x100000000", "0x100000000"),
    ("-A INPUT -m mark --mark 5/", "5/"),
    ("-A INPUT -m mark --mark abc", "abc"),
    ("-A INPUT -m mark", "-m mark alone"),
    ("-A INPUT -m connmark", "-m connmark alone"),
])
def test_bad_mark_refused(line, word):
    with pytest.raises(RulesetError) as ei:
        parse_ruleset(HEAD + line + "\nCOMMIT\n", "t.rules")
    assert any(p.startswith("t.rules:5:") and word in p for p in ei.value.problems), ei.value.problems


def test_mark_arithmetic():
    # --and-mark 0xf0 keeps the bits 0xf0, --or-mark sets, --xor-mark flips, --set-mark V/M
    assert xmark(0x1234, 0, 0xFFFFFF0F) == 0x30
    assert xmark(0x1200, 0x3, 0x3) == 0x1203
    assert xmark(0x1203, 0x3, 0) == 0x1200
    assert xmark(0xFFFF, 0x5, 0xFF) == 0xFF05
    assert mark_holds(0x105, 0x5, 0xFF, False) and not mark_holds(0x105, 0x5, 0xFF, True)
    assert not mark_holds(0x100, 0x100, 0xFF, False)    # value outside the mask: never


BACKENDS = [b for b in ("iptables-legacy", "iptables") if shutil.which(f"{b}-restore")]


@pytest.fixture(scope="module")
def oracle_ns():
    if os.geteuid() != 0 or not BACKENDS:
        pytest.skip("iptables oracle: needs root and iptables-restore")
    ns = make_ns(f"mk{os.getpid()}p")
    try:
        yield ns
    finally:
        delete_ns(ns)


@pytest.mark.parametrize("backend", BACKENDS)
def test_against_iptables_save(oracle_ns, backend):
    """Every written line restored by the real iptables and saved again gives our line."""
    text = HEAD + "".join(w + "\n" for w, _ in CASES) + "COMMIT\n"
    r = subprocess.run(["ip", "netns", "exec", oracle_ns, f"{backend}-restore"], input=text.encode(),
                       capture_output=True, timeout=60)
    assert r.returncode == 0, r.stderr.decode()
    r = subprocess.run(["ip", "netns", "exec", oracle_ns, f"{backend}-save", "-t", "filter"],
                       capture_output=True, timeout=60, check=True)
    theirs = [line for line in r.stdout.decode().splitlines() if line.startswith("-A")]
    ours = save_ruleset(parse_ruleset(text, "t.rules"))
    assert theirs == [line for line in ours.splitlines() if line.startswith("-A")]
    assert theirs == [s for _, s in CASES]


# --- where the ruleset's ingress runs: marks need an skb (TC) ---------------------------------

def _plan(body: str):
    from ebpfw.compiler import compile_plan
    return compile_plan(parse_ruleset(HEAD + body + "COMMIT\n", "m.rules").table("filter"))


def test_marks_make_auto_choose_tc():
    from ebpfw.api import resolve_modes
    plan = _plan("-A INPUT -p tcp -j ACCEPT\n-A OUTPUT -m mark --mark 0x1 -j DROP\n-A INPUT -j MARK --set-mark 2\n")
    assert plan.skb_mark_rule == "m.rules:6: -A OUTPUT -m mark --mark 0x1 -j DROP"
    assert resolve_modes(plan, ["a", "b"], "auto", {"b": "tc"}) == ("tc", {"b": "tc"})
    assert resolve_modes(plan, ["a"], "tc", {}) == ("tc", {})


@pytest.mark.parametrize("mode", ["xdp", "xdp-generic"])
def test_marks_refuse_xdp_naming_the_first_rule(mode):
    from ebpfw.api import resolve_modes
    from ebpfw.errors import EbpfwError
    plan = _plan("-A INPUT -p udp -j CONNMARK --restore-mark\n-A INPUT -m mark --mark 0x1 -j DROP\n")
    with pytest.raises(EbpfwError) as ei:
        resolve_modes(plan, ["eth0", "eth1"], "tc", {"eth1": mode})
    msg = str(ei.value)
    assert msg.startswith(f"--mode {mode} cannot enforce this ruleset on eth1: XDP runs before the kernel")
    assert msg.endswith("m.rules:5: -A INPUT -p udp -j CONNMARK --restore-mark --nfmask 0xffffffff "
                        "--ctmask 0xffffffff")


def test_rulesets_without_skb_marks_keep_their_mode():
    from ebpfw.api import resolve_modes
    # -m connmark and CONNMARK --set-xmark work on ebpfw's connection entry: XDP is fine
    plan = _plan("-A INPUT -m connmark --mark 0x1 -j ACCEPT\n-A INPUT -j CONNMARK --set-mark 1\n")
    assert plan.skb_mark_rule is None and plan.ct is not None and "mark" in plan.actions
    assert resolve_modes(plan, ["a"], "xdp", {}) == ("xdp", {})
    assert resolve_modes(_plan("-A INPUT -j ACCEPT\n"), ["a"], "auto", {}) == ("auto", {})


def test_two_mark_matches_in_one_rule_refused():
    from ebpfw.errors import RulesetError as RE
    with pytest.raises(RE) as ei:
        _plan("-A INPUT -m mark --mark 0x1/0x1 -m mark --mark 0x2/0x2 -j DROP\n")
    assert ei.value.problems == ["m.rules:5: more than one -m mark in a rule is not supported by the datapath, "
                                 "expected at most one, found 2"]


# --- the connection's mark in ebpfw's conntrack entries -----------------------------------------

def test_connection_mark_encoded_listed_and_seeded():
    import types
    from ebpfw import conntrack
    from ebpfw.datapath import ct as ctdata
    key, orig_a = ctdata.make_key(17, "10.0.0.2", "10.0.0.1", 4000, 53)
    e = ctdata.decode(key, ctdata.encode_value(orig_a, 0, ctdata.STATUS_SEEN_REPLY, 10**12, 0, mark=0x20))
    assert e.mark == 0x20
    d = conntrack.entry_dict(e, now_ns=10**12 - 7 * 10**9)
    assert d["mark"] == 0x20
    # conntrack -L's order: ... reply tuple, [ASSURED], mark=N; ebpfw's [SEEDED] after it
    assert conntrack.format_entry(d).endswith("sport=53 dport=4000 packets=0 bytes=0 mark=32")
    t = lambda s, dd, sp, dp: types.SimpleNamespace(saddr=s, daddr=dd, sport=sp, dport=dp, proto=17, family=2)
    kernel = types.SimpleNamespace(tuple_orig=t("10.0.0.2", "10.0.0.1", 4000, 53),
                                   tuple_reply=t("10.0.0.1", "10.0.0.2", 53, 4000), status=6, timeout=30,
                                   protoinfo=None, mark=0x1234)
    k, v = conntrack.seed_value(kernel, 10**12, ctdata.timeouts_from_env({}))
    assert k == key and ctdata.decode(k, v).mark == 0x1234
    line = conntrack.format_entry(conntrack.entry_dict(ctdata.decode(k, v), now_ns=10**12))
    assert line.endswith("[ASSURED] mark=4660 [SEEDED]")
