"""hash:net and hash:net,port timeouts and nomatch in the datapath (BPF_PROG_TEST_RUN through
dp_worker), against the kernel's lookup written here from ip_set_hash_gen.h
(mtype_test_cidrs): the set's prefix lengths are tried from the longest down, an expired
element is skipped, and the first live element decides: a match, or no match when it is
`nomatch`. The datapath repeats its LPM lookup with a shorter key length after an expired
element, in the continuation program (programs/ebpfw.c set_member).

Elements with `timeout 1` are loaded, the test waits until they have expired, and only then
judges the probes whose answer depends on it, so a slow machine cannot fail the test (probes
before the expiry are asserted only when they provably ran within the second)."""

from __future__ import annotations

import ipaddress
import random
import time

import pytest

from reference import TCP, UDP, Pkt
from test_datapath import TC_SHOT, XDP_DROP, dut, ip, judge  # noqa: F401  (dut is the shared fixture)

pytestmark = pytest.mark.kernel

ME = "10.9.0.1"


def model(elements: list[tuple[int, int, int, int, bool, bool]], addr: int, proto: int = 0, port: int = 0) -> bool:
    """mtype_test_cidrs over (addr, prefixlen, proto, port, alive, nomatch) elements: the
    longest live element covering addr (with the same proto/port) decides."""
    for plen in range(32, 0, -1):
        net = addr & ((0xFFFFFFFF << (32 - plen)) & 0xFFFFFFFF)
        for a, pl, pr, pt, alive, nomatch in elements:
            if pl == plen and a == net and pr == proto and pt == port and alive:
                return not nomatch
    return False


def _ip(a: int) -> str:
    return str(ipaddress.IPv4Address(a))


def wait_past(t0: float, seconds: float) -> None:
    left = t0 + seconds + 0.2 - time.monotonic()
    if left > 0:
        time.sleep(left)


CS_SETS = """create crowdsec-blacklists hash:net family inet hashsize 1024 maxelem 65536 timeout 300 bucketsize 12 initval 0x6a8a2b3c
add crowdsec-blacklists 10.20.1.0/24 timeout 0
add crowdsec-blacklists 10.20.1.7 timeout 1 nomatch
add crowdsec-blacklists 10.20.2.0/24 timeout 1
add crowdsec-blacklists 10.20.2.64/26 timeout 0 nomatch
add crowdsec-blacklists 10.20.2.70 timeout 0
add crowdsec-blacklists 10.21.0.0/16 timeout 0
add crowdsec-blacklists 10.21.3.0/24 timeout 1 nomatch
add crowdsec-blacklists 10.21.3.0/28 timeout 1
add crowdsec-blacklists 10.21.3.5 timeout 1 nomatch
add crowdsec-blacklists 10.22.0.9 timeout 1
create np hash:net,port family inet hashsize 1024 maxelem 65536 timeout 0
add np 10.30.0.0/24,tcp:22
add np 10.30.0.5,tcp:22 timeout 1 nomatch
add np 10.30.0.6,udp:53 timeout 1
add np 10.30.0.0/16,udp:53 timeout 0 nomatch
"""

CS_RULES = """*filter
:INPUT ACCEPT [0:0]
:FORWARD ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
-A INPUT -m set --match-set crowdsec-blacklists src -j DROP
-A INPUT -m set --match-set np src,dst -j DROP
-A OUTPUT -m set --match-set crowdsec-blacklists dst -j DROP
COMMIT
"""

# address -> (member while the 1 s elements live, member once they expired)
CS_PROBES = {
    "10.20.1.7": (False, True),      # nomatch /32 expires: the permanent /24 decides
    "10.20.1.8": (True, True),
    "10.20.2.1": (True, False),      # the /24 expires: nothing else covers it
    "10.20.2.65": (False, False),    # permanent nomatch /26 inside the expiring /24
    "10.20.2.70": (True, True),      # permanent /32 inside the nomatch /26
    "10.21.3.5": (False, True),      # nomatch /32, /28, nomatch /24 all expire: the /16 decides
    "10.21.3.6": (True, True),       # /28 then the /16
    "10.21.3.200": (False, True),    # nomatch /24 then the /16
    "10.21.9.9": (True, True),
    "10.22.0.9": (True, False),      # a plain /32 ban that expires
    "10.23.0.1": (False, False),
}
# (address, proto, dport) -> (before, after)
NP_PROBES = {
    ("10.30.0.5", TCP, 22): (False, True),
    ("10.30.0.4", TCP, 22): (True, True),
    ("10.30.0.5", TCP, 23): (False, False),
    ("10.30.0.6", UDP, 53): (True, False),    # the /32 expires, the nomatch /16 decides
    ("10.30.7.7", UDP, 53): (False, False),
}


def in_cs(w, links, addr: str) -> bool:
    got = judge(w, links, "INPUT", Pkt(ip(addr), ip(ME), TCP, dport=80, iif="va"))
    assert "error" not in got, got
    return got["ret"] == XDP_DROP


def in_cs_egress(w, links, addr: str) -> bool:
    got = judge(w, links, "OUTPUT", Pkt(ip("10.9.1.1"), ip(addr), TCP, dport=80, oif="vb"))
    assert "error" not in got, got
    return got["ret"] == TC_SHOT


def in_np(w, links, addr: str, proto: int, dport: int) -> bool:
    got = judge(w, links, "INPUT", Pkt(ip(addr), ip(ME), proto, dport=dport, iif="va"))
    assert "error" not in got, got
    return got["ret"] == XDP_DROP


def listed(w, name: str) -> dict[str, str]:
    out = {}
    for line in w.call(op="set_list", name=name)["text"].splitlines():
        if line.startswith("add "):
            words = line.split()
            out[words[2]] = " ".join(words[3:])
    return out


def test_crowdsec_style_net_set_with_timeouts(dut):
    """A shorter live prefix matches once a longer one expired, nomatch elements apply only
    while alive, for hash:net (ingress XDP and egress TC) and hash:net,port."""
    w, links = dut
    t0 = time.monotonic()
    r = w.call(op="load", rules=CS_RULES, sets=CS_SETS)
    assert "error" not in r, r.get("error")
    t_loaded = time.monotonic()                        # the 1 s count from within the load
    early = {a: in_cs(w, links, a) for a in CS_PROBES}
    early_np = {k: in_np(w, links, *k) for k in NP_PROBES}
    before = listed(w, "crowdsec-blacklists")
    if time.monotonic() - t0 < 1.0:                    # every probe ran while the 1 s elements lived
        assert early == {a: want[0] for a, want in CS_PROBES.items()}
        assert early_np == {k: want[0] for k, want in NP_PROBES.items()}
        assert before["10.20.1.7"] == "timeout 1 nomatch", before
    assert before["10.20.1.0/24"] == "timeout 0" and before["10.20.2.64/26"] == "timeout 0 nomatch", before
    wait_past(t_loaded, 1.0)
    for a, want in CS_PROBES.items():
        assert in_cs(w, links, a) == want[1], a
        assert in_cs_egress(w, links, a) == want[1], a
    for k, want in NP_PROBES.items():
        assert in_np(w, links, *k) == want[1], k
    after = listed(w, "crowdsec-blacklists")
    assert after == {"10.20.1.0/24": "timeout 0", "10.20.2.64/26": "timeout 0 nomatch", "10.20.2.70": "timeout 0",
                     "10.21.0.0/16": "timeout 0"}, after
    assert listed(w, "np") == {"10.30.0.0/24,tcp:22": "timeout 0", "10.30.0.0/16,udp:53": "timeout 0 nomatch"}
    # the expired elements are gone from the trie now (the list deleted them): same answers
    for a, want in CS_PROBES.items():
        assert in_cs(w, links, a) == want[1], a
    # live changes: a nomatch /32 (the set's default timeout), then a match in its place
    add = w.call(op="set_add", name="crowdsec-blacklists", element="10.20.1.9 nomatch")
    assert add.get("n") == 1, add
    assert not in_cs(w, links, "10.20.1.9")
    assert listed(w, "crowdsec-blacklists")["10.20.1.9"] in ("timeout 300 nomatch", "timeout 299 nomatch")
    dup = w.call(op="set_add", name="crowdsec-blacklists", element="10.20.1.9")
    assert "already in set" in dup.get("error", ""), dup
    assert w.call(op="set_del", name="crowdsec-blacklists", element="10.20.1.9").get("n") == 1
    assert w.call(op="set_add", name="crowdsec-blacklists", element="10.20.1.9 timeout 0").get("n") == 1
    assert in_cs(w, links, "10.20.1.9")
    assert listed(w, "crowdsec-blacklists")["10.20.1.9"] == "timeout 0"
    d = w.call(op="set_del", name="crowdsec-blacklists", element="10.20.1.0/24")
    assert d.get("n") == 1, d
    assert in_cs(w, links, "10.20.1.9") and not in_cs(w, links, "10.20.1.8")


def random_sets(rng: random.Random, name: str, settype: str) -> tuple[str, list]:
    """Nested prefixes under 10.40.0.0/16: each permanent, long-lived or expiring in 1 s, some
    nomatch. Returns the set's `ipset save` text and the model's elements once the 1 s ones
    expired."""
    port = settype.endswith(",port")
    lines = [f"create {name} {settype} family inet hashsize 1024 maxelem 65536 timeout 0"]
    elements, seen = [], set()
    for _ in range(60):
        plen = rng.choice([16, 18, 20, 22, 24, 24, 26, 28, 30, 32, 32, 32])
        addr = (ip("10.40.0.0") | rng.getrandbits(16)) & ((0xFFFFFFFF << (32 - plen)) & 0xFFFFFFFF)
        proto, pt = (rng.choice([(TCP, 22), (TCP, 80), (UDP, 53)]) if port else (0, 0))
        if (addr, plen, proto, pt) in seen:
            continue
        seen.add((addr, plen, proto, pt))
        life = rng.choice(["0", "600", "1", "1"])
        nomatch = rng.random() < 0.35
        elem = f"{_ip(addr)}/{plen}" + (f",{'tcp' if proto == TCP else 'udp'}:{pt}" if port else "")
        lines.append(f"add {name} {elem} timeout {life}" + (" nomatch" if nomatch else ""))
        elements.append((addr, plen, proto, pt, life != "1", nomatch))
    return "\n".join(lines) + "\n", elements


def test_random_nested_prefixes_follow_mtype_test_cidrs(dut):
    """Random nested prefixes (several levels of expired ones above live ones, nomatch among
    them): once the 1 s elements expired, every probe is judged as the kernel's lookup judges
    it, for hash:net (also under `!`) and hash:net,port."""
    w, links = dut
    rng = random.Random(20261130)
    text_n, el_n = random_sets(rng, "rn", "hash:net")
    text_p, el_p = random_sets(rng, "rp", "hash:net,port")
    rules = """*filter
:INPUT ACCEPT [0:0]
:FORWARD ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
-A INPUT -p tcp -m tcp --sport 1001 -m set --match-set rn src -j DROP
-A INPUT -p udp -m udp --sport 1001 -m set --match-set rn src -j DROP
-A INPUT -p tcp -m tcp --sport 1002 -m set --match-set rp src,dst -j DROP
-A INPUT -p udp -m udp --sport 1002 -m set --match-set rp src,dst -j DROP
-A INPUT -p tcp -m tcp --sport 1003 -m set ! --match-set rn src -j DROP
COMMIT
"""
    r = w.call(op="load", rules=rules, sets=text_n + text_p)
    assert "error" not in r, r.get("error")
    t_loaded = time.monotonic()
    # probes: inside elements (most of them) and random addresses of the /16
    probes = []
    for a, plen, *_ in el_n + el_p:
        probes.append(a | (rng.getrandbits(32 - plen) if plen < 32 else 0))
    probes += [ip("10.40.0.0") | rng.getrandbits(16) for _ in range(40)]
    wait_past(t_loaded, 1.0)
    mismatches, hits = [], 0
    for a in probes:
        want = model(el_n, a)
        hits += want
        got = judge(w, links, "INPUT", Pkt(a, ip(ME), TCP, sport=1001, dport=80, iif="va"))
        if (got["ret"] == XDP_DROP) != want:
            mismatches.append(("rn", _ip(a), want))
        got = judge(w, links, "INPUT", Pkt(a, ip(ME), TCP, sport=1003, dport=80, iif="va"))
        if (got["ret"] == XDP_DROP) == want:           # ! --match-set: a nomatch element matches it
            mismatches.append(("! rn", _ip(a), not want))
        proto, pt = rng.choice([(TCP, 22), (TCP, 80), (UDP, 53)])
        want = model(el_p, a, proto, pt)
        hits += want
        got = judge(w, links, "INPUT", Pkt(a, ip(ME), proto, sport=1002, dport=pt, iif="va"))
        if (got["ret"] == XDP_DROP) != want:
            mismatches.append(("rp", _ip(a), proto, pt, want))
    assert not mismatches, mismatches
    assert hits > 20                                   # the probes exercise matches, not only misses
    # the listing shows the live elements only, with their flags
    live = {(a, pl, pr, pt, nm) for a, pl, pr, pt, alive, nm in el_n if alive}
    got = set()
    for elem, opts in listed(w, "rn").items():
        net = ipaddress.IPv4Network(elem if "/" in elem else elem + "/32")
        got.add((int(net.network_address), net.prefixlen, 0, 0, "nomatch" in opts))
    assert got == live


def test_raw_table_set_rule_skips_expired_prefixes():
    """A raw PREROUTING rule's -m set: the raw stage's continuation program decides it too."""
    import json
    import netns as nsh
    from dpclient import Worker
    factory = nsh.NetnsFactory()
    try:
        d, peer = factory("enset"), factory("enset")
        nsh.veth(d, "va", peer, "pa", "10.9.0.1/24", "10.9.0.2/24")
        info = json.loads(nsh.run_in(d, "ip -j link show").stdout)
        links = {l["ifname"]: (l["ifindex"], bytes.fromhex(l["address"].replace(":", ""))) for l in info}
        w = Worker(d, env={"EBPFW_TEST_CT": "1", "EBPFW_TEST_RAW": "1"}, strict=True)
        try:
            rules = """*raw
:PREROUTING ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
-A PREROUTING -m set --match-set cs src -j DROP
COMMIT
*filter
:INPUT ACCEPT [0:0]
:FORWARD ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
COMMIT
"""
            sets = """create cs hash:net family inet hashsize 1024 maxelem 65536 timeout 0
add cs 10.20.1.0/24
add cs 10.20.1.7 timeout 1 nomatch
add cs 10.20.1.8 timeout 1
"""
            r = w.call(op="load", rules=rules, sets=sets)
            assert "error" not in r, r.get("error")
            wait_past(time.monotonic(), 1.0)
            for addr, want in (("10.20.1.7", True), ("10.20.1.8", True), ("10.20.1.9", True), ("10.20.2.1", False)):
                got = judge(w, links, "INPUT", Pkt(ip(addr), ip(ME), TCP, dport=80, iif="va"))
                assert "error" not in got, got
                assert (got["ret"] == XDP_DROP) == want, (addr, got)
                assert got["stats"].get("walk_limit", 0) == 0, got["stats"]
        finally:
            w.close()
    finally:
        factory.cleanup()
