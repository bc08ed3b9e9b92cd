"""REJECT in the datapath, packet by packet: BPF_PROG_TEST_RUN of the real programs (XDP ingress,
TC ingress, TC egress) with -j REJECT rules, checking the answer frame byte by byte against what
the kernel's REJECT builds (nf_send_unreach -> icmp_send, nf_send_reset): addresses, MACs, TOS,
TTL, DF, the quoted original (up to 576 bytes in all), the TCP RST's seq/ack, both checksums;
the cases where the kernel stays silent (RST to a RST, ICMP error to an ICMP error, L2
broadcast, non-first fragments); the per-peer ICMP rate limit; and the rule counters.

Topology as tests/kernel/test_datapath.py (made here): DUT with va 10.9.0.1/24 and vb
10.9.1.1/24, peers in PEER; forwarding on; nothing is transmitted (test runs only).
"""

from __future__ import annotations

import ipaddress
import json
import struct

import pytest

import netns as nsh
from reference import ICMP, TCP, UDP, Pkt, build_frame
from dpclient import Worker

pytestmark = pytest.mark.kernel

XDP_DROP, XDP_PASS = 1, 2
META_MAGIC = 0xEB4F7E1A      # programs/ebpfw.c, struct rejmeta
CHAIN_INPUT, CHAIN_FORWARD = 0, 1
TC_SHOT, TC_REDIRECT = 2, 7
CLIENT_MAC = b"\x02\0\0\0\0\x01"


def ip(s: str) -> int:
    return int(ipaddress.IPv4Address(s))


def csum(b: bytes) -> int:
    if len(b) % 2:
        b += b"\0"
    s = sum(struct.unpack(f"!{len(b) // 2}H", b))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return s


@pytest.fixture(scope="module")
def dut():
    factory = nsh.NetnsFactory()
    try:
        d, peer = factory("rj"), factory("rj")
        nsh.veth(d, "va", peer, "pa", "10.9.0.1/24", "10.9.0.2/24")
        nsh.veth(d, "vb", peer, "pb", "10.9.1.1/24", "10.9.1.2/24")
        nsh.run_in(d, "sysctl -qw net.ipv4.ip_forward=1")
        nsh.run_in(d, "sysctl -qw net.ipv4.icmp_ratelimit=0")   # the rate limit has its own test
        nsh.run_in(d, "ip neigh replace 10.9.1.2 lladdr 02:00:00:00:01:02 dev vb nud permanent")
        nsh.run_in(d, "ip neigh replace 10.9.0.2 lladdr 02:00:00:00:00:02 dev va nud permanent")
        info = json.loads(nsh.run_in(d, "ip -j link show").stdout)
        links = {l["ifname"]: (l["ifindex"], bytes.fromhex(l["address"].replace(":", ""))) for l in info}
        w = Worker(d, env={"EBPFW_GROUP_MIN": "2"})  # as in test_datapath
        yield w, links, d
        w.close()
    finally:
        factory.cleanup()


RULES = """*filter
:INPUT ACCEPT [0:0]
:FORWARD ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
-A INPUT -p tcp -m tcp --dport 1 -j REJECT --reject-with tcp-reset
-A INPUT -p udp -m udp --dport 10 -j REJECT --reject-with icmp-net-unreachable
-A INPUT -p udp -m udp --dport 11 -j REJECT --reject-with icmp-host-unreachable
-A INPUT -p udp -m udp --dport 12 -j REJECT --reject-with icmp-proto-unreachable
-A INPUT -p udp -m udp --dport 13 -j REJECT --reject-with icmp-port-unreachable
-A INPUT -p udp -m udp --dport 19 -j REJECT --reject-with icmp-net-prohibited
-A INPUT -p udp -m udp --dport 20 -j REJECT --reject-with icmp-host-prohibited
-A INPUT -p udp -m udp --dport 23 -j REJECT --reject-with icmp-admin-prohibited
-A INPUT -p tcp -m tcp --dport 2 -j REJECT
-A INPUT -p icmp -j REJECT
-A FORWARD -p udp -j REJECT
-A FORWARD -p tcp -j REJECT --reject-with tcp-reset
-A OUTPUT -p udp -m udp --dport 13 -j REJECT
-A OUTPUT -p tcp -m tcp --dport 1 -j REJECT --reject-with tcp-reset
COMMIT
"""
CODES = {10: 0, 11: 1, 12: 2, 13: 3, 19: 9, 20: 10, 23: 13}


@pytest.fixture(scope="module")
def loaded(dut):
    w, links, d = dut
    r = w.call(op="load", rules=RULES)
    assert r.get("ok"), r
    return w, links, d, r


def run_in_xdp(w, links, p: Pkt, frame: bytes | None = None) -> dict:
    """The XDP program on va, then (for a REJECT verdict) the TC ingress side that answers.
    The XDP program does not answer itself: it passes the packet with a handoff record in the
    XDP metadata (magic, rule arg, hook, l2host, local), which BPF_PROG_TEST_RUN returns in
    front of the frame; the TC side (ebpfw_tc_xdprej, attached next to XDP) builds the answer
    with the same code as the TC ingress program, which this runs on the same frame (a test run
    of a TC program cannot carry XDP metadata). Returns the XDP run, with "ret" the TC verdict
    and "out" the TC output when the packet was handed over."""
    idx, mac = links["va"]
    frame = frame if frame is not None else build_frame(p, mac, CLIENT_MAC)
    got = w.call(op="run", prog="xdp", frame=frame.hex(), ifindex=idx)
    out = bytes.fromhex(got["out"])
    if got["ret"] != XDP_PASS or len(out) != len(frame) + 16:
        assert out == frame or got["ret"] == XDP_DROP, got
        return got
    magic, arg, hook, l2host, local = struct.unpack("<IIBBB", out[:11])
    assert magic == META_MAGIC and out[16:] == frame, got
    assert hook in (CHAIN_INPUT, CHAIN_FORWARD)
    tc = w.call(op="run", prog="tc_ingress", frame=frame.hex(), ifindex=idx, ingress_ifindex=idx)
    return {**got, "ret": tc["ret"], "out": tc["out"], "stats": tc["stats"], "handoff": (arg, hook, l2host, local)}


def check_icmp_answer(out: bytes, orig: bytes, code: int, src: str, dst: str, mac_dst: bytes, mac_src: bytes,
                      tos_in: int = 0) -> None:
    """The answer as icmp_send builds it."""
    orig_ip = orig[14:]
    tot_in = struct.unpack("!H", orig_ip[2:4])[0]
    quote = orig_ip[:min(tot_in, 548)]
    assert out[0:6] == mac_dst and out[6:12] == mac_src and out[12:14] == b"\x08\x00"
    iph = out[14:34]
    ver_ihl, tos, tot, _id, frag, ttl, proto, _chk, s, d = struct.unpack("!BBHHHBBH4s4s", iph)
    assert (ver_ihl, proto, ttl, frag) == (0x45, 1, 64, 0)          # no DF, default TTL
    assert tos == (tos_in & 0x1E) | 0xC0
    assert tot == 28 + len(quote) and len(out) == 14 + tot
    assert (ipaddress.IPv4Address(s), ipaddress.IPv4Address(d)) == (ipaddress.IPv4Address(src),
                                                                      ipaddress.IPv4Address(dst))
    assert csum(iph) == 0xFFFF, "IP header checksum"
    icmp = out[34:]
    assert icmp[0] == 3 and icmp[1] == code and icmp[4:8] == b"\0\0\0\0"
    assert csum(icmp) == 0xFFFF, "ICMP checksum"
    assert icmp[8:] == quote


@pytest.mark.parametrize("dport,code", sorted(CODES.items()))
def test_icmp_reject_types_at_xdp_input(loaded, dport, code):
    w, links, _, r = loaded
    p = Pkt(ip("10.9.0.2"), ip("10.9.0.1"), UDP, dport=dport, iif="va", payload=33)
    frame = build_frame(p, links["va"][1], CLIENT_MAC)
    got = run_in_xdp(w, links, p, frame)
    assert got["ret"] == TC_REDIRECT, got
    check_icmp_answer(bytes.fromhex(got["out"]), frame, code, "10.9.0.1", "10.9.0.2", CLIENT_MAC, links["va"][1])
    rule = r["rule_chain"].index(["INPUT", list(CODES).index(dport) + 1])
    assert got["rules"] == [[rule, 1, p.ip_len]]        # counted once, as iptables counts it
    assert got["chains"] == []


@pytest.mark.parametrize("payload", [0, 1, 2, 3, 501, 520, 527, 528, 529, 1000, 1400])
def test_icmp_quote_is_cut_at_576_bytes(loaded, payload):
    w, links, _, _ = loaded
    p = Pkt(ip("10.9.0.2"), ip("10.9.0.1"), UDP, dport=13, iif="va", payload=payload)
    frame = build_frame(p, links["va"][1], CLIENT_MAC)
    frame = frame[:14] + bytes([0x45, 0x1F]) + frame[16:]       # a TOS with every bit the answer keeps
    frame = frame[:24] + b"\0\0" + frame[26:]
    frame = frame[:24] + struct.pack("!H", 0xFFFF - csum(frame[14:34])) + frame[26:]
    got = run_in_xdp(w, links, p, frame)
    assert got["ret"] == TC_REDIRECT, got
    check_icmp_answer(bytes.fromhex(got["out"]), frame, 3, "10.9.0.1", "10.9.0.2", CLIENT_MAC, links["va"][1],
                      tos_in=0x1F)


def tcp_frame(links, flags: int, seq: int, ack: int, payload: int = 0, dport: int = 1, iif: str = "va",
              src: str = "10.9.0.2", dst: str = "10.9.0.1") -> bytes:
    p = Pkt(ip(src), ip(dst), TCP, sport=4444, dport=dport, flags=flags, iif=iif, payload=payload)
    f = bytearray(build_frame(p, links[iif][1], CLIENT_MAC))
    f[38:42] = struct.pack("!I", seq)
    f[42:46] = struct.pack("!I", ack)
    return bytes(f)   # the TCP checksum is not verified (see programs/ebpfw.c, REJECT)


def check_rst(out: bytes, src: str, dst: str, sport: int, dport: int, seq: int, ack: int, flags: int,
              mac_dst: bytes, mac_src: bytes) -> None:
    assert len(out) == 54
    assert out[0:6] == mac_dst and out[6:12] == mac_src
    iph = out[14:34]
    ver_ihl, tos, tot, ipid, frag, ttl, proto, _c, s, d = struct.unpack("!BBHHHBBH4s4s", iph)
    assert (ver_ihl, tos, tot, ipid, frag, ttl, proto) == (0x45, 0, 40, 0, 0x4000, 64, 6)   # nf_reject_iphdr_put
    assert (str(ipaddress.IPv4Address(s)), str(ipaddress.IPv4Address(d))) == (src, dst)
    assert csum(iph) == 0xFFFF
    th = out[34:54]
    sp, dp, sq, ak, off, fl, win, _chk, urg = struct.unpack("!HHIIBBHHH", th)
    assert (sp, dp, sq, ak, off, fl, win, urg) == (sport, dport, seq, ack, 0x50, flags, 0, 0)
    pseudo = s + d + struct.pack("!BBH", 0, 6, 20)
    assert csum(pseudo + th) == 0xFFFF, "TCP checksum"


@pytest.mark.parametrize("flags,payload,want_seq,want_ack,want_flags", [
    (0x02, 0, 0, 1001, 0x14),          # SYN: ACK|RST, ack = seq + 1
    (0x03, 0, 0, 1002, 0x14),          # SYN|FIN counts both
    (0x18, 100, 777, 0, 0x04),         # PSH|ACK with data: RST, seq = its ack
    (0x11, 10, 777, 0, 0x04),          # FIN|ACK
    (0x01, 10, 0, 1011, 0x14),         # FIN without ACK: ack = seq + 10 + 1
    (0x00, 7, 0, 1007, 0x14),          # no flags
])
def test_tcp_reset_seq_ack_rules(loaded, flags, payload, want_seq, want_ack, want_flags):
    w, links, _, _ = loaded
    frame = tcp_frame(links, flags, 1000, 777, payload)
    got = run_in_xdp(w, links, None, frame)
    assert got["ret"] == TC_REDIRECT, got
    check_rst(bytes.fromhex(got["out"]), "10.9.0.1", "10.9.0.2", 1, 4444, want_seq, want_ack, want_flags,
              CLIENT_MAC, links["va"][1])


def test_no_answer_where_the_kernel_stays_silent(loaded):
    w, links, _, _ = loaded
    before = w.call(op="run", prog="xdp", frame="00" * 14, ifindex=links["va"][0])["stats"]
    quiet = []
    # a RST gets no RST
    got = run_in_xdp(w, links, None, tcp_frame(links, 0x04, 1, 0))
    quiet.append(got["ret"])
    got = run_in_xdp(w, links, None, tcp_frame(links, 0x14, 1, 1))
    quiet.append(got["ret"])
    # an ICMP error gets no ICMP error (an echo request does get one)
    p = Pkt(ip("10.9.0.2"), ip("10.9.0.1"), ICMP, icmp_type=3, icmp_code=3, iif="va", payload=28)
    quiet.append(run_in_xdp(w, links, p)["ret"])
    p = Pkt(ip("10.9.0.2"), ip("10.9.0.1"), ICMP, icmp_type=11, iif="va", payload=28)
    quiet.append(run_in_xdp(w, links, p)["ret"])
    p = Pkt(ip("10.9.0.2"), ip("10.9.0.1"), ICMP, icmp_type=8, iif="va")
    frame = build_frame(p, links["va"][1], CLIENT_MAC)
    got = run_in_xdp(w, links, p, frame)
    assert got["ret"] == TC_REDIRECT
    check_icmp_answer(bytes.fromhex(got["out"]), frame, 3, "10.9.0.1", "10.9.0.2", CLIENT_MAC, links["va"][1])
    # L2 broadcast
    p = Pkt(ip("10.9.0.2"), ip("10.9.0.1"), UDP, dport=13, iif="va")
    frame = build_frame(p, b"\xff" * 6, CLIENT_MAC)
    quiet.append(run_in_xdp(w, links, p, frame)["ret"])
    # a non-first fragment (it reaches `-p icmp -j REJECT`, which needs no L4 header)
    p = Pkt(ip("10.9.0.2"), ip("10.9.0.1"), ICMP, icmp_type=8, iif="va")
    frame = bytearray(build_frame(p, links["va"][1], CLIENT_MAC))
    frame[20:22] = struct.pack("!H", 0x0010)
    frame[24:26] = b"\0\0"
    frame[24:26] = struct.pack("!H", 0xFFFF - csum(bytes(frame[14:34])))
    got = run_in_xdp(w, links, p, bytes(frame))
    quiet.append(got["ret"])
    assert quiet == [TC_SHOT] * 6
    after = got["stats"]
    assert after["reject_quiet"] - before["reject_quiet"] == 6
    assert after["reject_failed"] == before["reject_failed"]


def test_forward_reject_answers_from_the_route_back(loaded):
    w, links, _, r = loaded
    p = Pkt(ip("10.9.0.2"), ip("10.9.1.2"), UDP, dport=999, iif="va", oif="vb", payload=5)
    frame = build_frame(p, links["va"][1], CLIENT_MAC)
    got = run_in_xdp(w, links, p, frame)
    assert got["ret"] == TC_REDIRECT, got
    check_icmp_answer(bytes.fromhex(got["out"]), frame, 3, "10.9.0.1", "10.9.0.2", CLIENT_MAC, links["va"][1])
    assert got["rules"] == [[r["rule_chain"].index(["FORWARD", 0]), 1, p.ip_len]]
    # a RST for a forwarded connection comes from the original destination
    got = run_in_xdp(w, links, None, tcp_frame(links, 0x02, 5, 0, dst="10.9.1.2"))
    assert got["ret"] == TC_REDIRECT, got
    check_rst(bytes.fromhex(got["out"]), "10.9.1.2", "10.9.0.2", 1, 4444, 0, 6, 0x14, CLIENT_MAC, links["va"][1])


def test_tc_ingress_redirects_the_answer(loaded):
    w, links, _, _ = loaded
    idx, mac = links["va"]
    p = Pkt(ip("10.9.0.2"), ip("10.9.0.1"), UDP, dport=20, iif="va", payload=60)
    frame = build_frame(p, mac, CLIENT_MAC)
    got = w.call(op="run", prog="tc_ingress", frame=frame.hex(), ifindex=idx, ingress_ifindex=idx)
    assert got["ret"] == TC_REDIRECT, got
    check_icmp_answer(bytes.fromhex(got["out"]), frame, 10, "10.9.0.1", "10.9.0.2", CLIENT_MAC, mac)
    got = w.call(op="run", prog="tc_ingress", frame=tcp_frame(links, 0x02, 9, 0, payload=3).hex(), ifindex=idx,
                 ingress_ifindex=idx)
    assert got["ret"] == TC_REDIRECT, got
    check_rst(bytes.fromhex(got["out"]), "10.9.0.1", "10.9.0.2", 1, 4444, 0, 13, 0x14, CLIENT_MAC, mac)


def test_tc_egress_output_answers_to_the_local_stack(loaded):
    """OUTPUT: the answer goes to a local address, so it enters through lo (zero MACs)."""
    w, links, _, r = loaded
    idx, mac = links["vb"]
    p = Pkt(ip("10.9.1.1"), ip("10.9.1.2"), UDP, dport=13, oif="vb", payload=11)
    frame = build_frame(p, b"\x02\0\0\0\x01\x02", mac)
    got = w.call(op="run", prog="tc_egress", frame=frame.hex(), ifindex=idx, ingress_ifindex=0)
    assert got["ret"] == TC_REDIRECT, got
    check_icmp_answer(bytes.fromhex(got["out"]), frame, 3, "10.9.1.2", "10.9.1.1", b"\0" * 6, b"\0" * 6)
    assert got["rules"] == [[r["rule_chain"].index(["OUTPUT", 0]), 1, p.ip_len]]
    f = tcp_frame(links, 0x02, 41, 0, iif="vb", src="10.9.1.1", dst="10.9.1.2")
    got = w.call(op="run", prog="tc_egress", frame=f.hex(), ifindex=idx, ingress_ifindex=0)
    assert got["ret"] == TC_REDIRECT, got
    check_rst(bytes.fromhex(got["out"]), "10.9.1.2", "10.9.1.1", 1, 4444, 0, 42, 0x14, b"\0" * 6, b"\0" * 6)


def test_icmp_errors_follow_the_per_peer_rate_limit(dut):
    """icmp_ratelimit (1000 ms): a burst of 6 errors per peer, then one per second; RSTs are not
    limited. The limit is read from the namespace's sysctl when the ruleset is written."""
    w, links, d = dut
    nsh.run_in(d, "sysctl -qw net.ipv4.icmp_ratelimit=1000")
    try:
        assert w.call(op="load", rules=RULES).get("ok")
        rets = []
        for _ in range(9):
            p = Pkt(ip("10.9.0.77"), ip("10.9.0.1"), UDP, dport=13, iif="va")
            rets.append(run_in_xdp(w, links, p)["ret"])
        assert rets == [TC_REDIRECT] * 6 + [TC_SHOT] * 3
        # another peer has its own bucket; RSTs are not limited
        p = Pkt(ip("10.9.0.78"), ip("10.9.0.1"), UDP, dport=13, iif="va")
        assert run_in_xdp(w, links, p)["ret"] == TC_REDIRECT
        for _ in range(8):
            got = run_in_xdp(w, links, None, tcp_frame(links, 0x02, 1, 0, src="10.9.0.77"))
            assert got["ret"] == TC_REDIRECT
        assert got["stats"]["reject_ratelimited"] >= 3
    finally:
        nsh.run_in(d, "sysctl -qw net.ipv4.icmp_ratelimit=0")
        assert w.call(op="load", rules=RULES).get("ok")
