"""-m hashlimit options against iptables-legacy 1.8.9 and the kernel (revision 3).

No-root part: the kernel values the parser computes (libxt_hashlimit's bytes_to_cost,
burst in refills, rate-match's divided period, the kernel's clamping of the table size), and
the refusals. Root part (a private network namespace, nothing sent): every rule of a fixed
list and of a seeded random generator is given to `iptables-legacy -A` and read back with
`iptables-legacy-save`; ebpfw's `save_ruleset(parse_ruleset(rule))` must print exactly that
line, and a rule ebpfw refuses must be refused by iptables or the kernel too.
"""

from __future__ import annotations

import os
import random
import secrets
import shlex
import shutil
import subprocess

import pytest

from ebpfw.datapath.abi import hashlimit_overflows
from ebpfw.iptables import parse_ruleset, save_ruleset
from ebpfw.iptables.matches import (format_hashlimit_bytes, hashlimit_bytes_to_cost,
                                    hashlimit_cost_to_bytes)
from ebpfw.errors import RulesetError
from ebpfw.ruleset import HashlimitMatch

HEAD = "*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n"


def _one(rule: str) -> HashlimitMatch:
    rs = parse_ruleset(HEAD + rule + "\nCOMMIT\n", "t.rules")
    (r,) = rs.table("filter").chain("INPUT").rules
    (m,) = [m for m in r.matches if isinstance(m, HashlimitMatch)]
    return m


def _save(rule: str) -> str:
    text = save_ruleset(parse_ruleset(HEAD + rule + "\nCOMMIT\n", "t.rules"))
    return [ln for ln in text.splitlines() if ln.startswith("-A ")][0]


# --- no root -----------------------------------------------------------------------------

def test_byte_rate_is_the_kernel_cost():
    m = _one("-A INPUT -m hashlimit --hashlimit-upto 1500b/s --hashlimit-name f -j ACCEPT")
    assert m.bytes and m.avg == 0xFFFFFFFF // ((1500 >> 4) + 1) == 45691141
    assert m.burst == 0 and m.expire == 15000                  # no burst: 15 s expiry
    assert hashlimit_cost_to_bytes(m.avg) == 1488              # what iptables-save prints
    m = _one("-A INPUT -m hashlimit --hashlimit-upto 1mb/s --hashlimit-burst 3mb --hashlimit-name d -j ACCEPT")
    assert m.avg == hashlimit_bytes_to_cost(1 << 20) and m.burst == 3 and m.expire == 60000


def test_byte_burst_rounds_up_to_whole_refills():
    m = _one("-A INPUT -m hashlimit --hashlimit-upto 100kb/s --hashlimit-burst 150kb --hashlimit-name e -j ACCEPT")
    unit = hashlimit_cost_to_bytes(m.avg)
    assert m.burst == -(-150 * 1024 // unit) == 2
    assert format_hashlimit_bytes(m.avg, m.burst) == ("100kb/s", "200kb", 60000)


def test_rate_match_divides_the_period_by_its_unit():
    m = _one("-A INPUT -m hashlimit --hashlimit-upto 10/min --hashlimit-name g --hashlimit-rate-match -j ACCEPT")
    assert m.rate_match and m.avg == 6_000_000 // 60 and m.interval == 60 and m.expire == 60000
    m = _one("-A INPUT -m hashlimit --hashlimit-upto 1mb/s --hashlimit-rate-match --hashlimit-name i -j ACCEPT")
    assert m.bytes and m.interval == 1
    # an interval without --hashlimit-rate-match is ignored (and not printed) by iptables
    m = _one("-A INPUT -m hashlimit --hashlimit-upto 5/sec --hashlimit-rate-interval 5 --hashlimit-name n -j ACCEPT")
    assert not m.rate_match and m.interval == 0


def test_table_options_clamped_like_the_kernel():
    m = _one("-A INPUT -m hashlimit --hashlimit-upto 1/sec --hashlimit-name b --hashlimit-htable-size 2000000 "
             "--hashlimit-htable-max 3000000 --hashlimit-htable-gcinterval 250 -j ACCEPT")
    assert (m.size, m.max, m.gcinterval) == (1048576, 1048576, 250)


@pytest.mark.parametrize("rule,why", [
    ("--hashlimit-upto 1b/s", "at least 16b/s"),
    ("--hashlimit-upto 3000000mb/s", "wrapped rate"),
    ("--hashlimit-upto 32768mb/s", "overflow, rate too high"),
    ("--hashlimit-upto 1.5mb/s", "bad byte rate"),
    ("--hashlimit-upto 10kb/s --hashlimit-burst 1kb", "at least 10240b"),
    ("--hashlimit-upto 10/sec --hashlimit-burst 2000000", "1-1000000"),
    ("--hashlimit-upto 10/sec --hashlimit-burst 2000k", "1-1000000"),
    ("--hashlimit-upto 10/sec --hashlimit-htable-gcinterval 0", "the kernel refuses 0"),
    ("--hashlimit-upto 10/sec --hashlimit-rate-interval 0", "bad interval"),
    ("--hashlimit-upto 2000000/min --hashlimit-rate-match", "invalid rate"),
])
def test_refusals_are_precise(rule, why):
    with pytest.raises(RulesetError) as e:
        _one(f"-A INPUT -m hashlimit {rule} --hashlimit-name z -j ACCEPT")
    text = "\n".join(e.value.problems)
    assert "t.rules:5:" in text and why in text, text


# --- against iptables-legacy -------------------------------------------------------------

FIXED = [
    "--hashlimit-upto 10/sec --hashlimit-name a --hashlimit-htable-size 100 --hashlimit-htable-max 50 "
    "--hashlimit-htable-gcinterval 500",
    "--hashlimit-upto 10/sec --hashlimit-name b --hashlimit-htable-gcinterval 1000 --hashlimit-htable-max 2000000 "
    "--hashlimit-htable-size 2000000",
    "--hashlimit-upto 1mb/s --hashlimit-name c",
    "--hashlimit-upto 1mb/s --hashlimit-name d --hashlimit-burst 3mb",
    "--hashlimit-above 100kb/s --hashlimit-name e --hashlimit-burst 1000000",
    "! --hashlimit-above 100kb/s --hashlimit-name e2 --hashlimit-burst 150kb --hashlimit-mode srcip,dstport",
    "--hashlimit-upto 1500b/s --hashlimit-name f --hashlimit-burst 7000b --hashlimit-htable-expire 5000",
    "--hashlimit-upto 16b/s --hashlimit-name f2",
    "--hashlimit-upto 32767mb/s --hashlimit-name f3",
    "--hashlimit-upto 65536mb/s --hashlimit-name f4",
    "--hashlimit-upto 32768mb/s --hashlimit-name f5",
    "--hashlimit-upto 10/min --hashlimit-name g --hashlimit-rate-match",
    "--hashlimit-upto 7/hour --hashlimit-name g2 --hashlimit-rate-match --hashlimit-burst 9",
    "--hashlimit-upto 10/min --hashlimit-name h --hashlimit-rate-match --hashlimit-rate-interval 5",
    "--hashlimit-upto 10/sec --hashlimit-name h2 --hashlimit-rate-match --hashlimit-rate-interval 1",
    "--hashlimit-upto 1mb/s --hashlimit-name i --hashlimit-rate-match --hashlimit-burst 2mb",
    "--hashlimit-upto 512kb/s --hashlimit-name i2 --hashlimit-rate-match --hashlimit-rate-interval 3",
    "--hashlimit-upto 10/sec --hashlimit-name k --hashlimit-burst 5k",
    "--hashlimit-upto 10/sec --hashlimit-name k2 --hashlimit-burst 0x20b",
    "--hashlimit-upto 5/sec --hashlimit-name n --hashlimit-rate-interval 5",
    "--hashlimit-upto 3/day --hashlimit-name o --hashlimit-htable-max 1 --hashlimit-htable-size 0",
]


def _random_rule(rnd: random.Random, i: int) -> str:
    """Options in random order (iptables reads them in any order, saves them in one)."""
    rate = rnd.choice(["--hashlimit-upto", "--hashlimit-above", "! --hashlimit-upto", "! --hashlimit-above"])
    bytes_ = rnd.random() < 0.4
    if bytes_:
        rate += f" {rnd.choice([16, 17, 100, 1000, 1500, 4096, 65535, 1, 5, 999])}{rnd.choice(['', 'k', 'm'])}b/s"
    else:
        rate += f" {rnd.randrange(1, 2000)}/{rnd.choice(['s', 'sec', 'min', 'minute', 'h', 'hour', 'day'])}"
    groups = [rate, f"--hashlimit-name r{i}"]
    if rnd.random() < 0.6:
        groups.append("--hashlimit-burst " + (f"{rnd.randrange(1, 5000)}{rnd.choice(['b', 'kb', 'mb', ''])}"
                                              if bytes_ else str(rnd.randrange(1, 3000))))
    if rnd.random() < 0.5:
        groups.append("--hashlimit-mode " + ",".join(rnd.sample(["srcip", "srcport", "dstip", "dstport"],
                                                                rnd.randrange(1, 5))))
    for opt, vals in (("--hashlimit-htable-size", [0, 1, 16, 1000, 65536, 2000000]),
                      ("--hashlimit-htable-max", [0, 1, 10, 8192, 1048576, 1048577]),
                      ("--hashlimit-htable-gcinterval", [1, 10, 1000, 1001, 60000]),
                      ("--hashlimit-htable-expire", [1, 1000, 15000, 60000, 3600000]),
                      ("--hashlimit-srcmask", [0, 8, 24, 32]),
                      ("--hashlimit-dstmask", [0, 16, 31, 32])):
        if rnd.random() < 0.3:
            groups.append(f"{opt} {rnd.choice(vals)}")
    if rnd.random() < 0.35:
        groups.append("--hashlimit-rate-match")
    if rnd.random() < 0.25:
        groups.append(f"--hashlimit-rate-interval {rnd.choice([1, 2, 60, 3600])}")
    rnd.shuffle(groups)
    return " ".join(groups)


@pytest.fixture(scope="module")
def legacy_ns():
    if os.geteuid() != 0:
        pytest.skip("needs root (creates a network namespace)")
    if not shutil.which("iptables-legacy") or not shutil.which("ip"):
        pytest.skip("iptables-legacy or ip not installed")
    name = f"ehlo-{os.getpid()}-{secrets.token_hex(3)}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        yield name
    finally:
        subprocess.run(["ip", "netns", "exec", name, "iptables-legacy", "-F"], check=False, capture_output=True)
        subprocess.run(["ip", "netns", "del", name], check=False)


def _legacy(ns: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", "netns", "exec", ns, "iptables-legacy", *args],
                          capture_output=True, text=True, timeout=60)


# ebpfw refuses these although iptables loads them: rates iptables-save prints as "0b/s"
# (iptables-restore refuses that, so a saved ruleset could not be restored), and rates iptables
# truncates to 32 bits (the kernel would enforce another rate than the one written)
DELIBERATE = ("iptables-save prints a slower rate as 0b/s", "would load as a different, wrapped rate")


def _kernel_refuses(m: HashlimitMatch) -> bool:
    """What hashlimit_mt_check_common refuses beyond the parser: a packet rate whose token
    bucket overflows, an expiry of 0 (HZ 250 on Debian: exact for the host the test runs on)."""
    from ebpfw.datapath.abi import host_hz
    if m.expire == 0:
        return True
    return not m.bytes and not m.rate_match and hashlimit_overflows(m.avg, m.burst, host_hz())


def _check(ns: str, opts: str) -> str:
    rule = f"-A INPUT -m hashlimit {opts} -j ACCEPT"
    try:
        m = _one(rule)
        ours = _save(rule)
    except RulesetError as e:
        r = _legacy(ns, *shlex.split(rule))
        _legacy(ns, "-F", "INPUT")
        if r.returncode == 0 and not any(d in p for d in DELIBERATE for p in e.problems):
            return f"ebpfw refused what iptables accepted: {rule}\n  {e}"
        return ""
    r = _legacy(ns, *shlex.split(rule))
    if _kernel_refuses(m):
        if r.returncode == 0:
            _legacy(ns, "-F", "INPUT")
            return f"iptables accepted what ebpfw expects the kernel to refuse: {rule}"
        return ""
    if r.returncode != 0:
        return f"iptables refused what ebpfw accepted: {rule}\n  {r.stderr.strip()}"
    saved = subprocess.run(["ip", "netns", "exec", ns, "iptables-legacy-save", "-t", "filter"],
                           capture_output=True, text=True, timeout=60, check=True).stdout
    _legacy(ns, "-F", "INPUT")
    theirs = [ln for ln in saved.splitlines() if ln.startswith("-A INPUT")]
    if theirs != [ours]:
        return f"{rule}\n  ebpfw:    {ours}\n  iptables: {theirs}"
    # and what iptables printed reads back to the same match (a byte burst is printed
    # rounded down to its unit, which iptables itself does not read back the same)
    if not (m.bytes and m.burst) and _one(theirs[0]) != m:
        return f"{theirs[0]} does not read back to {m}"
    return ""


@pytest.mark.kernel
def test_fixed_rules_save_like_iptables_legacy(legacy_ns):
    problems = [p for p in (_check(legacy_ns, o) for o in FIXED) if p]
    assert not problems, "\n".join(problems)


@pytest.mark.kernel
def test_random_rules_save_like_iptables_legacy(legacy_ns):
    rnd = random.Random(20261130)
    problems = [p for p in (_check(legacy_ns, _random_rule(rnd, i)) for i in range(400)) if p]
    assert not problems, "\n".join(problems[:10])
