"""ipset timeouts in the datapath (BPF_PROG_TEST_RUN through dp_worker): a set created with
`timeout D` gives each element D seconds unless the add says `timeout N`, `timeout 0` never
expires, an expired element does not match and is not listed (ip_set_timeout.h), and the
seconds a `--sets` file gives (ipset save prints the seconds left) count from the load."""

from __future__ import annotations

import time

import pytest

from reference import TCP, Pkt
from test_datapath import XDP_DROP, dut, ip, judge  # noqa: F401  (dut is the shared fixture)

pytestmark = pytest.mark.kernel

SETS = """create f2b-sshd hash:ip family inet hashsize 1024 maxelem 65536 timeout 0 bucketsize 12 initval 0x35fee0d7
add f2b-sshd 10.9.0.66 timeout 0
add f2b-sshd 10.9.0.67 timeout 2
create short hash:ip,port family inet hashsize 1024 maxelem 3 timeout 2
create ports bitmap:port range 1000-2000 timeout 2
"""

RULES = """*filter
:INPUT ACCEPT [0:0]
:FORWARD DROP [0:0]
:OUTPUT ACCEPT [0:0]
-A INPUT -p tcp -m multiport --dports 22 -m set --match-set f2b-sshd src -j DROP
-A INPUT -p tcp -m set --match-set short src,dst -j DROP
-A INPUT -p tcp -m set --match-set ports dst -j DROP
COMMIT
"""
ME = "10.9.0.1"


def dropped(w, links, src: str, dport: int = 22) -> bool:
    got = judge(w, links, "INPUT", Pkt(ip(src), ip(ME), TCP, dport=dport, iif="va"))
    assert "error" not in got, got
    return got["ret"] == XDP_DROP


def listed(w, name: str) -> dict[str, str]:
    """element -> 'timeout N' text of `set list` (ipset save format)."""
    out = {}
    for line in w.call(op="set_list", name=name)["text"].splitlines():
        if line.startswith("add "):
            words = line.split()
            out[words[2]] = " ".join(words[3:])
    return out


def add(w, name: str, element: str) -> dict:
    r = w.call(op="set_add", name=name, element=element)
    assert "error" not in r, r
    return r


def wait_past(t0: float, seconds: float) -> None:
    """Sleep until `seconds` have passed since t0 (monotonic), plus a margin for the clock."""
    left = t0 + seconds + 0.2 - time.monotonic()
    if left > 0:
        time.sleep(left)


def test_timeouts_expire_in_the_datapath(dut):
    """Short-lived elements get 2 s; a probe of one is asserted only when it provably ran
    within its lifetime (the time measured after the probe is below 2 s), so a slow machine
    cannot fail the test, and after 2.2 s every one of them must have expired."""
    w, links = dut
    t0 = time.monotonic()
    r = w.call(op="load", rules=RULES, sets=SETS)
    assert "error" not in r, r.get("error")
    add(w, "f2b-sshd", "10.9.0.70")                    # the set's default: 0 = permanent
    add(w, "f2b-sshd", "10.9.0.71 timeout 2")          # fail2ban's `ipset add NAME IP timeout N`
    add(w, "f2b-sshd", "10.9.0.72 timeout 600")
    add(w, "short", "10.9.0.80,tcp:22")                # the set's default: 2 s
    add(w, "short", "10.9.0.81,tcp:22 timeout 0")
    add(w, "ports", "1500")
    t_last = time.monotonic()                          # every 2 s element was added by now
    for src in ("10.9.0.66", "10.9.0.70", "10.9.0.72", "10.9.0.81"):
        assert dropped(w, links, src), src
    early = [dropped(w, links, s) for s in ("10.9.0.67", "10.9.0.71", "10.9.0.80")]
    early.append(dropped(w, links, "10.9.0.99", 1500))
    before = listed(w, "f2b-sshd")
    if time.monotonic() - t0 < 2.0:                    # the probes ran while they were alive
        assert early == [True] * 4
        assert before["10.9.0.71"] == "timeout 1" and before["10.9.0.67"] == "timeout 1"
    assert not dropped(w, links, "10.9.0.99")
    assert before["10.9.0.66"] == "timeout 0" and before["10.9.0.70"] == "timeout 0"
    assert 598 <= int(before["10.9.0.72"].split()[1]) <= 600
    # an element present is refused, -exist renews its timeout (ipset add -exist)
    dup = w.call(op="set_add", name="f2b-sshd", element="10.9.0.70")
    assert "already in set" in dup.get("error", ""), dup
    wait_past(t_last, 2.0)                             # past every 2 s timeout given
    for src in ("10.9.0.67", "10.9.0.71", "10.9.0.80"):
        assert not dropped(w, links, src), src         # expired: no match
    assert not dropped(w, links, "10.9.0.99", 1500)
    for src in ("10.9.0.66", "10.9.0.70", "10.9.0.72", "10.9.0.81"):
        assert dropped(w, links, src), src
    after = listed(w, "f2b-sshd")
    assert set(after) == {"10.9.0.66", "10.9.0.70", "10.9.0.72"}, after   # expired ones are not listed
    assert set(listed(w, "short")) == {"10.9.0.81,tcp:22"}
    assert listed(w, "ports") == {}
    # an expired element can be added again (it counts as absent), and the set's maxelem
    # counts live elements only: 3 adds fit into `short` (maxelem 3) beside the permanent one
    add(w, "f2b-sshd", "10.9.0.71 timeout 0")
    assert dropped(w, links, "10.9.0.71")
    add(w, "short", "10.9.0.82,tcp:22")
    add(w, "short", "10.9.0.83,tcp:22")
    full = w.call(op="set_add", name="short", element="10.9.0.84,tcp:22")
    assert "is full" in full.get("error", ""), full
    # a timeout in a set created without one is refused (as ipset refuses it)
    r = w.call(op="load", rules=RULES, sets=SETS + "create plain hash:ip\n")
    assert "error" not in r, r
    bad = w.call(op="set_add", name="plain", element="10.9.0.5 timeout 5")
    assert "created without timeout" in bad.get("error", ""), bad



def test_gc_deletes_expired_elements_and_corrects_counts(dut):
    """SetStore.gc_expired (the agent's set collector): every set with timeouts loses its
    expired elements in one pass and its count follows; permanent and live elements stay, a
    set without timeouts is not touched, and a second pass finds nothing."""
    w, links = dut
    sets = SETS + "create plain hash:ip family inet hashsize 1024 maxelem 65536\nadd plain 10.9.0.99\n"
    r = w.call(op="load", rules=RULES, sets=sets)
    assert "error" not in r, r.get("error")
    t0 = time.monotonic()
    add(w, "f2b-sshd", "10.9.0.71 timeout 1")
    add(w, "short", "10.9.0.80,tcp:22 timeout 1")
    add(w, "short", "10.9.0.81,tcp:22 timeout 0")
    keys0 = w.call(op="set_gc")["keys"] if time.monotonic() - t0 < 0.9 else None   # before anything expired
    wait_past(t0, 2)                                    # 10.9.0.67 (2 s), .71 and .80 (1 s) ran out
    got = w.call(op="set_gc")
    assert got["freed"] == {"f2b-sshd": 2, "short": 1}, got
    assert got["counts"] == {"f2b-sshd": 1, "short": 1, "ports": 0, "plain": 1}, got
    if keys0 is not None:
        assert got["keys"] == keys0 - 3
    assert w.call(op="set_gc")["freed"] == {}
    assert dropped(w, links, "10.9.0.66") and not dropped(w, links, "10.9.0.71")
    assert set(listed(w, "f2b-sshd")) == {"10.9.0.66"}
