"""ipset timeout semantics in ebpfw/sets.py (ip_set_timeout.h): expiry values, the seconds
`ipset list` shows, the refusal of the net types, and the `--sets` parse of a fail2ban set."""

from __future__ import annotations

import pytest

from ebpfw.errors import RulesetError
from ebpfw.ipset import parse_ipsets, save_ipsets
from ebpfw.sets import NS, expiry_of, refuse_unsupported, remaining

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


@pytest.mark.parametrize("text", [
    "create n hash:net timeout 60\n",
    "create n hash:net,port timeout 0\nadd n 10.0.0.0/8,tcp:22\n",
])
def test_net_types_with_timeouts_are_refused_with_the_line(text):
    st = parse_ipsets("# sets\n" + text, "s.sets")["n"]
    with pytest.raises(RulesetError) as exc:
        refuse_unsupported(st)
    assert exc.value.problems[0].startswith("s.sets:2: ") and "with timeout is not supported" in exc.value.problems[0]
