"""`ebpfw apply --sets` and `ebpfw set add|del|list|flush` end to end: the real console script
inside a DUT namespace, real TCP connections from a CLIENT namespace (topology and helpers of
test_cli_kernel.py), and the time of one live `add` measured in a running process."""

from __future__ import annotations

import statistics
import sys

import pytest

from netns import nsenter_argv  # noqa: F401
from test_cli_kernel import CLIENT_IP, DUT_IP, OPEN_PORT, ebpfw, ok, run_in, tcp, topo  # noqa: F401

pytestmark = pytest.mark.kernel

RULES = f"""*filter
:INPUT ACCEPT [0:0]
:FORWARD DROP [0:0]
:OUTPUT ACCEPT [0:0]
-A INPUT -p tcp -m set --match-set deny src -j DROP
-A INPUT -p tcp -m set --match-set web dst,dst -j ACCEPT
COMMIT
"""
SETS = f"""create deny hash:net family inet hashsize 1024 maxelem 65536
create web hash:ip,port family inet hashsize 1024 maxelem 65536
add web {DUT_IP},tcp:{OPEN_PORT}
"""

TIME_ADD = """
import statistics, sys, time
from ebpfw import sets
ts = []
for i in range(20):
    t0 = time.perf_counter()
    sets.add("deny", f"10.201.0.{i}")
    ts.append(time.perf_counter() - t0)
for i in range(20):
    sets.delete("deny", f"10.201.0.{i}")
print(statistics.median(ts) * 1e3, max(ts) * 1e3)
"""


def test_apply_with_sets_and_live_membership(topo, tmp_path):
    client, dut, dev, _ = topo
    rules, sets_file = tmp_path / "r.v4", tmp_path / "sets"
    rules.write_text(RULES)
    sets_file.write_text(SETS)
    # without the set file the rules name unknown sets: refused with FILE:LINE
    bad = ebpfw(dut, "apply", str(rules), "--iface", dev, "--mode", "xdp-generic")
    assert bad.returncode == 1 and f"{rules}:5:" in bad.stderr and "'deny' is not known" in bad.stderr
    ok(ebpfw(dut, "apply", str(rules), "--iface", dev, "--mode", "xdp-generic", "--sets", str(sets_file)))
    assert tcp(client, DUT_IP, OPEN_PORT) == "open"
    ok(ebpfw(dut, "set", "add", "deny", "10.200.1.0/24"))
    assert tcp(client, DUT_IP, OPEN_PORT) == "timeout"
    listed = ok(ebpfw(dut, "set", "list", "deny")).stdout
    assert "create deny hash:net" in listed and "add deny 10.200.1.0/24" in listed
    # a re-apply without --sets keeps the live sets
    ok(ebpfw(dut, "apply", str(rules), "--iface", dev, "--mode", "xdp-generic"))
    assert tcp(client, DUT_IP, OPEN_PORT) == "timeout"
    ok(ebpfw(dut, "set", "del", "deny", "10.200.1.0/24"))
    assert tcp(client, DUT_IP, OPEN_PORT) == "open"
    dup = ebpfw(dut, "set", "del", "deny", "10.200.1.0/24")
    assert dup.returncode == 1 and "is not in set 'deny'" in dup.stderr
    ok(ebpfw(dut, "set", "add", "deny", CLIENT_IP))
    assert "flushed 1 entries" in ok(ebpfw(dut, "set", "flush", "deny")).stdout
    assert tcp(client, DUT_IP, OPEN_PORT) == "open"
    # one live add from a running process (library call: lock, open the pins, parse, update)
    out = run_in(dut, [sys.executable, "-c", TIME_ADD], timeout=60).stdout.split()
    median_ms, max_ms = float(out[0]), float(out[1])
    print(f"live set add from a running process: median {median_ms:.3f} ms, max {max_ms:.3f} ms")
    assert median_ms < 5.0


SWAP_SETS = SETS + f"""create deny-next hash:net family inet hashsize 1024 maxelem 65536
add deny-next {CLIENT_IP}
"""


def test_set_swap_end_to_end(topo, tmp_path):
    """`ebpfw set swap`: the rule naming deny reads deny-next's elements after the swap (and
    the counters survive the re-apply it makes), names keep the other's elements for later
    changes, other types and the set itself are refused, and nothing changes on a refusal."""
    client, dut, dev, _ = topo
    rules, sets_file = tmp_path / "r.v4", tmp_path / "sets"
    rules.write_text(RULES)
    sets_file.write_text(SWAP_SETS)
    ok(ebpfw(dut, "apply", str(rules), "--iface", dev, "--mode", "xdp-generic", "--sets", str(sets_file)))
    assert tcp(client, DUT_IP, OPEN_PORT) == "open"
    before = ok(ebpfw(dut, "save", "--counters")).stdout
    out = ok(ebpfw(dut, "set", "swap", "deny", "deny-next")).stdout
    assert "swapped deny and deny-next (rules re-applied: generation" in out and "maps only" in out, out
    assert tcp(client, DUT_IP, OPEN_PORT) == "timeout"           # deny now holds the client
    after = ok(ebpfw(dut, "save", "--counters")).stdout
    web = [l for l in before.splitlines() if "--match-set web" in l][0]
    assert web in after                                           # counters kept by the re-apply
    assert f"add deny {CLIENT_IP}" in ok(ebpfw(dut, "set", "list", "deny")).stdout
    assert "add deny-next" not in ok(ebpfw(dut, "set", "list", "deny-next")).stdout
    for a, b, why in (("deny", "web", "cannot be swapped: their type does not match"),
                      ("deny", "deny", "with itself"), ("deny", "nope", "does not exist")):
        bad = ebpfw(dut, "set", "swap", a, b)
        assert bad.returncode == 1 and why in bad.stderr, bad.stderr
    assert tcp(client, DUT_IP, OPEN_PORT) == "timeout"
    ok(ebpfw(dut, "set", "swap", "deny-next", "deny"))
    assert tcp(client, DUT_IP, OPEN_PORT) == "open"
