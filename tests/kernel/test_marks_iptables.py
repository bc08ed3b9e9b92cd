"""-j MARK and -m mark: differential against the kernel's own xt_MARK / xt_mark (iptables-legacy)
with real packets, and `ebpfw apply` choosing TC ingress for a ruleset with marks.

The same ruleset judges the same traffic twice in a DUT namespace (test-made, veth to a CLIENT
namespace): first loaded with iptables-legacy-restore, then (iptables flushed) with `ebpfw
apply`. Per-rule packet and byte counters must be equal, and so must the marks the accepted
packets carry up to their sockets (read with SO_RCVMARK: the mark MARK left on the skb).
  INPUT: UDP from CLIENT to DUT ports 7000-7005; a user chain marks, INPUT matches the mark.
  OUTPUT: UDP from DUT sockets with SO_MARK values to CLIENT port 7100; OUTPUT matches and
  changes the socket's mark.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

from legacy import needs_legacy, under_ebpfw, under_iptables
from test_cli_kernel import ebpfw, ok
from netns import run_in, veth

pytestmark = pytest.mark.kernel

RULES = """*filter
:INPUT ACCEPT [0:0]
:FORWARD DROP [0:0]
:OUTPUT ACCEPT [0:0]
:classify - [0:0]
-A INPUT -p udp -m udp --dport 7000:7010 -j classify
-A INPUT -p udp -m mark --mark 0x1/0xf -j ACCEPT
-A INPUT -p udp -m mark --mark 0x2/0xf -j DROP
-A INPUT -p udp -m mark ! --mark 0x0 -j ACCEPT
-A INPUT -p udp -m udp --dport 7000:7010 -j DROP
-A OUTPUT -p udp -m udp --dport 7100 -m mark --mark 0x10/0xf0 -j ACCEPT
-A OUTPUT -p udp -m udp --dport 7100 -m mark --mark 0x5 -j MARK --set-xmark 0x20/0xffffffff
-A OUTPUT -p udp -m udp --dport 7100 -m mark --mark 0x20 -j DROP
-A OUTPUT -p udp -m udp --dport 7100 -j MARK --or-mark 0x100
-A classify -p udp -m udp --dport 7001 -j MARK --set-xmark 0x1/0xf
-A classify -p udp -m udp --dport 7002 -j MARK --set-xmark 0x2/0xffffffff
-A classify -p udp -m udp --dport 7003 -j MARK --set-xmark 0x11/0x11
-A classify -m mark --mark 0x11 -j MARK --set-xmark 0x34/0x0
-A classify -p udp -m udp --dport 7004 -j RETURN
-A classify -p udp -m udp --dport 7004 -j MARK --set-xmark 0x1/0xffffffff
-A classify -p udp -m udp --dport 7005 -j MARK --set-xmark 0x0/0xffffff00
COMMIT
"""
# packets per destination port (INPUT) and per socket mark (OUTPUT)
IN_SENDS = {7000: 2, 7001: 3, 7002: 4, 7003: 5, 7004: 1, 7005: 2}
OUT_SENDS = {0x0: 2, 0x15: 3, 0x5: 4, 0x7: 1}

SEND_IN = """
import socket, sys, json
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for port, n in json.loads(sys.argv[2]).items():
    for i in range(n):
        s.sendto(b"p%d-%d" % (int(port), i), (sys.argv[1], int(port)))
"""

SEND_OUT = """
import socket, sys, json
for mark, n in json.loads(sys.argv[2]).items():
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_MARK, int(mark))
    for i in range(n):
        try:
            s.sendto(b"o", (sys.argv[1], 7100))
        except PermissionError:      # dropped in OUTPUT: sendto fails with EPERM
            pass
    s.close()
"""

# receives on 7000-7005 with SO_RCVMARK; prints {port: [marks...]} when quiet for 1.5 s
LISTEN = """
import json, select, socket, struct, sys
SO_RCVMARK = 75
socks = {}
for port in range(7000, 7006):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, SO_RCVMARK, 1)
    s.bind((sys.argv[1], port))
    socks[s] = port
print("ready", flush=True)
got = {}
while True:
    r, _, _ = select.select(list(socks), [], [], 1.5)
    if not r:
        break
    for s in r:
        data, anc, _, _ = s.recvmsg(64, socket.CMSG_SPACE(4))
        mark = None
        for lvl, typ, val in anc:
            if lvl == socket.SOL_SOCKET and typ == socket.SO_MARK:
                mark = struct.unpack("I", val[:4])[0]
        got.setdefault(socks[s], []).append(mark)
print(json.dumps(got), flush=True)
"""

CLIENT_IP, DUT_IP = "10.203.1.2", "10.203.1.1"


def _traffic(client: str, dut: str) -> dict:
    """Send both directions; returns the marks the DUT's sockets received, by port."""
    from netns import nsenter_argv
    listener = subprocess.Popen(nsenter_argv(dut) + [sys.executable, "-c", LISTEN, DUT_IP],
                                stdout=subprocess.PIPE, text=True)
    try:
        assert listener.stdout.readline().strip() == "ready"
        run_in(client, [sys.executable, "-c", SEND_IN, DUT_IP, json.dumps(IN_SENDS)], timeout=30)
        run_in(dut, [sys.executable, "-c", SEND_OUT, CLIENT_IP, json.dumps(OUT_SENDS)], timeout=30)
        out, _ = listener.communicate(timeout=30)
    finally:
        if listener.poll() is None:
            listener.kill()
            listener.wait()
    time.sleep(0.2)
    return {int(k): sorted(v) for k, v in json.loads(out.strip().splitlines()[-1]).items()}


@needs_legacy
def test_marks_match_xt_mark(netns, ebpfw_env, tmp_path):
    client, dut = netns("mkc"), netns("mkd")
    veth(client, client + "c", dut, dut + "d", f"{CLIENT_IP}/24", f"{DUT_IP}/24")
    run_in(client, ["ping", "-c", "1", "-W", "1", DUT_IP], check=False)   # neighbours first
    ref = under_iptables(dut, RULES, lambda: _traffic(client, dut))
    ref_marks, ref = ref.traffic, ref.counters
    # the kernel did what the ruleset says: 7001 and 7003 (0x11 -> 0x25) accepted with their marks,
    # 7002 dropped, 7004 returned unmarked and 7000/7005 unmarked: dropped
    assert ref_marks == {7001: [0x1] * 3, 7003: [0x25] * 5}, ref_marks
    got = under_ebpfw(dut, RULES, tmp_path, lambda: _traffic(client, dut), "--iface", dut + "d")
    res = got.applied
    assert "(tc)" in res.stdout + res.stderr, res.stdout + res.stderr   # auto picked TC ingress
    got_marks, got = got.traffic, got.counters
    assert got_marks == ref_marks
    rule_lines = [k for k in ref if k.startswith("-A")]
    assert len(rule_lines) == 16
    assert {k: got[k] for k in rule_lines} == {k: ref[k] for k in rule_lines}
    # the OUTPUT rules saw the sockets' marks: 0x15 accepted, 0x5 re-marked and dropped, 0 and 7 or-marked
    assert ref["-A OUTPUT -p udp -m udp --dport 7100 -m mark --mark 0x10/0xf0 -j ACCEPT"][0] == 3
    assert ref["-A OUTPUT -p udp -m udp --dport 7100 -m mark --mark 0x20 -j DROP"][0] == 4
    assert ref["-A OUTPUT -p udp -m udp --dport 7100 -j MARK --set-xmark 0x100/0x100"][0] == 3


def test_xdp_mode_refused_for_marks(netns, ebpfw_env, tmp_path):
    dut, peer = netns("mkx"), netns("mky")
    veth(dut, dut + "d", peer, peer + "p", "10.203.2.1/24", "10.203.2.2/24")
    rules = tmp_path / "marks.rules"
    rules.write_text(RULES)
    for mode in ("xdp", "xdp-generic"):
        r = ebpfw(dut, "apply", str(rules), "--iface", dut + "d", "--mode", mode)
        assert r.returncode != 0
        msg = r.stdout + r.stderr
        assert f"--mode {mode} cannot enforce this ruleset" in msg, msg
        # the first rule (file order) that reads or writes the mark, by FILE:LINE
        assert f"{rules}:7: -A INPUT -p udp -m mark --mark 0x1/0xf -j ACCEPT" in msg, msg
    # refused before anything was built or attached
    assert ok(ebpfw(dut, "status", "--json")).stdout.strip() == "null"


CONNMARK_RULES = """*filter
:INPUT ACCEPT [0:0]
:FORWARD DROP [0:0]
:OUTPUT ACCEPT [0:0]
-A INPUT -p udp -m connmark --mark 0x1 -j ACCEPT
-A INPUT -p udp -m udp --dport 7001 -j CONNMARK --set-xmark 0x1/0xffffffff
-A INPUT -p udp -m udp --dport 7001 -j ACCEPT
-A INPUT -p udp -m udp --dport 7002 -j MARK --set-xmark 0x20/0xffffffff
-A INPUT -p udp -m udp --dport 7002 -j CONNMARK --save-mark --nfmask 0xffffffff --ctmask 0xffffffff
-A INPUT -p udp -j MARK --set-xmark 0x0/0xffffffff
-A INPUT -p udp -m connmark --mark 0x20 -j CONNMARK --restore-mark --nfmask 0xffffffff --ctmask 0xffffffff
-A INPUT -p udp -m mark --mark 0x20 -j ACCEPT
-A INPUT -p udp -m udp --dport 7000:7010 -j DROP
COMMIT
"""
CONNMARK_SENDS = {7001: 3, 7002: 4, 7003: 2}


def _udp_flows(client: str, dut: str) -> dict:
    """One socket per port (one connection each), CONNMARK_SENDS packets; the marks received."""
    from netns import nsenter_argv
    listener = subprocess.Popen(nsenter_argv(dut) + [sys.executable, "-c", LISTEN, DUT_IP],
                                stdout=subprocess.PIPE, text=True)
    send = ("import socket, sys, json, time\n"
            "for port, n in json.loads(sys.argv[2]).items():\n"
            "    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
            "    for i in range(n):\n"
            "        s.sendto(b'c', (sys.argv[1], int(port)))\n"
            "        time.sleep(0.05)\n")
    try:
        assert listener.stdout.readline().strip() == "ready"
        run_in(client, [sys.executable, "-c", send, DUT_IP, json.dumps(CONNMARK_SENDS)], timeout=30)
        out, _ = listener.communicate(timeout=30)
    finally:
        if listener.poll() is None:
            listener.kill()
            listener.wait()
    return {int(k): sorted(v) for k, v in json.loads(out.strip().splitlines()[-1]).items()}


@needs_legacy
def test_connmark_matches_xt_connmark(netns, ebpfw_env, tmp_path):
    """CONNMARK --set-xmark / --save-mark / --restore-mark and -m connmark over real UDP flows, against
    xt_CONNMARK; then the kernel's connections (with their marks) are what apply seeds."""
    client, dut = netns("mkc"), netns("mkd")
    veth(client, client + "c", dut, dut + "d", f"{CLIENT_IP}/24", f"{DUT_IP}/24")
    run_in(client, ["ping", "-c", "1", "-W", "1", DUT_IP], check=False)
    ref = under_iptables(dut, CONNMARK_RULES, lambda: _udp_flows(client, dut))
    ref_marks, ref = ref.traffic, ref.counters
    kernel_ct = run_in(dut, ["conntrack", "-L", "-p", "udp"], check=False).stdout
    assert ref_marks == {7001: [0] * 3, 7002: [0x20] * 4}, ref_marks
    assert "dport=7001" in kernel_ct and "mark=1 " in kernel_ct, kernel_ct

    def seeded_then_flows() -> dict:
        # the kernel's connections were copied with their marks (the test's flows used other ports
        # of the client, so the ones below are new connections)
        seeded = json.loads(ok(ebpfw(dut, "conntrack", "list", "--json")).stdout)
        seeded_marks = {d["original"]["dport"]: d["mark"] for d in seeded
                        if d["proto"] == "udp" and "SEEDED" in d["flags"]}
        assert seeded_marks == {7001: 0x1, 7002: 0x20}, seeded     # 7003 was dropped: never confirmed
        return _udp_flows(client, dut)

    got = under_ebpfw(dut, CONNMARK_RULES, tmp_path, seeded_then_flows, "--iface", dut + "d",
                      collect=lambda: ok(ebpfw(dut, "conntrack", "list")).stdout)
    got_marks, listed, got = got.traffic, got.collected, got.counters
    assert got_marks == ref_marks
    rule_lines = [k for k in ref if k.startswith("-A")]
    assert len(rule_lines) == 9
    assert {k: got[k] for k in rule_lines} == {k: ref[k] for k in rule_lines}
    assert ref["-A INPUT -p udp -m connmark --mark 0x1 -j ACCEPT"][0] == 2
    assert " mark=32 " in listed and " mark=1 " in listed, listed


def test_auto_mode_follows_the_ruleset(netns, ebpfw_env, tmp_path):
    """--mode auto: TC ingress while the ruleset has marks, XDP again once it has none (a
    maps-only re-apply too), and the ingress switch keeps judging with the new rules."""
    dut, peer = netns("mka"), netns("mkb")
    veth(dut, dut + "d", peer, peer + "p", "10.203.3.1/24", "10.203.3.2/24")
    plain = tmp_path / "plain.rules"
    plain.write_text("*filter\n:INPUT ACCEPT [0:0]\n:FORWARD DROP [0:0]\n:OUTPUT ACCEPT [0:0]\n"
                     "-A INPUT -p udp -m udp --dport 7000 -j DROP\nCOMMIT\n")
    marks = tmp_path / "marks.rules"
    marks.write_text(RULES)

    def ingress() -> str:
        st = json.loads(ok(ebpfw(dut, "status", "--json")).stdout)
        return st["ifaces"][0]["ingress"]

    try:
        ok(ebpfw(dut, "apply", str(plain), "--iface", dut + "d"))
        assert ingress().startswith("xdp")
        ok(ebpfw(dut, "apply", str(marks), "--iface", dut + "d"))
        assert ingress() == "tc"
        ok(ebpfw(dut, "apply", str(plain), "--iface", dut + "d"))      # the programs fit: maps only
        assert ingress().startswith("xdp")
    finally:
        ebpfw(dut, "detach", timeout=60)


FORWARD_RULES = """*filter
:INPUT ACCEPT [0:0]
:FORWARD DROP [0:0]
:OUTPUT ACCEPT [0:0]
:tag - [0:0]
-A FORWARD -p udp -j tag
-A FORWARD -m mark --mark 0x1/0xf -j ACCEPT
-A FORWARD -m mark --mark 0x2/0xf -j DROP
-A FORWARD -p udp -m udp --dport 7003 -m mark --mark 0x0 -j ACCEPT
-A FORWARD -m mark --mark 0x30 -j ACCEPT
-A tag -p udp -m udp --dport 7001 -j MARK --set-xmark 0x1/0xf
-A tag -p udp -m udp --dport 7002 -j MARK --set-xmark 0x2/0xf
-A tag -s 10.204.1.2/32 -p udp -m udp --dport 7004 -j MARK --set-xmark 0x30/0x30
COMMIT
"""
FWD_SENDS = {7001: 2, 7002: 3, 7003: 4, 7004: 5, 7005: 1}


@needs_legacy
def test_forward_marks_match_xt_mark(netns, ebpfw_env, tmp_path):
    """A router: MARK in a user chain of FORWARD, -m mark in FORWARD after it, real UDP from a
    client to a server namespace through the DUT; per-rule counters equal to iptables-legacy's."""
    client, dut, server = netns("mkf"), netns("mkr"), netns("mks")
    veth(client, client + "c", dut, dut + "a", "10.204.1.2/24", "10.204.1.1/24")
    veth(dut, dut + "b", server, server + "s", "10.204.2.1/24", "10.204.2.2/24")
    run_in(dut, ["sysctl", "-qw", "net.ipv4.ip_forward=1"])
    run_in(client, ["ip", "route", "add", "default", "via", "10.204.1.1"])
    run_in(server, ["ip", "route", "add", "default", "via", "10.204.2.1"])
    run_in(client, ["ping", "-c", "1", "-W", "1", "10.204.2.2"], check=False)   # neighbours on the way
    run_in(server, ["ping", "-c", "1", "-W", "1", "10.204.1.2"], check=False)

    def send() -> None:
        # a listener on every port, so the server answers no ICMP port unreachable (rate limited
        # per peer, so not the same number in both runs)
        from netns import nsenter_argv
        listener = subprocess.Popen(nsenter_argv(server) + [sys.executable, "-c", LISTEN, "10.204.2.2"],
                                    stdout=subprocess.PIPE, text=True)
        try:
            assert listener.stdout.readline().strip() == "ready"
            run_in(client, [sys.executable, "-c", SEND_IN, "10.204.2.2", json.dumps(FWD_SENDS)], timeout=30)
            listener.communicate(timeout=30)
        finally:
            if listener.poll() is None:
                listener.kill()
                listener.wait()

    ref = under_iptables(dut, FORWARD_RULES, send).counters
    got = under_ebpfw(dut, FORWARD_RULES, tmp_path, send, "--iface", dut + "a", "--iface", dut + "b").counters
    rule_lines = [k for k in ref if k.startswith("-A")]
    assert len(rule_lines) == 8
    # the kernel did what the ruleset says: 7001, 7003 and 7004 (0x30) through, 7002 dropped by its
    # mark, 7005 to the policy
    assert ref["-A FORWARD -p udp -j tag"][0] == 15
    assert ref["-A FORWARD -m mark --mark 0x1/0xf -j ACCEPT"][0] == 2
    assert ref["-A FORWARD -m mark --mark 0x2/0xf -j DROP"][0] == 3
    assert ref["-A FORWARD -m mark --mark 0x30 -j ACCEPT"][0] == 5
    assert ref[":FORWARD"][0] == 1
    assert {k: got[k] for k in rule_lines} == {k: ref[k] for k in rule_lines}
    assert got[":FORWARD"][0] == ref[":FORWARD"][0]


REFLECT_RULES = """*filter
:INPUT ACCEPT [0:0]
:FORWARD DROP [0:0]
:OUTPUT ACCEPT [0:0]
-A INPUT -p udp -m udp --dport 7000 -j MARK --set-xmark 0x5/0xffffffff
-A INPUT -p tcp -m tcp --dport 7001 -j MARK --set-xmark 0x5/0xffffffff
-A INPUT -p udp -m udp --dport 7000 -j REJECT --reject-with icmp-port-unreachable
-A INPUT -p tcp -m tcp --dport 7001 -j REJECT --reject-with tcp-reset
-A OUTPUT -p icmp -m mark --mark 0x5 -j ACCEPT
-A OUTPUT -p icmp -m mark --mark 0x0 -j ACCEPT
-A OUTPUT -p tcp -m mark --mark 0x5 -j ACCEPT
-A OUTPUT -p tcp -m mark --mark 0x0 -j ACCEPT
COMMIT
"""
REFLECT_SEND = """
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.sendto(b"x", (sys.argv[1], 7000))
t = socket.socket()
t.settimeout(5)
try:
    t.connect((sys.argv[1], 7001))
    print("connected")
except ConnectionRefusedError:
    print("refused")
"""


@needs_legacy
@pytest.mark.parametrize("reflect", [0, 1])
def test_reject_answer_mark_follows_fwmark_reflect(netns, ebpfw_env, tmp_path, reflect):
    """The answers to a marked packet REJECTed in INPUT pass OUTPUT with mark 0 (the kernel's
    IP4_REPLY_MARK), or with the packet's mark when net.ipv4.fwmark_reflect is set."""
    client, dut = netns("mkq"), netns("mkw")
    veth(client, client + "c", dut, dut + "d", f"{CLIENT_IP}/24", f"{DUT_IP}/24")
    run_in(client, ["ping", "-c", "1", "-W", "1", DUT_IP], check=False)
    run_in(dut, ["sysctl", "-qw", f"net.ipv4.fwmark_reflect={reflect}"])

    def send() -> str:
        out = run_in(client, [sys.executable, "-c", REFLECT_SEND, DUT_IP], timeout=30).stdout.strip()
        time.sleep(0.2)
        return out

    ref = under_iptables(dut, REFLECT_RULES, send)
    got = under_ebpfw(dut, REFLECT_RULES, tmp_path, send, "--iface", dut + "d")
    assert ref.traffic == got.traffic == "refused"
    lines = [k for k in ref.counters if k.startswith("-A OUTPUT")]
    mark = "0x5" if reflect else "0x0"
    # the kernel did what the sysctl says: one ICMP error and one RST, both with that mark
    assert {k: ref.counters[k][0] for k in lines} == {k: int(f"--mark {mark} " in k) for k in lines}, ref.counters
    assert {k: got.counters[k] for k in lines} == {k: ref.counters[k] for k in lines}, got.counters
