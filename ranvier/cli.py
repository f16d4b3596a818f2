"""The `ranvier` command line: one typer app, command groups registered from `ranvier.commands`.

User mistakes surface as `RanvierError` and are printed as one line on stderr with a non-zero
exit; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import importlib
import re
import sys

import typer

from events.errors import RanvierError
from ranvier.commands.common import cli_logging

app = typer.Typer(
    name="ranvier",
    help="Event-driven sensor engine for ML operations (Myelin Axon files on NATS JetStream).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)

# Each module defines `register(app: typer.Typer) -> None`. Add a line to add a command group.
COMMAND_MODULES: tuple[str, ...] = (
    "ranvier.commands.axon",
    "ranvier.commands.serving",
    "ranvier.commands.events",
    "ranvier.commands.sensors",
    "ranvier.commands.endpoint",
    "ranvier.commands.control",
    "ranvier.commands.explain",
    "ranvier.commands.k8s",
)


# Messages that already say where and what (`FILE:LINE:COL: error: ...`) are printed as they are.
_LOCATED = re.compile(r"^\S+?(?::\d+:\d+)?: error: ")


def error_line(exc: RanvierError) -> str:
    """The one line the CLI prints for a user mistake."""
    text = str(exc)
    return text if _LOCATED.match(text) else f"error: {text}"


def _register_all() -> None:
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(app)


@app.command()
def version() -> None:
    """Print ranvier's version."""
    from ranvier import __version__

    typer.echo(__version__)


@app.callback()
def _root() -> None:
    """Event-driven sensor engine for ML operations (Myelin Axon files on NATS JetStream)."""


_register_all()


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; returns the exit code (the console script exits with it).

    Every command runs with logs on stderr at RANVIER_LOG_LEVEL (`cli_logging`): stdout is
    only ever what the command prints.
    """
    try:
        with cli_logging():
            app(args=argv, prog_name="ranvier")
    except SystemExit as exc:  # typer's standalone mode ends every run with SystemExit
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except RanvierError as exc:
        typer.echo(error_line(exc), err=True)
        return exc.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())
