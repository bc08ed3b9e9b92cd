"""A model of nf_conncount for -m connlimit, written from the kernel's source
(net/netfilter/nf_conncount.c as in mainline since the sk_buff API: count_tree,
__nf_conncount_add, find_or_evict, nf_conncount_gc_list, already_closed) and
net/netfilter/xt_connlimit.c (connlimit_mt), independently of ebpfw's datapath.

One `Rule` is one connlimit rule's nf_conncount_data: key -> `List`. A connection is any
hashable identity (the tests use the conntrack tuple, direction-free). The conntrack table is
the caller's: `ct(conn)` returns None when the connection is not found (never confirmed,
killed, expired) and else whether it is "closed" (TCP in TIME_WAIT or CLOSE).

Not modelled: the tree (rb-tree slots, the collection of other keys' lists on insert, the
worker that frees empty nodes), zones, and allocation failure other than a list capacity.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Hashable, Optional

CONNCOUNT_GC_MAX_COLLECT = 64
U32 = 1 << 32


@dataclass
class Ent:
    conn: Hashable
    jiffies: int
    cpu: int


@dataclass
class List:
    ents: list = field(default_factory=list)
    last_gc: int = 0
    last_gc_count: int = 0


class Rule:
    """One connlimit rule: `limit`, `above` (False: --connlimit-upto), lists per key;
    `capacity`: connections one list may hold (beyond: allocation failure, hotdrop)."""

    def __init__(self, limit: int, above: bool = True, capacity: Optional[int] = None):
        self.limit = limit
        self.above = above
        self.capacity = capacity
        self.lists: dict[Hashable, List] = {}

    def match(self, key, conn, confirmed: bool, assured: bool, ct: Callable, jiffies: int, cpu: int = 0):
        """connlimit_mt: True / False, or None for a hotdrop (count 0)."""
        n = self.count(key, conn, confirmed, assured, ct, jiffies, cpu)
        if n == 0:
            return None
        return (n > self.limit) if self.above else not (n > self.limit)

    def count(self, key, conn, confirmed: bool, assured: bool, ct: Callable, jiffies: int, cpu: int = 0) -> int:
        """count_tree with an skb: the list's length after adding `conn`; 0 = hotdrop."""
        jiffies %= U32
        lst = self.lists.get(key)
        if lst is None:
            # insert_tree: a new node holding the connection, confirmed or not
            self.lists[key] = List([Ent(conn, jiffies, cpu)], last_gc=jiffies, last_gc_count=0)
            return 1
        err = self._add(lst, conn, confirmed, assured, ct, jiffies, cpu)
        if err == "ENOMEM":
            return 0
        if err == "EEXIST":
            self.gc_list(lst, ct, jiffies, cpu)
        return len(lst.ents)

    def _add(self, lst: List, conn, confirmed, assured, ct, jiffies, cpu) -> Optional[str]:
        """__nf_conncount_add: None (added or already there), "EEXIST" or "ENOMEM"."""
        if confirmed:
            if assured:
                return "EEXIST"
        elif jiffies == lst.last_gc and len(lst.ents) - lst.last_gc_count < CONNCOUNT_GC_MAX_COLLECT:
            return self._append(lst, conn, jiffies, cpu)
        collect = 0
        kept: list = []
        for i, e in enumerate(lst.ents):
            if collect > CONNCOUNT_GC_MAX_COLLECT:
                kept += lst.ents[i:]
                break
            found = ct(e.conn)
            if found is None:
                # find_or_evict: not found; evicted unless another CPU added it < 2 jiffies ago
                if e.cpu == cpu or (jiffies - e.jiffies) % U32 >= 2:
                    collect += 1
                    continue
                if e.conn == conn:
                    lst.ents = kept + lst.ents[i:]
                    return None            # already exists
                kept.append(e)
                continue
            if e.conn == conn:
                lst.ents = kept + lst.ents[i:]
                return None                # already exists
            if found:                      # already_closed
                collect += 1
                continue
            kept.append(e)
        lst.ents = kept
        lst.last_gc = jiffies
        lst.last_gc_count = len(kept)
        return self._append(lst, conn, jiffies, cpu)

    def _append(self, lst: List, conn, jiffies, cpu) -> Optional[str]:
        if self.capacity is not None and len(lst.ents) >= self.capacity:
            return "ENOMEM"
        lst.ents.append(Ent(conn, jiffies, cpu))
        return None

    @staticmethod
    def gc_list(lst: List, ct: Callable, jiffies: int, cpu: int = 0) -> None:
        """nf_conncount_gc_list: not twice in one jiffy; stops past CONNCOUNT_GC_MAX_COLLECT
        evictions, checked after a live entry."""
        if jiffies == lst.last_gc:
            return
        collected = 0
        kept: list = []
        for i, e in enumerate(lst.ents):
            found = ct(e.conn)
            if found is None:
                if e.cpu == cpu or (jiffies - e.jiffies) % U32 >= 2:
                    collected += 1
                    continue
                kept.append(e)
                continue
            if found:
                collected += 1
                continue
            kept.append(e)
            if collected > CONNCOUNT_GC_MAX_COLLECT:
                kept += lst.ents[i + 1:]
                break
        lst.ents = kept
        lst.last_gc = jiffies
        lst.last_gc_count = len(kept)
