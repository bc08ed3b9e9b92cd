"""Connection tracking without the kernel: the `ct` field of the compiler, the shape, the TCP
table encoding, timeouts from the environment, keys, and seeding from kernel entries."""

from __future__ import annotations

import types

import pytest

from ebpfw.compiler import compile_plan
from ebpfw.datapath import ct as ctdata
from ebpfw.datapath.abi import CT_CFG, CT_KEY, CT_VAL, Shape, shape_for
from ebpfw.errors import EbpfwError, RulesetError
from ebpfw.iptables import parse_ruleset
from ebpfw import conntrack

INVALID, ESTABLISHED, RELATED, NEW, UNTRACKED = range(5)


def plan_of(rules: str):
    text = f"*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n{rules}\nCOMMIT\n"
    return compile_plan(parse_ruleset(text, "t.rules").table("filter"))


def rules_for(plan, bit: int) -> set[int]:
    v = plan.vectors[plan.ct[bit]]
    return {r for r in range(plan.nrules) if v >> r & 1}


def test_ct_field_classes_by_state_bit():
    p = plan_of("-A INPUT -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT\n"
                "-A INPUT -m conntrack --ctstate INVALID -j DROP\n"
                "-A INPUT -p tcp -m tcp --dport 22 -m state --state NEW -j ACCEPT\n"
                "-A INPUT -m conntrack ! --ctstate NEW -j DROP\n"
                "-A INPUT -j ACCEPT")
    assert len(p.ct) == 8 and "ct" in p.fields
    assert rules_for(p, ESTABLISHED) == {0, 3, 4}
    assert rules_for(p, RELATED) == {0, 3, 4}
    assert rules_for(p, INVALID) == {1, 3, 4}
    assert rules_for(p, NEW) == {2, 4}
    assert rules_for(p, UNTRACKED) == {3, 4}


def test_conntrack_and_state_in_one_rule_are_anded():
    p = plan_of("-A INPUT -m conntrack --ctstate NEW,ESTABLISHED -m state --state ESTABLISHED,RELATED")
    assert rules_for(p, ESTABLISHED) == {0}
    assert rules_for(p, NEW) == set() and rules_for(p, RELATED) == set()


def test_stateless_plan_has_no_ct_and_shape_no_conntrack():
    p = plan_of("-A INPUT -p tcp -m tcp --dport 22 -j ACCEPT")
    assert p.ct is None
    s = shape_for(p, 4)
    assert "ct" not in s.fields and s.ct_size == 0
    assert not any("CT" in f for f in s.cflags())


def test_shape_with_ct_size_from_env(monkeypatch):
    p = plan_of("-A INPUT -m conntrack --ctstate ESTABLISHED -j ACCEPT")
    monkeypatch.delenv("EBPFW_CT_SIZE", raising=False)
    assert shape_for(p, 4).ct_size == 262144
    monkeypatch.setenv("EBPFW_CT_SIZE", "1048576")
    s = shape_for(p, 4)
    assert s.ct_size == 1048576 and "-DEBPFW_CT_SIZE=1048576" in s.cflags() and "-DEBPFW_F_CT" in s.cflags()
    # a different size does not fit: new programs, and the table is resized
    assert not Shape.from_json({**s.to_json(), "ct_size": 262144}).fits(s)
    assert Shape.from_json(s.to_json()).fits(s)
    monkeypatch.setenv("EBPFW_CT_SIZE", "12")
    with pytest.raises(EbpfwError, match="EBPFW_CT_SIZE"):
        shape_for(p, 4)


def test_old_shape_json_without_ct_size_still_loads():
    d = {"nwords": 4, "vcap": 64, "rcap": 256, "ccap": 16, "lpm_cap": 64, "ifc_cap": 64, "maxdepth": 8,
         "fields": ["proto"]}
    assert Shape.from_json(d).ct_size == 0


def test_tcp_rows_encode_netfilters_table():
    rows = ctdata.tcp_rows()
    assert len(rows) == 12
    for d in range(2):
        for idx in range(6):
            for old in range(10):
                assert (rows[d * 6 + idx] >> (4 * old)) & 0xF == ctdata.TCP_CONNTRACKS[d][idx][old]
    # a few transitions named in nf_conntrack_proto_tcp.c
    T = ctdata.TCP_CONNTRACKS
    assert T[0][0][ctdata.sNO] == ctdata.sSS      # SYN starts a connection
    assert T[1][1][ctdata.sSS] == ctdata.sSR      # SYN-ACK reply
    assert T[0][3][ctdata.sSR] == ctdata.sES      # ACK establishes
    assert T[0][3][ctdata.sNO] == ctdata.sES      # mid-stream pickup
    assert T[0][4][ctdata.sNO] == ctdata.sIV      # stray RST


def test_config_bytes_and_timeouts_from_env():
    t = ctdata.timeouts_from_env({"EBPFW_CT_TIMEOUTS": "tcp_established=600, udp=5,nf_conntrack_icmp_timeout=7"})
    assert t["tcp_timeout_established"] == 600 and t["udp_timeout"] == 5 and t["icmp_timeout"] == 7
    assert t["udp_timeout_stream"] == 120 and t["generic_timeout"] == 600
    raw = ctdata.config_bytes(t, tcp_loose=False)
    vals = CT_CFG.unpack(raw)
    assert vals[3] == 600 * 10**9 and vals[11] == 5 * 10**9 and vals[13] == 7 * 10**9
    assert vals[1] == 120 * 10**9 and vals[8] == 10 * 10**9 and vals[10] == 300 * 10**9
    assert vals[-2] == 0
    for bad in ("tcp_forever=5", "udp=0", "udp=x", "udp"):
        with pytest.raises(EbpfwError, match="EBPFW_CT_TIMEOUTS"):
            ctdata.timeouts_from_env({"EBPFW_CT_TIMEOUTS": bad})


def test_keys_are_canonical_and_decode_back():
    k1, a1 = ctdata.make_key(6, "10.0.0.2", "10.0.0.1", 40000, 22)
    k2, a2 = ctdata.make_key(6, "10.0.0.1", "10.0.0.2", 22, 40000)
    assert k1 == k2 and a1 != a2
    val = ctdata.encode_value(a1, 3, ctdata.STATUS_SEEN_REPLY, 10**12, 0, (3, 2), (180, 120))
    e = ctdata.decode(k1, val)
    assert (e.src, e.dst, e.sport, e.dport, e.state) == ("10.0.0.2", "10.0.0.1", 40000, 22, "ESTABLISHED")
    d = conntrack.entry_dict(e, now_ns=10**12 - 5 * 10**9)
    assert d["timeout"] == 5 and d["reply"] == {"src": "10.0.0.1", "dst": "10.0.0.2", "sport": 22,
                                                  "dport": 40000, "packets": 2, "bytes": 120}
    line = conntrack.format_entry(d)
    assert line.startswith("tcp      6 5 ESTABLISHED src=10.0.0.2 dst=10.0.0.1 sport=40000 dport=22")
    ki, _ = ctdata.make_key(1, "10.0.0.2", "10.0.0.1", icmp_type=8, icmp_id=9)
    e = ctdata.decode(ki, ctdata.encode_value(True, 0, 0, 1, 0))
    assert (e.src, e.icmp_type, e.icmp_id) == ("10.0.0.2", 8, 9) and e.reply()["type"] == 0
    assert len(k1) == CT_KEY.size and len(val) == CT_VAL.size


def _kentry(proto, o, r, status=6, timeout=100, state=3):
    t = lambda s, d, sp, dp: types.SimpleNamespace(saddr=s, daddr=d, sport=sp, dport=dp, proto=proto,
                                                   icmp_type=8, icmp_id=5, family=2)
    return types.SimpleNamespace(tuple_orig=t(*o), tuple_reply=t(*r), status=status, timeout=timeout,
                                 protoinfo=types.SimpleNamespace(state=state) if proto == 6 else None)


def test_seed_value_from_kernel_entries():
    now = 10**12
    e = _kentry(6, ("10.0.0.2", "10.0.0.1", 40000, 2222), ("10.0.0.1", "10.0.0.2", 2222, 40000))
    key, val = conntrack.seed_value(e, now, ctdata.timeouts_from_env({}))
    d = ctdata.decode(key, val)
    assert (d.src, d.dport, d.state) == ("10.0.0.2", 2222, "ESTABLISHED")
    assert d.seen_reply and d.assured and d.status & ctdata.STATUS_SEEDED
    assert d.expires_ns == now + 100 * 10**9
    nat = _kentry(6, ("10.0.0.2", "10.0.0.1", 40000, 80), ("10.0.0.9", "10.0.0.2", 8080, 40000))
    assert conntrack.seed_value(nat, now, {}) is None
    assert conntrack.seed_value(_kentry(17, ("1.1.1.1", "2.2.2.2", 1, 2), ("2.2.2.2", "1.1.1.1", 2, 1),
                                        timeout=0), now, {}) is None


def test_conntrack_without_states_is_refused_by_the_compiler():
    from ebpfw.ruleset import ConntrackMatch, IpMatch, Pos, Rule, Target, Chain, Table
    rule = Rule(ip=IpMatch(), matches=(ConntrackMatch(states=None),), target=Target("ACCEPT"), pos=Pos("t", 3))
    table = Table("filter", (Chain("INPUT", "ACCEPT", (rule,), Pos("t", 2)),), Pos("t", 1))
    with pytest.raises(RulesetError) as ei:
        compile_plan(table)
    assert "t:3: match 'conntrack' without a state list" in ei.value.problems[0]
