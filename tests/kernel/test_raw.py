"""The raw table in the datapath, through BPF_PROG_TEST_RUN: crafted packets against the real
programs (raw stage and conntrack compiled in), reading which raw and filter rules counted
(filter's per-state counting rules give the packet's ctstate) and the conntrack table.

What the kernel does (net/netfilter/xt_CT.c notrack_tg, nf_conntrack_core.c nf_conntrack_in):
raw PREROUTING / OUTPUT run before connection tracking; NOTRACK and CT --notrack set the packet
untracked and continue; conntrack then neither creates nor updates an entry, and filter's
-m conntrack/-m state see UNTRACKED; a reply to an untracked request is tracked (NEW) unless it
is notracked too; ACCEPT ends the raw table only; DROP drops there (counted in raw).

Topology (all made here): namespace DUT with veths `va` (10.9.0.1/24) and `vb` (10.9.1.1/24)
whose peers are in namespace PEER; forwarding on; 10.9.1.2 has a permanent neighbour entry.
Nothing is transmitted: test runs do not send packets anywhere.
"""

from __future__ import annotations

import json

import pytest
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.l2 import Ether

import netns as nsh
from dpclient import Worker

pytestmark = pytest.mark.kernel

XDP_DROP, XDP_PASS = 1, 2
TC_OK, TC_SHOT = 0, 2
DUT, PEER, FAR = "10.9.0.1", "10.9.0.2", "10.9.1.2"

RULES = """*raw
:PREROUTING ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:RAWCHK - [0:0]
-A PREROUTING -p udp -m udp --dport 53 -j NOTRACK
-A PREROUTING -p udp -m udp --dport 54 -j CT --notrack
-A PREROUTING -s 10.9.0.66/32 -j DROP
-A PREROUTING -p tcp -j RAWCHK
-A PREROUTING -p icmp
-A OUTPUT -p udp -m udp --sport 53 -j NOTRACK
-A OUTPUT -d 10.9.0.77/32 -j DROP
-A RAWCHK -s 10.9.0.2/32 -j RETURN
-A RAWCHK -p tcp -m tcp --dport 25 -j NOTRACK
-A RAWCHK -p tcp -m tcp --dport 26 -j ACCEPT
-A RAWCHK -p tcp -m tcp --dport 26 -j NOTRACK
COMMIT
*filter
:INPUT ACCEPT [0:0]
:FORWARD ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
-A INPUT -m conntrack --ctstate UNTRACKED
-A INPUT -m conntrack --ctstate NEW
-A INPUT -m conntrack --ctstate ESTABLISHED
-A INPUT -m conntrack --ctstate INVALID
-A INPUT -p udp -m udp --dport 99 -j DROP
-A FORWARD -m state --state UNTRACKED
-A FORWARD -m state --state NEW
-A OUTPUT -m conntrack --ctstate UNTRACKED
-A OUTPUT -m conntrack --ctstate NEW
-A OUTPUT -m conntrack --ctstate ESTABLISHED
-A OUTPUT -m conntrack --ctstate INVALID
COMMIT
"""
STATES = ("UNTRACKED", "NEW", "ESTABLISHED", "INVALID")


@pytest.fixture(scope="module")
def dut():
    factory = nsh.NetnsFactory()
    try:
        d, peer = factory("eraw"), factory("eraw")
        nsh.veth(d, "va", peer, "pa", "10.9.0.1/24", "10.9.0.2/24")
        nsh.veth(d, "vb", peer, "pb", "10.9.1.1/24", "10.9.1.2/24")
        nsh.run_in(d, "sysctl -qw net.ipv4.ip_forward=1")
        nsh.run_in(d, "ip neigh replace 10.9.1.2 lladdr 02:00:00:00:01:02 dev vb nud permanent")
        info = json.loads(nsh.run_in(d, "ip -j link show").stdout)
        links = {l["ifname"]: (l["ifindex"], bytes.fromhex(l["address"].replace(":", ""))) for l in info}
        w = Worker(d, env={"EBPFW_TEST_CT": "1", "EBPFW_TEST_RAW": "1"}, strict=True)
        yield w, links
        w.close()
    finally:
        factory.cleanup()


class Dp:
    def __init__(self, w: Worker, links: dict, rules: str = RULES):
        self.w, self.links = w, links
        res = self.loaded = w.call(op="load", rules=rules)
        self.rule_chain = [tuple(x) for x in res["rule_chain"]]
        self.chains = res["chains"]
        w.call(op="ct_flush")
        w.call(op="ct_config", timeouts={}, tcp_loose=True)

    def _run(self, prog: str, frame: bytes, ifindex: int, ingress_ifindex: int = 0, mark: int = 0) -> dict:
        r = self.w.call(op="run", prog=prog, frame=frame.hex(), ifindex=ifindex, ingress_ifindex=ingress_ifindex,
                        mark=mark)
        r["hits"] = {self.rule_chain[i]: p for i, p, _ in r["rules"]}
        r["policies"] = {self.chains[c]: p for c, p, _ in r["chains"]}
        return r

    def inbound(self, l3, prog: str = "xdp", iface: str = "va") -> dict:
        idx, mac = self.links[iface]
        return self._run(prog, bytes(Ether(dst=mac, src="02:00:00:00:00:02") / l3), idx)

    def outbound(self, l3, iface: str = "va", mark: int = 0) -> dict:
        idx, mac = self.links[iface]
        return self._run("tc_egress", bytes(Ether(dst="02:00:00:00:00:02", src=mac) / l3), idx, mark=mark)

    def forwarded_at_egress(self, l3, iface: str = "va", from_iface: str = "vb") -> dict:
        """A packet routed from `from_iface` (whose ingress ebpfw does not judge) out of `iface`."""
        idx, mac = self.links[iface]
        return self._run("tc_egress", bytes(Ether(dst="02:00:00:00:00:02", src=mac) / l3), idx,
                         self.links[from_iface][0])

    def entries(self) -> list[dict]:
        return self.w.call(op="ct_list")["entries"]


def state_of(r: dict, chain: str) -> str:
    """The ctstate the filter chain's counting rules saw (exactly one of them counts)."""
    hit = [STATES[i] for (c, i), _ in r["hits"].items() if c == chain and i < len(STATES)]
    assert len(hit) == 1, f"expected one {chain} state rule to count, got {r['hits']}"
    return hit[0]


@pytest.fixture
def dp(dut):
    return Dp(*dut)


def test_notrack_dns_query_and_answer(dp):
    r = dp.inbound(IP(src=PEER, dst=DUT) / UDP(sport=40000, dport=53))
    assert r["ret"] == XDP_PASS
    assert r["hits"][("raw PREROUTING", 0)] == 1
    assert state_of(r, "INPUT") == "UNTRACKED"
    # NOTRACK continues: raw PREROUTING's policy ends the raw table, INPUT's the filter table
    assert r["policies"] == {"raw PREROUTING": 1, "INPUT": 1}
    assert dp.entries() == [], "an untracked query makes no connection"
    r = dp.outbound(IP(src=DUT, dst=PEER) / UDP(sport=53, dport=40000))
    assert r["ret"] == TC_OK
    assert r["hits"][("raw OUTPUT", 0)] == 1
    assert state_of(r, "OUTPUT") == "UNTRACKED"
    assert dp.entries() == []


def test_raw_accept_runs_policy_and_counts_it(dp):
    """A packet no raw rule ends goes through raw PREROUTING's policy (counted) and is tracked."""
    r = dp.inbound(IP(src=PEER, dst=DUT) / ICMP(type=8, id=7))
    assert r["hits"][("raw PREROUTING", 4)] == 1          # the counting rule
    assert r["policies"]["raw PREROUTING"] == 1
    assert state_of(r, "INPUT") == "NEW"
    assert len(dp.entries()) == 1


def test_ct_notrack_and_tracked_reply(dp):
    """CT --notrack is NOTRACK; the reply, which no raw rule exempts, is tracked as NEW (the
    request made no connection), and its own reply is ESTABLISHED."""
    r = dp.inbound(IP(src=PEER, dst=DUT) / UDP(sport=40001, dport=54))
    assert r["hits"][("raw PREROUTING", 1)] == 1
    assert state_of(r, "INPUT") == "UNTRACKED"
    assert dp.entries() == []
    r = dp.outbound(IP(src=DUT, dst=PEER) / UDP(sport=54, dport=40001))
    assert ("raw OUTPUT", 0) not in r["hits"]
    assert r["policies"]["raw OUTPUT"] == 1
    assert state_of(r, "OUTPUT") == "NEW"
    (e,) = dp.entries()
    assert (e["src"], e["dst"], e["sport"], e["dport"]) == (DUT, PEER, 54, 40001)
    # the next request is notracked again: untracked, and it leaves the entry alone
    r = dp.inbound(IP(src=PEER, dst=DUT) / UDP(sport=40001, dport=54))
    assert state_of(r, "INPUT") == "UNTRACKED"
    (e2,) = dp.entries()
    assert e2["packets"] == e["packets"], "an untracked packet does not update the connection"


def test_exemption_is_per_packet_not_per_flow(dp):
    """A locally generated query to port 53 is tracked (raw OUTPUT exempts only --sport 53);
    its answer from port 53 is not exempted either: ESTABLISHED."""
    r = dp.outbound(IP(src=DUT, dst=PEER) / UDP(sport=40002, dport=53))
    assert state_of(r, "OUTPUT") == "NEW"
    assert len(dp.entries()) == 1
    r = dp.inbound(IP(src=PEER, dst=DUT) / UDP(sport=53, dport=40002))
    assert ("raw PREROUTING", 0) not in r["hits"]
    assert state_of(r, "INPUT") == "ESTABLISHED"


def test_raw_drop_by_source(dp):
    r = dp.inbound(IP(src="10.9.0.66", dst=DUT) / UDP(sport=1, dport=99))
    assert r["ret"] == XDP_DROP
    assert r["hits"] == {("raw PREROUTING", 2): 1}
    assert r["policies"] == {}
    assert dp.entries() == []
    r = dp.outbound(IP(src=DUT, dst="10.9.0.77") / TCP(sport=22, dport=40000, flags="S"))
    assert r["ret"] == TC_SHOT
    assert r["hits"] == {("raw OUTPUT", 1): 1}
    assert dp.entries() == []


def test_user_chain_return_notrack_and_accept(dp):
    # 10.9.0.2 returns from RAWCHK at once: tracked
    r = dp.inbound(IP(src=PEER, dst=DUT) / TCP(sport=40000, dport=25, flags="S"))
    assert r["hits"][("raw PREROUTING", 3)] == 1 and r["hits"][("raw RAWCHK", 0)] == 1
    assert ("raw RAWCHK", 1) not in r["hits"]
    assert r["policies"]["raw PREROUTING"] == 1
    assert state_of(r, "INPUT") == "NEW"
    # another source goes on to the NOTRACK rule
    r = dp.inbound(IP(src="10.9.0.3", dst=DUT) / TCP(sport=40000, dport=25, flags="S"))
    assert r["hits"][("raw RAWCHK", 1)] == 1
    assert state_of(r, "INPUT") == "UNTRACKED"
    # ACCEPT ends the raw table: the NOTRACK after it is never reached
    r = dp.inbound(IP(src="10.9.0.3", dst=DUT) / TCP(sport=40000, dport=26, flags="S"))
    assert r["hits"][("raw RAWCHK", 2)] == 1 and ("raw RAWCHK", 3) not in r["hits"]
    assert "raw PREROUTING" not in r["policies"]
    assert state_of(r, "INPUT") == "NEW"
    assert len(dp.entries()) == 2


def test_tc_ingress_and_forward(dp):
    r = dp.inbound(IP(src=PEER, dst=DUT) / UDP(sport=40003, dport=53), prog="tc_ingress")
    assert r["ret"] == TC_OK
    assert r["hits"][("raw PREROUTING", 0)] == 1 and state_of(r, "INPUT") == "UNTRACKED"
    r = dp.inbound(IP(src=PEER, dst=FAR) / UDP(sport=40003, dport=53))
    assert r["ret"] == XDP_PASS
    assert r["hits"][("raw PREROUTING", 0)] == 1
    assert r["hits"].get(("FORWARD", 0)) == 1 and ("FORWARD", 1) not in r["hits"]
    r = dp.inbound(IP(src=PEER, dst=FAR) / UDP(sport=40003, dport=80))
    assert r["hits"].get(("FORWARD", 1)) == 1
    assert len(dp.entries()) == 1
    # a forwarded packet judged at egress (it came in through an interface ebpfw does not
    # judge) gets raw PREROUTING there
    r = dp.forwarded_at_egress(IP(src=FAR, dst=PEER, ttl=63) / UDP(sport=40004, dport=53))
    assert r["ret"] == TC_OK
    assert r["hits"][("raw PREROUTING", 0)] == 1 and r["hits"].get(("FORWARD", 0)) == 1
    assert ("raw OUTPUT", 0) not in r["hits"]


def test_raw_sees_packets_routing_drops(dp):
    """raw PREROUTING runs before the routing decision: a forwarded packet with TTL 1 is counted
    (and could be dropped) there; ip_forward then drops it before FORWARD: no filter counter."""
    r = dp.inbound(IP(src=PEER, dst=FAR, ttl=1) / UDP(sport=40005, dport=53))
    assert r["ret"] == XDP_PASS
    assert r["hits"] == {("raw PREROUTING", 0): 1}
    r = dp.inbound(IP(src="10.9.0.66", dst=FAR, ttl=1) / UDP(sport=40005, dport=7))
    assert r["ret"] == XDP_DROP and r["hits"] == {("raw PREROUTING", 2): 1}


def test_filter_drop_of_untracked_packet(dp):
    """The filter table still judges untracked packets (here a DROP after the counting rules)."""
    r = dp.inbound(IP(src=PEER, dst=DUT) / UDP(sport=53, dport=99))
    assert ("raw PREROUTING", 0) not in r["hits"]
    assert r["ret"] == XDP_DROP and r["hits"][("INPUT", 4)] == 1


def test_long_raw_walk_continues_in_tail_calls(dut):
    """More matching raw rules than one program walks (256 steps): the raw continuation
    program goes on, every rule counts, and the NOTRACK at the end still applies."""
    n = 300
    rules = "*raw\n:PREROUTING ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n"
    rules += "".join(f"-A PREROUTING -p udp -m comment --comment c{i}\n" for i in range(n))
    rules += "-A PREROUTING -p udp -j NOTRACK\nCOMMIT\n" + RULES[RULES.index("*filter"):]
    d = Dp(*dut, rules=rules)
    r = d.inbound(IP(src=PEER, dst=DUT) / UDP(sport=40006, dport=9))
    assert r["ret"] == XDP_PASS
    assert sum(1 for (c, _) in r["hits"] if c == "raw PREROUTING") == n + 1
    assert state_of(r, "INPUT") == "UNTRACKED"
    assert d.entries() == []


def test_ruleset_without_raw_in_raw_programs(dut):
    """Programs with the raw stage enforce a ruleset without a raw table as before."""
    d = Dp(*dut, rules=RULES[RULES.index("*filter"):])
    r = d.inbound(IP(src=PEER, dst=DUT) / UDP(sport=40007, dport=53))
    assert r["ret"] == XDP_PASS and state_of(r, "INPUT") == "NEW"
    assert not any(c.startswith("raw ") for c in d.chains)
    r = d.outbound(IP(src=DUT, dst=PEER) / UDP(sport=53, dport=40007))
    assert state_of(r, "OUTPUT") == "ESTABLISHED"
    r = d.inbound(IP(src="10.9.0.66", dst=DUT) / UDP(sport=1, dport=99))
    assert r["ret"] == XDP_DROP and r["hits"][("INPUT", 4)] == 1


MARK_RULES = """*raw
:PREROUTING ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
-A PREROUTING -p udp -m udp --dport 60 -j MARK --set-xmark 0x5/0xffffffff
-A PREROUTING -m mark --mark 0x5 -j NOTRACK
-A PREROUTING -m connmark --mark 0x0
-A PREROUTING -m connmark ! --mark 0x1
-A PREROUTING -p udp -m udp --dport 61 -j CONNMARK --set-xmark 0x7/0xffffffff
-A OUTPUT -m mark --mark 0x9 -j MARK --set-xmark 0x3/0xffffffff
COMMIT
*filter
:INPUT ACCEPT [0:0]
:FORWARD ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
-A INPUT -m conntrack --ctstate UNTRACKED
-A INPUT -m conntrack --ctstate NEW
-A INPUT -m conntrack --ctstate ESTABLISHED
-A INPUT -m conntrack --ctstate INVALID
-A INPUT -m mark --mark 0x5
-A INPUT -m connmark --mark 0x7
-A OUTPUT -m conntrack --ctstate UNTRACKED
-A OUTPUT -m conntrack --ctstate NEW
-A OUTPUT -m conntrack --ctstate ESTABLISHED
-A OUTPUT -m conntrack --ctstate INVALID
-A OUTPUT -m mark --mark 0x3
COMMIT
"""


def test_marks_in_raw(dut):
    """MARK in raw changes the mark the rest of raw, filter and the stack see; raw has no
    connection yet, so -m connmark never matches there (inverted or not) and CONNMARK does
    nothing (xt_connmark without a ct)."""
    d = Dp(*dut, rules=MARK_RULES)
    r = d.inbound(IP(src=PEER, dst=DUT) / UDP(sport=40010, dport=60), prog="tc_ingress")
    assert r["ret"] == TC_OK and r["mark"] == 0x5
    assert r["hits"][("raw PREROUTING", 0)] == 1 and r["hits"][("raw PREROUTING", 1)] == 1
    assert ("raw PREROUTING", 2) not in r["hits"] and ("raw PREROUTING", 3) not in r["hits"]
    assert state_of(r, "INPUT") == "UNTRACKED" and r["hits"][("INPUT", 4)] == 1
    r = d.inbound(IP(src=PEER, dst=DUT) / UDP(sport=40011, dport=61), prog="tc_ingress")
    assert r["hits"][("raw PREROUTING", 4)] == 1 and ("raw PREROUTING", 2) not in r["hits"]
    assert state_of(r, "INPUT") == "NEW" and ("INPUT", 5) not in r["hits"] and r["mark"] == 0
    (e,) = d.entries()
    assert e["mark"] == 0, "CONNMARK in raw made no connection mark"
    r = d.outbound(IP(src=DUT, dst=PEER) / UDP(sport=7, dport=40012), mark=0x9)
    assert r["ret"] == TC_OK and r["mark"] == 0x3
    assert r["hits"][("raw OUTPUT", 0)] == 1 and r["hits"][("OUTPUT", 4)] == 1
    assert state_of(r, "OUTPUT") == "NEW"


def test_later_fragments_of_an_exempted_datagram(dp):
    """The kernel reassembles before raw and exempts the whole datagram; ebpfw judges fragments
    one by one: the first matches the port rule, the later ones (no ports) take its label."""
    first = IP(src=PEER, dst=DUT, id=4242, flags="MF", frag=0) / UDP(sport=40020, dport=53, len=8 + 40) / (b"x" * 16)
    later = IP(src=PEER, dst=DUT, id=4242, frag=3, proto=17) / (b"y" * 16)
    r = dp.inbound(first)
    assert r["hits"][("raw PREROUTING", 0)] == 1 and state_of(r, "INPUT") == "UNTRACKED"
    r = dp.inbound(later)
    assert ("raw PREROUTING", 0) not in r["hits"]
    assert state_of(r, "INPUT") == "UNTRACKED"
    assert dp.entries() == []
    # a datagram whose first fragment was tracked: its later fragments are not exempted
    first = IP(src=PEER, dst=DUT, id=4243, flags="MF", frag=0) / UDP(sport=40021, dport=80, len=8 + 40) / (b"x" * 16)
    r = dp.inbound(first)
    assert state_of(r, "INPUT") == "NEW"
    r = dp.inbound(IP(src=PEER, dst=DUT, id=4243, frag=3, proto=17) / (b"y" * 16))
    assert state_of(r, "INPUT") == "NEW"


def test_grouped_blocklists_in_both_tables(dut):
    """Exact-match groups (hash lookups) hold rules of both tables: a raw PREROUTING blocklist
    (an early drop before conntrack) and a filter INPUT blocklist of the same shape; each packet's
    hits are computed for the raw walk and again for the filter walk."""
    n = 40
    rules = "*raw\n:PREROUTING ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n"
    rules += "".join(f"-A PREROUTING -s 10.77.0.{i}/32 -j DROP\n" for i in range(1, n + 1))
    rules += "-A PREROUTING -p udp -m udp --dport 53 -j NOTRACK\nCOMMIT\n"
    filt = RULES[RULES.index("*filter"):].replace("COMMIT", "".join(
        f"-A INPUT -s 10.78.0.{i}/32 -j DROP\n" for i in range(1, n + 1)) + "COMMIT", 1)
    d = Dp(*dut, rules=rules + filt)
    assert d.loaded["groups"] >= 1 and d.loaded["grouped"] >= 2 * n, d.loaded
    r = d.inbound(IP(src="10.77.0.5", dst=DUT) / UDP(sport=1, dport=53))
    assert r["ret"] == XDP_DROP and r["hits"] == {("raw PREROUTING", 4): 1}
    r = d.inbound(IP(src="10.78.0.7", dst=DUT) / UDP(sport=1, dport=53))
    assert r["ret"] == XDP_DROP
    assert r["hits"][("raw PREROUTING", n)] == 1 and state_of(r, "INPUT") == "UNTRACKED"
    assert r["hits"][("INPUT", 5 + 6)] == 1
    r = d.inbound(IP(src="10.78.0.99", dst=DUT) / UDP(sport=1, dport=80))
    assert r["ret"] == XDP_PASS and state_of(r, "INPUT") == "NEW"
    assert r["policies"] == {"raw PREROUTING": 1, "INPUT": 1}


RAW_CT = """*raw
:PREROUTING ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
-A PREROUTING -p udp -m udp --dport 70 -m conntrack --ctstate INVALID
-A PREROUTING -p udp -m udp --dport 70 -m conntrack ! --ctstate INVALID
-A PREROUTING -p udp -m udp --dport 70 -j NOTRACK
-A PREROUTING -p udp -m udp --dport 70 -m state --state UNTRACKED
-A PREROUTING -p udp -m udp --dport 70 -m state --state INVALID
-A PREROUTING -p udp -m udp --dport 71 -m state --state UNTRACKED
-A OUTPUT -m conntrack --ctstate NEW,ESTABLISHED,RELATED
-A OUTPUT -m conntrack --ctstate INVALID
COMMIT
"""


def test_conntrack_matches_inside_raw(dut):
    """In raw, conntrack has not run: xt_conntrack finds no connection (INVALID); after NOTRACK
    the packet is UNTRACKED for the rest of the raw table."""
    d = Dp(*dut, rules=RAW_CT + RULES[RULES.index("*filter"):])
    r = d.inbound(IP(src=PEER, dst=DUT) / UDP(sport=40030, dport=70))
    assert {k: v for k, v in r["hits"].items() if k[0] == "raw PREROUTING"} == {
        ("raw PREROUTING", 0): 1, ("raw PREROUTING", 2): 1, ("raw PREROUTING", 3): 1}
    assert state_of(r, "INPUT") == "UNTRACKED"
    r = d.inbound(IP(src=PEER, dst=DUT) / UDP(sport=40031, dport=71))
    assert not any(k[0] == "raw PREROUTING" for k in r["hits"]) and state_of(r, "INPUT") == "NEW"
    r = d.outbound(IP(src=DUT, dst=PEER) / UDP(sport=71, dport=40031))
    assert r["hits"].get(("raw OUTPUT", 1)) == 1 and ("raw OUTPUT", 0) not in r["hits"]
    assert state_of(r, "OUTPUT") == "ESTABLISHED"
