"""-m recent: differential against the kernel's xt_recent (iptables-legacy) with real packets.

The same ruleset judges the same UDP script twice in a DUT namespace: first loaded with
iptables-legacy-restore, then (iptables flushed, which drops the kernel's list) with `ebpfw
apply`. Two client addresses; --set, --update --seconds 2 --hitcount 3, --rcheck (with and
without --seconds), --rttl and --remove, a pause of 2.5 s that takes the first burst out of the
window, and an OUTPUT --set --rdest fed by the DUT's own sockets (TC egress). Every rule's
packet counter must be equal, and so must the lists: the addresses, TTLs
and number of times in /proc/net/xt_recent/rc against `ebpfw recent list rc`. A second test
fills a list with ip_list_tot + 1 sources and checks that both evict the same address."""

from __future__ import annotations

import re
import sys
import time

import pytest

from legacy import needs_legacy, rules_file, under_ebpfw, under_iptables
from netns import run_in, veth
from test_cli_kernel import ebpfw, ok

pytestmark = pytest.mark.kernel

A, B, DUT = "10.203.1.2", "10.203.1.3", "10.203.1.1"
RULES = """*filter
:INPUT ACCEPT [0:0]
:FORWARD DROP [0:0]
:OUTPUT ACCEPT [0:0]
-A INPUT -p udp -m udp --dport 7100 -m recent --set --name rc --mask 255.255.255.255 --rsource
-A INPUT -p udp -m udp --dport 7100 -m recent --update --seconds 2 --hitcount 3 --name rc --mask 255.255.255.255 --rsource -j DROP
-A INPUT -p udp -m udp --dport 7100 -j ACCEPT
-A INPUT -p udp -m udp --dport 7101 -m recent --rcheck --seconds 2 --name rc --mask 255.255.255.255 --rsource -j DROP
-A INPUT -p udp -m udp --dport 7102 -m recent --remove --name rc --mask 255.255.255.255 --rsource
-A INPUT -p udp -m udp --dport 7103 -m recent --rcheck --rttl --name rc --mask 255.255.255.255 --rsource -j DROP
-A INPUT -p udp -m udp --dport 7104 -m recent ! --rcheck --name rc --mask 255.255.255.255 --rsource -j DROP
-A OUTPUT -p udp -m udp --dport 7300 -m recent --set --name out --mask 255.255.255.255 --rdest
COMMIT
"""

# the DUT's own packets (OUTPUT, judged at TC egress): the TTL xt_recent keeps is the socket's
OUT_SEND = """
import socket, sys
for ttl in (64, 9):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.IPPROTO_IP, socket.IP_TTL, ttl)
    s.sendto(b"x", (sys.argv[1], 7300))
    s.close()
"""

# (source, port, ttl), then a pause, then more
SEND = """
import socket, sys, time
def send(src, port, ttl=64):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((src, 0))
    s.setsockopt(socket.IPPROTO_IP, socket.IP_TTL, ttl)
    s.sendto(b"x", (sys.argv[1], port))
    s.close()
A, B = sys.argv[2], sys.argv[3]
for _ in range(5):
    send(A, 7100)            # set; update matches from the third on (hits >= 3): DROP
for _ in range(2):
    send(B, 7100)
send(A, 7101)                # in the list within 2 s: DROP
send(A, 7103)                # same TTL: DROP
send(A, 7103, ttl=9)         # another TTL: no match
send(B, 7104)                # ! --rcheck: B is listed, no match
send("10.203.1.4", 7104)     # not listed: DROP
time.sleep(2.5)
send(A, 7101)                # every time is older than 2 s now: no match
send(A, 7100)                # one time within 2 s: ACCEPT
send(B, 7102)                # remove B
send(B, 7104)                # B is gone: DROP
"""


def _send(client: str, dut: str) -> None:
    run_in(client, [sys.executable, "-c", SEND, DUT, A, B], timeout=30)
    run_in(dut, [sys.executable, "-c", OUT_SEND, A], timeout=30)
    time.sleep(0.2)


def _proc_list(dut: str) -> list[tuple]:
    """(address, ttl, number of times) of /proc/net/xt_recent/rc, sorted by address."""
    return _entries(run_in(dut, ["cat", "/proc/net/xt_recent/rc"]).stdout)


def _entries(text: str) -> list[tuple]:
    out = []
    for line in text.splitlines():
        m = re.match(r"^src=(\S+) ttl: (\d+) last_seen: \d+ oldest_pkt: \d+ (.*)$", line)
        if m:
            out.append((m.group(1), int(m.group(2)), len(m.group(3).split(","))))
    return sorted(out)


@needs_legacy
def test_recent_matches_xt_recent(netns, ebpfw_env, tmp_path):
    client, dut = netns("rcc"), netns("rcd")
    veth(client, client + "c", dut, dut + "d", f"{A}/24", f"{DUT}/24")
    for extra in (B, "10.203.1.4"):
        run_in(client, ["ip", "addr", "add", f"{extra}/24", "dev", client + "c"])
    # warm the neighbour entries so that nothing waits for ARP
    run_in(client, ["ping", "-c", "1", "-W", "1", DUT], check=False)
    run_in(dut, ["ping", "-c", "1", "-W", "1", B], check=False)
    # the reference: the kernel's xt_recent (a flush drops its lists)
    ref = under_iptables(dut, RULES, lambda: _send(client, dut), collect=lambda: (
        _proc_list(dut), _entries(run_in(dut, ["cat", "/proc/net/xt_recent/out"]).stdout)))

    def lists() -> tuple:
        got_list = _entries(ok(ebpfw(dut, "recent", "list", "rc")).stdout)
        got_out = _entries(ok(ebpfw(dut, "recent", "list", "out")).stdout)
        # a re-apply of a ruleset that still names the list keeps it
        ok(ebpfw(dut, "apply", str(rules_file(tmp_path)), "--iface", dut + "d", "--mode", "xdp-generic"))
        assert _entries(ok(ebpfw(dut, "recent", "list", "rc")).stdout) == got_list
        assert "flushed 1 entries from rc" in ok(ebpfw(dut, "recent", "flush", "rc")).stdout
        assert _entries(ok(ebpfw(dut, "recent", "list", "rc")).stdout) == []
        return got_list, got_out

    got = under_ebpfw(dut, RULES, tmp_path, lambda: _send(client, dut),
                      "--iface", dut + "d", "--mode", "xdp-generic", collect=lists)
    (ref_list, ref_out), (got_list, got_out) = ref.collected, got.collected
    ref, got = ref.counters, got.counters
    lines = [l for l in RULES.splitlines() if l.startswith("-A")]
    want = {k: ref[k][0] for k in lines}
    # the kernel did what the script expects: 7 (A, B) + 1 set, 3 + 0 dropped, 4 + 1 accepted, ...
    assert want == {lines[0]: 8, lines[1]: 3, lines[2]: 5, lines[3]: 1, lines[4]: 1, lines[5]: 1,
                    lines[6]: 2, lines[7]: 2}, ref
    assert {k: got[k][0] for k in lines} == want, got
    assert ref_list == [(A, 64, 9)], ref_list
    assert got_list == ref_list
    assert ref_out == [(A, 9, 2)], ref_out           # --set keeps the last packet's TTL
    assert got_out == ref_out


EVICT_RULES = """*filter
:INPUT ACCEPT [0:0]
:FORWARD DROP [0:0]
:OUTPUT ACCEPT [0:0]
-A INPUT -p udp -m udp --dport 7200 -m recent --set --name ev --mask 255.255.255.255 --rsource
-A INPUT -p udp -m udp --dport 7201 -m recent --rcheck --name ev --mask 255.255.255.255 --rsource -j DROP
COMMIT
"""

# ip_list_tot + 1 sources; the first is touched again before the last comes, so the second is
# the least recently seen when the list is full and the last one's --set evicts it
EVICT_SEND = """
import socket, sys
def send(src, port):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((src, 0))
    s.sendto(b"x", (sys.argv[1], port))
    s.close()
srcs = sys.argv[2:]
for a in srcs[:-1]:
    send(a, 7200)
send(srcs[0], 7200)
send(srcs[-1], 7200)
for a in (srcs[0], srcs[1], srcs[2], srcs[-1]):
    send(a, 7201)
"""


@needs_legacy
def test_full_list_evicts_like_xt_recent(netns, ebpfw_env, tmp_path):
    from ebpfw.recent import host_params
    n = host_params()[0]
    if n > 250:
        pytest.skip(f"ip_list_tot is {n}: more sources than this test's /24 holds")
    client, dut = netns("rce"), netns("rcf")
    veth(client, client + "c", dut, dut + "d", f"{A}/24", f"{DUT}/24")
    srcs = [f"10.203.1.{i}" for i in range(4, 4 + n + 1)]
    run_in(client, ["ip", "-batch", "-"], input="".join(f"addr add {s}/24 dev {client}c\n" for s in srcs))
    run_in(client, ["ping", "-c", "1", "-W", "1", DUT], check=False)

    def send() -> None:
        run_in(client, [sys.executable, "-c", EVICT_SEND, DUT, *srcs], timeout=60)
        time.sleep(0.2)

    ref = under_iptables(dut, EVICT_RULES, send,
                         collect=lambda: _entries(run_in(dut, ["cat", "/proc/net/xt_recent/ev"]).stdout))
    got = under_ebpfw(dut, EVICT_RULES, tmp_path, send, "--iface", dut + "d", "--mode", "xdp-generic",
                      collect=lambda: _entries(ok(ebpfw(dut, "recent", "list", "ev")).stdout))
    ref_list, got_list, ref, got = ref.collected, got.collected, ref.counters, got.counters
    lines = [l for l in EVICT_RULES.splitlines() if l.startswith("-A")]
    want = {k: ref[k][0] for k in lines}
    assert want == {lines[0]: n + 2, lines[1]: 3}, ref        # srcs[1] was evicted, the others are there
    assert {k: got[k][0] for k in lines} == want, got
    assert len(ref_list) == n and srcs[1] not in [e[0] for e in ref_list]
    assert got_list == ref_list
