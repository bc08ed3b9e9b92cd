"""ipset timeout semantics in ebpfw/sets.py (ip_set_timeout.h): expiry values, the seconds
`ipset list` shows, the element values (expiry, prefix length, nomatch), and the `--sets`
parse of a fail2ban set and of CrowdSec-style hash:net sets with timeouts."""

from __future__ import annotations

import pytest

from ebpfw.errors import RulesetError
from ebpfw.ipset import parse_ipsets, save_ipsets
from ebpfw.datapath.abi import SET_NOMATCH
from ebpfw.sets import NS, VAL, element_key, element_value, expiry_of, refuse_unsupported, remaining

F2B = """create f2b-sshd hash:ip family inet hashsize 1024 maxelem 65536 timeout 0 bucketsize 12 initval 0x35fee0d7
add f2b-sshd 10.1.1.1 timeout 0
add f2b-sshd 10.1.1.2 timeout 599
create t5 hash:ip family inet hashsize 1024 maxelem 65536 timeout 5 bucketsize 12 initval 0x2dfe6b9b
add t5 10.2.2.2
create bp bitmap:port range 1-100 timeout 3
add bp 5 timeout 2
"""


def test_expiry_values():
    now = 123 * NS
    assert expiry_of(None, now) == 0 and expiry_of(0, now) == 0      # no timeout / timeout 0: permanent
    assert expiry_of(5, now) == 128 * NS


def test_remaining_is_ip_set_timeout_get():
    exp = 100 * NS
    assert remaining(0, 10**18) == 0                   # permanent
    assert remaining(exp, 40 * NS) == 60
    assert remaining(exp, 40 * NS + 1) == 59           # whole seconds, rounded down
    assert remaining(exp, exp - 1) == 1                # never 0 while alive
    assert remaining(exp, exp) == 1                    # alive while now <= expiry (jiffies <= timeout)
    assert remaining(exp, exp + 1) is None             # expired


def test_fail2ban_set_file_parses_and_is_accepted():
    sets = parse_ipsets(F2B, "f")
    f2b = sets["f2b-sshd"]
    assert f2b.timeout == 0 and [e.timeout for e in f2b.entries] == [0, 599]
    assert sets["t5"].entries[0].timeout == 5          # the set's default timeout
    assert sets["bp"].entries[0].timeout == 2
    for st in sets.values():
        refuse_unsupported(st)                         # no error
    assert save_ipsets(parse_ipsets(save_ipsets(sets), "g")) == save_ipsets(sets)


CROWDSEC = """create crowdsec-blacklists hash:net family inet hashsize 1024 maxelem 65536 timeout 300 bucketsize 12 initval 0x6a8a2b3c
add crowdsec-blacklists 192.0.2.0/24 timeout 0
add crowdsec-blacklists 192.0.2.7 timeout 14399
add crowdsec-blacklists 192.0.2.8 timeout 60 nomatch
add crowdsec-blacklists 198.51.100.0/25
create np hash:net,port family inet hashsize 1024 maxelem 65536 timeout 0
add np 10.0.0.0/8,tcp:22 timeout 30
add np 10.1.0.0/16,tcp:22 nomatch
"""


def test_net_types_with_timeouts_and_nomatch_are_accepted():
    """CrowdSec's firewall bouncer (and fail2ban with hash:net) create hash:net sets with a
    timeout: they load like the hash:ip ones, element timeouts and nomatch kept."""
    sets = parse_ipsets(CROWDSEC, "c.sets")
    cs, np_ = sets["crowdsec-blacklists"], sets["np"]
    for st in sets.values():
        refuse_unsupported(st)                         # no error
    assert cs.timeout == 300
    assert [(e.prefixlen, e.timeout, e.nomatch) for e in cs.entries] == [
        (24, 0, False), (32, 14399, False), (32, 60, True), (25, 300, False)]   # the set's default
    assert [(e.prefixlen, e.port, e.timeout, e.nomatch) for e in np_.entries] == [(8, 22, 30, False), (16, 22, 0, True)]
    assert save_ipsets(parse_ipsets(save_ipsets(sets), "g")) == save_ipsets(sets)


def test_element_value_holds_expiry_prefix_and_nomatch():
    """struct ebpfw_set_val: the expiry, the element's own key prefix length (the datapath
    repeats its lookup one shorter after an expired element) and the nomatch flag."""
    sets = parse_ipsets(CROWDSEC, "c.sets")
    cs, np_ = sets["crowdsec-blacklists"], sets["np"]
    now = 1000 * NS
    got = []
    for st in (cs, np_):
        for e in st.entries:
            k = element_key(7, st.type, e)
            got.append(VAL.unpack(element_value(k, e, now)))
    assert got == [(0, 64 + 24, 0), (now + 14399 * NS, 64 + 32, 0), (now + 60 * NS, 64 + 32, SET_NOMATCH),
                   (now + 300 * NS, 64 + 25, 0), (now + 30 * NS, 64 + 8, 0), (0, 64 + 16, SET_NOMATCH)]
    assert VAL.size == 16                              # programs/ebpfw.c struct ebpfw_set_val


@pytest.mark.parametrize("text, problem", [
    ("create n hash:ip timeout 60\nadd n 10.0.0.1 nomatch\n", "element option 'nomatch' is not supported"),
    ("create n hash:net\nadd n 10.0.0.0/8 timeout 5\n", "element timeout in set 'n' created without timeout"),
])
def test_what_ipset_refuses_is_refused(text, problem):
    with pytest.raises(RulesetError) as exc:
        parse_ipsets(text, "s.sets")
    assert exc.value.problems[0].startswith("s.sets:2: ") and problem in exc.value.problems[0], exc.value.problems


def test_ipv6_sets_stay_refused_with_the_line():
    from dataclasses import replace
    st = replace(parse_ipsets("# sets\ncreate n hash:net timeout 60\n", "s.sets")["n"], family="inet6")
    with pytest.raises(RulesetError) as exc:
        refuse_unsupported(st)
    assert exc.value.problems[0].startswith("s.sets:2: ") and "expected family inet" in exc.value.problems[0]
