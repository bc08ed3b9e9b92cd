"""Upgrade over old pins: set maps pinned by a version without timeouts (4-byte element value,
56-byte definition record) or by one with timeouts but without nomatch (8-byte value: the
expiry alone) are migrated by the next `ebpfw apply` (ebpfw/sets.py
migrate_pins/restore_migrated): the sets and their elements survive (permanent, or with the
expiry they had; expired ones are not listed) and packets still see them; the old pins are
gone afterwards."""

from __future__ import annotations

import struct
import sys

import pytest

from netns import run_in, veth
from test_cli_kernel import CONNECT, ebpfw, ok  # noqa: F401

pytestmark = pytest.mark.kernel

DUT, CLIENT = "10.205.1.1", "10.205.1.2"
RULES = """*filter
:INPUT ACCEPT [0:0]
:FORWARD DROP [0:0]
:OUTPUT ACCEPT [0:0]
-A INPUT -p tcp -m set --match-set old src -j DROP
-A INPUT -p tcp -j ACCEPT
COMMIT
"""

OLD_MAPS = r"""
struct k { u32 prefixlen; u32 id; u32 pp; u32 addr; };
struct d { char name[32]; u32 type; u32 count; u32 maxelem; u32 first; u32 last; u32 hashsize; };
BPF_TABLE_PINNED("lpm_trie", struct k, u32, ebpfw_sets, 1024, "%s", BPF_F_NO_PREALLOC);
BPF_TABLE_PINNED("array", u32, struct d, ebpfw_setdef, 256, "%s");
"""
# the layout with timeouts (expiry in a u64 value, the definition with timeout and flags)
OLD_MAPS_8 = r"""
struct k { u32 prefixlen; u32 id; u32 pp; u32 addr; };
struct d { char name[32]; u32 type; u32 count; u32 maxelem; u32 first; u32 last; u32 hashsize;
           u32 timeout; u32 flags; };
BPF_TABLE_PINNED("lpm_trie", struct k, u64, ebpfw_sets, 1024, "%s", BPF_F_NO_PREALLOC);
BPF_TABLE_PINNED("array", u32, struct d, ebpfw_setdef, 256, "%s");
"""


def value_size(path) -> int:
    import os
    from ebpfw.datapath import bpfsys
    fd = bpfsys.get(str(path))
    try:
        return bpfsys.map_info(fd).value_size
    finally:
        os.close(fd)


def key(addr: str) -> bytes:
    return struct.pack("<I", 96) + struct.pack(">II", 1, 0) + bytes(int(x) for x in addr.split("."))


@pytest.mark.parametrize("layout", [4, 8])
def test_apply_over_old_set_pins_keeps_the_sets(netns, ebpfw_env, tmp_path, layout):
    from bcc import BPF
    from ebpfw.datapath import bpfsys
    from ebpfw.datapath.abi import SET_VAL
    from ebpfw.sets import now_ns
    from pathlib import Path
    client, dut = netns("stu"), netns("stv")
    veth(client, client + "c", dut, dut + "d", f"{CLIENT}/24", f"{DUT}/24")
    pins = Path(run_in(dut, [sys.executable, "-c", "from ebpfw import state; print(state.pin_dir(create=True))"]).stdout.strip())
    # the old layout, pinned where ebpfw keeps its sets, with set 'old' (id 1) holding CLIENT
    b = BPF(text=((OLD_MAPS if layout == 4 else OLD_MAPS_8) % (pins / "sets", pins / "set_defs")).encode())
    trie, defs = b.get_table(b"ebpfw_sets").get_fd(), b.get_table(b"ebpfw_setdef").get_fd()
    if layout == 4:
        bpfsys.update(trie, key(CLIENT), struct.pack("<I", 1))
        bpfsys.update(defs, struct.pack("<I", 1), struct.pack("<32sIIIIII", b"old", 1, 1, 65536, 0, 0, 1024))
    else:                   # `create old hash:ip timeout 0`: CLIENT permanent, one live, one expired
        now = now_ns()
        bpfsys.update(trie, key(CLIENT), struct.pack("<Q", 0))
        bpfsys.update(trie, key("10.205.9.9"), struct.pack("<Q", now + 600 * 10**9))
        bpfsys.update(trie, key("10.205.9.8"), struct.pack("<Q", now - 1))
        bpfsys.update(defs, struct.pack("<I", 1), struct.pack("<32sIIIIIIII", b"old", 1, 3, 65536, 0, 0, 1024, 0, 1))
    del b
    assert value_size(pins / "sets") == layout
    rules = tmp_path / "r.v4"
    rules.write_text(RULES)
    try:
        ok(ebpfw(dut, "apply", str(rules), "--iface", dut + "d", "--mode", "xdp-generic"))
        listed = ok(ebpfw(dut, "set", "list", "old")).stdout
        if layout == 4:
            assert "create old hash:ip family inet hashsize 1024 maxelem 65536\n" in listed, listed
            assert f"add old {CLIENT}\n" in listed, listed
        else:
            assert "create old hash:ip family inet hashsize 1024 maxelem 65536 timeout 0\n" in listed, listed
            adds = [line for line in listed.splitlines() if line.startswith("add ")]
            assert adds[0] == f"add old {CLIENT} timeout 0" and adds[1].startswith("add old 10.205.9.9 timeout 5"), adds
            assert len(adds) == 2 and 590 <= int(adds[1].split()[-1]) <= 600, adds
        assert run_in(client, [sys.executable, "-c", CONNECT, DUT, "22"], timeout=30).stdout.strip() == "timeout"
        ok(ebpfw(dut, "set", "del", "old", CLIENT))
        assert run_in(client, [sys.executable, "-c", CONNECT, DUT, "22"], timeout=30).stdout.strip() == "refused"
        assert value_size(pins / "sets") == SET_VAL.size
        assert not (pins / "sets_old").exists() and not (pins / "set_defs_old").exists()
    finally:
        ebpfw(dut, "detach", timeout=60)
