"""`ebpfw set add NAME ELEMENT [timeout N] [nomatch] [--exist]`: the words after the element
reach ebpfw.sets.add as ipset's add options; anything else is refused before any map is
touched."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from ebpfw import sets
from ebpfw.cli import app


@pytest.fixture
def calls(monkeypatch):
    got = []
    monkeypatch.setattr(sets, "add", lambda name, element, exist=False: got.append((name, element, exist)) or 1)
    return got


@pytest.mark.parametrize("argv, want", [
    (["cs", "10.0.0.0/24"], ("cs", "10.0.0.0/24", False)),
    (["cs", "10.0.0.1", "timeout", "60"], ("cs", "10.0.0.1 timeout 60", False)),
    (["cs", "10.0.0.1", "nomatch"], ("cs", "10.0.0.1 nomatch", False)),
    (["cs", "10.0.0.1", "timeout", "0", "nomatch", "--exist"], ("cs", "10.0.0.1 timeout 0 nomatch", True)),
    (["cs", "10.0.0.1", "nomatch", "timeout", "5"], ("cs", "10.0.0.1 nomatch timeout 5", False)),
])
def test_add_options_reach_the_library(calls, argv, want):
    r = CliRunner().invoke(app, ["set", "add", *argv])
    assert r.exit_code == 0, r.output
    assert calls == [want]


@pytest.mark.parametrize("argv", [["cs", "10.0.0.1", "timeout"], ["cs", "10.0.0.1", "comment", "x"],
                                  ["cs", "10.0.0.1", "nomatch", "60"]])
def test_other_words_are_refused(calls, argv):
    r = CliRunner().invoke(app, ["set", "add", *argv])
    assert r.exit_code != 0 and calls == []
    assert "expected 'timeout N' and/or 'nomatch'" in r.output
