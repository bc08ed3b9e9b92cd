"""Per-packet cost of connection tracking, measured with BPF_PROG_TEST_RUN (not a test: run it
as `sudo .venv/bin/python tests/kernel/ct_bench.py`). Builds the XDP program twice in a
throwaway namespace, without and with conntrack compiled in, and times the same packets:

  stateless  `-A INPUT -p tcp --dport 22 -j ACCEPT` (no ct field, no tracking)
  stateful   ESTABLISHED,RELATED accept + INVALID drop + NEW to 22 accept (label + update)

Packets: a TCP ACK of an established connection (lookup + state update + counters), and a
SYN of a new connection in SYN_SENT (retransmit path). Prints ns/packet (median of 5 runs).
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

import netns as nsh  # noqa: E402
from scapy.layers.inet import IP, TCP  # noqa: E402
from scapy.layers.l2 import Ether  # noqa: E402

STATELESS = """*filter
:INPUT DROP [0:0]
:FORWARD DROP [0:0]
:OUTPUT ACCEPT [0:0]
-A INPUT -p tcp -m tcp --dport 22 -j ACCEPT
COMMIT
"""
STATEFUL = """*filter
:INPUT DROP [0:0]
:FORWARD DROP [0:0]
:OUTPUT ACCEPT [0:0]
-A INPUT -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT
-A INPUT -m conntrack --ctstate INVALID -j DROP
-A INPUT -p tcp -m tcp --dport 22 -m conntrack --ctstate NEW -j ACCEPT
COMMIT
"""


def worker(ns: str, ct: bool) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(HERE.parents[1]), EBPFW_TEST_CT="1" if ct else "0")
    return subprocess.Popen(nsh.nsenter_argv(ns) + [sys.executable, str(HERE / "dp_worker.py")],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)


def call(p: subprocess.Popen, **req) -> dict:
    p.stdin.write(json.dumps(req) + "\n")
    p.stdin.flush()
    out = json.loads(p.stdout.readline())
    if "error" in out:
        raise RuntimeError(out["error"])
    return out


def main() -> None:
    factory = nsh.NetnsFactory()
    try:
        d, peer = factory("cb"), factory("cb")
        nsh.veth(d, "va", peer, "pa", "10.9.0.1/24", "10.9.0.2/24")
        info = json.loads(nsh.run_in(d, "ip -j link show").stdout)
        idx, mac = next((l["ifindex"], l["address"]) for l in info if l["ifname"] == "va")
        syn = bytes(Ether(dst=mac) / IP(src="10.9.0.2", dst="10.9.0.1") / TCP(sport=40000, dport=22, flags="S"))
        synack = bytes(Ether(src=mac) / IP(src="10.9.0.1", dst="10.9.0.2") / TCP(sport=22, dport=40000, flags="SA"))
        ack = bytes(Ether(dst=mac) / IP(src="10.9.0.2", dst="10.9.0.1") / TCP(sport=40000, dport=22, flags="A"))
        syn2 = bytes(Ether(dst=mac) / IP(src="10.9.0.2", dst="10.9.0.1") / TCP(sport=40001, dport=22, flags="S"))
        results = {}
        for ct, rules in ((False, STATELESS), (True, STATEFUL)):
            w = worker(d, ct)
            try:
                call(w, op="load", rules=rules)
                if ct:
                    # an established connection for the ACK: SYN in, SYN-ACK out, ACK in
                    call(w, op="run", prog="xdp", frame=syn.hex(), ifindex=idx)
                    call(w, op="run", prog="tc_egress", frame=synack.hex(), ifindex=idx, ingress_ifindex=0)
                    call(w, op="run", prog="xdp", frame=ack.hex(), ifindex=idx)
                for name, frame in (("ack", ack), ("syn", syn2)):
                    runs = [call(w, op="bench", prog="xdp", frame=frame.hex(), ifindex=idx, repeat=200000)["ns"]
                            for _ in range(5)]
                    results[("ct" if ct else "no ct", name)] = statistics.median(runs)
            finally:
                w.stdin.close()
                w.wait(timeout=30)
        for (mode, pkt), ns in results.items():
            print(f"{mode:6} {pkt:4} {ns:6.0f} ns/packet")
    finally:
        factory.cleanup()


if __name__ == "__main__":
    main()
