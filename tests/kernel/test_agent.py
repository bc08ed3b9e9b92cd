"""`ebpfw agent` end to end: the real console script runs inside a DUT namespace (nsenter, so
the private bpffs stays visible) with a configuration file, and the tests change the DUT's
addresses and interfaces, send it signals, and check what the datapath does.

Topology (made here, both veth ends inside the test's namespaces, IPv6 off):
    CLIENT  10.201.1.2/24 (cl0) ==veth== (ag0) 10.201.1.1/24  DUT
    CLIENT2 10.201.2.2/24 (cl1) ==veth== (ag1) 10.201.2.1/24  DUT   (made while the agent runs)
The configuration enforces on `ag*`. TCP to port 9090 is dropped by the ruleset and there is
no listener, so "refused" means the SYN got through and "timeout" means it was dropped.
Readiness comes from the agent's sd_notify messages on a socket the test owns ($NOTIFY_SOCKET).
Every wait is bounded.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from netns import nsenter_argv, run_in, veth

pytestmark = pytest.mark.kernel

_VENV_EBPFW = Path(sys.executable).parent / "ebpfw"
EBPFW = str(_VENV_EBPFW if _VENV_EBPFW.exists() else "/work/main/.venv/bin/ebpfw")
START_TIMEOUT = 120  # a bcc compile on a busy 2-core VM

RULES = """*filter
:INPUT ACCEPT [0:0]
:FORWARD DROP [0:0]
:OUTPUT ACCEPT [0:0]
-A INPUT -p tcp -m tcp --dport 9090 -j DROP
COMMIT
"""
RULES_NO_PING = RULES.replace("COMMIT", "-A INPUT -p icmp -m icmp --icmp-type 8 -j DROP\nCOMMIT")
BROKEN = RULES.replace("--dport 9090", "--dport 99999")

CONNECT = """
import socket, sys
s = socket.socket(); s.settimeout(1.0)
try:
    s.connect((sys.argv[1], int(sys.argv[2]))); print("open")
except socket.timeout:
    print("timeout")
except ConnectionRefusedError:
    print("refused")
"""

# Runs in the DUT: waits until a condition on the pinned state holds; prints the seconds it
# took, measured from the CLOCK_MONOTONIC time given (the clock is system-wide).
WATCH = r"""
import ipaddress, json, struct, sys, time
from pathlib import Path
from ebpfw import api
from ebpfw.datapath import Datapath, Shape
from ebpfw.datapath import bpfsys
from ebpfw.netlink import attached_prog_ids, links

what, arg, want, limit = sys.argv[1], sys.argv[2], sys.argv[3] == "1", float(sys.argv[4])
print("ready", flush=True)
t0 = float(sys.stdin.readline())
def local():
    cur = api.status()
    if not cur:
        return set()
    dp = Datapath.open_pinned(Path(cur["gen_dir"]), Shape.from_json(cur["shape"]))
    try:
        return {str(ipaddress.IPv4Address(k)) for k in bpfsys.keys(dp.maps["ebpfw_local"], 4)}
    finally:
        dp.close()
def attached():  # None while there is no such interface
    idx = {l.name: l.ifindex for l in links()}.get(arg)
    if idx is None:
        return None
    ids = attached_prog_ids(idx)
    return bool((ids["xdp"] or ids["tc_ingress"]) and ids["tc_egress"])
def present():
    return arg in {l.name for l in links()}
check = {"local": lambda: arg in local(), "attached": attached, "present": present}[what]
while True:
    if check() == want:
        print(json.dumps({"ok": True, "seconds": time.monotonic() - t0}), flush=True)
        break
    if time.monotonic() - t0 > limit:
        print(json.dumps({"ok": False, "seconds": time.monotonic() - t0}), flush=True)
        break
    time.sleep(0.01)
"""


# ---- helpers ----------------------------------------------------------------------------------------

def ebpfw(ns: str, *args: str, timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run(nsenter_argv(ns) + [EBPFW, *args], capture_output=True, text=True,
                          timeout=timeout, env=dict(os.environ))


def ping(ns: str, addr: str, count: int = 1) -> bool:
    return run_in(ns, ["ping", "-n", "-q", "-c", str(count), "-i", "0.2", "-W", "1", addr],
                  check=False, timeout=30).returncode == 0


def tcp(ns: str, addr: str, port: int = 9090) -> str:
    return run_in(ns, [sys.executable, "-c", CONNECT, addr, str(port)], timeout=30).stdout.strip()


def prog_ids(ns: str, dev: str) -> dict:
    code = (f"import json\nfrom ebpfw.netlink import attached_prog_ids, ifindex\n"
            f"print(json.dumps(attached_prog_ids(ifindex({dev!r}))))")
    return json.loads(run_in(ns, [sys.executable, "-c", code], timeout=30).stdout)


def watch(ns: str, what: str, arg: str, want: bool, action, limit: float) -> dict:
    """Start a watcher in `ns`, then run `action()`; the watcher reports how long after the
    action the condition held (or that it did not within `limit` seconds)."""
    proc = subprocess.Popen(nsenter_argv(ns) + [sys.executable, "-c", WATCH, what, arg, "1" if want else "0",
                                                str(limit)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=dict(os.environ))
    try:
        assert proc.stdout.readline().strip() == "ready", proc.stderr.read()
        t0 = time.monotonic()
        action()
        proc.stdin.write(f"{t0}\n")
        proc.stdin.flush()
        out, err = proc.communicate(timeout=limit + 30)
        assert out.strip(), err
        return json.loads(out.strip().splitlines()[-1])
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)


class Notify:
    """A NOTIFY_SOCKET the test owns: collects the agent's sd_notify datagrams."""

    def __init__(self, path: Path):
        self.path = str(path)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        self.seen: list[str] = []

    def wait_for(self, line: str, timeout: float) -> list[str]:
        """Block until a datagram contains `line`; returns the lines received meanwhile."""
        end = time.monotonic() + timeout
        got: list[str] = []
        while time.monotonic() < end:
            self.sock.settimeout(max(0.01, end - time.monotonic()))
            try:
                data = self.sock.recv(4096).decode()
            except socket.timeout:
                break
            lines = data.splitlines()
            got += lines
            self.seen += lines
            if line in lines:
                return got
        raise AssertionError(f"no {line!r} from the agent within {timeout} s; got {got}")

    def close(self) -> None:
        self.sock.close()


class AgentProc:
    def __init__(self, ns: str, config: Path, log: Path, notify: Notify):
        self.ns, self.config, self.log, self.notify = ns, config, log, notify
        self.proc: subprocess.Popen | None = None

    def start(self) -> "AgentProc":
        env = dict(os.environ, NOTIFY_SOCKET=self.notify.path)
        self.logf = open(self.log, "a")
        self.proc = subprocess.Popen(nsenter_argv(self.ns) + [EBPFW, "agent", "--config", str(self.config)],
                                     stdout=self.logf, stderr=self.logf, env=env)
        try:
            self.notify.wait_for("READY=1", START_TIMEOUT)
        except AssertionError:
            raise AssertionError(f"agent not ready; exit {self.proc.poll()}; log:\n{self.text()}") from None
        return self

    def text(self) -> str:
        return self.log.read_text()

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def wait(self, timeout: float = 60) -> int:
        return self.proc.wait(timeout=timeout)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=30)
        if self.proc is not None:
            self.logf.close()


@pytest.fixture
def rig(netns, ebpfw_env, tmp_path):
    client, dut = netns("agc"), netns("agd")
    veth(client, "cl0", dut, "ag0", "10.201.1.2/24", "10.201.1.1/24")
    rules = tmp_path / "rules.v4"
    rules.write_text(RULES)
    config = tmp_path / "ebpfw.toml"
    config.write_text('# test configuration\nruleset = "rules.v4"\ninterfaces = ["ag*"]\non_stop = "keep"\n')
    notify = Notify(tmp_path / "notify.sock")
    agents: list[AgentProc] = []

    def make_agent() -> AgentProc:
        a = AgentProc(dut, config, tmp_path / "agent.log", notify)
        agents.append(a)
        return a

    try:
        yield {"client": client, "dut": dut, "rules": rules, "config": config, "agent": make_agent,
               "netns": netns, "tmp": tmp_path}
    finally:
        for a in agents:
            a.stop()
        notify.close()
        ebpfw(dut, "detach", timeout=60)


# ---- tests ------------------------------------------------------------------------------------------

def test_agent_follows_addresses_and_interfaces(rig):
    client, dut = rig["client"], rig["dut"]
    agent = rig["agent"]().start()
    assert ping(client, "10.201.1.1")
    assert tcp(client, "10.201.1.1") == "timeout"      # enforced on ag0
    assert prog_ids(dut, "ag0")["tc_egress"]

    # a new local address: in the local map within 1 s, and then judged by INPUT (accepted)
    # instead of FORWARD (policy DROP)
    res = watch(dut, "local", "10.201.1.9", True,
                lambda: run_in(dut, ["ip", "addr", "add", "10.201.1.9/24", "dev", "ag0"]), limit=5)
    assert res["ok"] and res["seconds"] < 1.0, res
    assert ping(client, "10.201.1.9")
    assert tcp(client, "10.201.1.9") == "timeout"
    # and removed again within 1 s
    res = watch(dut, "local", "10.201.1.9", False,
                lambda: run_in(dut, ["ip", "addr", "del", "10.201.1.9/24", "dev", "ag0"]), limit=5)
    assert res["ok"] and res["seconds"] < 1.0, res

    # a new interface matching ag*: attached within 2 s, and the ruleset holds on it
    client2 = rig["netns"]("agc")
    res = watch(dut, "attached", "ag1", True,
                lambda: veth(client2, "cl1", dut, "ag1", "10.201.2.2/24", "10.201.2.1/24"), limit=10)
    assert res["ok"] and res["seconds"] < 2.0, res
    assert ping(client2, "10.201.2.1")
    assert tcp(client2, "10.201.2.1") == "timeout"
    st = json.loads(ebpfw(dut, "status", "--json").stdout)
    assert sorted(i["name"] for i in st["ifaces"]) == ["ag0", "ag1"]
    assert "maps only" in agent.text()                # the shape fitted: no recompilation

    # an interface that does not match is left alone
    client3 = rig["netns"]("agc")
    veth(client3, "cl2", dut, "other0", "10.201.3.2/24", "10.201.3.1/24")
    time.sleep(1.0)
    ids = prog_ids(dut, "other0")
    assert not ids["xdp"] and not ids["tc_ingress"] and not ids["tc_egress"], ids
    assert tcp(client3, "10.201.3.1") == "refused"

    # renamed to a name that does not match: ebpfw comes off it; renamed back: on again
    def rename(old: str, new: str):
        def action() -> None:
            run_in(dut, ["ip", "link", "set", old, "down"])
            run_in(dut, ["ip", "link", "set", old, "name", new])
            run_in(dut, ["ip", "link", "set", new, "up"])
        return action

    res = watch(dut, "attached", "zz1", False, rename("ag1", "zz1"), limit=10)
    assert res["ok"] and res["seconds"] < 2.0, res
    ids = prog_ids(dut, "zz1")
    assert not ids["xdp"] and not ids["tc_ingress"] and not ids["tc_egress"], ids
    assert tcp(client2, "10.201.2.1") == "refused"
    res = watch(dut, "attached", "ag1", True, rename("zz1", "ag1"), limit=10)
    assert res["ok"] and res["seconds"] < 2.0, res
    assert tcp(client2, "10.201.2.1") == "timeout"

    # the interface goes away: forgotten (status no longer lists it), the rest still enforced
    res = watch(dut, "present", "ag1", False,
                lambda: run_in(dut, ["ip", "link", "del", "ag1"]), limit=10)
    assert res["ok"], res
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        st = json.loads(ebpfw(dut, "status", "--json").stdout)
        if [i["name"] for i in st["ifaces"]] == ["ag0"]:
            break
        time.sleep(0.1)
    assert [i["name"] for i in st["ifaces"]] == ["ag0"], st["ifaces"]
    assert tcp(client, "10.201.1.1") == "timeout"
    assert agent.proc.poll() is None, agent.text()


def test_sighup_reloads_and_a_broken_ruleset_keeps_the_old_one(rig):
    client, dut, rules = rig["client"], rig["dut"], rig["rules"]
    agent = rig["agent"]().start()
    notify = agent.notify
    assert ping(client, "10.201.1.1")

    rules.write_text(RULES_NO_PING)
    agent.signal(signal.SIGHUP)
    got = notify.wait_for("READY=1", 60)
    assert "RELOADING=1" in got
    assert not ping(client, "10.201.1.1")
    assert tcp(client, "10.201.1.1") == "timeout"

    rules.write_text(BROKEN)
    agent.signal(signal.SIGHUP)
    notify.wait_for("READY=1", 60)
    log = agent.text()
    assert "reload refused" in log and f"{rules}:5:" in log and "99999" in log, log
    assert not ping(client, "10.201.1.1")               # the previous ruleset keeps enforcing
    assert tcp(client, "10.201.1.1") == "timeout"
    assert "--icmp-type 8 -j DROP" in ebpfw(dut, "save").stdout

    # a broken configuration is refused the same way
    cfg = rig["config"].read_text()
    rig["config"].write_text(cfg + 'mode = "fast"\n')
    agent.signal(signal.SIGHUP)
    notify.wait_for("READY=1", 60)
    assert f"{rig['config']}:5: invalid mode" in agent.text()
    assert not ping(client, "10.201.1.1")

    # fixed again: the good ruleset comes in
    rig["config"].write_text(cfg)
    rules.write_text(RULES)
    agent.signal(signal.SIGHUP)
    notify.wait_for("READY=1", 60)
    assert ping(client, "10.201.1.1")
    assert agent.proc.poll() is None


def test_stop_kill_and_restart_keep_enforcing(rig):
    client, dut, rules = rig["client"], rig["dut"], rig["rules"]
    rules.write_text(RULES_NO_PING)
    agent = rig["agent"]().start()
    assert not ping(client, "10.201.1.1")
    before = prog_ids(dut, "ag0")

    agent.signal(signal.SIGTERM)
    assert agent.wait(60) == 0
    assert "STOPPING=1" in agent.notify.seen or "STOPPING=1" in agent.notify.wait_for("STOPPING=1", 5)
    assert prog_ids(dut, "ag0") == before             # still attached, still enforcing
    assert not ping(client, "10.201.1.1")
    assert tcp(client, "10.201.1.1") == "timeout"

    # a restart with the same ruleset: maps-only apply, the same programs stay attached
    # throughout (no gap), the counters survive
    run_in(client, ["ping", "-q", "-c", "2", "-i", "0.2", "-W", "1", "10.201.1.1"], check=False)
    gen = json.loads(ebpfw(dut, "status", "--json").stdout)["generation"]
    counted = ebpfw(dut, "save", "--counters").stdout
    drop_line = "-A INPUT -p icmp -m icmp --icmp-type 8 -j DROP"
    assert f"[4:336] {drop_line}" in counted, counted   # 1 + 1 + 2 echo requests dropped
    agent2 = rig["agent"]().start()
    assert prog_ids(dut, "ag0") == before
    assert json.loads(ebpfw(dut, "status", "--json").stdout)["generation"] == gen
    assert "maps only" in agent2.text().split("(start)")[-1], agent2.text()
    assert ebpfw(dut, "save", "--counters").stdout == counted

    # kill -9: the programs are pinned and attached, enforcement goes on
    agent2.signal(signal.SIGKILL)
    agent2.wait(30)
    assert prog_ids(dut, "ag0") == before
    assert not ping(client, "10.201.1.1")

    # a restart after kill -9 picks the pinned state up again
    agent3 = rig["agent"]().start()
    assert prog_ids(dut, "ag0") == before
    assert not ping(client, "10.201.1.1")
    agent3.signal(signal.SIGTERM)
    assert agent3.wait(60) == 0


def test_on_stop_detach(rig):
    client, dut = rig["client"], rig["dut"]
    rig["config"].write_text('ruleset = "rules.v4"\ninterfaces = [{ match = "ag0", mode = "tc" }]\n'
                             'on_stop = "detach"\n')
    agent = rig["agent"]().start()
    ids = prog_ids(dut, "ag0")
    assert ids["tc_ingress"] and not ids["xdp"], ids   # the per-interface mode was used
    assert tcp(client, "10.201.1.1") == "timeout"
    agent.signal(signal.SIGTERM)
    assert agent.wait(60) == 0
    ids = prog_ids(dut, "ag0")
    assert not ids["xdp"] and not ids["tc_ingress"] and not ids["tc_egress"], ids
    assert tcp(client, "10.201.1.1") == "refused"
    assert json.loads(ebpfw(dut, "status", "--json").stdout) is None


def test_agent_waits_for_a_matching_interface(rig):
    client, dut = rig["client"], rig["dut"]
    rig["config"].write_text('ruleset = "rules.v4"\ninterfaces = ["late*"]\n')
    agent = rig["agent"]().start()
    assert "waiting for one" in agent.text()
    assert json.loads(ebpfw(dut, "status", "--json").stdout) is None
    client2 = rig["netns"]("agc")
    res = watch(dut, "attached", "late0", True,
                lambda: veth(client2, "cl1", dut, "late0", "10.201.4.2/24", "10.201.4.1/24"),
                limit=START_TIMEOUT)
    assert res["ok"], res + (agent.text(),)
    assert tcp(client2, "10.201.4.1") == "timeout"
    assert tcp(client, "10.201.1.1") == "refused"       # ag0 is not configured


def test_bad_configuration_or_ruleset_at_start_exits_1(rig):
    dut, config, rules = rig["dut"], rig["config"], rig["rules"]
    config.write_text('ruleset = "rules.v4"\ninterfaces = ["ag*"]\non_stop = "maybe"\n')
    r = ebpfw(dut, "agent", "--config", str(config), timeout=60)
    assert r.returncode == 1
    assert f"{config}:3: invalid on_stop, expected one of 'keep', 'detach', found string 'maybe'" in r.stderr
    config.write_text('ruleset = "rules.v4"\ninterfaces = ["ag*"]\n')
    rules.write_text(BROKEN)
    r = ebpfw(dut, "agent", "--config", str(config), timeout=60)
    assert r.returncode == 1 and f"{rules}:5:" in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert json.loads(ebpfw(dut, "status", "--json").stdout) is None


def test_apply_compare_and_swap(rig):
    """What keeps the agent from putting back a ruleset an admin just replaced: a re-apply of
    what it read fails, changing nothing, when another apply landed in between."""
    client, dut, rules = rig["client"], rig["dut"], rig["rules"]
    code = f"""
import json, sys
from ebpfw import api
text = open({str(rules)!r}).read()
try:
    api.apply(text, "x", ["ag0"], expect_applied_at=123.0)   # expects something that is not there
    print("applied")
except api.ChangedMeanwhile as exc:
    print("refused:", exc)
first = api.apply(text, "x", ["ag0"], mode="tc", expect_applied_at=0.0)
at = api.status()["applied_at"]
api.apply(text.replace("COMMIT", "-A INPUT -p icmp -j DROP\\nCOMMIT"), "admin", ["ag0"], mode="tc")
try:
    api.apply(text, "stale", ["ag0"], mode="tc", expect_applied_at=at)
    print("applied")
except api.ChangedMeanwhile as exc:
    print("refused:", exc)
print(api.status()["source"])
"""
    out = rig["netns"].python(dut, code, timeout=180).stdout.splitlines()
    assert out[0].startswith("refused: another apply changed") and out[1].startswith("refused:"), out
    assert out[2] == "admin"
    assert not ping(client, "10.201.1.1")        # the admin's ruleset is the one enforced


def test_start_after_a_reboot_with_state_but_no_pins(rig, ebpfw_env):
    """/var/lib/ebpfw persists across reboots, the bpffs does not: the agent must apply afresh
    instead of trying to keep counters of pins that are gone."""
    client, dut = rig["client"], rig["dut"]
    agent = rig["agent"]().start()
    agent.signal(signal.SIGTERM)
    assert agent.wait(60) == 0
    _, state_root = ebpfw_env
    saved = {p: p.read_bytes() for p in state_root.glob("*/*") if p.suffix in (".json", ".rules")}
    assert any(p.name == "current.json" for p in saved), saved
    assert ebpfw(dut, "detach").returncode == 0      # programs and pins gone, as after a reboot
    for p, data in saved.items():
        p.write_bytes(data)                           # ... but the state files are still there
    assert tcp(client, "10.201.1.1") == "refused"
    agent2 = rig["agent"]().start()
    assert "state from an earlier boot" in agent2.text()
    assert tcp(client, "10.201.1.1") == "timeout"
    assert prog_ids(dut, "ag0")["tc_egress"]


SET_RULES = RULES.replace("COMMIT", "-A INPUT -p udp -m set --match-set ban src -j DROP\nCOMMIT")
SETS = "create ban hash:ip family inet hashsize 1024 maxelem 65536 timeout 0\nadd ban 10.201.1.66 timeout 0\n"


def _ok(proc: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert proc.returncode == 0, f"{proc.args}: {proc.stdout}{proc.stderr}"
    return proc


def test_agent_deletes_expired_set_elements(rig, monkeypatch):
    """A ban that ran out is deleted by the agent's set collector (as the kernel's ipset gc
    deletes it), without anyone listing the set; permanent elements stay."""
    dut = rig["dut"]
    monkeypatch.setenv("EBPFW_SET_GC_SECONDS", "1")
    rig["rules"].write_text(SET_RULES)
    sets = rig["tmp"] / "ban.ipset"
    sets.write_text(SETS)
    _ok(ebpfw(dut, "apply", str(rig["rules"]), "--sets", str(sets), "--iface", "ag0"))
    _ok(ebpfw(dut, "set", "add", "ban", "10.201.1.77", "timeout", "1"))
    _ok(ebpfw(dut, "set", "add", "ban", "10.201.1.78", "timeout", "600"))
    agent = rig["agent"]().start()                     # applies SET_RULES against the loaded sets
    deadline = time.monotonic() + 20
    while "set ban: 1 expired element deleted" not in agent.text() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert "set ban: 1 expired element deleted" in agent.text(), agent.text()
    listed = _ok(ebpfw(dut, "set", "list", "ban")).stdout
    assert "add ban 10.201.1.66" in listed and "add ban 10.201.1.78 timeout" in listed, listed
    assert "10.201.1.77" not in listed
    assert agent.text().count("expired element") == 1, agent.text()   # nothing left to delete
