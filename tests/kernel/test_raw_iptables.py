"""The raw table: differential against iptables-legacy (the kernel's raw table, xt_CT's NOTRACK
and CT --notrack, nf_conntrack) with real packets.

The same ruleset judges the same traffic twice, each time in fresh namespaces (so that neither
the kernel's conntrack nor ebpfw's, which is seeded from the kernel's, remembers the other run):
    CLIENT 10.204.1.2/24 (+ .3 and .9) ==veth== 10.204.1.1/24 DUT
first with iptables-legacy-restore in DUT, then with `ebpfw apply`. A UDP server in DUT answers
every datagram on ports 53-56 from the port it came to (a DNS server's shape). Per-rule and
per-policy counters of both tables (`ebpfw save --counters` against `iptables-legacy-save -c`)
must be equal, and so must the answers the client gets.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time

import pytest

from netns import nsenter_argv, run_in, veth
from test_cli_kernel import ebpfw, ok

pytestmark = [pytest.mark.kernel,
              pytest.mark.skipif(subprocess.run(["which", "iptables-legacy-restore"], capture_output=True).returncode
                                 != 0, reason="iptables-legacy not installed")]

CLIENT_IP, DUT_IP, BLOCKED_IP, SINK_IP = "10.204.1.2", "10.204.1.1", "10.204.1.3", "10.204.1.9"

RULES = f"""*raw
:PREROUTING ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:rawchk - [0:0]
-A PREROUTING -p udp -m udp --dport 53 -j NOTRACK
-A PREROUTING -s {BLOCKED_IP}/32 -j DROP
-A PREROUTING -p udp -m udp --dport 54 -j CT --notrack
-A PREROUTING -p udp -j rawchk
-A OUTPUT -p udp -m udp --sport 53 -j NOTRACK
-A OUTPUT -d {SINK_IP}/32 -j DROP
-A rawchk -p udp -m udp --dport 55 -j RETURN
-A rawchk -p udp -m udp --dport 56 -j NOTRACK
-A rawchk -p udp -m udp --dport 56 -j ACCEPT
-A rawchk -p udp -m udp --dport 56 -j DROP
COMMIT
*filter
:INPUT DROP [0:0]
:FORWARD DROP [0:0]
:OUTPUT ACCEPT [0:0]
-A INPUT -m conntrack --ctstate UNTRACKED -j ACCEPT
-A INPUT -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT
-A INPUT -p udp -m udp --dport 55 -j ACCEPT
-A INPUT -p icmp -j ACCEPT
-A OUTPUT -m state --state UNTRACKED
-A OUTPUT -m state --state ESTABLISHED
-A OUTPUT -m state --state NEW
-A OUTPUT -m state --state INVALID
COMMIT
"""

SERVER = """
import json, select, socket, sys
socks = {}
for port in (53, 54, 55, 56):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((sys.argv[1], port))
    socks[s] = port
print("ready", flush=True)
got = {}
while True:
    r, _, _ = select.select(list(socks), [], [], 2.0)
    if not r:
        break
    for s in r:
        data, peer = s.recvfrom(64)
        got[socks[s]] = got.get(socks[s], 0) + 1
        s.sendto(b"r" + data, peer)
print(json.dumps(got), flush=True)
"""

# (source address, destination port, queries): one socket per line, answers awaited one by one
SENDS = [(CLIENT_IP, 53, 3), (CLIENT_IP, 54, 3), (CLIENT_IP, 55, 3), (CLIENT_IP, 56, 2), (BLOCKED_IP, 53, 2)]
CLIENT = """
import json, socket, sys
out = []
for src, port, n in json.loads(sys.argv[2]):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((src, 0))
    s.settimeout(0.7)
    answers = 0
    for i in range(n):
        s.sendto(b"q%d" % i, (sys.argv[1], port))
        try:
            if s.recv(64) == b"rq%d" % i:
                answers += 1
        except socket.timeout:
            pass
    out.append(answers)
    s.close()
print(json.dumps(out), flush=True)
"""
# locally generated packets raw OUTPUT drops (to SINK_IP) or exempts (from port 53)
LOCAL_OUT = """
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for i in range(4):
    try:
        s.sendto(b"x", (sys.argv[1], 9))
    except PermissionError:    # iptables: dropped in raw OUTPUT
        pass
"""


def table_counters(text: str) -> dict:
    """(table, line) -> (packets, bytes) for `[p:b] -A ...` and `:CHAIN POLICY [p:b]` lines."""
    out, table = {}, None
    for line in text.splitlines():
        if line.startswith("*"):
            table = line[1:]
            continue
        m = re.match(r"^\[(\d+):(\d+)\] (-A .*)$", line)
        if m:
            out[(table, m.group(3))] = (int(m.group(1)), int(m.group(2)))
        m = re.match(r"^(:\S+ \S+) \[(\d+):(\d+)\]$", line)
        if m:
            out[(table, m.group(1))] = (int(m.group(2)), int(m.group(3)))
    return out


def _topology(netns) -> tuple[str, str]:
    client, dut = netns("erc"), netns("erd")
    veth(client, client + "c", dut, dut + "d", f"{CLIENT_IP}/24", f"{DUT_IP}/24")
    for extra in (BLOCKED_IP, SINK_IP):
        run_in(client, ["ip", "addr", "add", f"{extra}/24", "dev", client + "c"])
    # neighbours both ways before any rule is loaded (ARP is not judged by either)
    for src in (CLIENT_IP, BLOCKED_IP, SINK_IP):
        run_in(client, ["ping", "-c", "1", "-W", "1", "-I", src, DUT_IP], check=False, timeout=10)
    run_in(dut, ["ping", "-c", "1", "-W", "1", SINK_IP], check=False, timeout=10)
    return client, dut


def _traffic(client: str, dut: str) -> tuple[list, dict]:
    server = subprocess.Popen(nsenter_argv(dut) + [sys.executable, "-c", SERVER, DUT_IP],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout.readline().strip() == "ready"
        run_in(client, ["ping", "-c", "2", "-i", "0.2", "-W", "1", DUT_IP], check=False, timeout=10)
        got = run_in(client, [sys.executable, "-c", CLIENT, DUT_IP, json.dumps(SENDS)], timeout=60).stdout
        run_in(dut, [sys.executable, "-c", LOCAL_OUT, SINK_IP], timeout=30)
        served, _ = server.communicate(timeout=30)
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
    time.sleep(0.2)
    return json.loads(got.strip().splitlines()[-1]), json.loads(served.strip().splitlines()[-1])


def test_raw_table_matches_iptables_legacy(netns, ebpfw_env, tmp_path):
    client, dut = _topology(netns)
    run_in(dut, ["iptables-legacy-restore"], input=RULES)
    ref_answers, ref_served = _traffic(client, dut)
    ref_text = run_in(dut, ["iptables-legacy-save", "-c"]).stdout
    ref = table_counters(ref_text)
    # what the kernel did: every query answered except from the blocked address
    assert ref_answers == [3, 3, 3, 2, 0], ref_answers
    assert ref_served == {"53": 3, "54": 3, "55": 3, "56": 2}
    # ESTABLISHED never saw the exempted flows: only port 55's second and third query
    assert ref[("filter", "-A INPUT -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT")][0] == 2 + 1
    assert ref[("filter", "-A INPUT -m conntrack --ctstate UNTRACKED -j ACCEPT")][0] == 3 + 3 + 2
    assert ref[("raw", "-A OUTPUT -d 10.204.1.9/32 -j DROP")][0] == 4

    client, dut = _topology(netns)      # fresh namespaces: no conntrack state from the first run
    rules = tmp_path / "raw.rules"
    rules.write_text(RULES)
    try:
        ok(ebpfw(dut, "apply", str(rules), "--iface", dut + "d"))
        got_answers, got_served = _traffic(client, dut)
        got_text = ok(ebpfw(dut, "save", "--counters")).stdout
    finally:
        ebpfw(dut, "detach", timeout=60)
    got = table_counters(got_text)
    assert got_answers == ref_answers
    assert got_served == ref_served
    assert len(ref) == 24 and set(got) == set(ref)
    assert got == ref
    # the same text: tables, chains in iptables-save's order, canonical rules (iptables-save's own
    # table order depends on which table the namespace made first; ebpfw keeps the file's)
    assert per_table(got_text) == per_table(ref_text)
    assert list(per_table(got_text)) == ["raw", "filter"]


def per_table(text: str) -> dict[str, list[str]]:
    """table -> its lines (chain lines, rules, COMMIT), comments left out."""
    out: dict[str, list[str]] = {}
    cur: list[str] = []
    for line in text.splitlines():
        if line.startswith("*"):
            cur = out.setdefault(line[1:], [])
        elif line and not line.startswith("#"):
            cur.append(line)
    return out


FILTER_ONLY = RULES[RULES.index("*filter"):]


def _query(client: str, dut: str, port: int = 53) -> int:
    """One query from CLIENT_IP to DUT_IP:port, answered by the server; returns the answers."""
    server = subprocess.Popen(nsenter_argv(dut) + [sys.executable, "-c", SERVER, DUT_IP],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout.readline().strip() == "ready"
        got = run_in(client, [sys.executable, "-c", CLIENT, DUT_IP, json.dumps([[CLIENT_IP, port, 1]])],
                     timeout=60).stdout
        server.communicate(timeout=30)
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
    return json.loads(got.strip().splitlines()[-1])[0]


def test_apply_with_and_without_raw(netns, ebpfw_env, tmp_path):
    """Programs built for a raw table keep serving a ruleset without one (maps only) and the raw
    table again; `save` and `show` print the raw table only while the applied ruleset has one."""
    client, dut = _topology(netns)
    with_raw, without = tmp_path / "with.rules", tmp_path / "without.rules"
    with_raw.write_text(RULES)
    without.write_text(FILTER_ONLY)
    untracked = ("filter", "-A INPUT -m conntrack --ctstate UNTRACKED -j ACCEPT")
    established = ("filter", "-A INPUT -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT")
    try:
        res = ok(ebpfw(dut, "apply", str(with_raw), "--iface", dut + "d"))
        assert "new programs" in res.stdout, res.stdout
        assert _query(client, dut) == 1
        c = table_counters(ok(ebpfw(dut, "save", "--counters")).stdout)
        assert c[("raw", "-A PREROUTING -p udp -m udp --dport 53 -j NOTRACK")][0] == 1
        assert c[untracked][0] == 1 and c[("raw", "-A OUTPUT -p udp -m udp --sport 53 -j NOTRACK")][0] == 1
        show = ok(ebpfw(dut, "show")).stdout
        assert "Chain PREROUTING (table raw)" in show and "Chain OUTPUT (table raw)" in show, show

        res = ok(ebpfw(dut, "apply", str(without), "--iface", dut + "d"))
        assert "programs kept" in res.stdout, res.stdout
        saved = ok(ebpfw(dut, "save", "--counters")).stdout
        assert "*raw" not in saved
        # tracked now: the query (filter INPUT policy DROP... of a NEW flow) is dropped, nothing answers
        assert _query(client, dut) == 0
        c = table_counters(ok(ebpfw(dut, "save", "--counters")).stdout)
        assert c[untracked][0] == 0 and c[("filter", ":INPUT DROP")][0] == 1

        res = ok(ebpfw(dut, "apply", str(with_raw), "--iface", dut + "d"))
        assert "programs kept" in res.stdout, res.stdout
        assert _query(client, dut) == 1
        c = table_counters(ok(ebpfw(dut, "save", "--counters")).stdout)
        assert c[untracked][0] == 1 and c[established][0] == 0
    finally:
        ebpfw(dut, "detach", timeout=60)


LOG_RULES = """*raw
:PREROUTING ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
-A PREROUTING -p tcp -m tcp --dport 8080 --tcp-flags FIN,SYN,RST,ACK SYN -j LOG --log-prefix "raw-pre: "
-A PREROUTING -p tcp -m tcp --dport 8080 -j NOTRACK
-A PREROUTING -p icmp -m icmp --icmp-type 8 -j LOG --log-prefix "raw-drop: "
-A PREROUTING -p icmp -m icmp --icmp-type 8 -j DROP
-A OUTPUT -p tcp -m tcp --sport 8080 --tcp-flags SYN,ACK SYN,ACK -j LOG --log-prefix "raw-out: "
COMMIT
*filter
:INPUT ACCEPT [0:0]
:FORWARD DROP [0:0]
:OUTPUT ACCEPT [0:0]
-A INPUT -p tcp -m tcp --dport 8080 --tcp-flags FIN,SYN,RST,ACK SYN -m conntrack --ctstate UNTRACKED -j LOG --log-prefix "filter-in: "
COMMIT
"""


@pytest.mark.parametrize("mode", ["xdp-generic", "tc"])
def test_log_in_raw(netns, ebpfw_env, tmp_path, mode):
    """-j LOG in raw PREROUTING and OUTPUT: one kernel-format line per packet, with IN=/MAC= as
    PREROUTING has them and OUT= as OUTPUT has it; the packet goes on (to NOTRACK, the filter
    table's LOG, the socket) or is dropped after its line."""
    from test_cli_kernel import ping, start_listener, tcp
    client, dut = netns("elc"), netns("eld")
    dev = dut + "d"
    veth(client, client + "c", dut, dev, "10.205.1.2/24", "10.205.1.1/24")
    listener = start_listener(dut, 8080)
    try:
        rules = tmp_path / "log.rules"
        rules.write_text(LOG_RULES)
        ok(ebpfw(dut, "apply", str(rules), "--iface", dev, "--mode", mode))
        assert tcp(client, "10.205.1.1", 8080) == "open"
        assert not ping(client, "10.205.1.1")
        lines = ok(ebpfw(dut, "log")).stdout.splitlines()
        by = {p: [l for l in lines if l.startswith(p)] for p in ("raw-pre: ", "raw-drop: ", "raw-out: ", "filter-in: ")}
        assert {p: len(v) for p, v in by.items()} == {"raw-pre: ": 1, "raw-drop: ": 1, "raw-out: ": 1,
                                                       "filter-in: ": 1}, lines
        mac = r"MAC=([0-9a-f]{2}:){13}[0-9a-f]{2}  "
        assert re.fullmatch(rf"raw-pre: IN={dev} OUT= {mac}SRC=10\.205\.1\.2 DST=10\.205\.1\.1 LEN=60 TOS=0x00 "
                            r"PREC=0x00 TTL=64 ID=\d+ DF PROTO=TCP SPT=\d+ DPT=8080 WINDOW=\d+ RES=0x00 SYN URGP=0 ",
                            by["raw-pre: "][0]), by["raw-pre: "][0]
        assert re.fullmatch(rf"raw-drop: IN={dev} OUT= {mac}SRC=10\.205\.1\.2 DST=10\.205\.1\.1 LEN=84 .* "
                            r"PROTO=ICMP TYPE=8 CODE=0 ID=\d+ SEQ=1 ", by["raw-drop: "][0]), by["raw-drop: "][0]
        assert re.fullmatch(rf"raw-out: IN= OUT={dev} SRC=10\.205\.1\.1 DST=10\.205\.1\.2 LEN=60 .* SPT=8080 "
                            r"DPT=\d+ WINDOW=\d+ RES=0x00 ACK SYN URGP=0 ", by["raw-out: "][0]), by["raw-out: "][0]
        assert lines.index(by["raw-pre: "][0]) < lines.index(by["filter-in: "][0])
        c = table_counters(ok(ebpfw(dut, "save", "--counters")).stdout)
        assert c[("raw", "-A PREROUTING -p icmp -m icmp --icmp-type 8 -j DROP")][0] == 1
    finally:
        listener.kill()
        listener.wait(timeout=10)
        ebpfw(dut, "detach", timeout=60)
