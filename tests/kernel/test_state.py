"""ebpfw.state on a real bpffs and in real namespaces: pins and state files of two network
namespaces never collide under shared roots; pins and the pin dir are removed cleanly."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from netns import nsenter_argv

pytestmark = pytest.mark.kernel

SCRIPT = """
import json, os
from bcc import BPF
from ebpfw import state
b = BPF(text="BPF_ARRAY(ebpfw_t, u64, 4);")
d = state.pin_dir(create=True)
t = b["ebpfw_t"]
t[t.Key(0)] = t.Leaf(int(os.environ["VALUE"]))
from bcc.libbcc import lib
assert lib.bpf_obj_pin(t.map_fd, str(d / "ebpfw_t").encode()) == 0
state.write_json_atomic("applied.json", {"value": int(os.environ["VALUE"])})
print(json.dumps({"root": str(state.bpffs_root()), "pin_dir": str(d), "state_dir": str(state.state_dir()),
                  "pins": sorted(os.listdir(d))}))
"""

READ = """
import json, ctypes
from bcc.libbcc import lib
from ebpfw import state
fd = lib.bpf_obj_get(str(state.pin_path("ebpfw_t")).encode())
assert fd >= 0
key, val = ctypes.c_uint32(0), ctypes.c_uint64(0)
assert lib.bpf_lookup_elem(fd, ctypes.byref(key), ctypes.byref(val)) == 0
print(json.dumps({"value": val.value, "json": state.read_json("applied.json")}))
"""

CLEAN = """
import json
from ebpfw import state
removed = state.remove_pin_dir()
print(json.dumps({"removed": removed, "exists": state.pin_dir().exists(), "again": state.remove_pin_dir()}))
"""


def test_two_namespaces_share_roots_without_colliding(netns, ebpfw_env):
    bpffs, state_root = ebpfw_env
    ns1, ns2 = netns("st"), netns("st")
    r1 = json.loads(netns.python(ns1, SCRIPT, env={"VALUE": "111"}).stdout)
    r2 = json.loads(netns.python(ns2, SCRIPT, env={"VALUE": "222"}).stdout)
    assert r1["root"] == r2["root"] == str(bpffs)
    assert r1["pin_dir"] != r2["pin_dir"] and r1["state_dir"] != r2["state_dir"]
    for r in (r1, r2):
        assert r["pin_dir"].startswith(f"{bpffs}/ebpfw/ns")
        assert r["state_dir"].startswith(f"{state_root}/ns")
        assert r["pins"] == ["ebpfw_t"]
    # the pinned maps outlive the processes that made them, each with its own value
    assert json.loads(netns.python(ns1, READ).stdout) == {"value": 111, "json": {"value": 111}}
    assert json.loads(netns.python(ns2, READ).stdout) == {"value": 222, "json": {"value": 222}}
    assert json.loads(netns.python(ns1, CLEAN).stdout) == {"removed": True, "exists": False, "again": False}
    assert os.path.exists(r2["pin_dir"] + "/ebpfw_t")  # the other namespace's pins stay
    assert json.loads(netns.python(ns2, CLEAN).stdout)["removed"] is True
    assert os.listdir(f"{bpffs}/ebpfw") == []


def test_apply_locks_are_per_namespace(netns, ebpfw_env):
    ns1, ns2 = netns("sl"), netns("sl")
    hold = ("import sys\nfrom ebpfw.state import ApplyLock\n"
            "with ApplyLock(timeout=5):\n    print('locked', flush=True)\n    sys.stdin.readline()\n")
    child = subprocess.Popen(nsenter_argv(ns1) + [sys.executable, "-c", hold], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True, env=dict(os.environ))
    try:
        assert child.stdout.readline().strip() == "locked"
        probe = ("from ebpfw.state import ApplyLock\nfrom ebpfw.errors import EbpfwError\n"
                 "try:\n    ApplyLock(timeout=0.2).acquire(); print('free')\n"
                 "except EbpfwError as e:\n    print(e)\n")
        assert netns.python(ns2, probe).stdout.strip() == "free"
        assert netns.python(ns1, probe).stdout.strip() == f"another ebpfw apply is running (pid {child.pid})"
    finally:
        child.stdin.close()
        child.wait(timeout=10)


def test_bpffs_root_accepts_a_real_bpffs(ebpfw_env):
    from ebpfw import state
    bpffs, _ = ebpfw_env
    assert state.bpffs_root() == bpffs
    d = state.pin_dir(create=True)
    assert d.is_dir() and d.parent == bpffs / "ebpfw"
