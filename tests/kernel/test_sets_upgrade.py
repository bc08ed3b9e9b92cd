"""Upgrade over old pins: set maps pinned by a version without timeouts (4-byte element value,
56-byte definition record) are migrated by the next `ebpfw apply` (ebpfw/sets.py
migrate_pins/restore_migrated): the sets and their elements survive, permanent, and packets
still see them; the old pins are gone afterwards."""

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


def value_size(path) -> int:
    import os
    from ebpfw.datapath import bpfsys
    fd = bpfsys.get(str(path))
    try:
        return bpfsys.map_info(fd).value_size
    finally:
        os.close(fd)


def test_apply_over_old_set_pins_keeps_the_sets(netns, ebpfw_env, tmp_path):
    from bcc import BPF
    from ebpfw.datapath import bpfsys
    from pathlib import Path
    client, dut = netns("stu"), netns("stv")
    veth(client, client + "c", dut, dut + "d", f"{CLIENT}/24", f"{DUT}/24")
    pins = Path(run_in(dut, [sys.executable, "-c", "from ebpfw import state; print(state.pin_dir(create=True))"]).stdout.strip())
    # the old layout, pinned where ebpfw keeps its sets, with set 'old' (id 1) holding CLIENT
    b = BPF(text=(OLD_MAPS % (pins / "sets", pins / "set_defs")).encode())
    trie, defs = b.get_table(b"ebpfw_sets").get_fd(), b.get_table(b"ebpfw_setdef").get_fd()
    addr = bytes(int(x) for x in CLIENT.split("."))
    bpfsys.update(trie, struct.pack("<I", 96) + struct.pack(">II", 1, 0) + addr, struct.pack("<I", 1))
    bpfsys.update(defs, struct.pack("<I", 1), struct.pack("<32sIIIIII", b"old", 1, 1, 65536, 0, 0, 1024))
    del b
    assert value_size(pins / "sets") == 4
    rules = tmp_path / "r.v4"
    rules.write_text(RULES)
    try:
        ok(ebpfw(dut, "apply", str(rules), "--iface", dut + "d", "--mode", "xdp-generic"))
        listed = ok(ebpfw(dut, "set", "list", "old")).stdout
        assert "create old hash:ip family inet hashsize 1024 maxelem 65536\n" in listed, listed
        assert f"add old {CLIENT}\n" in listed, listed
        assert run_in(client, [sys.executable, "-c", CONNECT, DUT, "22"], timeout=30).stdout.strip() == "timeout"
        ok(ebpfw(dut, "set", "del", "old", CLIENT))
        assert run_in(client, [sys.executable, "-c", CONNECT, DUT, "22"], timeout=30).stdout.strip() == "refused"
        assert value_size(pins / "sets") == 8
        assert not (pins / "sets_old").exists() and not (pins / "set_defs_old").exists()
    finally:
        ebpfw(dut, "detach", timeout=60)
