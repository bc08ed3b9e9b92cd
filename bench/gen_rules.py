#!/usr/bin/env python3
"""Benchmark rulesets in iptables-save format, deterministic for a given (shape, N, seed).

    gen_rules.py mixed N [--iif d0] [--dst 10.0.0.2] [--seed 1]     > rules.v4
    gen_rules.py blocklist N                                         > rules.v4
    gen_rules.py mixed N --change K                                  > rules.v4   (rule K edited)

Both shapes are one INPUT chain with policy DROP whose LAST rule is the only one that matches
the benchmark packet (UDP 10.10.1.1:40000 -> DST:9000 arriving on IIF), so every packet is
judged against all N rules:

  mixed      N-1 rules drawn from what real host firewalls contain: host and subnet blocks,
             open TCP/UDP services, multiport, ICMP types, per-interface rules, source-port
             rules, destination-address rules; each one misses the packet on at least one
             field (address, protocol, port or interface), and the fields that miss vary.
             Last: -i IIF -s 10.10.0.0/16 -d DST/32 -p udp --dport 9000 -j ACCEPT.
  blocklist  N-1 '-s 172.16.x.y/32 -j DROP' (distinct addresses from 172.16.0.0/12),
             last: -s 10.10.0.0/16 -p udp --dport 9000 -j ACCEPT.
  f-FIELD    (N=1 only) one ACCEPT rule that matches on FIELD alone (none, src, dst, proto,
             dport, iif): the fixed per-packet cost of each field's lookup; f-fwd is f-src in
             FORWARD, for a packet routed to 10.0.1.2 (adds the fib lookup).

--change K replaces rule K (1-based, K < N) with a different non-matching rule of the same
template family, for "one rule changed" update measurements; the shape of the compiled program
(fields in use, number of rules) stays the same.
"""

from __future__ import annotations

import argparse
import random
import sys

PKT_SRC = "10.10.1.1"
PKT_SPORT = 40000
PKT_DPORT = 9000


def _addr(i: int, base: tuple[int, int]) -> str:
    """The i-th /32 inside base (a, b) -> a.b+.x.y, up to 2**20 distinct addresses."""
    a, b = base
    return f"{a}.{b + (i >> 16)}.{(i >> 8) & 255}.{i & 255}"


def _port(rng: random.Random) -> int:
    while True:
        p = rng.randrange(1, 65536)
        if p not in (PKT_DPORT, PKT_SPORT):
            return p


def mixed_rule(i: int, rng: random.Random, iif: str, dst: str) -> str:
    """Rule i of the mixed shape; never matches the benchmark packet."""
    kind = rng.randrange(12)
    tgt = rng.choice(("ACCEPT", "DROP"))
    if kind == 0:   # single bad host (fails on src)
        return f"-A INPUT -s {_addr(i, (192, 168))}/32 -j DROP"
    if kind == 1:   # subnet allowed to ssh (fails on src and proto)
        return f"-A INPUT -s 172.{16 + ((i >> 8) & 15)}.{i & 255}.0/24 -p tcp -m tcp --dport 22 -j {tgt}"
    if kind == 2:   # open TCP service (fails on proto)
        return f"-A INPUT -p tcp -m tcp --dport {_port(rng)} -j ACCEPT"
    if kind == 3:   # open UDP service on another port (fails on dport)
        return f"-A INPUT -p udp -m udp --dport {_port(rng)} -j ACCEPT"
    if kind == 4:   # web ports (fails on proto)
        return f"-A INPUT -p tcp -m multiport --dports 80,443,{_port(rng)} -j ACCEPT"
    if kind == 5:   # ICMP type (fails on proto)
        t = rng.choice((0, 3, 8, 11))
        return f"-A INPUT -p icmp -m icmp --icmp-type {t} -j {tgt}"
    if kind == 6:   # another interface (fails on iif)
        ifn = rng.choice(("lo", "wg0", "eth+", "br-lan"))
        return f"-A INPUT -i {ifn} -p udp -m udp --dport {PKT_DPORT} -j ACCEPT"
    if kind == 7:   # UDP replies from a port (fails on sport)
        sp = rng.choice((53, 123, 67, 500))
        return f"-A INPUT -s 10.10.0.0/16 -p udp -m udp --sport {sp} -j ACCEPT"
    if kind == 8:   # service bound to another local address (fails on dst)
        return f"-A INPUT -d {_addr(i, (10, 200))}/32 -p udp -m udp --dport {PKT_DPORT} -j ACCEPT"
    if kind == 9:   # right port, wrong source subnet (fails on src)
        return f"-A INPUT -s {_addr(i, (10, 64))}/32 -p udp -m udp --dport {PKT_DPORT} -j {tgt}"
    if kind == 10:  # port range for another protocol (fails on proto)
        lo = rng.randrange(1024, 60000)
        return f"-A INPUT -p tcp -m tcp --dport {lo}:{lo + rng.randrange(1, 500)} -j ACCEPT"
    # kind 11: blocked subnet on the packet's interface (fails on src)
    return f"-A INPUT -i {iif} -s {_addr(i, (100, 64))}/32 -j DROP"


def _last_mixed(iif: str, dst: str) -> str:
    return f"-A INPUT -i {iif} -s 10.10.0.0/16 -d {dst}/32 -p udp -m udp --dport {PKT_DPORT} -j ACCEPT"


# one-rule rulesets that use a single field each: the fixed cost of each field's lookup
FIELD_RULES = {
    "f-none": "-A INPUT -j ACCEPT",
    "f-src": "-A INPUT -s 10.10.0.0/16 -j ACCEPT",
    "f-dst": "-A INPUT -d {dst}/32 -j ACCEPT",
    "f-proto": "-A INPUT -p udp -j ACCEPT",
    "f-dport": "-A INPUT -p udp -m udp --dport 9000 -j ACCEPT",
    "f-iif": "-A INPUT -i {iif} -j ACCEPT",
    # the same source match on a FORWARDED packet (to FWD_DST, routed out of d1): + the fib lookup
    "f-fwd": "-A FORWARD -s 10.10.0.0/16 -j ACCEPT",
}
FWD_DST = "10.0.1.2"
SHAPES = ("mixed", "blocklist", *FIELD_RULES)


def generate(shape: str, n: int, iif: str = "d0", dst: str = "10.0.0.2", seed: int = 1,
             change: int = 0) -> str:
    if n < 1:
        raise ValueError("N must be at least 1")
    if shape in FIELD_RULES:
        if n != 1:
            raise ValueError(f"shape {shape} has exactly one rule, N must be 1")
        return "\n".join(["# ebpfw benchmark ruleset: shape=%s n=1" % shape, "*filter", ":INPUT DROP [0:0]",
                          ":FORWARD DROP [0:0]", ":OUTPUT ACCEPT [0:0]",
                          FIELD_RULES[shape].format(iif=iif, dst=dst), "COMMIT"]) + "\n"
    rng = random.Random(seed)
    out = ["# ebpfw benchmark ruleset: shape=%s n=%d seed=%d change=%d" % (shape, n, seed, change),
           "*filter", ":INPUT DROP [0:0]", ":FORWARD DROP [0:0]", ":OUTPUT ACCEPT [0:0]"]
    for i in range(n - 1):
        if shape == "mixed":
            r = mixed_rule(i, rng, iif, dst)
            if i + 1 == change:
                # same family of fields, other values: swap for the rule of the next index
                r = mixed_rule(i + 2_000_000, random.Random(seed * 7919 + i), iif, dst)
        elif shape == "blocklist":
            j = i + (1 << 19) if i + 1 == change else i
            r = f"-A INPUT -s {_addr(j, (172, 16))}/32 -j DROP"
        else:
            raise ValueError(f"unknown shape {shape!r}, expected mixed or blocklist")
        out.append(r)
    if shape == "mixed":
        out.append(_last_mixed(iif, dst))
    else:
        out.append(f"-A INPUT -s 10.10.0.0/16 -p udp -m udp --dport {PKT_DPORT} -j ACCEPT")
    out.append("COMMIT")
    return "\n".join(out) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("shape", choices=SHAPES)
    ap.add_argument("n", type=int)
    ap.add_argument("--iif", default="d0")
    ap.add_argument("--dst", default="10.0.0.2")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--change", type=int, default=0, help="edit rule K (1-based, K < N)")
    a = ap.parse_args()
    sys.stdout.write(generate(a.shape, a.n, a.iif, a.dst, a.seed, a.change))
    return 0


if __name__ == "__main__":
    sys.exit(main())
