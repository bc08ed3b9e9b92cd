"""REJECT with real sockets across namespaces, differential against real iptables.

The same ruleset is enforced twice: by iptables (iptables-restore in namespace IPT) and by ebpfw
(`ebpfw apply` in namespace DUT, each ingress mode); a CLIENT namespace per side connects, sends
and pings, and what the sockets see (errno of connect()/recv(), ping's message) must be the same.
Topology (made here, both veth ends inside the test's namespaces, IPv6 off):
    CLIENT 10.210.1.2/24 ==veth== DUT 10.210.1.1/24       (ebpfw)
    CLIENT2 10.210.1.2/24 ==veth== IPT 10.210.1.1/24      (iptables)
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from netns import nsenter_argv, run_in, veth
from test_cli_kernel import ebpfw, ok, start_listener

pytestmark = pytest.mark.kernel

CLIENT_IP, DUT_IP = "10.210.1.2", "10.210.1.1"

RULES = """*filter
:INPUT ACCEPT [0:0]
:FORWARD DROP [0:0]
:OUTPUT ACCEPT [0:0]
-A INPUT -p tcp -m tcp --dport 9090 -j REJECT --reject-with tcp-reset
-A INPUT -p tcp -m tcp --dport 9091 -j REJECT
-A INPUT -p tcp -m tcp --dport 9092 -j REJECT --reject-with icmp-host-prohibited
-A INPUT -p udp -m udp --dport 5353 -j REJECT
-A INPUT -p udp -m udp --dport 5354 -j REJECT --reject-with icmp-net-unreachable
-A INPUT -p udp -m udp --dport 5355 -j REJECT --reject-with icmp-admin-prohibited
-A INPUT -p icmp -m icmp --icmp-type 8 -j REJECT --reject-with icmp-port-unreachable
-A OUTPUT -p tcp -m tcp --dport 7070 -j REJECT --reject-with tcp-reset
-A OUTPUT -p udp -m udp --dport 7071 -j REJECT
COMMIT
"""

PROBE = r"""
import errno, json, socket, sys
dst = sys.argv[1]
out = {}
def name(e):
    return errno.errorcode.get(e.errno, str(e.errno)) if isinstance(e, OSError) and e.errno else type(e).__name__
for port in map(int, sys.argv[2].split(",")):
    s = socket.socket(); s.settimeout(2)
    try:
        s.connect((dst, port)); out[f"tcp/{port}"] = "connected"
    except OSError as e:
        out[f"tcp/{port}"] = name(e)
    s.close()
for port in map(int, sys.argv[3].split(",")):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(2)
    try:
        s.connect((dst, port)); s.send(b"x" * 7); s.recv(100); out[f"udp/{port}"] = "data"
    except OSError as e:
        out[f"udp/{port}"] = name(e)
    s.close()
print(json.dumps(out))
"""


def probe(ns: str, dst: str, tcp_ports: str, udp_ports: str) -> dict:
    r = run_in(ns, [sys.executable, "-c", PROBE, dst, tcp_ports, udp_ports], timeout=60)
    return json.loads(r.stdout)


def ping_text(ns: str, dst: str) -> str:
    r = run_in(ns, ["ping", "-n", "-c", "1", "-W", "2", dst], check=False, timeout=30)
    lines = [l for l in r.stdout.splitlines() if "icmp_seq" in l]
    # "From 10.210.1.1 icmp_seq=1 Destination Port Unreachable"
    return lines[0] if lines else "no answer"


def observe(client: str, server: str) -> dict:
    seen = probe(client, DUT_IP, "9090,9091,9092,8080", "5353,5354,5355")
    seen["ping"] = ping_text(client, DUT_IP)
    seen.update({f"out {k}": v for k, v in probe(server, CLIENT_IP, "7070", "7071").items()})
    return seen


@pytest.fixture(scope="module")
def iptables_view():
    """What the sockets see with the kernel's own iptables enforcing RULES."""
    from netns import NetnsFactory
    f = NetnsFactory()
    try:
        client, ipt = f("rsc"), f("rsi")
        veth(client, client + "c", ipt, ipt + "d", f"{CLIENT_IP}/24", f"{DUT_IP}/24")
        run_in(ipt, ["iptables-restore"], input=RULES)
        run_in(client, "sysctl -qw net.ipv4.icmp_ratelimit=0")
        run_in(ipt, "sysctl -qw net.ipv4.icmp_ratelimit=0")
        listener = start_listener(ipt, 8080)
        try:
            yield observe(client, ipt)
        finally:
            listener.kill()
            listener.wait(timeout=10)
    finally:
        f.cleanup()


# native XDP on veth included: XDP_TX frames never reach a veth peer that runs no NAPI, so the
# XDP program hands REJECTed packets to the TC ingress program (ebpfw_tc_xdprej), which answers
@pytest.mark.parametrize("mode", ["xdp", "xdp-generic", "tc"])
def test_sockets_see_what_iptables_makes_them_see(netns, ebpfw_env, tmp_path, iptables_view, mode):
    client, dut = netns("rsc"), netns("rsd")
    dev = dut + "d"
    veth(client, client + "c", dut, dev, f"{CLIENT_IP}/24", f"{DUT_IP}/24")
    run_in(client, "sysctl -qw net.ipv4.icmp_ratelimit=0")
    run_in(dut, "sysctl -qw net.ipv4.icmp_ratelimit=0")
    listener = start_listener(dut, 8080)
    try:
        rules = tmp_path / "rules.v4"
        rules.write_text(RULES)
        ok(ebpfw(dut, "apply", str(rules), "--iface", dev, "--mode", mode))
        seen = observe(client, dut)
        # the kernel's answers, from the iptables side: refused, unreachable, prohibited ...
        assert iptables_view["tcp/9090"] == "ECONNREFUSED" and iptables_view["udp/5353"] == "ECONNREFUSED"
        assert iptables_view["ping"] == f"From {DUT_IP} icmp_seq=1 Destination Port Unreachable"
        # known difference: iptables' OUTPUT drop fails send() with EPERM; a TC program cannot
        # fail it, so the sender learns of the reject from the ICMP error instead
        assert iptables_view["out udp/7071"] == "EPERM" and seen.pop("out udp/7071") == "ECONNREFUSED"
        want = {k: v for k, v in iptables_view.items() if k != "out udp/7071"}
        assert seen == want, f"ebpfw ({mode}) differs from iptables"
        shown = json.loads(ok(ebpfw(dut, "show", "--json")).stdout)
        assert shown["stats"]["reject_sent"] >= 9
        assert shown["stats"]["reject_failed"] == 0
    finally:
        listener.kill()
        listener.wait(timeout=10)
        ebpfw(dut, "detach", timeout=60)


def _ingress_filters(ns: str, dev: str) -> str:
    return run_in(ns, f"tc filter show dev {dev} ingress", check=False).stdout


def _connect(client: str, port: int) -> str:
    return probe(client, DUT_IP, str(port), "5356")[f"tcp/{port}"]   # udp 5356: no rule, no listener


def test_xdp_modes_attach_the_reject_filter_only_when_needed(netns, ebpfw_env, tmp_path):
    """With REJECT in an XDP mode, a TC ingress filter answers what the XDP program rejects (a
    datapath built without REJECT has none), a REJECT ruleset in tc mode replaces it by the
    full TC ingress program, and detach leaves nothing of ebpfw's behind."""
    client, dut = netns("rsc"), netns("rsd")
    dev = dut + "d"
    veth(client, client + "c", dut, dev, f"{CLIENT_IP}/24", f"{DUT_IP}/24")
    rules, plain = tmp_path / "rules.v4", tmp_path / "plain.v4"
    rules.write_text(RULES)
    plain.write_text("\n".join(l.split(" -j REJECT")[0] + " -j DROP" if " -j REJECT" in l else l
                               for l in RULES.splitlines()) + "\n")
    assert "REJECT" not in plain.read_text() and plain.read_text().count("-j DROP") == RULES.count("-j REJECT")
    ok(ebpfw(dut, "apply", str(plain), "--iface", dev, "--mode", "xdp"))
    assert "ebpfw" not in _ingress_filters(dut, dev)
    assert _connect(client, 9090) == "TimeoutError"
    ok(ebpfw(dut, "apply", str(rules), "--iface", dev, "--mode", "xdp"))
    assert "ebpfw_tc_xdprej" in _ingress_filters(dut, dev)
    assert probe(client, DUT_IP, "9090", "5353") == {"tcp/9090": "ECONNREFUSED", "udp/5353": "ECONNREFUSED"}
    ok(ebpfw(dut, "apply", str(rules), "--iface", dev, "--mode", "tc"))
    assert "name ebpfw_tc_ingres " in _ingress_filters(dut, dev)   # program names: 15 characters
    assert _connect(client, 9090) == "ECONNREFUSED"
    ok(ebpfw(dut, "apply", str(rules), "--iface", dev, "--mode", "xdp-generic"))
    assert "ebpfw_tc_xdprej" in _ingress_filters(dut, dev)
    assert _connect(client, 9092) == "EHOSTUNREACH"
    ok(ebpfw(dut, "detach"))
    assert "ebpfw" not in _ingress_filters(dut, dev)
    assert "prog/xdp" not in run_in(dut, f"ip -d link show dev {dev}").stdout
