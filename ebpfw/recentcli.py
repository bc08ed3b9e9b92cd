"""`ebpfw recent ...`: the lists -m recent rules keep (ebpfw/recent.py), like /proc/net/xt_recent.

  ebpfw recent list [NAME]     each list (or list NAME): its entries oldest first, in the lines
                               of /proc/net/xt_recent/NAME (src, ttl, last_seen, the times in
                               jiffies); without NAME, every list's name first
  ebpfw recent flush NAME      empty list NAME (`echo / > /proc/net/xt_recent/NAME`)

Registered in ebpfw/cli.py with `app.add_typer(recent_app, name="recent")`.
"""

from __future__ import annotations

import sys
from typing import Annotated, Optional

import typer

from .cliedge import edge, sub_app

recent_app = sub_app("recent", "List and flush the address lists that -m recent rules keep (live).")


@recent_app.command("list")
@edge
def list_cmd(name: Annotated[Optional[str], typer.Argument(metavar="[NAME]")] = None) -> None:
    """Print list NAME (or every list) as /proc/net/xt_recent/NAME does, oldest entry first."""
    from .recent import RecentStore, format_list
    with RecentStore.open() as store:
        if name is not None:
            sys.stdout.write(format_list(store.get(name)))
            return
        for n in sorted(store.headers()):
            lst = store.get(n)
            sys.stdout.write(f"# {n}: {len(lst.entries)} entries, mask {lst.mask}\n")
            sys.stdout.write(format_list(lst))


@recent_app.command("flush")
@edge
def flush_cmd(name: Annotated[str, typer.Argument(metavar="NAME")]) -> None:
    """Remove every address from list NAME."""
    from .recent import RecentStore
    with RecentStore.open() as store:
        n = store.flush(name)
    print(f"flushed {n} entries from {name}")
