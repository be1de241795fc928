"""The ``distilldift`` entry point: every command registered on one app; usage errors as one line."""

from __future__ import annotations

import sys
from importlib.metadata import version
from typing import Annotated

import typer
from rich.markup import escape

# isort: off
# each registers its commands, in the order `--help` lists them
from . import match, extract, track, label, evaluate, weights, demo, train  # noqa: F401

# isort: on
from .common import app, console, err_console


def _version(value: bool) -> None:
    if value:
        console.print(f"distilldift {version('distilldift')}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool | None, typer.Option("--version", callback=_version, is_eager=True, help="Print the version.")
    ] = None,
) -> None:
    """Semantic correspondence with DistillDIFT."""


_UsageError = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "UsageError")


def main() -> None:
    """Console-script entry point: usage mistakes print one line and exit with status 2."""
    command = typer.main.get_command(app)
    try:
        code = command.main(prog_name="distilldift", standalone_mode=False)
    except _UsageError as e:
        if type(e).__name__ == "NoArgsIsHelpError":  # bare `distilldift` / `distilldift CMD`: the help text
            console.print(e.format_message(), markup=False, highlight=False)
            sys.exit(0)
        where = f"`{e.ctx.command_path} --help`" if e.ctx is not None else "`distilldift --help`"
        err_console.print(
            f"[bold red]error:[/] {escape(e.format_message())} (see {where})", highlight=False, soft_wrap=True
        )
        sys.exit(2)
    except (KeyboardInterrupt, typer.Abort):
        err_console.print("interrupted", highlight=False)
        sys.exit(130)
    sys.exit(code if isinstance(code, int) else 0)
