"""-m recent without a kernel: the compiler's placement rules and refusals, and the kernel
arithmetic ebpfw/recent.py reproduces (recent_mt_check's nstamp_mask, the u32 window)."""

from __future__ import annotations

import pytest

from ebpfw.compiler import compile_plan
from ebpfw.compiler.plan import RF_RECENT
from ebpfw.datapath.abi import RECENTM, shape_for
from ebpfw.errors import KernelError, RulesetError
from ebpfw.iptables import parse_ruleset
from ebpfw.recent import Entry, RecentList, format_list, host_params, nstamps_mask, rule_entry, window_jiffies
from ebpfw.ruleset import RecentMatch

HEAD = "*filter\n:INPUT DROP [0:0]\n:FORWARD DROP [0:0]\n:OUTPUT ACCEPT [0:0]\n"
UFW = ("-A INPUT -p tcp -m tcp --dport 22 -m conntrack --ctstate NEW -m recent --set --name DEFAULT "
       "--mask 255.255.255.255 --rsource\n"
       "-A INPUT -p tcp -m tcp --dport 22 -m conntrack --ctstate NEW -m recent --update --seconds 30 "
       "--hitcount 6 --name DEFAULT --mask 255.255.255.255 --rsource -j DROP\n")


def plan_of(rules: str):
    return compile_plan(parse_ruleset(HEAD + rules + "COMMIT\n", "r.rules").table("filter"))


def problems_of(rules: str) -> list[str]:
    with pytest.raises(RulesetError) as exc:
        plan_of(rules)
    return exc.value.problems


def test_ufw_limit_rules_compile_with_the_recent_flag():
    plan = plan_of(UFW)
    assert [bool(f & RF_RECENT) for f in plan.rule_flags] == [True, True]
    assert plan.recent[1] == RecentMatch("update", seconds=30, hitcount=6)
    assert "recent" in shape_for(plan, 2).fields
    assert plan.summary()["recent_lists"] == ["DEFAULT"]


def test_comment_after_recent_is_fine():
    plan = plan_of('-A INPUT -m recent --rcheck --name x -m comment --comment "after" -j DROP\n')
    assert plan.recent[0].name == "x"


@pytest.mark.parametrize("rule, words", [
    ("-A INPUT -p tcp -m recent --set -m tcp --dport 22\n", ["r.rules:5:", "last match", "-m tcp"]),
    ("-A INPUT -m recent --set -m limit --limit 1/s\n", ["r.rules:5:", "last match", "-m limit"]),
    ("-A INPUT -m recent --set -m recent --rcheck --name b\n", ["r.rules:5:", "more than one -m recent"]),
    ("-A INPUT -m recent --rcheck --hitcount 33\n", ["r.rules:5:", "--hitcount 1-32", "found --hitcount 33"]),
    ("-A INPUT -m recent --set --name a\n-A INPUT -m recent --rcheck --name a --mask 255.255.0.0\n",
     ["r.rules:6:", "one --mask per --name", "r.rules:5"]),
])
def test_refused_with_file_line(rule, words):
    text = "\n".join(problems_of(rule))
    for w in words:
        assert w in text, text


def test_kernel_nstamps_mask():
    # recent_mt_check: ip_pkt_list_tot (0 by default) decides when the hitcount is below it
    assert nstamps_mask(0, 0) == 31
    assert nstamps_mask(6, 0) == 7
    assert nstamps_mask(8, 0) == 7
    assert nstamps_mask(9, 0) == 15
    assert nstamps_mask(32, 0) == 31
    assert nstamps_mask(0, 20) == 31
    assert nstamps_mask(19, 20) == 31
    assert nstamps_mask(25, 20) == 31
    assert nstamps_mask(3, 4) == 3
    assert nstamps_mask(2, 100) == 127


def test_window_is_the_kernels_u32_product():
    assert window_jiffies(30, 250) == 7500
    assert window_jiffies(4294967295, 250) == (4294967295 * 250) & 0xFFFFFFFF
    assert window_jiffies(17179869, 250) == 4294967250          # the last that fits
    assert window_jiffies(17179870, 250) == 204                 # wrapped: a 0.8 s window


def test_rule_entry_layout():
    m = RecentMatch("update", name="x", invert=True, seconds=30, hitcount=6, rttl=True, side="dest", reap=True)
    assert RECENTM.unpack(rule_entry(m, 7, 250)) == (7, 3, 1, 1, 1, 1, 6, 7500)
    assert RECENTM.unpack(rule_entry(RecentMatch("set"), 0, 1000)) == (0, 1, 0, 0, 0, 0, 0, 0)


def test_host_params(tmp_path):
    assert host_params(tmp_path / "missing") == (100, 0)          # the module's defaults
    (tmp_path / "ip_list_tot").write_text("200\n")
    (tmp_path / "ip_pkt_list_tot").write_text("20\n")
    assert host_params(tmp_path) == (200, 20)
    (tmp_path / "ip_list_tot").write_text("5000\n")
    with pytest.raises(KernelError, match="ip_list_tot is 5000"):
        host_params(tmp_path)


def test_format_is_proc_xt_recent():
    lst = RecentList(0, "DEFAULT", "255.255.255.255", 32,
                     [Entry("10.0.0.1", 64, 300, [100, 200, 300], 0), Entry("10.0.0.2", 63, 150, [150], 1)])
    assert format_list(lst) == ("src=10.0.0.1 ttl: 64 last_seen: 300 oldest_pkt: 3 100, 200, 300\n"
                                "src=10.0.0.2 ttl: 63 last_seen: 150 oldest_pkt: 1 150\n")
