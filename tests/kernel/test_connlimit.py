"""-m connlimit in the datapath: BPF_PROG_TEST_RUN of the real programs (conntrack and the
connlimit program compiled in), packet by packet, with the per-rule lists read back and
compared with what nf_conncount (net/netfilter/nf_conncount.c) holds after the same packets.

The worker is pinned to one CPU: nf_conncount evicts a listed connection that never got
confirmed (its first packet was dropped) at once when the same CPU added it, else only after 2
jiffies; from one CPU the lists are exact at every step. A new connection does not collect a
list that was collected in the same jiffy (nf_conncount's last_gc): the tests wait for the next
jiffy (tick) before a packet whose walk they check.
"""

from __future__ import annotations

import time

import pytest

import netns as nsh
from dpclient import Worker
from reference import TCP, UDP, Pkt
from test_datapath import TC_SHOT, XDP_DROP, ip, judge

pytestmark = pytest.mark.kernel

HEAD = "*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n"
SYN, SYNACK, ACK, RST, FIN_ACK = 0x02, 0x12, 0x10, 0x04, 0x11
ME, A, A2, B = ip("10.9.0.1"), ip("10.9.0.2"), ip("10.9.0.7"), ip("10.9.0.3")


@pytest.fixture(scope="module")
def cdut():
    factory = nsh.NetnsFactory()
    try:
        d, peer = factory("eclim"), factory("eclim")
        nsh.veth(d, "va", peer, "pa", "10.9.0.1/24", "10.9.0.2/24")
        import json
        info = json.loads(nsh.run_in(d, "ip -j link show").stdout)
        links = {l["ifname"]: (l["ifindex"], bytes.fromhex(l["address"].replace(":", ""))) for l in info}
        w = Worker(d, env={"EBPFW_TEST_CONNLIMIT": "1", "EBPFW_TEST_CPU": "0"}, strict=True)
        yield w, links
        w.close()
    finally:
        factory.cleanup()


def load(w, rules: str) -> None:
    w.call(op="load", rules=HEAD + rules + "COMMIT\n")
    w.call(op="ct_flush")


def syn(src, sport, dport=80, dst=ME, flags=SYN, proto=TCP):
    return Pkt(src, dst, proto, sport=sport, dport=dport, flags=flags, iif="va")


def reply(src, sport, dport=80, dst=ME, flags=SYNACK):
    """The server's answer to (src, sport) -> (dst, dport), leaving through va (OUTPUT)."""
    return Pkt(dst, src, TCP, sport=dport, dport=sport, flags=flags, oif="va")


def tick() -> None:
    """Sleep past the current jiffy (HZ >= 100)."""
    time.sleep(0.025)


def send(w, links, p, hook="INPUT") -> tuple[bool, dict]:
    got = judge(w, links, hook, p)
    return got["ret"] == (TC_SHOT if hook == "OUTPUT" else XDP_DROP), got


def lists(w) -> dict:
    """(rule, key address) -> [client port of each listed connection, in list order]."""
    out = {}
    for rule, addr, ents in w.call(op="cl_lists")["lists"]:
        # entries: a_addr, b_addr, a_port, b_port (canonical: lower address first), proto, ...
        out[(rule, addr)] = [e[2] if e[0] != "10.9.0.1" else e[3] for e in ents]
    return out


def handshake(w, links, src, sport, dport=80) -> None:
    """SYN (judged by the rules), SYN-ACK out, ACK in: an ESTABLISHED, ASSURED connection."""
    assert not send(w, links, syn(src, sport, dport))[0]
    assert not send(w, links, reply(src, sport, dport), "OUTPUT")[0]
    assert not send(w, links, syn(src, sport, dport, flags=ACK))[0]


def test_above_counts_connections_per_source(cdut):
    """--connlimit-above 2 on SYNs: the third connection of a source is dropped, another source
    has its own list, a retransmitted SYN is one connection, and a connection that ends
    (RST before any reply: conntrack drops it) stops counting."""
    w, links = cdut
    load(w, "-A INPUT -p tcp -m tcp --dport 80 --tcp-flags FIN,SYN,RST,ACK SYN "
            "-m connlimit --connlimit-above 2 --connlimit-mask 32 --connlimit-saddr -j DROP\n")
    assert not send(w, links, syn(A, 1001))[0]
    assert not send(w, links, syn(A, 1002))[0]
    assert lists(w) == {(0, "10.9.0.2"): [1001, 1002]}
    dropped, got = send(w, links, syn(A, 1003))
    assert dropped and got["rules"] == [[0, 1, 40]]
    # the dropped SYN's connection stays listed (never confirmed) until the next walk evicts it
    assert lists(w)[(0, "10.9.0.2")] == [1001, 1002, 1003]
    # a retransmission of an accepted SYN: its connection (confirmed, not ASSURED) is found in
    # the list and not added again; the walk stops there, so the dropped 1003 after it still
    # counts: 3 > 2, dropped too (as nf_conncount does)
    dropped, got = send(w, links, syn(A, 1002))
    assert dropped and got["rules"] == [[0, 1, 40]]
    assert lists(w)[(0, "10.9.0.2")] == [1001, 1002, 1003]
    # the next new connection's walk (in a later jiffy) evicts 1003: 1004 is the third
    tick()
    assert send(w, links, syn(A, 1004))[0]
    assert lists(w)[(0, "10.9.0.2")] == [1001, 1002, 1004]
    tick()
    assert not send(w, links, syn(B, 1001))[0]
    assert lists(w) == {(0, "10.9.0.2"): [1001, 1002, 1004], (0, "10.9.0.3"): [1001]}
    # 1001 ends: a RST before any reply kills the entry; the next SYN's walk evicts it
    assert not send(w, links, syn(A, 1001, flags=RST))[0]
    tick()
    assert not send(w, links, syn(A, 1005))[0]
    assert lists(w)[(0, "10.9.0.2")] == [1002, 1005]
    assert send(w, links, syn(A, 1006))[0]


def test_time_wait_stops_counting(cdut):
    """A connection closed by the FIN handshake is in TIME_WAIT: already_closed, evicted."""
    w, links = cdut
    load(w, "-A INPUT -p tcp -m tcp --dport 80 --tcp-flags FIN,SYN,RST,ACK SYN "
            "-m connlimit --connlimit-above 1 -j DROP\n")
    handshake(w, links, A, 2001)
    assert send(w, links, syn(A, 2002))[0]
    # client FIN, server ACK + FIN, client ACK: TIME_WAIT
    assert not send(w, links, syn(A, 2001, flags=FIN_ACK))[0]
    assert not send(w, links, reply(A, 2001, flags=FIN_ACK), "OUTPUT")[0]
    assert not send(w, links, syn(A, 2001, flags=ACK))[0]
    tick()
    states = {e["state"] for e in w.call(op="ct_list")["entries"] if e["sport"] == 2001}
    assert states == {"TIME_WAIT"}, states
    assert not send(w, links, syn(A, 2003))[0]
    assert lists(w)[(0, "10.9.0.2")] == [2003]


def test_mask_groups_and_daddr(cdut):
    """--connlimit-mask 24 puts two clients in one list; --connlimit-daddr keys by destination."""
    w, links = cdut
    load(w, "-A INPUT -p tcp -m tcp --dport 80 -m connlimit --connlimit-above 1 --connlimit-mask 24 -j DROP\n"
            "-A INPUT -p udp -m udp --dport 53 -m connlimit --connlimit-above 1 --connlimit-daddr -j DROP\n")
    assert not send(w, links, syn(A, 3001))[0]
    assert send(w, links, syn(A2, 3001))[0]
    assert lists(w) == {(0, "10.9.0.0"): [3001, 3001]}
    assert not send(w, links, syn(A, 53, dport=53, proto=UDP))[0]
    assert send(w, links, syn(B, 53, dport=53, proto=UDP))[0]
    assert set(lists(w)) == {(0, "10.9.0.0"), (1, "10.9.0.1")}


def test_upto_accepts_up_to_the_limit(cdut):
    """--connlimit-upto N matches while the count is <= N (XT_CONNLIMIT_INVERT)."""
    w, links = cdut
    rules = ("-A INPUT -p tcp -m tcp --dport 22 -m conntrack --ctstate NEW "
             "-m connlimit --connlimit-upto 2 -j ACCEPT\n"
             "-A INPUT -p tcp -m tcp --dport 22 -m conntrack --ctstate NEW -j DROP\n")
    load(w, rules)
    for port in (4001, 4002):
        ok, got = send(w, links, syn(A, port, 22))
        assert not ok and got["rules"] == [[0, 1, 40]]
    dropped, got = send(w, links, syn(A, 4003, 22))
    assert dropped and got["rules"] == [[1, 1, 40]]


def test_assured_connection_is_not_added(cdut):
    """Without --syn every packet reaches the match; a confirmed, ASSURED connection is not
    added (-EEXIST) but counts the list after a collection; its own SYN put it in the list."""
    w, links = cdut
    load(w, "-A INPUT -p tcp -m tcp --dport 80 -m connlimit --connlimit-above 1 -j DROP\n")
    handshake(w, links, A, 5001)
    assert lists(w)[(0, "10.9.0.2")] == [5001]
    for _ in range(3):
        assert not send(w, links, syn(A, 5001, flags=ACK))[0]
    assert lists(w)[(0, "10.9.0.2")] == [5001]
    # a second connection: its SYN makes the count 2 > 1 and is dropped
    assert send(w, links, syn(A, 5002))[0]


def test_lists_start_empty_with_every_apply(cdut):
    """iptables-restore makes every rule's nf_conncount_data anew: so does an apply."""
    w, links = cdut
    rules = "-A INPUT -p tcp -m tcp --dport 80 -m connlimit --connlimit-above 1 -j DROP\n"
    load(w, rules)
    assert not send(w, links, syn(A, 6001))[0]
    assert send(w, links, syn(A, 6002))[0]
    w.call(op="load", rules=HEAD + rules + "COMMIT\n")     # the conntrack entries stay
    assert lists(w) == {}
    assert not send(w, links, syn(A, 6003))[0]


def test_full_list_hotdrops(cdut):
    """A list holds 128 connections here (EBPFW_CL_CONNS); one more is the kernel's allocation
    failure: hotdrop, counted as such."""
    w, links = cdut
    load(w, "-A INPUT -p udp -m udp --dport 7 -m connlimit --connlimit-above 500 -j DROP\n")
    for port in range(128):
        assert not send(w, links, syn(A, 10000 + port, 7, proto=UDP))[0]
    before = send(w, links, syn(A, 10000, 7, proto=UDP))[1]["stats"]["hotdrop"]   # listed: counted as 128
    dropped, got = send(w, links, syn(A, 20000, 7, proto=UDP))
    assert dropped and got["rules"] == [] and got["stats"]["hotdrop"] == before + 1


@pytest.fixture(scope="module")
def small():
    """A datapath with room for 64 lists (EBPFW_CL_KEYS)."""
    factory = nsh.NetnsFactory()
    try:
        d, peer = factory("eclim"), factory("eclim")
        nsh.veth(d, "va", peer, "pa", "10.9.0.1/24", "10.9.0.2/24")
        import json
        info = json.loads(nsh.run_in(d, "ip -j link show").stdout)
        links = {l["ifname"]: (l["ifindex"], bytes.fromhex(l["address"].replace(":", ""))) for l in info}
        w = Worker(d, env={"EBPFW_TEST_CONNLIMIT": "1", "EBPFW_TEST_CPU": "0", "EBPFW_TEST_CL_KEYS": "64"},
                   strict=True)
        yield w, links
        w.close()
    finally:
        factory.cleanup()


def test_lists_of_ended_connections_make_room(small):
    """Sources that came once and left do not fill the lists: a new key takes the index slot
    of a list whose connections have all ended (the kernel's collector frees such lists);
    300 sources one after the other through 64 slots, none hotdropped."""
    w, links = small
    load(w, "-A INPUT -p tcp -m tcp --dport 80 --tcp-flags FIN,SYN,RST,ACK SYN -m connlimit --connlimit-above 1 -j DROP\n")
    for n in range(300):
        src = ip("10.20.0.0") + n
        dropped, got = send(w, links, syn(src, 5000))
        assert not dropped and got["stats"]["hotdrop"] == 0, n
        assert not send(w, links, syn(src, 5000, flags=RST))[0]      # the connection ends
    assert len(w.call(op="cl_lists")["lists"]) <= 64


def test_lists_of_live_connections_fill_up(small):
    """Live connections keep their lists: with every index slot taken by one, a new key is
    the kernel's allocation failure (hotdrop); the keys already listed go on being counted."""
    w, links = small
    load(w, "-A INPUT -p tcp -m tcp --dport 80 --tcp-flags FIN,SYN,RST,ACK SYN -m connlimit --connlimit-above 1 -j DROP\n")
    hot = 0
    for n in range(100):
        dropped, got = send(w, links, syn(ip("10.21.0.0") + n, 5000))
        hot += dropped
    assert hot >= 100 - 64 and got["stats"]["hotdrop"] >= 100 - 64
    listed = w.call(op="cl_lists")["lists"]
    assert len(listed) <= 64
    first = ip("10.21.0.0") + int(listed[0][1].split(".")[3])
    dropped, got = send(w, links, syn(first, 5001))   # its second connection: above 1, dropped by the rule
    assert dropped and got["rules"] == [[0, 1, 40]]


def test_output_counts_per_destination_at_tc_egress(cdut):
    """OUTPUT (the TC egress program): the host's own connections, counted per destination."""
    w, links = cdut
    load(w, "-A OUTPUT -p tcp -m tcp --dport 443 --tcp-flags FIN,SYN,RST,ACK SYN "
            "-m connlimit --connlimit-above 1 --connlimit-daddr -j DROP\n")
    out = lambda dst, sport: Pkt(ME, dst, TCP, sport=sport, dport=443, flags=SYN, oif="va")   # noqa: E731
    assert not send(w, links, out(A, 7001), "OUTPUT")[0]
    assert send(w, links, out(A, 7002), "OUTPUT")[0]
    assert not send(w, links, out(B, 7003), "OUTPUT")[0]
    assert {k: len(v) for k, v in lists(w).items()} == {(0, "10.9.0.2"): 2, (0, "10.9.0.3"): 1}


def test_emptied_list_hotdrops_assured_packets(cdut):
    """nf_conncount's count of 0: the collection for an ASSURED packet evicts the key's last
    connection (closed by the client's RST): that packet is hotdropped, and so is every ASSURED
    packet of the key while the empty list stays; a new connection of the key ends it."""
    w, links = cdut
    load(w, "-A INPUT -p tcp -m tcp --dport 80 -m connlimit --connlimit-above 5 -j DROP\n")
    handshake(w, links, A, 8001)
    tick()
    h0 = send(w, links, syn(A, 8001, flags=ACK))[1]["stats"]["hotdrop"]
    tick()
    dropped, got = send(w, links, syn(A, 8001, flags=RST | ACK))
    assert dropped and got["rules"] == [] and got["stats"]["hotdrop"] == h0 + 1
    assert lists(w) == {(0, "10.9.0.2"): []}
    tick()
    dropped, got = send(w, links, syn(A, 8001, flags=RST))
    assert dropped and got["stats"]["hotdrop"] == h0 + 2
    assert not send(w, links, syn(A, 8002))[0]
    assert lists(w) == {(0, "10.9.0.2"): [8002]}


# ---- against the model of nf_conncount (tests/connlimit_model.py), packet by packet ----------
def _canon(src: str, sport: int, dst: str, dport: int) -> tuple:
    """ebpfw_ct's direction-free key (ct_key_norm): the lower (address, port) first."""
    a, b = (ip(src), sport), (ip(dst), dport)
    lo, hi = (a, b) if a <= b else (b, a)
    import ipaddress
    return (str(ipaddress.IPv4Address(lo[0])), str(ipaddress.IPv4Address(hi[0])), lo[1], hi[1], 6)


def _ct(w) -> dict:
    return {_canon(e["src"], e["sport"], e["dst"], e["dport"]): e
            for e in w.call(op="ct_list")["entries"] if e["proto"] == 6}


MODEL_RULES = [
    ("-A INPUT -p tcp -m tcp --dport 80 -m connlimit --connlimit-above 1 -j DROP\n", 1, lambda f: True),
    ("-A INPUT -p tcp -m tcp --dport 80 --tcp-flags FIN,SYN,RST,ACK SYN "
     "-m connlimit --connlimit-above 1 -j DROP\n", 1, lambda f: f & 0x17 == SYN),
]


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("variant", range(len(MODEL_RULES)))
def test_random_packets_against_the_model(cdut, seed, variant):
    """Random client packets (SYN, ACK, RST, FIN) and server answers (SYN-ACK, FIN) for six
    connections of two sources: after each packet the verdict and the lists equal the model's,
    fed with the conntrack entries as the datapath has them (one CPU, a jiffy apart)."""
    import random
    from connlimit_model import Rule
    w, links = cdut
    rules, limit, reaches = MODEL_RULES[variant]
    load(w, rules)
    model = Rule(limit)
    rng = random.Random(seed * 7919 + variant)
    srcs = ["10.9.0.2", "10.9.0.7"]
    acts = [("in", SYN)] * 4 + [("out", SYNACK)] * 2 + [("in", ACK)] * 3 + [("in", RST), ("in", FIN_ACK),
                                                                          ("out", FIN_ACK)]
    pre = _ct(w)
    seen: dict = {}
    for step in range(40):
        src, sport = rng.choice(srcs), rng.choice((9001, 9002, 9003))
        way, flags = rng.choice(acts)
        conn = _canon(src, sport, "10.9.0.1", 80)
        tick()
        if way == "out":
            send(w, links, reply(ip(src), sport, flags=flags), "OUTPUT")
            pre = _ct(w)
            continue
        dropped, got = send(w, links, syn(ip(src), sport, flags=flags))
        post = _ct(w)
        what = f"seed {seed} step {step}: {src}:{sport} flags {flags:#x}"
        if reaches(flags):
            confirmed = conn in pre and conn in post and pre[conn]["created_ns"] == post[conn]["created_ns"]
            assured = confirmed and bool(post[conn]["status"] & 2)

            def ct(c, own=conn, confirmed=confirmed, post=post):
                if c == own and not confirmed:
                    return None                       # not in the table while it is judged
                e = post.get(c)
                return None if e is None else e["state"] in ("TIME_WAIT", "CLOSE")
            want = model.match(src, conn, confirmed, assured, ct, jiffies=3 * step)
            assert dropped == (want is not False), f"{what}: model {want}, datapath dropped={dropped}"
            seen[want] = seen.get(want, 0) + 1
        else:
            assert not dropped, what
        mine = {addr: [tuple(e[:5]) for e in ents] for _, addr, ents in w.call(op="cl_lists")["lists"]}
        theirs = {k: [e.conn for e in v.ents] for k, v in model.lists.items()}
        assert mine == theirs, what
        pre = post
    print(f"variant {variant} seed {seed}: match/no match/hotdrop {seen}")
    assert seen.get(False) and seen.get(True), seen      # the sequence tested both outcomes


def test_two_cpus_at_once_accept_exactly_the_limit(cdut):
    """Two CPUs judge new connections of one key at the same time (as far as test runs from two
    threads overlap): exactly `limit` connections are accepted, none lost or counted twice (the
    list's busy word serializes its updates; a refused connection added by the other CPU less
    than 2 jiffies ago is kept, as find_or_evict keeps it)."""
    import os
    from reference import build_frame
    w, links = cdut
    if len(os.sched_getaffinity(0)) < 2:
        pytest.skip("needs two CPUs")
    load(w, "-A INPUT -p udp -m udp --dport 7 -m connlimit --connlimit-above 100 -j DROP\n")
    idx, mac = links["va"]
    jobs = {str(cpu): [build_frame(syn(A, base + i, 7, proto=UDP), mac).hex() for i in range(150)]
            for cpu, base in ((0, 10000), (1, 20000))}
    rets = w.call(op="run_frames_cpus", jobs=jobs, ifindex=idx)["rets"]
    accepted = sum(r == 2 for rs in rets.values() for r in rs)     # XDP_PASS
    assert accepted == 100, {c: sum(r == 2 for r in rs) for c, rs in rets.items()}
