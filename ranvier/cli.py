"""The `ranvier` command line: one typer app, command groups registered from `ranvier.commands`.

User mistakes surface as `RanvierError` and are printed as one line on stderr with a non-zero
exit; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import importlib
import re
import sys
from typing import Annotated, Any

import typer

from events.errors import RanvierError
from ranvier.commands.common import cli_logging

app = typer.Typer(
    name="ranvier",
    help="Event-driven sensor engine for ML operations (Myelin Axon files on NATS JetStream).",
    no_args_is_help=True,
    add_completion=True,  # --install-completion / --show-completion for bash, zsh, fish
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


def _print_version(value: bool) -> None:
    if value:
        version()
        raise typer.Exit


@app.callback()
def _root(
    _version: Annotated[
        bool,
        typer.Option(
            "--version", help="Print the version and exit.", is_eager=True, callback=_print_version
        ),
    ] = False,
) -> None:
    """Event-driven sensor engine for ML operations (Myelin Axon files on NATS JetStream)."""


_register_all()

# Metavars in help say what to type, not the Python type (`--role <role,...>`, not
# `<list[str]>`). A parameter's own `metavar=` wins; the rest are named after the parameter.
_METAVARS: dict[str, str] = {
    "role": "<role,...>",
    "nats_url": "<url,...>",
    "since": "<when>",
    "until": "<when>",
    "output": "<format>",
    "tick": "<duration>",
    "lease_ttl": "<seconds>",
    "file": "<file>",
    "axon_file": "<file>",
    "events": "<file>",
    "creds": "<file>",
    "nkey": "<file>",
    "tls_ca": "<file>",
    "concurrency": "<n>",
    "count": "<n>",
    "replicas": "<n>",
    "partitions": "<n>",
}


def metavar(name: str) -> str:
    """The metavar help shows for a parameter called `name` that has none of its own."""
    if name in _METAVARS:
        return _METAVARS[name]
    if name.endswith("_dir"):
        return "<dir>"
    if name.endswith("port"):
        return "<port>"
    return f"<{name.replace('_', '-')}>"


def command() -> Any:
    """The command behind `app`, with a readable metavar on every option that takes a value
    (arguments keep typer's `{name}` in usage lines)."""
    root = typer.main.get_command(app)
    todo: list[Any] = [root]
    while todo:
        cmd = todo.pop()
        for param in cmd.params:
            option = param.param_type_name == "option"
            if option and param.metavar is None and not param.is_flag:
                param.metavar = metavar(param.name or "value")
        todo.extend(getattr(cmd, "commands", {}).values())
    return root


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; returns the exit code (the console script exits with it).

    Every command runs with logs on stderr at RANVIER_LOG_LEVEL (`cli_logging`): stdout is
    only ever what the command prints.
    """
    try:
        with cli_logging():
            command().main(args=argv, prog_name="ranvier")
    except SystemExit as exc:  # typer's standalone mode ends every run with SystemExit
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except RanvierError as exc:
        typer.echo(error_line(exc), err=True)
        return exc.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())
