"""`make install` into temporary prefixes gives a working ebpfw: the installed wrapper applies
the example ruleset in a test namespace exactly as the systemd unit's ExecStart would run it
(variables from the installed /etc/default file), reload re-applies, stop leaves it enforcing."""

from __future__ import annotations

import configparser
import json
import os
import shlex
import subprocess
from pathlib import Path

import pytest

from netns import run_in

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

    ns_a, if_a, _ns_b, _if_b = netns.pair("in")
    # the admin edits /etc/default/ebpfw; the unit's ExecStart then points at our copies
    defaults = dirs["DEFAULTS"]
    defaults.write_text(defaults.read_text().replace('EBPFW_IFACE_ARGS=""', f'EBPFW_IFACE_ARGS="--iface {if_a}"')
                        .replace("/etc/ebpfw/rules.v4", str(dirs["CONFDIR"] / "rules.v4")))
    env = _read_default(defaults)
    unit = dirs["UNITDIR"] / "ebpfw.service"
    start = _exec_line(unit, "ExecStart", env)
    assert start[0] == "/usr/local/sbin/ebpfw"
    start[0] = str(wrapper)
    assert start[1:] == ["apply", str(dirs["CONFDIR"] / "rules.v4"), "--iface", if_a]

    out = run_in(ns_a, start, timeout=180)
    assert f"on {if_a} (" in out.stdout
    ids = json.loads(netns.python(ns_a, f"import json\nfrom ebpfw.netlink import attached_prog_ids, ifindex\n"
                                  f"print(json.dumps(attached_prog_ids(ifindex({if_a!r}))))").stdout)
    assert (ids["xdp"] or ids["tc_ingress"]) and ids["tc_egress"], ids

    reload = _exec_line(unit, "ExecReload", env)
    reload[0] = str(wrapper)
    assert "applied" in run_in(ns_a, reload, timeout=180).stdout
    # there is no ExecStop: the programs stay attached until an explicit detach
    ids = json.loads(netns.python(ns_a, f"import json\nfrom ebpfw.netlink import attached_prog_ids, ifindex\n"
                                  f"print(json.dumps(attached_prog_ids(ifindex({if_a!r}))))").stdout)
    assert (ids["xdp"] or ids["tc_ingress"]) and ids["tc_egress"], ids
    assert "removed" in run_in(ns_a, [str(wrapper), "detach"], timeout=60).stdout

