"""`ebpfw set ...`: live membership of the sets -m set rules name (ebpfw/sets.py).

  ebpfw set add NAME ELEMENT [timeout N] [nomatch] [--exist]
                                          add an element (ipset syntax: 10.0.0.1, 10.0.0.0/24,
                                          10.0.0.1,tcp:22, a port for bitmap:port; ranges expand);
                                          in a set created with a timeout it expires after the
                                          set's timeout or N seconds (0 = never); nomatch (hash:net
                                          types): an exception, addresses in it do not match;
                                          --exist renews it
  ebpfw set del NAME ELEMENT [--exist]    delete it
  ebpfw set list [NAME]                   the loaded sets in `ipset save` format (an element of a
                                          set with timeouts shows the seconds it has left)
  ebpfw set flush NAME                    remove every element
  ebpfw set swap FROM TO                  exchange the two sets' names (ipset swap): the rules
                                          naming FROM read TO's elements and the other way round

Each change but swap is one map update the next packet sees (swap re-applies the enforced
ruleset, maps only, so that every rule switches at once); the sets outlive re-applies. Registered in
ebpfw/cli.py with `app.add_typer(set_app, name="set")`.
"""

from __future__ import annotations

import sys
from typing import Annotated, Optional

import typer

from .cliedge import edge, sub_app

set_app = sub_app("set", "Add, delete, list, flush and swap the sets that -m set rules name (live).")


_edge = edge


@set_app.command("add")
@_edge
def add_cmd(
    name: Annotated[str, typer.Argument(metavar="NAME")],
    element: Annotated[str, typer.Argument(metavar="ELEMENT")],
    options: Annotated[Optional[list[str]], typer.Argument(metavar="[timeout N] [nomatch]")] = None,
    exist: Annotated[bool, typer.Option("--exist", help="No error when the element is already there "
                                        "(its timeout is renewed).")] = False,
) -> None:
    """Add ELEMENT to set NAME (`timeout N`: it expires after N seconds, 0 = never; `nomatch`: an
    exception inside a hash:net set)."""
    from . import sets
    from .errors import EbpfwError
    opts = list(options or [])
    i = 0
    while i < len(opts):
        if opts[i] == "timeout" and i + 1 < len(opts):
            i += 2
        elif opts[i] == "nomatch":
            i += 1
        else:
            raise EbpfwError(f"unexpected '{' '.join(opts)}' after the element, expected 'timeout N' "
                             "and/or 'nomatch'")
    sets.add(name, " ".join([element, *opts]), exist)


@set_app.command("del")
@_edge
def del_cmd(
    name: Annotated[str, typer.Argument(metavar="NAME")],
    element: Annotated[str, typer.Argument(metavar="ELEMENT")],
    exist: Annotated[bool, typer.Option("--exist", help="No error when the element is not there.")] = False,
) -> None:
    """Delete ELEMENT from set NAME."""
    from . import sets
    sets.delete(name, element, exist)


@set_app.command("list")
@_edge
def list_cmd(name: Annotated[Optional[str], typer.Argument(metavar="[NAME]")] = None) -> None:
    """Print the loaded sets (or set NAME) in `ipset save` format."""
    from . import sets
    sys.stdout.write(sets.list_sets(name))


@set_app.command("flush")
@_edge
def flush_cmd(name: Annotated[str, typer.Argument(metavar="NAME")]) -> None:
    """Remove every element of set NAME."""
    from . import sets
    n = sets.flush(name)
    print(f"flushed {n} entries from {name}")


@set_app.command("swap")
@_edge
def swap_cmd(
    from_name: Annotated[str, typer.Argument(metavar="FROM")],
    to_name: Annotated[str, typer.Argument(metavar="TO")],
) -> None:
    """Exchange the names of sets FROM and TO, as `ipset swap` does: the rules that name FROM
    then match TO's elements and the other way round (sets of the same type only)."""
    from . import sets
    res = sets.swap(from_name, to_name)
    how = ("no ruleset is enforced" if res is None else
           f"rules re-applied: generation {res['generation']}, "
           f"{'new programs' if res['recompiled'] else 'maps only'}, {res['seconds']:.3f} s")
    print(f"swapped {from_name} and {to_name} ({how})")
