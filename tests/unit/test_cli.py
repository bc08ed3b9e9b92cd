"""Unit tests of the CLI layer only (ebpfw/cli.py): argument parsing, exit codes, what goes to
stdout and stderr, error rendering, '-' for stdin. The library is replaced by a fake `ebpfw.api`
module that records its calls, so nothing here parses a ruleset or touches the kernel; the
real end-to-end runs are in tests/kernel/test_cli_kernel.py."""

from __future__ import annotations

import json
import subprocess
import sys
import types
from pathlib import Path

import pytest
from typer.testing import CliRunner

import ebpfw
from ebpfw import cli
from ebpfw.doctor import Check
from ebpfw.errors import EbpfwError, RulesetError

REPO = Path(__file__).resolve().parents[2]
RULES = "*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n-A INPUT -j DROP\nCOMMIT\n"
CANON = "# canonical\n*filter\n:INPUT ACCEPT [0:0]\n-A INPUT -j DROP\nCOMMIT\n"
PLAN = {"rules": 1, "chains": {"INPUT": [0, 1], "FORWARD": [1, 1], "OUTPUT": [1, 1]},
        "fields": ["src", "dport"], "classes": 2, "prefixes": {"src": 1, "dst": 0},
        "max_jump_depth": 0, "shape": {"words": 1}}


class FakeApi(types.ModuleType):
    """Stands in for ebpfw.api: records calls, returns canned values, or raises `fail`."""

    def __init__(self) -> None:
        super().__init__("ebpfw.api")
        self.calls: list[tuple[str, tuple, dict]] = []
        self.fail: BaseException | None = None
        self.status_value: dict | None = None

    def _call(self, name: str, *args, **kwargs):
        self.calls.append((name, args, kwargs))
        if self.fail is not None:
            raise self.fail

    def import_ruleset(self, text, filename):
        self._call("import_ruleset", text, filename)
        return CANON

    def check(self, text, filename):
        self._call("check", text, filename)
        return dict(PLAN)

    def apply(self, text, filename, ifaces, mode="auto", counters=False):
        self._call("apply", text, filename, ifaces, mode=mode, counters=counters)
        return {"generation": 3, "recompiled": False,
                "ifaces": [{"name": i, "ingress": "xdp"} for i in ifaces], "rules": 1, "seconds": 0.25}

    def save(self, counters=False):
        self._call("save", counters=counters)
        return "*filter\n:INPUT ACCEPT [7:420]\n[5:300] -A INPUT -j DROP\nCOMMIT\n" if counters else CANON

    def show(self):
        self._call("show")
        return {"generation": 3, "ifaces": [{"name": "dut0", "ingress": "xdp"}],
                "chains": [
                    {"name": "INPUT", "policy": "DROP", "packets": 11, "bytes": 2222, "rules": [
                        {"num": 1, "text": '-A INPUT -m comment --comment "[bold]x[/bold] [0:0]" -j ACCEPT',
                         "packets": 123456, "bytes": 7890123}]},
                    {"name": "mychain", "policy": "-", "packets": 0, "bytes": 0, "rules": []}],
                "stats": {"xdp_pass": 17, "xdp_drop": 4}}

    def detach(self):
        self._call("detach")
        return ["dut0: removed the XDP program (xdp)", "removed /var/lib/ebpfw/ns1/current.json"]

    def status(self):
        self._call("status")
        return self.status_value


@pytest.fixture
def api(monkeypatch):
    fake = FakeApi()
    monkeypatch.setitem(sys.modules, "ebpfw.api", fake)
    monkeypatch.setattr(ebpfw, "api", fake, raising=False)
    monkeypatch.setattr(cli, "has_privileges", lambda: True)
    return fake


@pytest.fixture
def run():
    runner = CliRunner()

    def invoke(*args: str, input: str | bytes | None = None):
        return runner.invoke(cli.app, list(args), input=input)
    return invoke


@pytest.fixture
def rules_file(tmp_path):
    p = tmp_path / "rules.v4"
    p.write_text(RULES)
    return p


# ---- global --------------------------------------------------------------------------------------

def test_version(run):
    r = run("--version")
    assert r.exit_code == 0
    assert r.stdout == f"ebpfw {ebpfw.__version__}\n"


def test_help_lists_commands_and_environment(run):
    r = run("--help")
    assert r.exit_code == 0
    for word in ("import", "apply", "save", "show", "check", "detach", "doctor", "status",
                 "EBPFW_BPFFS", "EBPFW_STATE_DIR"):
        assert word in r.stdout


def test_unknown_command_is_a_usage_error(run):
    r = run("frobnicate")
    assert r.exit_code == 2
    assert r.stdout == ""


def test_importing_the_cli_loads_neither_the_api_nor_bcc():
    code = ("import sys, ebpfw.cli; bad = [m for m in ('bcc', 'ebpfw.api', 'ebpfw.datapath') "
            "if m in sys.modules]; print(bad); sys.exit(1 if bad else 0)")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=60)
    assert p.returncode == 0, p.stdout + p.stderr


def test_python_dash_m_runs_the_same_cli():
    p = subprocess.run([sys.executable, "-m", "ebpfw", "--version"], capture_output=True, text=True,
                       cwd=REPO, timeout=60)
    assert p.returncode == 0 and p.stdout == f"ebpfw {ebpfw.__version__}\n"


# ---- import --------------------------------------------------------------------------------------

def test_import_file_to_stdout(run, api, rules_file):
    r = run("import", str(rules_file))
    assert r.exit_code == 0, r.output
    assert r.stdout == CANON
    assert r.stderr == ""
    assert api.calls == [("import_ruleset", (RULES, str(rules_file)), {})]


def test_import_from_stdin(run, api):
    r = run("import", "-", input=RULES)
    assert r.exit_code == 0, r.output
    assert r.stdout == CANON
    assert api.calls == [("import_ruleset", (RULES, "<stdin>"), {})]


def test_import_to_output_file(run, api, rules_file, tmp_path):
    out = tmp_path / "out.rules"
    r = run("import", str(rules_file), "-o", str(out))
    assert r.exit_code == 0, r.output
    assert r.stdout == ""
    assert out.read_text() == CANON
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out.rules.")]  # no temp left


def test_import_errors_print_every_problem_and_write_nothing(run, api, rules_file, tmp_path):
    f = str(rules_file)
    problems = [f"{f}:5: target 'REJECT' is not supported yet, expected ACCEPT, DROP, RETURN or a "
                f"user-defined chain, found '-j REJECT'",
                f"{f}:9: unknown option, expected an option, found '--frob'"]
    api.fail = RulesetError(f"2 problems in {f}", problems=problems)
    out = tmp_path / "out.rules"
    r = run("import", f, "-o", str(out))
    assert r.exit_code == 1
    assert r.stdout == ""
    assert r.stderr.splitlines() == problems + [f"error: 2 problems in {f}"]
    assert not out.exists()


def test_error_hint_and_single_message(run, api, rules_file):
    api.fail = EbpfwError("something broke", hint="do this")
    r = run("import", str(rules_file))
    assert r.exit_code == 1
    assert r.stderr.splitlines() == ["error: something broke", "hint: do this"]


def test_import_missing_file(run, api, tmp_path):
    r = run("import", str(tmp_path / "nope.rules"))
    assert r.exit_code == 1
    assert "error: cannot read ruleset" in r.stderr and "nope.rules" in r.stderr
    assert api.calls == []


def test_import_non_utf8_names_the_line(run, api, tmp_path):
    p = tmp_path / "latin1.rules"
    p.write_bytes(b"*filter\n# caf\xe9\nCOMMIT\n")
    r = run("import", str(p))
    assert r.exit_code == 1
    assert f"{p}:2: not UTF-8 text" in r.stderr
    assert api.calls == []


def test_bug_keeps_its_traceback(run, api, rules_file):
    api.fail = RuntimeError("internal bug")
    r = run("import", str(rules_file))
    assert r.exit_code == 1
    assert isinstance(r.exception, RuntimeError)   # not swallowed into a polite message


# ---- check ---------------------------------------------------------------------------------------

def test_check_summary(run, api, rules_file):
    r = run("check", str(rules_file))
    assert r.exit_code == 0, r.output
    assert r.stdout.startswith(f"{rules_file}: ok: 1 rules in 3 chains")
    assert api.calls[0][0] == "check"


def test_check_plan_is_pure_json(run, api):
    r = run("check", "--plan", "-", input=RULES)
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout) == PLAN
    assert api.calls == [("check", (RULES, "<stdin>"), {})]


def test_check_failure(run, api, rules_file):
    api.fail = RulesetError("1 problem in x", problems=["x:3: bad, expected good, found 'bad'"])
    r = run("check", "--plan", str(rules_file))
    assert r.exit_code == 1 and r.stdout == ""
    assert r.stderr.splitlines()[0] == "x:3: bad, expected good, found 'bad'"


# ---- apply ---------------------------------------------------------------------------------------

def test_apply_passes_ifaces_mode_and_counters(run, api, rules_file):
    r = run("apply", str(rules_file), "--iface", "dut0", "--iface", "dut1", "--mode", "xdp-generic",
            "--counters")
    assert r.exit_code == 0, r.output
    assert api.calls == [("apply", (RULES, str(rules_file), ["dut0", "dut1"]),
                          {"mode": "xdp-generic", "counters": True})]
    assert "dut0 (xdp), dut1 (xdp)" in r.stdout and "generation 3" in r.stdout


def test_apply_defaults_and_stdin(run, api):
    r = run("apply", "-", "--iface", "eth0", input=RULES)
    assert r.exit_code == 0, r.output
    assert api.calls == [("apply", (RULES, "<stdin>", ["eth0"]), {"mode": "auto", "counters": False})]


@pytest.mark.parametrize("mode", ["auto", "xdp", "xdp-generic", "tc"])
def test_apply_every_mode(run, api, rules_file, mode):
    r = run("apply", str(rules_file), "--iface", "eth0", "--mode", mode)
    assert r.exit_code == 0, r.output
    assert api.calls[0][2]["mode"] == mode


def test_apply_needs_an_iface(run, api, rules_file):
    r = run("apply", str(rules_file))
    assert r.exit_code == 2
    assert "--iface" in r.stderr
    assert api.calls == []


def test_apply_rejects_unknown_mode(run, api, rules_file):
    r = run("apply", str(rules_file), "--iface", "eth0", "--mode", "fast")
    assert r.exit_code == 2
    assert api.calls == []


def test_apply_failure_is_exit_1(run, api, rules_file):
    api.fail = EbpfwError("no interface 'eth9' in this network namespace", hint="`ip link` lists them")
    r = run("apply", str(rules_file), "--iface", "eth9")
    assert r.exit_code == 1
    assert r.stderr.splitlines() == ["error: no interface 'eth9' in this network namespace",
                                     "hint: `ip link` lists them"]


@pytest.mark.parametrize("argv", [["apply", "RULES", "--iface", "eth0"], ["save"], ["show"],
                                  ["status"], ["detach"]])
def test_privileged_commands_refuse_without_privileges(run, api, rules_file, monkeypatch, argv):
    monkeypatch.setattr(cli, "has_privileges", lambda: False)
    argv = [str(rules_file) if a == "RULES" else a for a in argv]
    r = run(*argv)
    assert r.exit_code == 1
    assert f"error: `ebpfw {argv[0]}` needs root" in r.stderr
    assert f"hint: run it as root: sudo ebpfw {argv[0]}" in r.stderr
    assert r.stdout == ""
    assert api.calls == []


def test_import_and_check_need_no_privileges(run, api, rules_file, monkeypatch):
    monkeypatch.setattr(cli, "has_privileges", lambda: False)
    assert run("import", str(rules_file)).exit_code == 0
    assert run("check", str(rules_file)).exit_code == 0


# ---- save / show / status / detach --------------------------------------------------------------

def test_save_prints_only_the_ruleset(run, api):
    r = run("save")
    assert r.exit_code == 0
    assert r.stdout == CANON and r.stderr == ""
    assert api.calls == [("save", (), {"counters": False})]


def test_save_counters(run, api):
    r = run("save", "--counters")
    assert r.exit_code == 0
    assert "[5:300] -A INPUT -j DROP" in r.stdout
    assert api.calls == [("save", (), {"counters": True})]


def test_save_nothing_applied(run, api):
    api.fail = EbpfwError("no ruleset is applied in this network namespace",
                          hint="ebpfw apply RULESET --iface IF")
    r = run("save")
    assert r.exit_code == 1 and r.stdout == ""
    assert "error: no ruleset is applied" in r.stderr


def test_show_tables_keep_rule_text_verbatim(run, api):
    r = run("show")
    assert r.exit_code == 0, r.output
    out = r.stdout
    # rich markup in data must not be interpreted: brackets stay as written
    assert '"[bold]x[/bold]' in out.replace("\n", "")
    for word in ("Chain INPUT (policy DROP 11 packets, 2222 bytes)", "123456", "7890123",
                 "mychain", "(no rules)", "xdp_pass", "17", "dut0 (xdp)", "generation 3"):
        assert word in out


def test_show_json(run, api):
    r = run("show", "--json")
    assert r.exit_code == 0
    data = json.loads(r.stdout)
    assert data["chains"][0]["rules"][0]["packets"] == 123456
    assert data["stats"] == {"xdp_pass": 17, "xdp_drop": 4}


def test_status_nothing_applied(run, api):
    r = run("status")
    assert r.exit_code == 0
    assert "no ruleset is applied" in r.stdout
    r = run("status", "--json")
    assert r.exit_code == 0 and json.loads(r.stdout) is None


def test_status_applied(run, api):
    api.status_value = {"generation": 2, "source": "/etc/ebpfw/rules.v4", "applied_at": 1764489600.0,
                        "ifaces": [{"name": "eth0", "ingress": "xdp-generic", "ifindex": 2}],
                        "rule_chain": [["INPUT", 0], ["INPUT", 1]], "chains": ["INPUT", "FORWARD", "OUTPUT"],
                        "shape": {"words": 1}}
    r = run("status")
    assert r.exit_code == 0, r.output
    for word in ("enforcing", "/etc/ebpfw/rules.v4", "eth0 (xdp-generic)", "INPUT, FORWARD, OUTPUT"):
        assert word in r.stdout
    assert json.loads(run("status", "--json").stdout)["generation"] == 2


def test_detach_prints_what_it_removed(run, api):
    r = run("detach")
    assert r.exit_code == 0
    assert r.stdout.splitlines() == ["dut0: removed the XDP program (xdp)",
                                     "removed /var/lib/ebpfw/ns1/current.json"]


# ---- doctor --------------------------------------------------------------------------------------

def _fake_checks(monkeypatch, checks):
    seen = {}

    def run_checks(modules_dir=None, live=True):
        seen["live"] = live
        return checks
    monkeypatch.setattr("ebpfw.doctor.run_checks", run_checks)
    return seen


def test_doctor_all_ok(run, monkeypatch):
    seen = _fake_checks(monkeypatch, [Check("kernel", True, "Linux 6.18"),
                                      Check("python3 on PATH", True, "pyenv shim", warning=True)])
    r = run("doctor")
    assert r.exit_code == 0, r.output
    assert "kernel" in r.stdout and "warn" in r.stdout and "all checks passed" in r.stdout
    assert seen["live"] is True


def test_doctor_failure_shows_fix_and_exits_1(run, monkeypatch):
    seen = _fake_checks(monkeypatch, [Check("kernel", True, "Linux 6.18"),
                                      Check("bpffs", False, "/sys/fs/bpf is not a bpffs",
                                            fix="mount -t bpf bpf /sys/fs/bpf")])
    r = run("doctor", "--quick")
    assert r.exit_code == 1
    assert "FAIL" in r.stdout and "mount -t bpf bpf /sys/fs/bpf" in r.stdout.replace("\n", " ")
    assert "1 check(s) failed" in r.stdout
    assert seen["live"] is False


# ---- helpers -------------------------------------------------------------------------------------

def test_has_privileges_reads_capabilities(monkeypatch):
    monkeypatch.setattr(cli.os, "geteuid", lambda: 1000)
    monkeypatch.setattr(cli, "_effective_caps", lambda: 0)
    assert not cli.has_privileges()
    monkeypatch.setattr(cli, "_effective_caps", lambda: (1 << cli.CAP_BPF) | (1 << cli.CAP_NET_ADMIN))
    assert cli.has_privileges()
    monkeypatch.setattr(cli, "_effective_caps", lambda: 1 << cli.CAP_BPF)
    assert not cli.has_privileges()


def test_save_json_lists_chains_rules_and_counters(run, api):
    r = run("save", "--json")
    assert r.exit_code == 0, r.output
    data = json.loads(r.stdout)
    assert data["table"] == "filter"
    assert [c["name"] for c in data["chains"]] == ["INPUT", "mychain"]
    assert data["chains"][0]["rules"][0]["packets"] == 123456
