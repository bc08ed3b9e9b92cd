"""The nf_conncount model (tests/connlimit_model.py) on hand cases read off the kernel code."""

from __future__ import annotations

from connlimit_model import CONNCOUNT_GC_MAX_COLLECT, Rule

ALIVE, CLOSED, GONE = False, True, None


def table(**states):
    return lambda conn: states.get(conn, GONE)


def test_counts_and_adds_new_connections():
    r = Rule(limit=2)
    ct = table(a=ALIVE, b=ALIVE)
    assert r.count("k", "a", False, False, ct, 100) == 1          # insert_tree: a new list
    assert r.count("k", "b", False, False, ct, 102) == 2
    assert r.match("k", "c", False, False, ct, 104) is True        # 3 > 2
    assert [e.conn for e in r.lists["k"].ents] == ["a", "b", "c"]


def test_unconfirmed_gone_entry_is_evicted_by_its_cpu_or_after_two_jiffies():
    r = Rule(limit=5)
    ct = table(a=ALIVE)
    r.count("k", "x", False, False, ct, 10, cpu=1)                # never confirmed (dropped)
    r.count("k", "a", False, False, ct, 11, cpu=0)                 # same jiffy + 1, other CPU: kept
    assert [e.conn for e in r.lists["k"].ents] == ["x", "a"]
    r.count("k", "y", False, False, ct, 13, cpu=0)                 # 2 jiffies later: evicted
    assert [e.conn for e in r.lists["k"].ents] == ["a", "y"]


def test_same_jiffy_skips_the_walk_and_appends_even_twice():
    r = Rule(limit=5)
    ct = table(a=CLOSED)
    r.count("k", "a", False, False, ct, 50)
    assert r.count("k", "b", False, False, ct, 50) == 2            # no walk: a still listed
    assert r.count("k", "b", False, False, ct, 50) == 3            # appended again
    assert r.count("k", "c", False, False, ct, 51) == 1
    # the walk in jiffy 51 evicts the closed a and the unconfirmed b's (this CPU), keeps none
    assert [e.conn for e in r.lists["k"].ents] == ["c"]


def test_confirmed_not_assured_stops_at_itself():
    r = Rule(limit=2)
    ct = table(a=ALIVE, b=ALIVE)
    for c, j in (("a", 1), ("b", 3), ("x", 5)):
        r.count("k", c, False, False, ct, j)
    # b retransmits its SYN (confirmed, not ASSURED): found, not added; x after it not reached
    assert r.count("k", "b", True, False, ct, 8) == 3
    assert [e.conn for e in r.lists["k"].ents] == ["a", "b", "x"]


def test_assured_is_not_added_but_collects():
    r = Rule(limit=1)
    ct = table(a=ALIVE)
    r.count("k", "a", False, False, ct, 1)
    r.count("k", "x", False, False, ct, 3)                         # refused, stays listed
    assert r.count("k", "a", True, True, ct, 6) == 1              # gc_list evicts x
    assert r.count("k", "z", True, True, ct, 6) == 1              # same jiffy: no gc, z not added


def test_count_zero_hotdrops():
    r = Rule(limit=5)
    ct = table(a=ALIVE)
    r.count("k", "a", False, False, ct, 1)
    closed = table(a=CLOSED)
    assert r.match("k", "a", True, True, closed, 4) is None       # emptied by the collection
    assert r.match("k", "a", True, True, closed, 7) is None       # the empty list stays
    assert r.match("k", "n", False, False, closed, 9) is False    # a new connection: 1


def test_walk_stops_past_the_collect_limit():
    r = Rule(limit=1000)
    n = CONNCOUNT_GC_MAX_COLLECT + 5
    alive = {f"c{i}": ALIVE for i in range(n)}
    for i in range(n):
        r.count("k", f"c{i}", False, False, table(**alive), 10 + 2 * i)
    dead = table()                                                 # every one gone
    assert r.count("k", "new", False, False, dead, 1000) == n - (CONNCOUNT_GC_MAX_COLLECT + 1) + 1


def test_upto_and_capacity():
    r = Rule(limit=1, above=False, capacity=2)
    ct = table(a=ALIVE, b=ALIVE)
    assert r.match("k", "a", False, False, ct, 1) is True
    assert r.match("k", "b", False, False, ct, 3) is False
    assert r.match("k", "c", False, False, ct, 5) is None         # the list is full: hotdrop
