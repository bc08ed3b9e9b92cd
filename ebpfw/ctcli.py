"""`ebpfw conntrack ...`: the connection tracking table of this network namespace.

  ebpfw conntrack list [--json] [--all]   entries as `conntrack -L` prints them (or JSON)
  ebpfw conntrack flush                   forget every connection (established flows become
                                          NEW or INVALID on their next packet, as with conntrack -F)
  ebpfw conntrack stats [--json]          entries, size, evictions and the datapath's counters

Registered in ebpfw/cli.py with `app.add_typer(conntrack_app, name="conntrack")`. Errors are
EbpfwError, rendered like every other ebpfw command (message on stderr, exit status 1).
"""

from __future__ import annotations

import json
import sys
from typing import Annotated

import typer

from .cliedge import edge, sub_app
from .errors import EbpfwError

conntrack_app = sub_app("conntrack", "Show, count and flush the connection tracking table of ebpfw's datapath.")


_edge = edge


@conntrack_app.command("list")
@_edge
def list_cmd(
    as_json: Annotated[bool, typer.Option("--json", help="One JSON array of entries.")] = False,
    include_expired: Annotated[bool, typer.Option("--all", help="Also entries whose timeout ran out "
                                                  "but that the table still holds.")] = False,
) -> None:
    """List tracked connections: protocol, original and reply tuples, state, seconds left,
    packets and bytes per direction."""
    from . import conntrack
    rows = conntrack.list_entries(include_expired=include_expired)
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    for d in rows:
        print(conntrack.format_entry(d))
    print(f"ebpfw conntrack: {len(rows)} flow entries have been shown.", file=sys.stderr)


@conntrack_app.command("flush")
@_edge
def flush_cmd() -> None:
    """Delete every entry of the table."""
    from . import conntrack
    n = conntrack.flush()
    print(f"ebpfw conntrack: {n} entries flushed.", file=sys.stderr)


@conntrack_app.command("stats")
@_edge
def stats_cmd(
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object.")] = False,
) -> None:
    """Entries, table size, evictions (entries the LRU dropped to make room for new ones) and the
    datapath's counters."""
    from . import conntrack
    s = conntrack.stats()
    if as_json:
        print(json.dumps(s, indent=2))
        return
    width = max(len(k) for k in s)
    for k, v in s.items():
        print(f"{k:<{width}}  {v}")
