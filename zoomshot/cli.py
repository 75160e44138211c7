"""The `zs` command line: one typer app, thin commands over library functions.

Each command parses options and calls one library function. Heavy imports (torch, open_clip,
timm, faiss, matplotlib) happen inside the commands, so `zs --help` answers fast. A `ZsError`
raised below becomes a one-line `error: ...` on stderr and exit code 2.
"""
from __future__ import annotations

import functools
import sys
from pathlib import Path
from typing import List, Optional

import typer

from zoomshot.errors import ZsError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="zoomshot: CLIP's zero-shot ability for any vision encoder, through a feature cache.",
)
cache_app = typer.Typer(no_args_is_help=True, help="Inspect cache files.")
app.add_typer(cache_app, name="cache")


def command(typer_app: typer.Typer = app, name: str | None = None):
    """Register a command whose ZsError turns into one line on stderr and exit code 2."""

    def wrap(fn):
        @functools.wraps(fn)
        def run(*args, **kwargs):
            try:
                return fn(*args, **kwargs)
            except ZsError as e:
                typer.echo(f"error: {e}", err=True)
                raise typer.Exit(2) from None

        return typer_app.command(name=name)(run)

    return wrap


# ---------------------------------------------------------------- cache --------------------
@command(cache_app, name="info")
def cache_info(path: Path = typer.Argument(..., help="A zs-cache .h5 file.")):
    """Say what a cache holds, in a few lines."""
    from zoomshot.cache import open_cache

    with open_cache(path) as c:
        typer.echo(c.info())


# ---------------------------------------------------------------- encoders / extract ---------
@command(name="encoders")
def encoders_cmd():
    """List the encoder aliases, their specs and families (any timm:/open_clip:/py: spec works too)."""
    from zoomshot.encoders import SPEC_HELP, list_encoders

    rows = list_encoders()
    w = max(len(r["alias"]) for r in rows)
    ws = max(len(r["spec"]) for r in rows)
    for r in rows:
        typer.echo(f"{r['alias']:<{w}}  {r['family']:<6}  {r['spec']:<{ws}}  {r['description']}")
    typer.echo(f"\nA spec is {SPEC_HELP}.")

# (section owned by the extract stage)


# ---------------------------------------------------------------- fit / synth --------------
# (section owned by the fit stage)


# ---------------------------------------------------------------- evaluate / sweep ---------
# (section owned by the evaluate stage)


# ---------------------------------------------------------------- predict / search / export -
# (section owned by the use-the-model work)


# ---------------------------------------------------------------- demo ---------------------
# (section owned by the demo)


def main() -> None:
    app()


if __name__ == "__main__":
    sys.exit(main())
