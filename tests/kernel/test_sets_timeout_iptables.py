"""ipset timeouts: differential against the kernel (iptables-legacy + ipset) with real packets.

A fail2ban-shaped ruleset (its iptables-ipset action: a multiport REJECT for the members of
f2b-sshd) judges the same script of TCP connection attempts twice in a DUT namespace: first
with iptables-legacy and the kernel's set (`ipset create f2b-sshd hash:ip timeout 0`, bans
added with `ipset add ... [timeout N]`), then with `ebpfw apply --sets` of the kernel set's own
`ipset save` text and bans added with `ebpfw set add ... [timeout N]`. One ban expires during
the script (5 s); every rule's packet counter must be equal, and so must the listed members
(permanent ones with `timeout 0`, the others with the seconds left)."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from netns import run_in, veth
from test_cli_kernel import counters, ebpfw, ok  # noqa: F401

pytestmark = pytest.mark.kernel

DUT, A, B, C, D = "10.204.1.1", "10.204.1.2", "10.204.1.3", "10.204.1.4", "10.204.1.5"
RULES = """*filter
:INPUT ACCEPT [0:0]
:FORWARD DROP [0:0]
:OUTPUT ACCEPT [0:0]
-A INPUT -p tcp -m multiport --dports 22 -m set --match-set f2b-sshd src -j REJECT --reject-with icmp-port-unreachable
-A INPUT -p tcp -m tcp --dport 22 -j ACCEPT
COMMIT
"""
SHORT = 5         # seconds of the ban that expires during the script

# one connection attempt per source to DUT:22 (nothing listens: an RST or the REJECT's ICMP
# error answers the single SYN at once); prints the outcomes
CONNECT = """
import socket, sys
out = []
for src in sys.argv[2:]:
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.settimeout(3)
    s.bind((src, 0))
    try:
        s.connect((sys.argv[1], 22))
        out.append("open")
    except ConnectionRefusedError:
        out.append("refused")
    except OSError as exc:
        out.append(type(exc).__name__ + ":" + str(exc.errno))
    s.close()
print(" ".join(out))
"""

have_tools = all(subprocess.run(["which", t], capture_output=True).returncode == 0
                 for t in ("iptables-legacy-restore", "ipset"))


def members(text: str) -> dict[str, int]:
    """address -> timeout of the add lines of `ipset save` text."""
    out = {}
    for line in text.splitlines():
        w = line.split()
        if w[:2] == ["add", "f2b-sshd"]:
            out[w[2]] = int(w[4]) if len(w) > 4 and w[3] == "timeout" else -1
    return out


def script(client: str, add, listing) -> tuple[list[str], dict[str, int], dict[str, int]]:
    """The same steps on either side; `add(element_and_options)` bans, `listing()` lists.
    Returns the connection outcomes and the members listed before and after the expiry."""
    def attempt() -> str:
        return run_in(client, [sys.executable, "-c", CONNECT, DUT, A, B, C, D], timeout=60).stdout.strip()
    outcomes = []
    add(f"{B} timeout {SHORT}")              # fail2ban: `ipset add f2b-sshd IP timeout <bantime>`
    t_short = time.monotonic()
    add(C)                                   # the set's default timeout 0: permanent
    outcomes.append(attempt())               # A (from the file), B, C banned; D not
    before = listing()
    assert time.monotonic() - t_short < SHORT, "the first attempts did not run within the short ban"
    time.sleep(max(0.0, t_short + SHORT + 0.5 - time.monotonic()))
    outcomes.append(attempt())               # B's ban expired
    after = listing()
    add(f"{B} timeout 600")                  # banned again
    add(f"{D} timeout 0")
    outcomes.append(attempt())
    return outcomes, before, after


@pytest.mark.skipif(not have_tools, reason="iptables-legacy or ipset not installed")
def test_fail2ban_set_with_timeouts_matches_the_kernel(netns, ebpfw_env, tmp_path):
    client, dut = netns("stc"), netns("std")
    veth(client, client + "c", dut, dut + "d", f"{A}/24", f"{DUT}/24")
    for extra in (B, C, D):
        run_in(client, ["ip", "addr", "add", f"{extra}/24", "dev", client + "c"])
    run_in(client, ["ping", "-c", "1", "-W", "1", DUT], check=False)
    for extra in (B, C, D):                  # warm the DUT's neighbour entries for every source
        run_in(dut, ["ping", "-c", "1", "-W", "1", extra], check=False)
    # the reference: the kernel's ipset and xt_set
    run_in(dut, ["ipset", "create", "f2b-sshd", "hash:ip", "timeout", "0"])
    try:
        run_in(dut, ["ipset", "add", "f2b-sshd", A])
        run_in(dut, ["ipset", "add", "f2b-sshd", "10.204.9.9", "timeout", "600"])
        saved = run_in(dut, ["ipset", "save"]).stdout      # the --sets file for ebpfw
        assert "create f2b-sshd hash:ip family inet hashsize 1024 maxelem 65536 timeout 0" in saved, saved
        assert f"add f2b-sshd {A} timeout 0\n" in saved, saved
        run_in(dut, ["iptables-legacy-restore"], input=RULES)
        try:
            ref_out, ref_before, ref_after = script(
                client, lambda e: run_in(dut, ["ipset", "add", "f2b-sshd", *e.split()]),
                lambda: members(run_in(dut, ["ipset", "save"]).stdout))
            ref = counters(run_in(dut, ["iptables-legacy-save", "-c", "-t", "filter"]).stdout)
        finally:
            run_in(dut, ["iptables-legacy", "-F"], check=False)
    finally:
        run_in(dut, ["ipset", "destroy", "f2b-sshd"], check=False)
    rules, sets_file = tmp_path / "r.v4", tmp_path / "f2b.sets"
    rules.write_text(RULES)
    sets_file.write_text(saved)
    try:
        ok(ebpfw(dut, "apply", str(rules), "--iface", dut + "d", "--mode", "xdp-generic", "--sets", str(sets_file)))
        got_out, got_before, got_after = script(
            client, lambda e: ok(ebpfw(dut, "set", "add", "f2b-sshd", *e.split())),
            lambda: members(ok(ebpfw(dut, "set", "list", "f2b-sshd")).stdout))
        got = counters(ok(ebpfw(dut, "save", "--counters")).stdout)
        # `set add` of a present element is refused like `ipset add`; --exist renews it
        dup = ebpfw(dut, "set", "add", "f2b-sshd", C)
        assert dup.returncode == 1 and "already in set" in dup.stderr, dup.stderr
        ok(ebpfw(dut, "set", "add", "f2b-sshd", C, "timeout", "60", "--exist"))
        assert members(ok(ebpfw(dut, "set", "list", "f2b-sshd")).stdout)[C] in (59, 60)
    finally:
        ebpfw(dut, "detach", timeout=60)
    # what the kernel did: A, B, C banned, D not; then B free; then all four banned
    assert ref_out == ["refused refused refused refused"] * 3, ref_out
    lines = [l for l in RULES.splitlines() if l.startswith("-A")]
    want = {k: ref[k][0] for k in lines}
    assert want == {lines[0]: 3 + 2 + 4, lines[1]: 1 + 2}, ref
    assert got_out == ref_out
    assert {k: got[k][0] for k in lines} == want, got

    def shape(m: dict[str, int]) -> dict[str, str]:
        """permanent members as 0, the others by their remaining time bucket"""
        return {a: "permanent" if t == 0 else ("long" if t > 100 else "short") for a, t in m.items()}
    assert shape(ref_before) == {A: "permanent", C: "permanent", "10.204.9.9": "long", B: "short"}, ref_before
    assert shape(got_before) == shape(ref_before)
    assert shape(ref_after) == {A: "permanent", C: "permanent", "10.204.9.9": "long"}, ref_after
    assert shape(got_after) == shape(ref_after)
    for m_ref, m_got in ((ref_before, got_before), (ref_after, got_after)):
        for addr, t in m_ref.items():       # the seconds left agree within the script's pace
            assert abs(m_got[addr] - t) <= 30, (addr, m_ref, m_got)
