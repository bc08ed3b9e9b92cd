"""Conformance topology: CLIENT -- DUT -- SERVER in three private network namespaces.

    cli0 10.91.1.2/30 <-> dut0 10.91.1.1/30   [DUT]   dut1 10.91.2.1/30 <-> srv0 10.91.2.2/30

The DUT routes between its two links. The client side plays "the internet" (the DUT's default
route points there); the server side is the LAN: 10.91.2.0/24, 198.51.100.0/24 and 172.16.0.0/12
are routed to the server. Both links are /30s, so every address the DUT may ever send to is
reached through a gateway with a permanent neighbour entry: no ARP, ever.

The counters must be exactly reproducible, so the noise is removed here, in the topology:
IPv6 is disabled (no RS/DAD/MLD), ICMP rate limiting is off (icmp_ratemask=0, so error replies
are deterministic), redirects are off, rp_filter is off (the scripts spoof sources),
tcp_synack_retries=0 (no timer-driven retransmissions), and both endpoints drop crafted
packets (TTL > 90, see packets.CRAFTED_TTL) in raw PREROUTING so they never answer them. The
endpoint's AF_PACKET taps run before that drop, so deliveries are still seen.

Each namespace gets one long-lived nsagent.py process (send, capture, sockets).
Every namespace and process is removed by Topology.destroy(), which callers run in finally.
"""

from __future__ import annotations

import json
import os
import secrets
import select
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
AGENT = HERE / "nsagent.py"
NETNS_DIR = Path("/run/netns")

CLI_IF, DUT_IN, DUT_OUT, SRV_IF = "cli0", "dut0", "dut1", "srv0"
MAC = {
    CLI_IF: "02:91:01:00:00:02",
    DUT_IN: "02:91:01:00:00:01",
    DUT_OUT: "02:91:02:00:00:01",
    SRV_IF: "02:91:02:00:00:02",
}
ADDR = {CLI_IF: "10.91.1.2", DUT_IN: "10.91.1.1", DUT_OUT: "10.91.2.1", SRV_IF: "10.91.2.2"}
PREFIXLEN = 30
# extra host addresses on the endpoints, usable by real socket flows
CLI_EXTRA = ("203.0.113.10", "192.168.50.10")
SRV_EXTRA = ("198.51.100.10", "172.17.0.2")
DUT_ROUTES_TO_SRV = ("10.91.2.0/24", "198.51.100.0/24", "172.16.0.0/12")

COMMON_SYSCTLS = (
    "net.ipv6.conf.all.disable_ipv6=1",
    "net.ipv6.conf.default.disable_ipv6=1",
    "net.ipv4.icmp_ratemask=0",
    "net.ipv4.icmp_ratelimit=0",
    "net.ipv4.conf.all.rp_filter=0",
    "net.ipv4.conf.default.rp_filter=0",
    "net.ipv4.conf.all.send_redirects=0",
    "net.ipv4.conf.default.send_redirects=0",
    "net.ipv4.conf.all.accept_redirects=0",
    "net.ipv4.conf.default.accept_redirects=0",
    "net.ipv4.tcp_synack_retries=0",
)


class TopologyError(RuntimeError):
    pass


def run(argv: list[str], input: str | None = None, check: bool = True,
        timeout: float = 60.0, env: dict | None = None) -> subprocess.CompletedProcess:
    proc = subprocess.run(argv, input=input, capture_output=True, text=True,
                          timeout=timeout, env=env)
    if check and proc.returncode != 0:
        raise TopologyError(f"{' '.join(argv)} exited {proc.returncode}:\n"
                            f"{proc.stdout}{proc.stderr}")
    return proc


def nsenter(ns: str) -> list[str]:
    return ["nsenter", f"--net={NETNS_DIR / ns}"]


class Agent:
    """A running nsagent.py inside one namespace; call() sends one command, returns the reply."""

    def __init__(self, ns: str, timeout: float = 30.0) -> None:
        self.ns = ns
        self.timeout = timeout
        self.proc = subprocess.Popen(
            nsenter(ns) + [sys.executable, "-u", str(AGENT)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        hello = self._read()
        if not hello.get("ok"):
            raise TopologyError(f"agent in {ns} did not start: {hello}")

    def _read(self) -> dict:
        assert self.proc.stdout is not None
        ready, _w, _x = select.select([self.proc.stdout], [], [], self.timeout)
        if not ready:
            raise TopologyError(f"agent in {self.ns}: no answer within {self.timeout}s")
        line = self.proc.stdout.readline()
        if not line:
            err = self.proc.stderr.read() if self.proc.stderr else ""
            raise TopologyError(f"agent in {self.ns} exited: {err}")
        return json.loads(line)

    def call(self, op: str, **kw) -> dict:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps({"op": op, **kw}) + "\n")
        self.proc.stdin.flush()
        reply = self._read()
        if not reply.get("ok"):
            raise TopologyError(f"agent in {self.ns}: {op} failed: {reply.get('error')}")
        return reply

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self.call("quit")
            except Exception:
                pass
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        for f in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            if f:
                f.close()


@dataclass
class Topology:
    """One CLIENT--DUT--SERVER instance. `tag` distinguishes the two sides ('i', 'e')."""

    tag: str
    cli: str = ""
    dut: str = ""
    srv: str = ""

    def __post_init__(self) -> None:
        base = f"cf{os.getpid()}{self.tag}{secrets.token_hex(2)}"
        self.cli, self.dut, self.srv = f"{base}-cli", f"{base}-dut", f"{base}-srv"
        self.agents: dict[str, Agent] = {}
        self.created: list[str] = []

    @property
    def namespaces(self) -> tuple[str, str, str]:
        return (self.cli, self.dut, self.srv)

    def ns_of(self, role: str) -> str:
        return {"cli": self.cli, "dut": self.dut, "srv": self.srv}[role]

    def in_dut(self, argv: list[str], **kw) -> subprocess.CompletedProcess:
        return run(nsenter(self.dut) + argv, **kw)

    # -- construction ----------------------------------------------------------------------
    def create(self) -> "Topology":
        try:
            self._build()
            self._start_agents()
        except BaseException:
            self.destroy()
            raise
        return self

    def _build(self) -> None:
        for ns in self.namespaces:
            run(["ip", "netns", "add", ns])
            self.created.append(ns)
            extra = ["net.ipv4.ip_forward=1"] if ns == self.dut else ["net.ipv4.ip_forward=0"]
            run(nsenter(ns) + ["sysctl", "-qw", *COMMON_SYSCTLS, *extra])
            run(["ip", "-n", ns, "link", "set", "lo", "up"])
        run(["ip", "link", "add", CLI_IF, "netns", self.cli, "address", MAC[CLI_IF], "type", "veth",
             "peer", "name", DUT_IN, "netns", self.dut, "address", MAC[DUT_IN]])
        run(["ip", "link", "add", DUT_OUT, "netns", self.dut, "address", MAC[DUT_OUT], "type", "veth",
             "peer", "name", SRV_IF, "netns", self.srv, "address", MAC[SRV_IF]])
        for ns, ifs in ((self.cli, [CLI_IF]), (self.dut, [DUT_IN, DUT_OUT]), (self.srv, [SRV_IF])):
            batch = []
            for i in ifs:
                batch += [f"addr add {ADDR[i]}/{PREFIXLEN} dev {i}", f"link set {i} up"]
            run(["ip", "-n", ns, "-batch", "-"], input="\n".join(batch) + "\n")
        cli_cmds = [f"addr add {a}/32 dev {CLI_IF}" for a in CLI_EXTRA] + [
            f"route add default via {ADDR[DUT_IN]} dev {CLI_IF}",
            f"neigh replace {ADDR[DUT_IN]} lladdr {MAC[DUT_IN]} dev {CLI_IF} nud permanent",
        ]
        srv_cmds = [f"addr add {a}/32 dev {SRV_IF}" for a in SRV_EXTRA] + [
            f"route add default via {ADDR[DUT_OUT]} dev {SRV_IF}",
            f"neigh replace {ADDR[DUT_OUT]} lladdr {MAC[DUT_OUT]} dev {SRV_IF} nud permanent",
        ]
        dut_cmds = [
            f"route add default via {ADDR[CLI_IF]} dev {DUT_IN}",
            *[f"route add {p} via {ADDR[SRV_IF]} dev {DUT_OUT}" for p in DUT_ROUTES_TO_SRV],
            f"neigh replace {ADDR[CLI_IF]} lladdr {MAC[CLI_IF]} dev {DUT_IN} nud permanent",
            f"neigh replace {ADDR[SRV_IF]} lladdr {MAC[SRV_IF]} dev {DUT_OUT} nud permanent",
        ]
        for ns, cmds in ((self.cli, cli_cmds), (self.srv, srv_cmds), (self.dut, dut_cmds)):
            run(["ip", "-n", ns, "-batch", "-"], input="\n".join(cmds) + "\n")
        # endpoints never answer crafted packets (they carry TTL > 90); taps still see them
        for ns in (self.cli, self.srv):
            run(nsenter(ns) + ["iptables", "-t", "raw", "-A", "PREROUTING",
                               "-m", "ttl", "--ttl-gt", "90", "-j", "DROP"])
        for ns in self.namespaces:
            # conntrack of the endpoints is irrelevant, but a per-interface rp_filter would not be
            for i in {self.cli: [CLI_IF], self.dut: [DUT_IN, DUT_OUT], self.srv: [SRV_IF]}[ns]:
                run(nsenter(ns) + ["sysctl", "-qw", f"net.ipv4.conf.{i}.rp_filter=0",
                                   f"net.ipv4.conf.{i}.send_redirects=0"])

    def _start_agents(self) -> None:
        self.agents["cli"] = Agent(self.cli)
        self.agents["srv"] = Agent(self.srv)
        self.agents["dut"] = Agent(self.dut)
        self.agents["cli"].call("sniff", ifaces=[CLI_IF])
        self.agents["srv"].call("sniff", ifaces=[SRV_IF])
        self.agents["dut"].call("local", protos=[1, 6, 17, 47])
        self.wait_carrier()

    def wait_carrier(self, timeout: float = 5.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            out = "".join(run(["ip", "-n", ns, "-o", "link", "show"]).stdout
                          for ns in self.namespaces)
            if out.count("LOWER_UP") >= 7:     # 4 veth ends + 3 lo
                return
            if time.monotonic() > deadline:
                raise TopologyError(f"links did not come up:\n{out}")
            time.sleep(0.05)

    def destroy(self) -> list[str]:
        """Stop the agents, delete the namespaces; returns namespaces that could not be deleted."""
        for agent in self.agents.values():
            try:
                agent.close()
            except Exception:
                pass
        self.agents.clear()
        left = []
        for ns in reversed(self.created):
            run(["ip", "netns", "delete", ns], check=False)
            if (NETNS_DIR / ns).exists():
                left.append(ns)
        self.created.clear()
        return left
