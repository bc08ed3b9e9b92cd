"""-m limit in the datapath: BPF_PROG_TEST_RUN bursts against xt_limit's token bucket.

The bucket is xt_limit's (credit, credit_cap, cost = avg * CREDITS_PER_JIFFY, jiffies); these
tests check the behaviour that arithmetic implies with real time: a fresh rule passes `burst`
packets back to back and refuses the next one (which goes on down the chain, uncounted by the
limit rule), and after 1/rate seconds exactly one more token is there. The arithmetic itself is
checked in tests/unit/test_limit_credits.py against the kernel's numbers.
"""

from __future__ import annotations

import time

import pytest

from reference import UDP, Pkt
from test_datapath import XDP_DROP, dut, ip, judge  # noqa: F401  (dut is the shared fixture)

pytestmark = pytest.mark.kernel

RULES = """*filter
:INPUT DROP [0:0]
:FORWARD DROP [0:0]
:OUTPUT ACCEPT [0:0]
-A INPUT -p udp -m udp --dport 5000 -m limit --limit 4/sec --limit-burst 3 -j ACCEPT
-A INPUT -p udp -m udp --dport 5000 -j DROP
-A INPUT -p udp -m udp --dport 6000 -m limit --limit 4/sec --limit-burst 2 -m comment --comment "own bucket" -j ACCEPT
-A INPUT -j ACCEPT
COMMIT
"""


def send(w, links, dport: int) -> tuple[bool, list]:
    got = judge(w, links, "INPUT", Pkt(ip("10.9.0.2"), ip("10.9.0.1"), UDP, dport=dport, iif="va"))
    assert "error" not in got, got
    return got["ret"] != XDP_DROP, sorted(r[0] for r in got["rules"])


def test_limit_burst_then_refill(dut):
    w, links = dut
    r = w.call(op="load", rules=RULES)
    assert "error" not in r, r.get("error")
    t0 = time.monotonic()
    # the bucket starts full: 3 pass (rule 0 counted), the 4th and 5th fall through to rule 1
    results = [send(w, links, 5000) for _ in range(5)]
    assert time.monotonic() - t0 < 0.2, "too slow to test a 4/sec bucket"
    assert results[:3] == [(True, [0])] * 3
    assert results[3:] == [(False, [1])] * 2
    # the other rule has its own bucket (burst 2)
    assert [send(w, links, 6000) for _ in range(3)] == [(True, [2]), (True, [2]), (True, [3])]
    # 1/rate = 250 ms later one token is back, and only one
    time.sleep(0.3)
    assert send(w, links, 5000) == (True, [0])
    assert send(w, links, 5000) == (False, [1])
    # after a long pause the bucket is full again, not more than full
    time.sleep(1.0)
    assert [send(w, links, 5000)[0] for _ in range(4)] == [True, True, True, False]


def test_limit_reapply_starts_full(dut):
    """A new ruleset (a flip to the other slot) gets fresh buckets, as iptables-restore does."""
    w, links = dut
    for _ in range(2):
        r = w.call(op="load", rules=RULES)
        assert "error" not in r, r.get("error")
        assert [send(w, links, 5000)[0] for _ in range(4)] == [True, True, True, False]


def test_limit_not_last_is_refused(dut):
    w, _ = dut
    text = RULES.replace("-m udp --dport 5000 -m limit --limit 4/sec --limit-burst 3",
                         "-m limit --limit 4/sec --limit-burst 3 -m udp --dport 5000")
    r = w.call(op="load", rules=text)
    assert "t.rules:5:" in r.get("error", "") or "test.rules:5:" in r.get("error", ""), r
    assert "last match" in r["error"]
