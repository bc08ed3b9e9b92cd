"""The `ebpfw` command end to end: the real console script run with nsenter inside a DUT
namespace, real packets from a CLIENT namespace, counters read back with `save --counters`.

Topology (made here, both veth ends inside the test's namespaces, IPv6 off):
    CLIENT  10.200.1.2/24 (cli) ==veth== (dut) 10.200.1.1/24  DUT
A python listener in DUT accepts on TCP 8080 and 9090; the rulesets below allow one, drop the
other. Pins and state go to a private bpffs and a temp dir (EBPFW_BPFFS / EBPFW_STATE_DIR from
the `ebpfw_env` fixture), never to /sys/fs/bpf or /var/lib/ebpfw."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from netns import nsenter_argv, run_in, veth

pytestmark = pytest.mark.kernel

_VENV_EBPFW = Path(sys.executable).parent / "ebpfw"
EBPFW = str(_VENV_EBPFW if _VENV_EBPFW.exists() else "/work/main/.venv/bin/ebpfw")
CLIENT_IP, DUT_IP = "10.200.1.2", "10.200.1.1"
OPEN_PORT, CLOSED_PORT = 8080, 9090

RULES = f"""# test ruleset: ping and port {OPEN_PORT} in, port {CLOSED_PORT} dropped
*filter
:INPUT DROP [0:0]
:FORWARD DROP [0:0]
:OUTPUT ACCEPT [0:0]
-A INPUT -p icmp -m icmp --icmp-type 8 -j ACCEPT
-A INPUT -p tcp -m tcp --dport {OPEN_PORT} -j ACCEPT
-A INPUT -p tcp -m tcp --dport {CLOSED_PORT} -j DROP
COMMIT
"""

# the same, but echo requests are dropped and both ports are open
RULES_NO_PING = f"""*filter
:INPUT ACCEPT [0:0]
:FORWARD DROP [0:0]
:OUTPUT ACCEPT [0:0]
-A INPUT -p icmp -m icmp --icmp-type 8 -j DROP
COMMIT
"""

BAD_RULES = """*filter
:INPUT DROP [0:0]
-A INPUT -p tcp --dport 99999 -j ACCEPT
-A INPUT -j NFLOG
COMMIT
"""

LISTENER = """
import socket, selectors, sys, time
sel = selectors.DefaultSelector()
for port in map(int, sys.argv[1:]):
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("0.0.0.0", port)); s.listen(64); s.setblocking(False); sel.register(s, selectors.EVENT_READ)
print("ready", flush=True)
end = time.monotonic() + 300
while time.monotonic() < end:
    for key, _ in sel.select(timeout=1):
        c, _ = key.fileobj.accept(); c.sendall(b"hi"); c.close()
"""

CONNECT = """
import socket, sys
s = socket.socket(); s.settimeout(1.5)
try:
    s.connect((sys.argv[1], int(sys.argv[2]))); print("open" if s.recv(2) == b"hi" else "odd")
except socket.timeout:
    print("timeout")
except ConnectionRefusedError:
    print("refused")
"""


# ---- helpers ----------------------------------------------------------------------------------------

def ebpfw(ns: str, *args: str, input: str | None = None, timeout: float = 180) -> subprocess.CompletedProcess:
    """Run the real console script inside `ns` (network namespace only; mounts kept)."""
    return subprocess.run(nsenter_argv(ns) + [EBPFW, *args], capture_output=True, text=True,
                          input=input, timeout=timeout, env=dict(os.environ))


def ok(proc: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert proc.returncode == 0, f"{proc.args} -> {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    return proc


def ping(ns: str, addr: str, count: int = 1) -> bool:
    return run_in(ns, ["ping", "-n", "-q", "-c", str(count), "-i", "0.2", "-W", "1", addr],
                  check=False, timeout=30).returncode == 0


def tcp(ns: str, addr: str, port: int) -> str:
    return run_in(ns, [sys.executable, "-c", CONNECT, addr, str(port)], timeout=30).stdout.strip()


def counters(save_text: str) -> dict[str, tuple[int, int]]:
    """`[p:b] -A ...` rule lines and `:CHAIN POLICY [p:b]` lines of `save -c` output."""
    out = {}
    for line in save_text.splitlines():
        m = re.match(r"^\[(\d+):(\d+)\] (-A .*)$", line)
        if m:
            out[m.group(3)] = (int(m.group(1)), int(m.group(2)))
        m = re.match(r"^:(\S+) (\S+) \[(\d+):(\d+)\]$", line)
        if m:
            out[":" + m.group(1)] = (int(m.group(3)), int(m.group(4)))
    return out


def attached(ns: str, dev: str) -> dict:
    link = run_in(ns, ["ip", "-d", "-j", "link", "show", "dev", dev]).stdout
    xdp = json.loads(link)[0].get("xdp")
    qdisc = run_in(ns, ["tc", "qdisc", "show", "dev", dev]).stdout
    filters = "".join(run_in(ns, ["tc", "filter", "show", "dev", dev, d], check=False).stdout
                      for d in ("ingress", "egress"))
    return {"xdp": xdp, "clsact": "clsact" in qdisc, "filters": filters.strip()}


def start_listener(ns: str, *ports: int) -> subprocess.Popen:
    """A TCP server in `ns` that answers b"hi" on every port given; the caller kills it."""
    proc = subprocess.Popen(nsenter_argv(ns) + [sys.executable, "-c", LISTENER, *map(str, ports)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = proc.stdout.readline().strip()
    if line != "ready":
        proc.kill()
        raise AssertionError(f"listener in {ns} did not start: {proc.stderr.read()}")
    return proc


@pytest.fixture
def topo(netns, ebpfw_env, tmp_path):
    """(client ns, dut ns, dut iface, rules file path); a listener runs in the DUT."""
    client, dut = netns("clc"), netns("cld")
    if_c, if_d = client + "c", dut + "d"
    veth(client, if_c, dut, if_d, f"{CLIENT_IP}/24", f"{DUT_IP}/24")
    listener = start_listener(dut, OPEN_PORT, CLOSED_PORT)
    try:
        rules = tmp_path / "rules.v4"
        rules.write_text(RULES)
        yield client, dut, if_d, rules
    finally:
        listener.kill()
        listener.wait(timeout=10)
        ebpfw(dut, "detach", timeout=60)   # leave nothing pinned even if a test failed mid-way


# ---- tests ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("mode", ["xdp", "xdp-generic", "tc"])
def test_apply_enforces_counts_and_detaches(topo, mode):
    client, dut, dev, rules = topo
    # open before apply: everything reaches the listener
    assert tcp(client, DUT_IP, CLOSED_PORT) == "open"

    res = ok(ebpfw(dut, "apply", str(rules), "--iface", dev, "--mode", mode))
    assert dev in res.stdout and f"({mode})" in res.stdout
    st = attached(dut, dev)
    if mode == "tc":
        assert st["xdp"] is None and "ebpfw_ingress" in st["filters"]
    else:
        assert st["xdp"] is not None
    assert "ebpfw_egress" in st["filters"]

    assert ping(client, DUT_IP, count=3)
    assert tcp(client, DUT_IP, OPEN_PORT) == "open"
    assert tcp(client, DUT_IP, CLOSED_PORT) == "timeout"

    save = ok(ebpfw(dut, "save", "--counters")).stdout
    cnt = counters(save)
    assert cnt["-A INPUT -p icmp -m icmp --icmp-type 8 -j ACCEPT"] == (3, 3 * 84)
    p_open, b_open = cnt[f"-A INPUT -p tcp -m tcp --dport {OPEN_PORT} -j ACCEPT"]
    assert p_open >= 3 and b_open >= 3 * 40          # SYN, ACK, FIN/ACK at least
    p_closed, _ = cnt[f"-A INPUT -p tcp -m tcp --dport {CLOSED_PORT} -j DROP"]
    assert p_closed >= 1                              # the SYN (and its retransmissions)
    assert cnt[":INPUT"] == (0, 0)                    # nothing reached the DROP policy
    # plain save: same rules, no counters, nothing else on stdout
    plain = ok(ebpfw(dut, "save")).stdout
    assert plain.splitlines()[-1] == "COMMIT" and "[3:252]" not in plain
    assert [l for l in plain.splitlines() if l.startswith("-A")] == [
        l.split("] ", 1)[1] for l in save.splitlines() if l.startswith("[")]

    shown = json.loads(ok(ebpfw(dut, "show", "--json")).stdout)
    inp = next(c for c in shown["chains"] if c["name"] == "INPUT")
    assert inp["policy"] == "DROP"
    assert (inp["rules"][0]["packets"], inp["rules"][0]["bytes"]) == (3, 252)
    table = ok(ebpfw(dut, "show")).stdout
    assert "Chain INPUT (policy DROP" in table and "--dport 9090" in table.replace("\n", " ")

    status = json.loads(ok(ebpfw(dut, "status", "--json")).stdout)
    assert status is not None and [i["name"] for i in status["ifaces"]] == [dev]

    out = ok(ebpfw(dut, "detach")).stdout
    assert dev in out
    st = attached(dut, dev)
    assert st == {"xdp": None, "clsact": False, "filters": ""}, st
    assert tcp(client, DUT_IP, CLOSED_PORT) == "open"
    assert json.loads(ok(ebpfw(dut, "status", "--json")).stdout) is None
    bpffs = Path(os.environ["EBPFW_BPFFS"])
    assert not any((bpffs / "ebpfw").glob("*/*")), list((bpffs / "ebpfw").rglob("*"))


def test_bad_ruleset_is_refused_and_the_old_one_keeps_enforcing(topo, tmp_path):
    client, dut, dev, rules = topo
    ok(ebpfw(dut, "apply", str(rules), "--iface", dev))
    before = ok(ebpfw(dut, "save")).stdout

    bad = tmp_path / "bad.rules"
    bad.write_text(BAD_RULES)
    r = ebpfw(dut, "apply", str(bad), "--iface", dev)
    assert r.returncode == 1
    assert r.stdout == ""
    lines = r.stderr.splitlines()
    assert any(l.startswith(f"{bad}:3: ") and "99999" in l for l in lines), r.stderr
    assert any(l.startswith(f"{bad}:4: ") and "NFLOG" in l for l in lines), r.stderr
    assert "Traceback" not in r.stderr

    assert ok(ebpfw(dut, "save")).stdout == before
    assert ping(client, DUT_IP)
    assert tcp(client, DUT_IP, CLOSED_PORT) == "timeout"

    # an interface that does not exist: refused, nothing changes either
    r = ebpfw(dut, "apply", str(rules), "--iface", "nosuchif0")
    assert r.returncode == 1 and "nosuchif0" in r.stderr and "Traceback" not in r.stderr
    assert tcp(client, DUT_IP, CLOSED_PORT) == "timeout"


def test_import_then_apply_from_stdin_and_replace(topo, tmp_path):
    client, dut, dev, rules = topo
    imported = ok(ebpfw(dut, "import", str(rules))).stdout
    assert "*filter" in imported and "--dport 9090 -j DROP" in imported
    out = tmp_path / "imported.rules"
    ok(ebpfw(dut, "import", "-", "-o", str(out), input=RULES))
    body = [l for l in imported.splitlines() if not l.startswith("#")]
    assert [l for l in out.read_text().splitlines() if not l.startswith("#")] == body

    plan = json.loads(ok(ebpfw(dut, "check", "--plan", str(out))).stdout)
    assert plan["rules"] == 3 and plan["chains"]["INPUT"] == [0, 3]

    ok(ebpfw(dut, "apply", "-", "--iface", dev, input=out.read_text()))
    assert ping(client, DUT_IP)
    assert tcp(client, DUT_IP, CLOSED_PORT) == "timeout"

    # replace: ping now dropped, 9090 open; the attached programs are swapped or kept, never removed
    ok(ebpfw(dut, "apply", "-", "--iface", dev, input=RULES_NO_PING))
    assert not ping(client, DUT_IP)
    assert tcp(client, DUT_IP, CLOSED_PORT) == "open"
    cnt = counters(ok(ebpfw(dut, "save", "--counters")).stdout)
    assert cnt["-A INPUT -p icmp -m icmp --icmp-type 8 -j DROP"][0] == 1


def test_apply_counters_flag_loads_the_file_counters(topo, tmp_path):
    client, dut, dev, rules = topo
    with_counters = tmp_path / "c.rules"
    with_counters.write_text(RULES.replace(":INPUT DROP [0:0]", ":INPUT DROP [7:700]").replace(
        "-A INPUT -p icmp", "[100:8400] -A INPUT -p icmp"))
    ok(ebpfw(dut, "apply", str(with_counters), "--iface", dev, "--counters"))
    assert ping(client, DUT_IP, count=2)
    cnt = counters(ok(ebpfw(dut, "save", "--counters")).stdout)
    assert cnt["-A INPUT -p icmp -m icmp --icmp-type 8 -j ACCEPT"] == (102, 8400 + 2 * 84)
    assert cnt[":INPUT"] == (7, 700)


def test_unprivileged_user_gets_a_clear_message(topo):
    client, dut, dev, rules = topo
    r = subprocess.run(nsenter_argv(dut) + ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                                            "--inh-caps=-all", EBPFW, "save"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 1, r.stderr
    assert "error: `ebpfw save` needs root" in r.stderr
    assert "Traceback" not in r.stderr and r.stdout == ""


def test_switch_hooks_and_interfaces_keeps_a_foreign_clsact(netns, ebpfw_env, tmp_path):
    """xdp on two interfaces -> tc on both -> generic XDP on one: each step leaves exactly the
    hooks asked for; a clsact qdisc that existed before ebpfw survives everything."""
    client, dut = netns("clc"), netns("cld")
    c0, d0, c1, d1 = client + "a", dut + "a", client + "b", dut + "b"
    veth(client, c0, dut, d0, "10.200.1.2/24", "10.200.1.1/24")
    veth(client, c1, dut, d1, "10.200.2.2/24", "10.200.2.1/24")
    run_in(dut, ["tc", "qdisc", "add", "dev", d1, "clsact"])
    rules = tmp_path / "r.rules"
    rules.write_text("*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n"
                     "-A INPUT -s 10.200.2.0/24 -p icmp -j DROP\nCOMMIT\n")
    try:
        ok(ebpfw(dut, "apply", str(rules), "--iface", d0, "--iface", d1, "--mode", "xdp"))
        for dev in (d0, d1):
            st = attached(dut, dev)
            assert st["xdp"] is not None and st["clsact"] and "ebpfw_egress" in st["filters"]
        assert ping(client, "10.200.1.1") and not ping(client, "10.200.2.1")

        ok(ebpfw(dut, "apply", str(rules), "--iface", d0, "--iface", d1, "--mode", "tc"))
        for dev in (d0, d1):
            st = attached(dut, dev)
            assert st["xdp"] is None and "ebpfw_ingress" in st["filters"], st
        assert ping(client, "10.200.1.1") and not ping(client, "10.200.2.1")

        ok(ebpfw(dut, "apply", str(rules), "--iface", d0, "--mode", "xdp-generic"))
        st = attached(dut, d0)
        assert st["xdp"] is not None and "ebpfw_ingress" not in st["filters"], st
        assert attached(dut, d1) == {"xdp": None, "clsact": True, "filters": ""}  # ours gone, theirs kept
        assert ping(client, "10.200.2.1")                                      # d1 no longer judged

        ok(ebpfw(dut, "detach"))
        assert attached(dut, d0) == {"xdp": None, "clsact": False, "filters": ""}
        assert attached(dut, d1)["clsact"]
    finally:
        ebpfw(dut, "detach", timeout=60)


STATEFUL = f"""*filter
:INPUT DROP [0:0]
:FORWARD DROP [0:0]
:OUTPUT ACCEPT [0:0]
-A INPUT -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT
-A INPUT -m conntrack --ctstate INVALID -j DROP
-A INPUT -p tcp -m conntrack --ctstate NEW -m tcp --dport {OPEN_PORT} -j ACCEPT
COMMIT
"""


def test_stateful_ruleset_tracks_connections(topo, tmp_path):
    """INPUT DROP with ESTABLISHED,RELATED accepted: the DUT's own outgoing connection gets its
    replies, new connections come in only on the open port, and the table is visible."""
    client, dut, dev, _ = topo
    rules = tmp_path / "stateful.rules"
    rules.write_text(STATEFUL)
    outside = start_listener(client, 7070)
    try:
        ok(ebpfw(dut, "apply", str(rules), "--iface", dev))
        assert tcp(client, DUT_IP, OPEN_PORT) == "open"
        assert tcp(client, DUT_IP, CLOSED_PORT) == "timeout"
        assert not ping(client, DUT_IP)                         # NEW icmp: policy DROP
        assert tcp(dut, CLIENT_IP, 7070) == "open"              # replies are ESTABLISHED
        assert ping(dut, CLIENT_IP)                             # echo reply is ESTABLISHED

        cnt = counters(ok(ebpfw(dut, "save", "--counters")).stdout)
        est = cnt["-A INPUT -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT"][0]
        assert est >= 3                                         # SYN-ACK, data, FIN, echo reply
        new = cnt[f"-A INPUT -p tcp -m conntrack --ctstate NEW -m tcp --dport {OPEN_PORT} -j ACCEPT"][0]
        assert new == 1                                         # only the client's SYN is NEW

        entries = json.loads(ok(ebpfw(dut, "conntrack", "list", "--json")).stdout)
        assert any(e["protonum"] == 6 and e["original"].get("dport") == 7070 for e in entries), entries
        stats = json.loads(ok(ebpfw(dut, "conntrack", "stats", "--json")).stdout)
        assert stats["entries"] >= 1
    finally:
        outside.kill()
        outside.wait(timeout=10)
