"""Connection tracking in the datapath, through BPF_PROG_TEST_RUN: sequences of crafted
packets against the real programs (conntrack compiled in), reading the label of each packet
from per-state counting rules, and the table from the map.

Topology (all made here): namespace DUT with veth `va` (10.9.0.1/24) whose peer is in namespace
PEER. Nothing is transmitted: test runs do not send packets anywhere.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.l2 import Ether

import netns as nsh
from dpclient import Worker

pytestmark = pytest.mark.kernel

XDP_DROP, XDP_PASS = 1, 2
TC_OK, TC_SHOT = 0, 2
DUT, PEER, OTHER = "10.9.0.1", "10.9.0.2", "10.9.0.3"
LABELS = ("NEW", "ESTABLISHED", "RELATED", "INVALID")

# counting rules first (one per state, in INPUT and OUTPUT), then a few verdicts
RULES = """*filter
:INPUT ACCEPT [0:0]
:FORWARD ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
-A INPUT -m conntrack --ctstate NEW
-A INPUT -m conntrack --ctstate ESTABLISHED
-A INPUT -m conntrack --ctstate RELATED
-A INPUT -m conntrack --ctstate INVALID
-A INPUT -m conntrack --ctstate INVALID -j DROP
-A INPUT -p tcp -m tcp --dport 23 -j DROP
-A INPUT -p udp -m udp --dport 23 -j DROP
-A OUTPUT -m state --state NEW
-A OUTPUT -m state --state ESTABLISHED
-A OUTPUT -m state --state RELATED
-A OUTPUT -m state --state INVALID
-A OUTPUT -m conntrack --ctstate INVALID -j DROP
COMMIT
"""


@pytest.fixture(scope="module")
def dut():
    factory = nsh.NetnsFactory()
    try:
        d, peer = factory("ct"), factory("ct")
        nsh.veth(d, "va", peer, "pa", "10.9.0.1/24", "10.9.0.2/24")
        info = json.loads(nsh.run_in(d, "ip -j link show").stdout)
        links = {l["ifname"]: (l["ifindex"], bytes.fromhex(l["address"].replace(":", ""))) for l in info}
        w = Worker(d, env={"EBPFW_TEST_CT": "1"}, strict=True)
        w.call(op="load", rules=RULES)
        yield w, links
        w.close()
    finally:
        factory.cleanup()


@pytest.fixture
def ct(dut):
    """A clean table and default timeouts for each test."""
    w, links = dut
    w.call(op="ct_flush")
    w.call(op="ct_config", timeouts={}, tcp_loose=True)
    return Dp(w, links)


class Dp:
    def __init__(self, w: Worker, links: dict):
        self.w, self.links = w, links
        self.idx, self.mac = links["va"]

    def frame_in(self, l3) -> bytes:
        return bytes(Ether(dst=self.mac, src="02:00:00:00:00:02") / l3)

    def inbound(self, l3) -> tuple[str, bool]:
        """Run a packet arriving on va (INPUT); returns (label, dropped)."""
        r = self.w.call(op="run", prog="xdp", frame=self.frame_in(l3).hex(), ifindex=self.idx)
        return self._label(r["rules"], 0), r["ret"] == XDP_DROP

    def outbound(self, l3) -> tuple[str, bool]:
        """Run a locally generated packet leaving through va (OUTPUT)."""
        frame = bytes(Ether(dst="02:00:00:00:00:02", src=self.mac) / l3)
        r = self.w.call(op="run", prog="tc_egress", frame=frame.hex(), ifindex=self.idx, ingress_ifindex=0)
        return self._label(r["rules"], 7), r["ret"] == TC_SHOT

    @staticmethod
    def _label(rules: list, base: int) -> str:
        hit = [LABELS[i - base] for i, _, _ in rules if base <= i < base + 4]
        assert len(hit) == 1, f"expected exactly one state rule to count, got {rules}"
        return hit[0]

    def entries(self) -> list[dict]:
        return self.w.call(op="ct_list")["entries"]


def tcp_in(flags: str, sport: int = 40000, dport: int = 22, payload: bytes = b"") -> IP:
    return IP(src=PEER, dst=DUT) / TCP(sport=sport, dport=dport, flags=flags) / payload


def tcp_out(flags: str, sport: int = 22, dport: int = 40000, payload: bytes = b"") -> IP:
    return IP(src=DUT, dst=PEER) / TCP(sport=sport, dport=dport, flags=flags) / payload


def test_tcp_handshake_data_and_fin_teardown(ct):
    assert ct.inbound(tcp_in("S")) == ("NEW", False)
    (e,) = ct.entries()
    assert (e["proto"], e["src"], e["dst"], e["sport"], e["dport"], e["state"]) == (6, PEER, DUT, 40000, 22, "SYN_SENT")
    assert ct.inbound(tcp_in("S")) == ("NEW", False), "a retransmitted SYN before any reply stays NEW"
    assert ct.outbound(tcp_out("SA")) == ("ESTABLISHED", False)
    assert ct.entries()[0]["state"] == "SYN_RECV"
    assert ct.inbound(tcp_in("A")) == ("ESTABLISHED", False)
    assert ct.inbound(tcp_in("PA", payload=b"hello")) == ("ESTABLISHED", False)
    assert ct.outbound(tcp_out("PA", payload=b"hi")) == ("ESTABLISHED", False)
    (e,) = ct.entries()
    assert e["state"] == "ESTABLISHED" and e["status"] & 2, "assured after the handshake"
    assert e["packets"] == [4, 2]
    assert e["bytes"][0] == 40 + 40 + 40 + 45
    # client closes
    assert ct.inbound(tcp_in("FA")) == ("ESTABLISHED", False)
    assert ct.entries()[0]["state"] == "FIN_WAIT"
    assert ct.outbound(tcp_out("A")) == ("ESTABLISHED", False)
    assert ct.entries()[0]["state"] == "CLOSE_WAIT"
    assert ct.outbound(tcp_out("FA")) == ("ESTABLISHED", False)
    assert ct.entries()[0]["state"] == "LAST_ACK"
    assert ct.inbound(tcp_in("A")) == ("ESTABLISHED", False)
    (e,) = ct.entries()
    assert e["state"] == "TIME_WAIT"
    left = (e["expires_ns"] - time.clock_gettime_ns(time.CLOCK_MONOTONIC)) / 1e9
    assert 110 < left <= 120, f"TIME_WAIT timeout is 120 s, {left:.1f} s left"
    # a new SYN on the same tuple reopens the connection
    assert ct.inbound(tcp_in("S")) == ("NEW", False)
    assert ct.entries()[0]["state"] == "SYN_SENT"


def test_tcp_rst_teardown(ct):
    ct.inbound(tcp_in("S"))
    ct.outbound(tcp_out("SA"))
    ct.inbound(tcp_in("A"))
    assert ct.inbound(tcp_in("R")) == ("ESTABLISHED", False)
    (e,) = ct.entries()
    assert e["state"] == "CLOSE"
    left = (e["expires_ns"] - time.clock_gettime_ns(time.CLOCK_MONOTONIC)) / 1e9
    assert 0 < left <= 10, "CLOSE lasts 10 s"
    # after a RST from the client, its new SYN starts a new connection
    assert ct.inbound(tcp_in("S")) == ("NEW", False)
    assert ct.entries()[0]["state"] == "SYN_SENT"


def test_connection_refused_rst_removes_the_entry(ct):
    assert ct.inbound(tcp_in("S", dport=81)) == ("NEW", False)
    assert ct.outbound(tcp_out("RA", sport=81)) == ("ESTABLISHED", False)
    assert ct.entries() == [], "an unreplied connection whose only reply is a RST is forgotten"


def test_mid_stream_pickup_with_tcp_loose(ct):
    assert ct.inbound(tcp_in("A", sport=41000)) == ("NEW", False)
    (e,) = ct.entries()
    assert e["state"] == "ESTABLISHED" and not e["status"] & 1
    left = (e["expires_ns"] - time.clock_gettime_ns(time.CLOCK_MONOTONIC)) / 1e9
    assert 290 < left <= 300, "a picked-up connection has the 300 s unacknowledged timeout until a reply"
    assert ct.inbound(tcp_in("PA", sport=41000, payload=b"x")) == ("NEW", False), "NEW until a reply is seen"
    assert ct.outbound(tcp_out("A", dport=41000)) == ("ESTABLISHED", False)
    assert ct.inbound(tcp_in("A", sport=41000)) == ("ESTABLISHED", False)
    left = (ct.entries()[0]["expires_ns"] - time.clock_gettime_ns(time.CLOCK_MONOTONIC)) / 1e9
    assert left > 400000, "assured: the 5-day established timeout"


def test_mid_stream_without_tcp_loose_is_invalid(ct):
    ct.w.call(op="ct_config", timeouts={}, tcp_loose=False)
    assert ct.inbound(tcp_in("A", sport=41001)) == ("INVALID", True)
    assert ct.entries() == []


@pytest.mark.parametrize("flags", ["R", "RA", "F", "FA", "SA", ""], ids=lambda f: f or "none")
def test_stray_packets_without_entry_are_invalid(ct, flags):
    assert ct.inbound(tcp_in(flags, sport=42000)) == ("INVALID", True)
    assert ct.entries() == []


@pytest.mark.parametrize("flags", ["SF", "SR", "SRA", "FPU", "F", "SFRPAU", "U", "P"])
def test_bad_flag_combinations_are_invalid_even_on_a_connection(ct, flags):
    ct.inbound(tcp_in("S"))
    ct.outbound(tcp_out("SA"))
    ct.inbound(tcp_in("A"))
    assert ct.inbound(tcp_in(flags)) == ("INVALID", True)
    assert ct.entries()[0]["state"] == "ESTABLISHED", "an INVALID packet does not change the state"


def test_ack_before_synack_is_invalid(ct):
    ct.inbound(tcp_in("S"))
    assert ct.inbound(tcp_in("A")) == ("INVALID", True), "SYN_SENT + ACK from the client: sIV"


def test_syn_in_established_is_ignored_not_invalid(ct):
    ct.inbound(tcp_in("S"))
    ct.outbound(tcp_out("SA"))
    ct.inbound(tcp_in("A"))
    assert ct.inbound(tcp_in("S")) == ("ESTABLISHED", False)
    assert ct.entries()[0]["state"] == "ESTABLISHED"


def test_dropped_first_packet_creates_no_entry(ct):
    assert ct.inbound(tcp_in("S", dport=23)) == ("NEW", True)
    assert ct.entries() == []
    assert ct.inbound(tcp_in("S", dport=23)) == ("NEW", True)
    assert ct.inbound(IP(src=PEER, dst=DUT) / UDP(sport=5000, dport=23)) == ("NEW", True)
    assert ct.entries() == []


def test_udp_new_then_established(ct):
    assert ct.outbound(IP(src=DUT, dst=PEER) / UDP(sport=5353, dport=53)) == ("NEW", False)
    assert ct.outbound(IP(src=DUT, dst=PEER) / UDP(sport=5353, dport=53)) == ("NEW", False)
    assert ct.inbound(IP(src=PEER, dst=DUT) / UDP(sport=53, dport=5353)) == ("ESTABLISHED", False)
    assert ct.outbound(IP(src=DUT, dst=PEER) / UDP(sport=5353, dport=53)) == ("ESTABLISHED", False)
    (e,) = ct.entries()
    assert (e["src"], e["dst"], e["sport"], e["dport"], e["packets"]) == (DUT, PEER, 5353, 53, [3, 1])
    left = (e["expires_ns"] - time.clock_gettime_ns(time.CLOCK_MONOTONIC)) / 1e9
    assert 25 < left <= 30, "replied but younger than 2 s: still the 30 s timeout"


def test_udp_bad_length_is_invalid(ct):
    pkt = IP(src=PEER, dst=DUT) / UDP(sport=53, dport=5353, len=100) / b"abc"
    assert ct.inbound(pkt) == ("INVALID", True)


def test_udp_timeout_expires(ct):
    ct.w.call(op="ct_config", timeouts={"udp": 1})
    assert ct.outbound(IP(src=DUT, dst=PEER) / UDP(sport=5354, dport=53)) == ("NEW", False)
    time.sleep(1.2)
    # the entry expired: the "reply" is now the first packet of a new flow
    assert ct.inbound(IP(src=PEER, dst=DUT) / UDP(sport=53, dport=5354)) == ("NEW", False)
    (e,) = ct.entries()
    assert (e["src"], e["sport"]) == (PEER, 53)


def test_icmp_echo_and_orphan_reply(ct):
    assert ct.inbound(IP(src=PEER, dst=DUT) / ICMP(type=8, id=77, seq=1)) == ("NEW", False)
    assert ct.outbound(IP(src=DUT, dst=PEER) / ICMP(type=0, id=77, seq=1)) == ("ESTABLISHED", False)
    assert ct.inbound(IP(src=PEER, dst=DUT) / ICMP(type=8, id=77, seq=2)) == ("ESTABLISHED", False)
    (e,) = ct.entries()
    assert (e["proto"], e["src"], e["icmp_type"], e["icmp_id"]) == (1, PEER, 8, 77)
    # a reply nobody asked for, an echo request with another id, and an untrackable type
    assert ct.inbound(IP(src=PEER, dst=DUT) / ICMP(type=0, id=78)) == ("INVALID", True)
    assert ct.inbound(IP(src=PEER, dst=DUT) / ICMP(type=8, id=78)) == ("NEW", False)
    assert ct.inbound(IP(src=PEER, dst=DUT) / ICMP(type=9)) == ("INVALID", True)
    assert ct.inbound(IP(src=PEER, dst=DUT) / ICMP(type=13, id=5)) == ("NEW", False)
    assert ct.outbound(IP(src=DUT, dst=PEER) / ICMP(type=14, id=5)) == ("ESTABLISHED", False)


def test_icmp_errors_quoting_a_flow_are_related(ct):
    udp = IP(src=DUT, dst=PEER) / UDP(sport=5355, dport=9999)
    assert ct.outbound(udp) == ("NEW", False)
    err = IP(src=PEER, dst=DUT) / ICMP(type=3, code=3) / bytes(udp)[:28]
    assert ct.inbound(err) == ("RELATED", False)
    # quoting a flow that is not tracked, or a quote whose source is not the error's destination
    other = IP(src=DUT, dst=PEER) / UDP(sport=5356, dport=9999)
    assert ct.inbound(IP(src=PEER, dst=DUT) / ICMP(type=3, code=3) / bytes(other)[:28]) == ("INVALID", True)
    forged = IP(src=OTHER, dst=PEER) / UDP(sport=5355, dport=9999)
    assert ct.inbound(IP(src=PEER, dst=DUT) / ICMP(type=3, code=3) / bytes(forged)[:28]) == ("INVALID", True)
    # truncated quote
    assert ct.inbound(IP(src=PEER, dst=DUT) / ICMP(type=11) / bytes(udp)[:20]) == ("INVALID", True)
    # a TCP flow, the error sent by the host itself (OUTPUT)
    ct.inbound(tcp_in("S", sport=43000, dport=80))
    quote = bytes(tcp_in("S", sport=43000, dport=80))[:28]
    assert ct.outbound(IP(src=DUT, dst=PEER) / ICMP(type=3, code=1) / quote) == ("RELATED", False)
    assert len(ct.entries()) == 2, "errors create no entries"


def test_generic_protocol(ct):
    gre = IP(src=PEER, dst=DUT, proto=47) / (b"\0" * 8)
    assert ct.inbound(gre) == ("NEW", False)
    assert ct.outbound(IP(src=DUT, dst=PEER, proto=47) / (b"\0" * 8)) == ("ESTABLISHED", False)
    (e,) = ct.entries()
    assert (e["proto"], e["src"], e["dst"]) == (47, PEER, DUT)


def test_fragments_take_the_label_of_the_first_fragment(ct):
    # a later fragment whose first fragment was never seen
    assert ct.inbound(IP(src=PEER, dst=DUT, proto=17, id=7, frag=100) / (b"\0" * 16)) == ("INVALID", True)
    # a UDP datagram in three fragments: NEW, then the same label for the rest
    first = IP(src=PEER, dst=DUT, id=8, flags="MF") / UDP(sport=5000, dport=53, len=8 + 40) / (b"a" * 16)
    assert ct.inbound(first) == ("NEW", False)
    assert ct.inbound(IP(src=PEER, dst=DUT, proto=17, id=8, flags="MF", frag=3) / (b"b" * 16)) == ("NEW", False)
    assert ct.inbound(IP(src=PEER, dst=DUT, proto=17, id=8, frag=5) / (b"c" * 8)) == ("NEW", False)
    # the reply in fragments: ESTABLISHED all along
    reply = IP(src=DUT, dst=PEER, id=9, flags="MF") / UDP(sport=53, dport=5000, len=8 + 24) / (b"a" * 16)
    assert ct.outbound(reply) == ("ESTABLISHED", False)
    assert ct.outbound(IP(src=DUT, dst=PEER, proto=17, id=9, frag=3) / (b"b" * 8)) == ("ESTABLISHED", False)


def test_full_table_evicts_and_counts_evictions(ct):
    before = ct.w.call(op="ct_stats")
    assert before["entries"] == 0 and before["size"] == 4096
    nflows = 5000
    for i in range(nflows):
        pkt = IP(src=f"10.9.{100 + i // 250}.{1 + i % 250}", dst=DUT) / UDP(sport=1000 + i, dport=53)
        assert ct.inbound(pkt) == ("NEW", False)
    s = ct.w.call(op="ct_stats")
    created = s["created"] - before["created"]
    assert created == nflows
    assert s["entries"] <= 4096
    assert s["evictions"] - before["evictions"] >= nflows - 4096
    assert s["entries"] + s["evictions"] - before["evictions"] == nflows


# ---- real flows: ebpfw against iptables, and connections across apply ------------------------------
#
# Two identical topologies, CLIENT (10.77.0.2) == veth == SERVER (10.77.0.1): one server runs the
# stateful ruleset in iptables-legacy, the other with ebpfw (XDP/TC on its veth). The same flows go
# through both; per-rule and policy counters must be equal.

EBPFW = str(Path(sys.executable).parent / "ebpfw")
CLI_IP, SRV_IP = "10.77.0.2", "10.77.0.1"

STATEFUL = """*filter
:INPUT DROP [0:0]
:FORWARD DROP [0:0]
:OUTPUT ACCEPT [0:0]
-A INPUT -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT
-A INPUT -m conntrack --ctstate INVALID -j DROP
-A INPUT -p tcp -m tcp --dport 22 -m conntrack --ctstate NEW -j ACCEPT
COMMIT
"""

ECHO_SERVER = """
import socket, sys, threading
def serve(port):
    ls = socket.socket(); ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    ls.bind(("0.0.0.0", port)); ls.listen(16)
    while True:
        c, _ = ls.accept()
        def echo(c=c):
            with c:
                while True:
                    d = c.recv(4096)
                    if not d:
                        return
                    c.sendall(d)
        threading.Thread(target=echo, daemon=True).start()
for p in sys.argv[1:]:
    threading.Thread(target=serve, args=(int(p),), daemon=True).start()
print("ready", flush=True)
sys.stdin.read()
"""

CLIENT_FLOWS = f"""
import socket, struct, time
from scapy.all import IP, TCP, send, conf
conf.verb = 0
for i in range(2):
    s = socket.create_connection(("{SRV_IP}", 22), timeout=5)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    s.sendall(b"hello %d" % i)
    assert s.recv(100) == b"hello %d" % i
    time.sleep(0.3)
    s.close()
    time.sleep(0.5)
# a connection aborted with a RST (SO_LINGER 0)
s = socket.create_connection(("{SRV_IP}", 22), timeout=5)
s.sendall(b"bye")
assert s.recv(100) == b"bye"
time.sleep(0.3)
s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
s.close()
time.sleep(0.3)
# stray and bad segments, a SYN to a port the ruleset does not open
send(IP(dst="{SRV_IP}") / TCP(sport=33333, dport=22, flags="SF"))
send(IP(dst="{SRV_IP}") / TCP(sport=33334, dport=22, flags="R"))
send(IP(dst="{SRV_IP}") / TCP(sport=33335, dport=22, flags="FA"))
send(IP(dst="{SRV_IP}") / TCP(sport=33336, dport=80, flags="S"))
time.sleep(0.3)
"""

SERVER_FLOWS = f"""
import socket, subprocess, time
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
u.sendto(b"x", ("{CLI_IP}", 9999))      # closed port: the port unreachable is RELATED
time.sleep(0.3)
subprocess.run(["ping", "-c", "1", "-W", "2", "{CLI_IP}"], check=True, capture_output=True)
time.sleep(0.3)
"""


def _counters(text: str) -> dict:
    out = {}
    for line in text.splitlines():
        if line.startswith(":"):
            name, pol, cnt = line[1:].split()
            out[name] = tuple(int(x) for x in cnt.strip("[]").split(":"))
        elif line.startswith("["):
            cnt, rule = line.split(" ", 1)
            out[rule.strip()] = tuple(int(x) for x in cnt.strip("[]").split(":"))
    return out


def _pair(netns, prefix: str):
    cli, srv = netns(prefix), netns(prefix)
    cif, sif = cli[:12] + "c", srv[:12] + "s"
    nsh.veth(cli, cif, srv, sif, f"{CLI_IP}/24", f"{SRV_IP}/24")
    for ns in (cli, srv):
        nsh.run_in(ns, "sysctl -qw net.ipv4.icmp_ratelimit=0")
    return cli, srv, sif


def _start_server(ns: str, *ports: int) -> subprocess.Popen:
    p = subprocess.Popen(nsh.nsenter_argv(ns) + [sys.executable, "-c", ECHO_SERVER, *map(str, ports)],
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "ready"
    return p


def _ebpfw(ns: str, *args: str, env: dict | None = None, timeout: float = 240) -> str:
    proc = nsh.run_in(ns, [EBPFW, *args], timeout=timeout, env=dict(os.environ, **(env or {})))
    return proc.stdout


def test_stateful_server_counters_equal_iptables(netns, ebpfw_env, tmp_path):
    servers = []
    try:
        cli1, srv1, _ = _pair(netns, "cti")
        cli2, srv2, sif2 = _pair(netns, "cte")
        nsh.run_in(srv1, ["iptables-legacy-restore"], input=STATEFUL)
        rules = tmp_path / "stateful.rules"
        rules.write_text(STATEFUL)
        _ebpfw(srv2, "apply", str(rules), "--iface", sif2)
        servers = [_start_server(srv1, 22), _start_server(srv2, 22)]
        for cli, srv in ((cli1, srv1), (cli2, srv2)):
            nsh.python_in(cli, CLIENT_FLOWS, timeout=60)
            nsh.python_in(srv, SERVER_FLOWS, timeout=60)
        want = _counters(nsh.run_in(srv1, ["iptables-legacy-save", "-c", "-t", "filter"]).stdout)
        got = _counters(_ebpfw(srv2, "save", "--counters"))
        for rule in ("INPUT", "-A INPUT -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT",
                     "-A INPUT -m conntrack --ctstate INVALID -j DROP",
                     "-A INPUT -p tcp -m tcp --dport 22 -m conntrack --ctstate NEW -j ACCEPT"):
            assert got[rule] == want[rule], f"{rule}: ebpfw {got[rule]} != iptables {want[rule]}\n{got}\n{want}"
        assert want["-A INPUT -m conntrack --ctstate INVALID -j DROP"][0] == 3, "SYN+FIN, stray RST, stray FIN"
        assert want["INPUT"][0] == 1, "the SYN to port 80 meets the policy"
        # the table after the flows: closed TCP connections in TIME_WAIT, the UDP and ICMP flows
        listing = json.loads(_ebpfw(srv2, "conntrack", "list", "--json"))
        states = sorted(d["state"] or d["proto"] for d in listing)
        assert states == ["CLOSE", "TIME_WAIT", "TIME_WAIT", "icmp", "udp"], listing
        stats = json.loads(_ebpfw(srv2, "conntrack", "stats", "--json"))
        assert stats["entries"] == 5 and stats["size"] == 262144 and stats["evictions"] == 0
        assert stats["invalid"] == 3 and stats["related"] == 1
        _ebpfw(srv2, "conntrack", "flush")
        assert json.loads(_ebpfw(srv2, "conntrack", "list", "--json")) == []
    finally:
        for p in servers:
            p.kill()


LONG_CLIENT = f"""
import socket, sys, time
s = socket.create_connection(("{SRV_IP}", 2222), timeout=3)
s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
print("connected", flush=True)
for line in sys.stdin:                  # one exchange per line the test writes
    try:
        s.sendall(b"ping")
        ok = s.recv(16) == b"ping"
    except OSError:
        ok = False
    print("ok" if ok else "fail", flush=True)
"""


def test_long_lived_connection_survives_apply_and_reapply(netns, ebpfw_env, tmp_path):
    """A host moving from iptables to ebpfw: a TCP connection to a port the new ruleset does not
    open (2222) keeps working because apply seeds the table from the kernel's conntrack; it keeps
    working across a re-apply that builds new programs and resizes the table to 1M entries."""
    server = client = None
    try:
        cli, srv, sif = _pair(netns, "ctl")
        nsh.run_in(srv, ["iptables-legacy-restore"], input=STATEFUL.replace(
            "COMMIT", "-A INPUT -p tcp -m tcp --dport 2222 -j ACCEPT\nCOMMIT"))
        server = _start_server(srv, 2222)
        client = subprocess.Popen(nsh.nsenter_argv(cli) + [sys.executable, "-c", LONG_CLIENT],
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert client.stdout.readline().strip() == "connected"

        def exchange() -> str:
            client.stdin.write("go\n")
            client.stdin.flush()
            return client.stdout.readline().strip()

        assert exchange() == "ok"
        rules = tmp_path / "stateful.rules"
        rules.write_text(STATEFUL)
        _ebpfw(srv, "apply", str(rules), "--iface", sif)
        # iptables steps aside: only ebpfw filters now
        nsh.run_in(srv, ["iptables-legacy", "-F", "INPUT"])
        nsh.run_in(srv, ["iptables-legacy", "-P", "INPUT", "ACCEPT"])
        assert exchange() == "ok"
        flows = json.loads(_ebpfw(srv, "conntrack", "list", "--json"))
        tcp = [d for d in flows if d["proto"] == "tcp" and d["original"]["dport"] == 2222]
        assert len(tcp) == 1 and "SEEDED" in tcp[0]["flags"] and tcp[0]["state"] == "ESTABLISHED"
        assert tcp[0]["original"]["packets"] >= 1, "the datapath counts the seeded flow's packets"
        # a new shape (a source-address rule) and a bigger table: new programs, same connections
        rules.write_text(STATEFUL.replace("COMMIT", "-A INPUT -s 10.99.0.0/16 -j DROP\nCOMMIT"))
        out = _ebpfw(srv, "apply", str(rules), "--iface", sif, env={"EBPFW_CT_SIZE": "1048576"})
        assert exchange() == "ok", out
        stats = json.loads(_ebpfw(srv, "conntrack", "stats", "--json"))
        assert stats["size"] == 1048576 and stats["entries"] >= 1
        # a new connection to 2222 is refused by the ruleset now (NEW, not port 22)
        probe = nsh.python_in(cli, f"import socket\ntry:\n socket.create_connection(('{SRV_IP}', 2222), timeout=1)\n"
                                   " print('open')\nexcept OSError:\n print('blocked')\n", timeout=30)
        assert probe.stdout.strip() == "blocked"
        _ebpfw(srv, "detach")
        assert not (ebpfw_env[0] / "ebpfw").exists() or not any((ebpfw_env[0] / "ebpfw").rglob("ct"))
    finally:
        for p in (client, server):
            if p is not None:
                p.kill()


def test_without_seeding_the_old_connection_is_cut(netns, ebpfw_env, tmp_path):
    """The control for the test above: with EBPFW_CT_SEED=0 the same connection stops."""
    server = client = None
    try:
        cli, srv, sif = _pair(netns, "cts")
        nsh.run_in(srv, ["iptables-legacy-restore"], input=STATEFUL.replace(
            "COMMIT", "-A INPUT -p tcp -m tcp --dport 2222 -j ACCEPT\nCOMMIT"))
        server = _start_server(srv, 2222)
        client = subprocess.Popen(nsh.nsenter_argv(cli) + [sys.executable, "-c", LONG_CLIENT.replace(
            "timeout=3", "timeout=1")], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert client.stdout.readline().strip() == "connected"
        client.stdin.write("go\n")
        client.stdin.flush()
        assert client.stdout.readline().strip() == "ok"
        rules = tmp_path / "stateful.rules"
        rules.write_text(STATEFUL)
        _ebpfw(srv, "apply", str(rules), "--iface", sif, env={"EBPFW_CT_SEED": "0"})
        nsh.run_in(srv, ["iptables-legacy", "-F", "INPUT"])
        nsh.run_in(srv, ["iptables-legacy", "-P", "INPUT", "ACCEPT"])
        client.stdin.write("go\n")
        client.stdin.flush()
        assert client.stdout.readline().strip() == "fail"
    finally:
        for p in (client, server):
            if p is not None:
                p.kill()


UDP_PEER = """
import socket, time
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
u.bind(("0.0.0.0", 7007))
print("ready", flush=True)
while True:
    d, a = u.recvfrom(100)
    if d == b"slow":
        time.sleep(2.5)
    u.sendto(d, a)
"""

UDP_ASK = f"""
import socket
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
u.bind(("0.0.0.0", 5999))
for msg, wait in ((b"fast", 2), (b"slow", 4)):
    u.sendto(msg, ("{CLI_IP}", 7007))
    u.settimeout(wait)
    try:
        print(msg.decode(), "answered" if u.recvfrom(100)[0] == msg else "wrong")
    except socket.timeout:
        print(msg.decode(), "lost")
"""


def test_shortened_udp_timeout_expires_real_flows(netns, ebpfw_env, tmp_path):
    """EBPFW_CT_TIMEOUTS=udp=1 at apply: an answer within the second is ESTABLISHED, one 2.5 s
    later finds its entry expired, is NEW, and meets the DROP policy."""
    peer = None
    try:
        cli, srv, sif = _pair(netns, "ctt")
        rules = tmp_path / "stateful.rules"
        rules.write_text(STATEFUL)
        _ebpfw(srv, "apply", str(rules), "--iface", sif, env={"EBPFW_CT_TIMEOUTS": "udp=1"})
        peer = subprocess.Popen(nsh.nsenter_argv(cli) + [sys.executable, "-c", UDP_PEER],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert peer.stdout.readline().strip() == "ready"
        out = nsh.python_in(srv, UDP_ASK, timeout=30).stdout.split("\n")
        assert out[:2] == ["fast answered", "slow lost"], out
        got = _counters(_ebpfw(srv, "save", "--counters"))
        assert got["INPUT"][0] == 1, "the late answer met the policy"
        assert got["-A INPUT -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT"][0] == 1
    finally:
        if peer is not None:
            peer.kill()
