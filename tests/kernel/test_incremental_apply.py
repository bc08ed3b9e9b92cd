"""Incremental apply (one process applying edit after edit): only the changed rule lines are
parsed and compiled, and only the map entries that differ from what the inactive slot holds are
written. The slot an incremental apply leaves must read exactly like the slot a full apply of
the same text writes (every table the datapath reads, counters included), and a slot written by
another process in between must never be used as a base.

Topology (made here): one namespace with a veth whose both ends are inside namespaces of this
test; nothing is sent.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from netns import nsenter_argv, veth

pytestmark = pytest.mark.kernel

BENCH = Path(__file__).resolve().parents[2] / "bench"

WORKER = textwrap.dedent("""
    import json, random, subprocess, sys
    from pathlib import Path
    sys.path.insert(0, {bench!r})
    from gen_rules import generate
    from ebpfw import api, state
    from ebpfw.datapath import Datapath, Shape

    POOL = ["-s 192.168.{{a}}.{{b}}/32 -j DROP", "-p tcp -m tcp --dport {{p}} -j ACCEPT",
            "-p udp -m udp --dport {{p}}:{{q}} -j ACCEPT", "-i eth+ -p udp -m udp --dport {{p}} -j ACCEPT",
            "-i d0 -s 100.64.{{a}}.{{b}}/32 -j DROP", "-s 10.10.0.0/16 -p udp -m udp --sport {{p}} -j ACCEPT",
            "-p tcp -m multiport --dports 80,{{p}} -j ACCEPT", "! -s 10.{{a}}.0.0/16 -p tcp -j DROP",
            "-d 10.200.{{a}}.{{b}}/32 -p udp -m udp --dport 9000 -c 7 700 -j ACCEPT"]
    rng = random.Random(11)

    def edit(text, count):
        lines = text.split("\\n")
        idx = rng.sample([i for i, l in enumerate(lines) if l.startswith("-A INPUT ")][:-1], count)
        for i in idx:
            p = rng.randrange(1, 60000)
            body = rng.choice(POOL).format(a=rng.randrange(256), b=rng.randrange(256), p=p, q=p + 5)
            lines[i] = "-A INPUT " + body
        lines[0] = "# edit " + str(rng.random())       # comments may change too
        return "\\n".join(lines)

    def image():
        state.wait_background()
        cur = api.status()
        dp = Datapath.open_pinned(Path(cur["gen_dir"]), Shape.from_json(cur["shape"]))
        try:
            return dp.slot_image(dp.active()[0])
        finally:
            dp.close()

    def compare(a, b):
        bad = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
        return bad

    out = {{"steps": []}}
    text = generate("mixed", 1200)
    r = api.apply(text, "b.rules", ["d0"], "xdp")
    out["first"] = r
    for step in range(4):
        step_out = {{}}
        for k in range(2):          # the second one writes a slot this process wrote before
            text = edit(text, 1 + step)
            r = api.apply(text, "e.rules", ["d0"], "xdp", counters=(step == 3))
            step_out[f"apply{{k}}"] = {{x: r[x] for x in ("recompiled", "incremental", "maps_diffed")}}
        inc = image()
        api._SESSION = None         # forget: the same text through the full path, other slot
        r = api.apply(text, "e.rules", ["d0"], "xdp", counters=(step == 3))
        step_out["full"] = {{x: r[x] for x in ("recompiled", "incremental", "maps_diffed")}}
        step_out["differ"] = compare(inc, image())
        step_out["counted"] = sum(p for p, _ in inc["cnt"])
        step_out["sizes"] = {{k: len(v) for k, v in inc.items() if hasattr(v, "__len__")}}
        if step:        # the comparison sees a change: this step's slot against the last one's
            step_out["control"] = compare(last, inc)
        last = inc
        out["steps"].append(step_out)
    # another process applies: this one's picture of the slots is stale and must not be used
    t2 = edit(text, 2)
    api.apply(edit(text, 1), "e.rules", ["d0"], "xdp")
    t1 = edit(text, 1)
    api.apply(t1, "e.rules", ["d0"], "xdp")
    other = edit(t1, 3)
    subprocess.run([sys.executable, "-c", "import sys; from ebpfw import api; "
                    "api.apply(sys.stdin.read(), 'o.rules', ['d0'], 'xdp')"], input=other, text=True, check=True)
    r = api.apply(t2, "e.rules", ["d0"], "xdp")
    out["after_other"] = {{x: r[x] for x in ("recompiled", "incremental", "maps_diffed")}}
    inc = image()
    api._SESSION = None
    api.apply(t2, "e.rules", ["d0"], "xdp")
    out["after_other_differ"] = compare(inc, image())
    print(json.dumps(out))
""")


def test_incremental_apply_writes_what_a_full_apply_writes(netns, ebpfw_env, tmp_path):
    a, dut = netns("pc"), netns("pc")
    veth(a, "c0", dut, "d0", "10.94.0.2/24", "10.94.0.1/24")
    proc = subprocess.run(nsenter_argv(dut) + [sys.executable, "-c", WORKER.format(bench=str(BENCH))],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["first"]["recompiled"]
    for i, step in enumerate(out["steps"]):
        assert not step["apply0"]["recompiled"] and step["apply0"]["incremental"], (i, step)
        assert step["apply1"]["incremental"] and step["apply1"]["maps_diffed"], (i, step)
        assert not step["full"]["incremental"] and not step["full"]["maps_diffed"], (i, step)
        assert step["differ"] == [], f"step {i}: the incremental slot differs from a full write in {step['differ']}"
    for step in out["steps"][1:]:
        assert {"rule", "ebpfw_gent"} <= set(step["control"]), step["control"]
    sizes = out["steps"][0]["sizes"]
    assert sizes["vec"] >= 2 and sizes["ebpfw_gent"] > 100 and sizes["rule"] == 1200 * 8
    # -c: the counters of the changed rules with -c start from their values, as in a full apply
    assert out["steps"][3]["counted"] > 0
    assert out["steps"][0]["counted"] == 0
    assert out["after_other"]["incremental"] is False or out["after_other"]["maps_diffed"] is False
    assert not out["after_other"]["maps_diffed"]
    assert out["after_other_differ"] == []
