"""ebpfw.ipset: `ipset save` text <-> typed sets. Unit tests (no root): the IR of every element
form, normalisation, exact FILE:LINE refusals, round trips; and an oracle test (root, ipset
installed): `ipset restore` of our printed text inside a throwaway network namespace, then
`ipset save` must give back the same sets (elements in any order, timeouts counting down) and
our printer must reproduce `ipset save`'s own text line for line."""

from __future__ import annotations

import dataclasses
import os
import secrets
import shutil
import subprocess

import pytest

from ebpfw.errors import RulesetError
from ebpfw.ipset import IpSet, IpSetEntry, parse_ipsets, save_ipsets
from ebpfw.ruleset import Pos

CORPUS = """\
# what ipset save prints, plus the shorter forms people write for ipset restore
create blk hash:ip family inet hashsize 1024 maxelem 65536
add blk 192.0.2.1
add blk 192.0.2.4/30
add blk 192.0.2.10-192.0.2.12
create nets hash:net hashsize 100
add nets 10.0.0.0/8
add nets 10.1.0.0/16 nomatch
add nets 192.168.1.1
add nets 10.2.0.0-10.2.0.5
add nets 172.16.5.5/12
create svc hash:ip,port timeout 300
add svc 192.0.2.1,tcp:80 timeout 100
add svc 192.0.2.2,udp:53
add svc 192.0.2.3,80
add svc 192.0.2.5,6:1
add svc 192.0.2.6,udp:domain timeout 0
add svc 192.0.2.7,sctp:1-3
add svc 192.0.2.8,udplite:9
create netsvc hash:net,port family inet hashsize 64 maxelem 100
add netsvc 10.0.0.0/24,tcp:443
add netsvc 10.0.1.0/24,https
add netsvc 10.0.2.0/24,tcp:ftp-data
create tnets hash:net timeout 600 maxelem 10
add tnets 10.9.0.0/16 timeout 5 nomatch
add tnets 10.9.1.0/24
create ports bitmap:port range 1000-2000 timeout 60
add ports 1500 timeout 0
add ports 1000-1002
add ports tcp:1003
create low bitmap:port range 0-1023
add low ssh
add low udp:53
create empty hash:ip family inet hashsize 1024 maxelem 65536 bucketsize 12 initval 0x0a0b0c0d
"""


def sets_of(text: str, filename: str = "s.sets") -> dict[str, IpSet]:
    return parse_ipsets(text, filename)


def problems_of(text: str) -> list[str]:
    with pytest.raises(RulesetError) as exc:
        parse_ipsets(text, "s.sets")
    return exc.value.problems


def ip(text: str) -> int:
    a, b, c, d = (int(x) for x in text.split("."))
    return (a << 24) | (b << 16) | (c << 8) | d


def test_corpus_ir():
    s = sets_of(CORPUS)
    assert list(s) == ["blk", "nets", "svc", "netsvc", "tnets", "ports", "low", "empty"]
    blk = s["blk"]
    assert (blk.type, blk.family, blk.hashsize, blk.maxelem, blk.timeout, blk.pos) == \
        ("hash:ip", "inet", 1024, 65536, None, Pos("s.sets", 2))
    assert [e.addr for e in blk.entries] == [ip("192.0.2.1")] + [ip("192.0.2.4") + i for i in range(4)] + \
        [ip("192.0.2.10"), ip("192.0.2.11"), ip("192.0.2.12")]
    assert blk.entries[1].pos == Pos("s.sets", 4)
    nets = s["nets"]
    assert nets.hashsize == 128                    # rounded up to a power of two
    assert [(e.addr, e.prefixlen, e.nomatch) for e in nets.entries] == [
        (ip("10.0.0.0"), 8, False), (ip("10.1.0.0"), 16, True), (ip("192.168.1.1"), 32, False),
        (ip("10.2.0.0"), 30, False), (ip("10.2.0.4"), 31, False), (ip("172.16.0.0"), 12, False)]
    svc = s["svc"]
    assert svc.timeout == 300 and svc.dimension == 2
    assert [(e.proto, e.port, e.timeout) for e in svc.entries] == [
        (6, 80, 100), (17, 53, 300), (6, 80, 300), (6, 1, 300), (17, 53, 0), (132, 1, 300), (132, 2, 300),
        (132, 3, 300), (136, 9, 300)]
    assert [(e.prefixlen, e.port) for e in s["netsvc"].entries] == [(24, 443), (24, 443), (24, 20)]
    assert s["netsvc"].hashsize == 64 and s["netsvc"].maxelem == 100
    ports = s["ports"]
    assert (ports.range, ports.timeout, ports.hashsize, ports.maxelem) == ((1000, 2000), 60, None, None)
    assert [(e.port, e.timeout, e.proto, e.addr) for e in ports.entries] == [
        (1500, 0, None, None), (1000, 60, None, None), (1001, 60, None, None), (1002, 60, None, None),
        (1003, 60, None, None)]
    assert [e.port for e in s["low"].entries] == [22, 53]
    assert (s["empty"].bucketsize, s["empty"].initval, s["empty"].entries) == (12, 0x0A0B0C0D, ())


def test_printer_text():
    text = save_ipsets(sets_of(CORPUS))
    lines = text.splitlines()
    assert lines[0] == "create blk hash:ip family inet hashsize 1024 maxelem 65536"
    assert "create nets hash:net family inet hashsize 128 maxelem 65536" in lines
    assert "add nets 10.1.0.0/16 nomatch" in lines and "add nets 192.168.1.1" in lines
    assert "create svc hash:ip,port family inet hashsize 1024 maxelem 65536 timeout 300" in lines
    assert "add svc 192.0.2.5,tcp:1 timeout 300" in lines and "add svc 192.0.2.8,udplite:9 timeout 300" in lines
    assert "add tnets 10.9.0.0/16 timeout 5 nomatch" in lines
    assert "create ports bitmap:port range 1000-2000 timeout 60" in lines and "add ports 1003 timeout 60" in lines
    assert lines[-1] == ("create empty hash:ip family inet hashsize 1024 maxelem 65536 bucketsize 12 "
                         "initval 0x0a0b0c0d")


def test_round_trip():
    s = sets_of(CORPUS)
    text = save_ipsets(s)
    again = parse_ipsets(text, "again")
    assert {k: dataclasses.replace(v, pos=Pos("", 0)) for k, v in again.items()} == \
        {k: dataclasses.replace(v, pos=Pos("", 0)) for k, v in s.items()}
    assert save_ipsets(again) == text
    assert save_ipsets(list(s.values())) == text


def test_empty_and_comments():
    assert parse_ipsets("", "e") == {}
    assert parse_ipsets("# only a comment\n\n", "e") == {}


def test_hand_built_ir_prints():
    st = IpSet("x", "hash:net,port", Pos("h", 1),
               entries=(IpSetEntry(addr=ip("10.0.0.0"), prefixlen=8, proto=17, port=53),))
    assert save_ipsets([st]) == ("create x hash:net,port family inet hashsize 1024 maxelem 65536\n"
                                 "add x 10.0.0.0/8,udp:53\n")


NEGATIVE = [
    ("create a hash:ip family inet6", "only IPv4 sets are supported, expected family inet, found 'inet6'"),
    ("create a hash:mac", "set type not supported, expected hash:ip, hash:net, hash:ip,port, hash:net,port or "
     "bitmap:port, found 'hash:mac'"),
    ("create a hash:ip counters", "create option 'counters' is not supported yet, expected family, hashsize, "
     "maxelem, timeout, range, bucketsize, initval, found 'counters'"),
    ("create a hash:ip netmask 24", "create option 'netmask' is not supported yet, expected family, hashsize, "
     "maxelem, timeout, range, bucketsize, initval, found 'netmask'"),
    ("create a hash:ip bogus 1", "unknown create option, expected family, hashsize, maxelem, timeout, range, "
     "bucketsize, initval, found 'bogus'"),
    ("create a hash:ip range 1-2", "option 'range' does not apply to hash:ip, expected range and timeout for "
     "bitmap:port, no range for hash types, found 'range'"),
    ("create a bitmap:port", "bitmap:port needs a port range, expected 'range FIRST-LAST', found "
     "'create a bitmap:port'"),
    ("create a bitmap:port range 9-1", "bad port range, expected FIRST-LAST with FIRST <= LAST, found '9-1'"),
    ("create a hash:ip maxelem x", "bad maxelem, expected a number 0-4294967295, found 'x'"),
    ("create a hash:ip timeout", "option 'timeout' needs a value, expected 'timeout VALUE', found 'timeout'"),
    ("create " + "n" * 32 + " hash:ip", "bad set name, expected 1-31 characters without quotes, found '"
     + "n" * 32 + "'"),
    ("create a hash:ip\ncreate a hash:net", "set 'a' created twice (first at line 1), expected one create "
     "line per set, found 'create a'"),
    ("add a 1.2.3.4", "add to set 'a' that is not created before, expected 'create a TYPE' first, found 'add a'"),
    ("destroy a", "command 'destroy' is not allowed in a set file, expected 'create NAME TYPE ...' or "
     "'add NAME ELEMENT ...' (ipset save format), found 'destroy'"),
    ("create a hash:ip\nadd a 1.2.3", "bad IPv4 address, expected a dotted quad such as 192.0.2.1, found "
     "'1.2.3'"),
    ("create a hash:ip\nadd a 1.2.3.4\nadd a 1.2.3.4", "element already in the set (ipset restore refuses it), "
     "expected each element once, found '1.2.3.4'"),
    ("create a hash:ip\nadd a 1.2.3.4 timeout 5", "element timeout in set 'a' created without timeout, "
     "expected 'timeout N' on the create line first, found 'timeout'"),
    ("create a hash:ip\nadd a 1.2.3.4 nomatch", "element option 'nomatch' is not supported, expected "
     "'timeout N' (or nomatch in hash:net sets), found 'nomatch'"),
    ("create a hash:ip\nadd a 10.0.0.0/8", "network of more than 65536 addresses in a hash:ip set, expected a "
     "smaller network (or a hash:net set), found '10.0.0.0/8'"),
    ("create a hash:net\nadd a 0.0.0.0/0", "prefix length 0 (ipset refuses it), expected a prefix length "
     "1-32, found '0.0.0.0/0'"),
    ("create a hash:net\nadd a 10.0.0.9-10.0.0.1", "reversed address range, expected FIRST-LAST with FIRST <= "
     "LAST, found '10.0.0.9-10.0.0.1'"),
    ("create a hash:ip,port\nadd a 1.2.3.4", "element does not fit a hash:ip,port set, expected "
     "ADDRESS,[PROTO:]PORT, found '1.2.3.4'"),
    ("create a hash:ip\nadd a 1.2.3.4,80", "element does not fit a hash:ip set, expected one address or "
     "network, found '1.2.3.4,80'"),
    ("create a hash:ip,port\nadd a 1.2.3.4,icmp:ping", "icmp elements are not supported yet, expected tcp:, "
     "udp:, sctp: or udplite: PORT, found 'icmp'"),
    ("create a hash:ip,port\nadd a 1.2.3.4,gre:1", "unknown protocol in element, expected tcp, udp, sctp or "
     "udplite, found 'gre'"),
    ("create a hash:ip,port\nadd a 1.2.3.4,udp:http", "bad port, expected a number 0-65535 or a udp service "
     "name, found 'http'"),
    ("create a bitmap:port range 10-20\nadd a 21", "port outside the set's range 10-20, expected a port inside "
     "the range, found '21'"),
    ("create a hash:ip maxelem 1\nadd a 1.1.1.1\nadd a 1.1.1.2", "set 'a' is full (maxelem 1), expected a "
     "larger maxelem, found '1.1.1.2'"),
    ("create a hash:ip\nadd a 1.1.1.1 packets 5", "element option 'packets' is not supported, expected "
     "'timeout N' (or nomatch in hash:net sets), found 'packets'"),
]


@pytest.mark.parametrize("text,message", NEGATIVE, ids=[c[0][:40] for c in NEGATIVE])
def test_refusals(text, message):
    problems = problems_of(text + "\n")
    line = text.count("\n") + 1
    assert problems == [f"s.sets:{line}: {message}"]


def test_all_problems_collected():
    problems = problems_of("create a hash:ip\nadd a x\nadd b 1.1.1.1\ncreate c hash:ip\nadd a 1.1.1.1\nbogus\n")
    assert [p.split(":")[1] for p in problems] == ["2", "3", "6"]
    assert str(pytest.raises(RulesetError, parse_ipsets, "bogus\n", "f").value) == "1 problem in f"


# --- oracle: the kernel's own ipset ------------------------------------------------------------
def _ns_run(ns: str, *cmd: str, text: str = "") -> str:
    r = subprocess.run(["ip", "netns", "exec", ns, *cmd], input=text.encode(), capture_output=True, timeout=60)
    assert r.returncode == 0, f"{' '.join(cmd)} failed:\n{r.stderr.decode()}\n--- input\n{text}"
    return r.stdout.decode()


@pytest.fixture
def ipset_ns():
    if os.geteuid() != 0:
        pytest.skip("ipset oracle: needs root (creates a network namespace)")
    if not shutil.which("ipset") or not shutil.which("ip"):
        pytest.skip("ipset oracle: ipset (apt-get install ipset) or ip not installed")
    name = f"ebpfw-ipset-{os.getpid()}-{secrets.token_hex(3)}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


def _comparable(st: IpSet) -> tuple:
    """A set without what the kernel chooses (bucketsize, initval) or counts down (timeouts),
    elements as a sorted list."""
    entries = sorted((e.addr or 0, e.prefixlen, e.proto or 0, e.port or 0, e.nomatch, e.timeout is None,
                      e.timeout == 0) for e in st.entries)
    return (st.name, st.type, st.family, st.hashsize, st.maxelem, st.timeout, st.range, entries)


@pytest.mark.kernel
def test_ipset_oracle(ipset_ns):
    ours = sets_of(CORPUS)
    printed = save_ipsets(ours)
    _ns_run(ipset_ns, "ipset", "restore", text=printed)
    kernel_text = _ns_run(ipset_ns, "ipset", "save")
    kernel = parse_ipsets(kernel_text, "ipset-save")
    # 1. the kernel kept exactly our sets and elements
    assert list(kernel) == list(ours)
    for name in ours:
        assert _comparable(kernel[name]) == _comparable(ours[name]), name
        for k, o in zip(sorted(kernel[name].entries, key=lambda e: (e.addr or 0, e.prefixlen, e.port or 0, e.proto or 0)),
                        sorted(ours[name].entries, key=lambda e: (e.addr or 0, e.prefixlen, e.port or 0, e.proto or 0))):
            if o.timeout:                        # counting down since the restore
                assert o.timeout - 10 <= (k.timeout or 0) <= o.timeout
        if ours[name].type != "bitmap:port":
            assert kernel[name].bucketsize is not None and kernel[name].initval is not None
    assert ours["empty"].initval == kernel["empty"].initval
    # 2. our printer reproduces ipset save's text (lines; element order is the kernel's hash order)
    assert sorted(save_ipsets(kernel).splitlines()) == sorted(kernel_text.splitlines())
    # 3. what ipset save printed restores again unchanged
    _ns_run(ipset_ns, "ipset", "destroy")
    _ns_run(ipset_ns, "ipset", "restore", text=save_ipsets(kernel))
    again = parse_ipsets(_ns_run(ipset_ns, "ipset", "save"), "again")
    assert [(s.name, s.initval, s.bucketsize) for s in again.values()] == \
        [(s.name, s.initval, s.bucketsize) for s in kernel.values()]
