"""`make install` into temporary prefixes gives a working ebpfw: the installed wrapper runs the
agent in a test namespace exactly as the systemd unit's ExecStart would (variables from the
installed /etc/default file, the installed ebpfw.toml edited to name a test interface), it says
READY=1 like Type=notify wants, ExecReload's SIGHUP re-applies, stop leaves it enforcing."""

from __future__ import annotations

import configparser
import json
import os
import shlex
import socket
import subprocess
from pathlib import Path

import pytest

from netns import nsenter_argv, run_in

pytestmark = pytest.mark.kernel
REPO = Path(__file__).resolve().parents[2]


def _exec_line(unit: Path, key: str, env: dict) -> list[str]:
    """Expand an Exec line the way systemd does: ${VAR} is one word, $VAR splits on spaces."""
    cp = configparser.ConfigParser(strict=False, interpolation=None, delimiters=("=",))
    cp.optionxform = str
    cp.read_string(unit.read_text())
    argv = []
    for word in shlex.split(cp["Service"][key]):
        if word.startswith("${") and word.endswith("}"):
            argv.append(env.get(word[2:-1], ""))
        elif word.startswith("$"):
            argv.extend(env.get(word[1:], "").split())
        else:
            argv.append(word)
    return argv


def _read_default(path: Path) -> dict:
    env = {}
    for line in path.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            k, v = line.split("=", 1)
            env[k] = shlex.split(v)[0] if v.strip() else ""
    return env


def test_make_install_then_run_like_the_unit(tmp_path, netns, ebpfw_env):
    inst = tmp_path / "inst"
    dirs = {"PREFIX": inst / "opt", "SBINDIR": inst / "sbin", "MANDIR": inst / "man",
            "UNITDIR": inst / "unit", "CONFDIR": inst / "etc/ebpfw", "DEFAULTS": inst / "etc/default/ebpfw"}
    make = subprocess.run(["make", "-C", str(REPO), "install"] + [f"{k}={v}" for k, v in dirs.items()],
                          capture_output=True, text=True, timeout=600)
    assert make.returncode == 0, make.stdout[-3000:] + make.stderr[-3000:]
    wrapper = dirs["SBINDIR"] / "ebpfw"
    assert os.access(wrapper, os.X_OK)
    assert (dirs["UNITDIR"] / "ebpfw.service").read_text() == (REPO / "systemd/ebpfw.service").read_text()
    for page in REPO.glob("man/*.[58]"):
        assert (dirs["MANDIR"] / f"man{page.suffix[1:]}" / page.name).exists()

    assert (dirs["CONFDIR"] / "ebpfw.toml").read_text() == (REPO / "etc/ebpfw.toml.example").read_text()

    ns_a, if_a, _ns_b, _if_b = netns.pair("in")
    # the admin points /etc/default/ebpfw at the configuration and edits it
    config = dirs["CONFDIR"] / "ebpfw.toml"
    config.write_text(config.read_text().replace("/etc/ebpfw/rules.v4", str(dirs["CONFDIR"] / "rules.v4"))
                      .replace('"eth*",', f'"{if_a}",'))
    defaults = dirs["DEFAULTS"]
    defaults.write_text(defaults.read_text().replace("/etc/ebpfw/ebpfw.toml", str(config)))
    env = _read_default(defaults)
    unit = dirs["UNITDIR"] / "ebpfw.service"
    start = _exec_line(unit, "ExecStart", env)
    assert start == ["/usr/local/sbin/ebpfw", "agent"]
    start[0] = str(wrapper)
    check = run_in(ns_a, [str(wrapper), "agent", "--check"], env=dict(os.environ, **env), timeout=60)
    assert f"interfaces matching now: {if_a} (auto)" in check.stdout, check.stdout + check.stderr

    # Type=notify: systemd waits for READY=1 on $NOTIFY_SOCKET
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(tmp_path / "notify"))
    notify.settimeout(180)
    log = open(tmp_path / "agent.log", "w")
    agent = subprocess.Popen(nsenter_argv(ns_a) + start, stdout=log, stderr=log,
                             env=dict(os.environ, NOTIFY_SOCKET=str(tmp_path / "notify"), **env))
    try:
        def wait_ready() -> None:
            while "READY=1" not in notify.recv(4096).decode().splitlines():
                pass

        wait_ready()
        ids = _ids(netns, ns_a, if_a)
        assert (ids["xdp"] or ids["tc_ingress"]) and ids["tc_egress"], ids

        reload = _exec_line(unit, "ExecReload", dict(env, MAINPID=str(agent.pid)))
        assert reload == ["/bin/kill", "-HUP", str(agent.pid)]
        subprocess.run(reload, check=True, timeout=10)
        wait_ready()
        assert "(reload)" in (tmp_path / "agent.log").read_text()
        # stop (SIGTERM): there is no ExecStop; the programs stay attached until an explicit detach
        agent.terminate()
        assert agent.wait(timeout=60) == 0
    finally:
        if agent.poll() is None:
            agent.kill()
            agent.wait(timeout=30)
        log.close()
        notify.close()
    assert _ids(netns, ns_a, if_a) == ids
    assert "removed" in run_in(ns_a, [str(wrapper), "detach"], timeout=60).stdout


def _ids(netns, ns: str, dev: str) -> dict:
    return json.loads(netns.python(ns, f"import json\nfrom ebpfw.netlink import attached_prog_ids, ifindex\n"
                                   f"print(json.dumps(attached_prog_ids(ifindex({dev!r}))))").stdout)
