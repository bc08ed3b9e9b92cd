"""ebpfw.config: the ebpfw.toml(5) parser. Table-driven: each bad file gives exactly the
`FILE:LINE: what, expected, found` lines listed; good files give the Config fields listed."""

from __future__ import annotations

from pathlib import Path

import pytest

from ebpfw import config as C
from ebpfw.errors import EbpfwError

REPO = Path(__file__).resolve().parents[2]


def parse(text: str, name: str = "/etc/ebpfw/ebpfw.toml") -> C.Config:
    return C.parse_config(text, name)


def problems(text: str, name: str = "/etc/ebpfw/ebpfw.toml") -> list[str]:
    with pytest.raises(EbpfwError) as ei:
        parse(text, name)
    assert str(ei.value) == f"invalid configuration {name}"
    return ei.value.problems


MINIMAL = 'ruleset = "rules.v4"\ninterfaces = ["eth0"]\n'


def test_minimal_file_and_defaults():
    c = parse(MINIMAL)
    assert c.ruleset == Path("/etc/ebpfw/rules.v4")          # relative to the file's directory
    assert c.mode == "auto" and c.on_stop == "keep" and c.exclude == () and c.conntrack == {}
    assert c.interfaces == (C.IfaceRule("eth0", None),)


def test_every_setting():
    c = parse('ruleset = "/srv/fw.rules"\nmode = "xdp-generic"\n'
              'interfaces = ["eth*", { match = "veth*", mode = "tc" }, { match = "wg0" }]\n'
              'exclude = ["eth9", "veth-infra*"]\non_stop = "detach"\n'
              '[conntrack]\nmax = 65536\ntcp_timeout_established = 3600\nudp_timeout = 30\n')
    assert c.ruleset == Path("/srv/fw.rules")
    assert c.mode == "xdp-generic" and c.on_stop == "detach"
    assert c.interfaces == (C.IfaceRule("eth*", None), C.IfaceRule("veth*", "tc"), C.IfaceRule("wg0", None))
    assert c.exclude == ("eth9", "veth-infra*")
    assert c.conntrack == {"max": 65536, "tcp_timeout_established": 3600, "udp_timeout": 30}


def test_select_first_match_decides_and_exclude_wins():
    c = parse('ruleset = "r"\nmode = "xdp"\n'
              'interfaces = [{ match = "veth1*", mode = "tc" }, "veth*", "eth[01]"]\nexclude = ["veth9"]\n')
    names = ["lo", "eth0", "eth1", "eth2", "veth10", "veth2", "veth9", "Veth3"]
    assert c.select(names) == [("eth0", "xdp"), ("eth1", "xdp"), ("veth10", "tc"), ("veth2", "xdp")]


def test_the_shipped_example_is_valid():
    c = C.load_config(REPO / "etc" / "ebpfw.toml.example")
    assert c.ruleset == Path("/etc/ebpfw/rules.v4")
    assert c.on_stop == "keep" and "lo" in c.exclude
    assert c.select(["lo", "eth0", "enp1s0", "docker0"]) == [("eth0", "auto"), ("enp1s0", "auto")]


def test_modes_are_the_apis():
    api = pytest.importorskip("ebpfw.api")
    assert C.MODES == api.MODES


def test_config_path_from_argument_environment_default(monkeypatch):
    monkeypatch.delenv("EBPFW_CONFIG", raising=False)
    assert C.config_path() == Path("/etc/ebpfw/ebpfw.toml")
    monkeypatch.setenv("EBPFW_CONFIG", "/tmp/e.toml")
    assert C.config_path() == Path("/tmp/e.toml")
    assert C.config_path("/x.toml") == Path("/x.toml")


F = "/etc/ebpfw/ebpfw.toml"
BAD = [
    # syntax errors carry tomllib's line
    ('ruleset = "r"\ninterfaces = ["eth0"\nmode = "tc"\n',
     [f"{F}:3: invalid TOML, expected a `key = value` line or a [table] header, found unclosed array at column 1"]),
    ('ruleset = "r\ninterfaces = []\n',
     [f"{F}:1: invalid TOML, expected a `key = value` line or a [table] header, found illegal character '\\n' "
      "at column 13"]),
    # missing and unknown settings
    ('interfaces = ["eth0"]\n',
     [f"{F}:1: missing setting 'ruleset', expected ruleset = \"/etc/ebpfw/rules.v4\" (the iptables-save file "
      "to enforce), found no ruleset key"]),
    ('ruleset = "r"\n',
     [f"{F}:1: missing setting 'interfaces', expected interfaces = [\"eth0\", \"veth*\"] (names or glob patterns "
      "to enforce on), found no interfaces key"]),
    (MINIMAL + "\nrulset = \"x\"\n",
     [f"{F}:4: unknown setting 'rulset', expected one of ruleset, mode, interfaces, exclude, on_stop, conntrack, "
      "found 'rulset'"]),
    (MINIMAL + "[agent]\nx = 1\n",
     [f"{F}:3: unknown setting 'agent', expected one of ruleset, mode, interfaces, exclude, on_stop, conntrack, "
      "found 'agent'"]),
    # values
    ('ruleset = 5\ninterfaces = ["eth0"]\n', [f"{F}:1: invalid ruleset, expected a file name string, found integer 5"]),
    (MINIMAL + 'mode = "XDP"\n',
     [f"{F}:3: invalid mode, expected one of 'auto', 'xdp', 'xdp-generic', 'tc', found string 'XDP'"]),
    (MINIMAL + "on_stop = true\n",
     [f"{F}:3: invalid on_stop, expected one of 'keep', 'detach', found boolean true"]),
    ('ruleset = "r"\ninterfaces = "eth0"\n',
     [f"{F}:2: invalid interfaces, expected an array of names, patterns or {{ match = PATTERN, mode = MODE }} "
      "tables, found string 'eth0'"]),
    ('ruleset = "r"\ninterfaces = []\n', [f"{F}:2: empty interfaces, expected at least one name or pattern, found []"]),
    # array elements point at their own line
    ('ruleset = "r"\ninterfaces = [\n  "eth0",\n  "bad name",\n  { match = "v*", mode = "fast" },\n  { mode = "tc" },\n]\n',
     [f"{F}:4: invalid interface pattern in interfaces, expected letters, digits, '_.:@-' and the glob "
      "characters '*?[]!', found 'bad name'",
      f"{F}:5: invalid mode for interfaces entry 'v*', expected one of 'auto', 'xdp', 'xdp-generic', 'tc', "
      "found string 'fast'",
      f"{F}:6: interfaces entry without 'match', expected {{ match = \"veth*\", mode = \"tc\" }}, found no match key"]),
    ('ruleset = "r"\ninterfaces = ["averyveryverylongname0"]\n',
     [f"{F}:2: interface name 'averyveryverylongname0' in interfaces is too long, expected at most 15 characters, "
      "found 22"]),
    ('ruleset = "r"\ninterfaces = [{ match = "e*", speed = 1 }]\n',
     [f"{F}:2: unknown key 'speed' in an interfaces entry, expected match and mode, found 'speed'"]),
    (MINIMAL + "exclude = [\"\"]\n",
     [f"{F}:3: invalid interface pattern in exclude, expected a non-empty string such as \"eth0\" or \"veth*\", "
      "found string ''"]),
    # conntrack
    (MINIMAL + "[conntrack]\nmax = 0\nudp_timeout = \"30s\"\ntcp_timeout = 5\n",
     [f"{F}:4: invalid conntrack max, expected a number of entries from 1024 to 67108864, found integer 0",
      f"{F}:5: invalid conntrack udp_timeout, expected a positive integer (seconds), found string '30s'",
      f"{F}:6: unknown conntrack setting 'tcp_timeout', expected one of " + ", ".join(C.CONNTRACK_KEYS)
      + ", found 'tcp_timeout'"]),
    (MINIMAL + "conntrack = 5\n", [f"{F}:3: invalid conntrack, expected a [conntrack] table, found integer 5"]),
]


@pytest.mark.parametrize("text,expected", BAD, ids=[str(i) for i in range(len(BAD))])
def test_bad_files(text, expected):
    assert problems(text) == expected


def test_all_problems_at_once_in_line_order():
    got = problems('on_stop = "x"\nmode = "y"\nruleset = 1\ninterfaces = [1]\n')
    assert [p.split(":")[1] for p in got] == ["1", "2", "3", "4"]


def test_load_config_errors(tmp_path):
    with pytest.raises(EbpfwError, match="cannot read configuration .*nope.toml: No such file"):
        C.load_config(tmp_path / "nope.toml")
    bad = tmp_path / "b.toml"
    bad.write_bytes(b'ruleset = "r"\n# caf\xe9\n')
    with pytest.raises(EbpfwError) as ei:
        C.load_config(bad)
    assert ei.value.problems == [f"{bad}:2: not UTF-8 text, expected a TOML file, found byte 0xe9"]


def test_conntrack_settings_become_the_datapath_environment():
    c = parse(MINIMAL + "[conntrack]\nmax = 1048576\ntcp_loose = false\nudp_timeout = 10\n"
                        "tcp_timeout_established = 600\n")
    assert C.conntrack_env(c.conntrack) == {
        "EBPFW_CT_SIZE": "1048576", "EBPFW_CT_TCP_LOOSE": "0",
        "EBPFW_CT_TIMEOUTS": "tcp_timeout_established=600,udp_timeout=10"}
    assert C.conntrack_env({}) == {}
    ct = pytest.importorskip("ebpfw.datapath.ct")
    t = ct.timeouts_from_env(C.conntrack_env(c.conntrack))
    assert t["udp_timeout"] == 10 and t["tcp_timeout_established"] == 600


def test_conntrack_timeout_names_are_the_datapaths():
    ct = pytest.importorskip("ebpfw.datapath.ct")
    names = {name for name, _ in ct.TIMEOUTS.values()}
    assert names == set(C.CONNTRACK_KEYS) - {"max", "tcp_loose"}


@pytest.mark.parametrize("line,msg", [
    ("max = 100", "invalid conntrack max, expected a number of entries from 1024 to 67108864, found integer 100"),
    ("tcp_loose = 1", "invalid conntrack tcp_loose, expected true or false, found integer 1"),
    ("icmp_timeout = true", "invalid conntrack icmp_timeout, expected a positive integer (seconds), "
                            "found boolean true"),
])
def test_conntrack_values(line, msg):
    assert problems(MINIMAL + "[conntrack]\n" + line + "\n") == [f"{F}:4: {msg}"]
