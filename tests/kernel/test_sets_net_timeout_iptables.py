"""hash:net and hash:net,port timeouts and nomatch: differential against the kernel
(iptables-legacy + ipset) with real packets.

A CrowdSec-bouncer-shaped ruleset (REJECT the members of a hash:net blocklist created with a
timeout, plus a hash:net,port one) judges the same script of TCP connection attempts twice in
a DUT namespace: first with iptables-legacy and the kernel's sets (elements added with `ipset
add ... [timeout N] [nomatch]`), then with `ebpfw apply --sets` of the kernel sets' own `ipset
save` text and the same elements added with `ebpfw set add`. The sets hold a permanent /24
with a /32 exception (nomatch) that expires during the script, a permanent nomatch /26 with a
/32 inside it that expires, a permanent nomatch /32; after the expiry an exception is re-added,
a ban lands inside the nomatch /26, and `-exist` turns the permanent exception into a ban.
Every rule's packet counter must be equal (`iptables-legacy-save -c` against `ebpfw save
--counters`), and so must the listed members (flags, permanent or not)."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from legacy import rule_lines, under_ebpfw, under_iptables
from netns import run_in, veth
from test_cli_kernel import counters, ebpfw, ok

pytestmark = pytest.mark.kernel

NET = "10.206.1"
DUT = f"{NET}.1"
A, B, C, D, E = (f"{NET}.{i}" for i in (2, 3, 4, 66, 70))
SHORT = 4         # seconds of the elements that expire during the script
RULES = """*filter
:INPUT ACCEPT [0:0]
:FORWARD DROP [0:0]
:OUTPUT ACCEPT [0:0]
-A INPUT -p tcp -m tcp --dport 22 -m set --match-set cs-blocklist src -j REJECT --reject-with icmp-port-unreachable
-A INPUT -p tcp -m tcp --dport 22 -j ACCEPT
-A INPUT -p tcp -m tcp --dport 23 -m set --match-set np src,dst -j REJECT --reject-with icmp-port-unreachable
-A INPUT -p tcp -m tcp --dport 23 -j ACCEPT
COMMIT
"""
# in the sets before the script (so in the --sets file ebpfw loads)
CREATE = [
    ["create", "cs-blocklist", "hash:net", "timeout", "0"],
    ["add", "cs-blocklist", f"{NET}.0/24"],
    ["add", "cs-blocklist", C, "nomatch"],
    ["add", "cs-blocklist", f"{NET}.64/26", "nomatch"],
    ["create", "np", "hash:net,port", "timeout", "0"],
    ["add", "np", f"{NET}.0/24,tcp:23"],
]

# one connection attempt per source to DUT:PORT (nothing listens: an RST or the REJECT's ICMP
# error answers the single SYN at once); prints the outcomes
CONNECT = """
import socket, sys
out = []
for src in sys.argv[3:]:
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.settimeout(3)
    s.bind((src, 0))
    try:
        s.connect((sys.argv[1], int(sys.argv[2])))
        out.append("open")
    except ConnectionRefusedError:
        out.append("refused")
    except OSError as exc:
        out.append(type(exc).__name__ + ":" + str(exc.errno))
    s.close()
print(" ".join(out))
"""

def packets(save_text: str) -> str:
    """The packet counters of RULES' rules, in order, from iptables-save -c text."""
    c = counters(save_text)
    return " ".join(str(c[line][0]) for line in rule_lines(RULES))


have_tools = all(subprocess.run(["which", t], capture_output=True).returncode == 0
                 for t in ("iptables-legacy-restore", "ipset"))


def members(text: str) -> dict[str, str]:
    """element -> 'permanent'/'timed' (+ ' nomatch') of the add lines of `ipset save` text."""
    out = {}
    for line in text.splitlines():
        w = line.split()
        if w[:1] == ["add"]:
            t = int(w[w.index("timeout") + 1]) if "timeout" in w else 0
            out[f"{w[1]} {w[2]}"] = ("permanent" if t == 0 else "timed") + (" nomatch" if "nomatch" in w else "")
    return out


def script(client: str, add, delete, listing, snapshot) -> tuple[list[str], dict, dict]:
    """The same steps on either side: `add(words, exist)`, `delete(words)`, `listing()`, and
    `snapshot()` (the rules' packet counters) after each round of attempts."""
    def attempt() -> str:
        a = run_in(client, [sys.executable, "-c", CONNECT, DUT, "22", A, B, C, D, E], timeout=60).stdout.strip()
        b = run_in(client, [sys.executable, "-c", CONNECT, DUT, "23", A, B], timeout=60).stdout.strip()
        return f"{a} | {b} | {snapshot()}"
    outcomes = []
    t_short = time.monotonic()
    add(["cs-blocklist", B, "timeout", str(SHORT), "nomatch"], False)   # an exception that expires
    add(["cs-blocklist", E, "timeout", str(SHORT)], False)              # a ban inside the nomatch /26
    add(["np", f"{B},tcp:23", "timeout", str(SHORT), "nomatch"], False)
    t_last = time.monotonic()                # every short element was added by now
    outcomes.append(attempt())
    before = listing()
    assert time.monotonic() - t_short < SHORT, "the first attempts did not run within the short timeouts"
    time.sleep(max(0.0, t_last + SHORT + 0.5 - time.monotonic()))
    outcomes.append(attempt())               # B's exceptions and E's ban expired
    after = listing()
    add(["cs-blocklist", D, "timeout", "600"], False)                   # a ban inside the nomatch /26
    add(["cs-blocklist", B, "timeout", "600", "nomatch"], False)        # the expired exception again
    add(["cs-blocklist", C, "timeout", "0"], True)                      # -exist: the exception becomes a ban
    delete(["np", f"{NET}.0/24,tcp:23"])
    add(["np", f"{NET}.0/25,tcp:23"], False)
    outcomes.append(attempt())
    return outcomes, before, after


@pytest.mark.skipif(not have_tools, reason="iptables-legacy or ipset not installed")
def test_crowdsec_net_sets_with_timeouts_and_nomatch_match_the_kernel(netns, ebpfw_env, tmp_path):
    client, dut = netns("enset"), netns("enset")
    veth(client, client + "c", dut, dut + "d", f"{A}/24", f"{DUT}/24")
    for extra in (B, C, D, E):
        run_in(client, ["ip", "addr", "add", f"{extra}/24", "dev", client + "c"])
    run_in(client, ["ping", "-c", "1", "-W", "1", DUT], check=False)
    for extra in (B, C, D, E):               # warm the DUT's neighbour entries for every source
        run_in(dut, ["ping", "-c", "1", "-W", "1", extra], check=False)
    # the reference: the kernel's ipset and xt_set
    try:
        for words in CREATE:
            run_in(dut, ["ipset", *words])
        saved = run_in(dut, ["ipset", "save"]).stdout      # the --sets file for ebpfw
        assert "create cs-blocklist hash:net family inet hashsize 1024 maxelem 65536 timeout 0" in saved, saved
        assert f"add cs-blocklist {C} timeout 0 nomatch\n" in saved, saved
        ref = under_iptables(dut, RULES, lambda: script(
            client,
            lambda words, exist: run_in(dut, ["ipset", *(["-exist"] if exist else []), "add", *words]),
            lambda words: run_in(dut, ["ipset", "del", *words]),
            lambda: members(run_in(dut, ["ipset", "save"]).stdout),
            lambda: packets(run_in(dut, ["iptables-legacy-save", "-c", "-t", "filter"]).stdout)))
    finally:
        for name in ("cs-blocklist", "np"):
            run_in(dut, ["ipset", "destroy", name], check=False)
    sets_file = tmp_path / "cs.sets"
    sets_file.write_text(saved)
    got = under_ebpfw(dut, RULES, tmp_path, lambda: script(
        client,
        lambda words, exist: ok(ebpfw(dut, "set", "add", *words, *(["--exist"] if exist else []))),
        lambda words: ok(ebpfw(dut, "set", "del", *words)),
        lambda: members(ok(ebpfw(dut, "set", "list")).stdout),
        lambda: packets(ok(ebpfw(dut, "save", "--counters")).stdout)),
        "--iface", dut + "d", "--mode", "xdp-generic", "--sets", str(sets_file))
    ref_out, ref_before, ref_after = ref.traffic
    got_out, got_before, got_after = got.traffic
    # what the kernel did (every attempt is refused: by the REJECT or, unmatched, by an RST)
    # each round: port 22 from A B C D E: A E banned, B C D excepted; after the expiry A B;
    # then A C D. Port 23 from A B: A; then A B; then A B (the /25)
    assert ref_out == ["refused refused refused refused refused | refused refused | 2 3 1 1",
                       "refused refused refused refused refused | refused refused | 4 6 3 1",
                       "refused refused refused refused refused | refused refused | 7 8 5 1"], ref_out
    lines = rule_lines(RULES)
    want = {k: ref.counters[k][0] for k in lines}
    assert want == {lines[0]: 2 + 2 + 3, lines[1]: 3 + 3 + 2, lines[2]: 1 + 2 + 2, lines[3]: 1}, ref.counters
    assert got_out == ref_out
    assert {k: got.counters[k][0] for k in lines} == want, got.counters
    assert ref_before == {
        f"cs-blocklist {NET}.0/24": "permanent", f"cs-blocklist {C}": "permanent nomatch",
        f"cs-blocklist {NET}.64/26": "permanent nomatch", f"cs-blocklist {B}": "timed nomatch",
        f"cs-blocklist {E}": "timed", f"np {NET}.0/24,tcp:23": "permanent", f"np {B},tcp:23": "timed nomatch",
    }, ref_before
    assert got_before == ref_before
    assert ref_after == {k: v for k, v in ref_before.items() if v.split()[0] == "permanent"}, ref_after
    assert got_after == ref_after
