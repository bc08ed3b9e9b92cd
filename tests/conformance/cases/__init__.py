"""The corpus cases: one module per rulesets/*.rules file, each with build() -> Case.
CASE_MODULES lists them in the order the suite runs them."""

from __future__ import annotations

import importlib

CASE_MODULES = [
    "server_baseline",
    "router",
    "fail2ban_like",
    "ufw_like",
    "docker_like",
    "blocklist_1k",
    "server_stateful",
    "docker_stateful",
    "ufw_stateful",
    "ufw_generated",
]


# cases with inline rulesets: "module:function"
EXTRA_CASES = [
    "fragments:build_forward",
    "fragments:build_input",
    "fragments:build_conntrack",
    "fragments:build_tcp_offset1",
    "regressions:build_e2big",
    "malformed:build_ip_options",
    "malformed:build_truncated",
    "reject",
    "reject:build_output_judged",
    "ufw_generated:build_limit_drop",
    "ufw_generated:build_limit_reject",
    "sets",
    "raw",
    "connlimit",
    "raw:build_marks",
]


def load_case(name: str):
    module, _, func = name.partition(":")
    return getattr(importlib.import_module(f"{__name__}.{module}"), func or "build")()
