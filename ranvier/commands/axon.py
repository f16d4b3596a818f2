"""`ranvier validate` and `ranvier schema`: check Axon files before anything runs them.

`validate` prints every mistake of every file (not only the first), one per line in the
`FILE:LINE:COL: error: PATH: MESSAGE` form editors understand, or a stable JSON document for
scripts; it exits 1 when any file is bad. `schema` prints the JSON Schema that editors use
for completion, the same one that is checked in at manifests/schema/axon.schema.json.
"""

from __future__ import annotations

import enum
import json
from pathlib import Path
from typing import Annotated, Any

import typer

from sensors.loader import SpecError, load_axon
from sensors.spec import json_schema


class OutputFormat(enum.StrEnum):
    """Output formats of `validate`."""

    text = "text"
    json = "json"


def _result(path: Path) -> dict[str, Any]:
    try:
        axon = load_axon(path)
    except SpecError as exc:
        return {
            "file": str(path),
            "ok": False,
            "axon": None,
            "errors": [
                {"line": i.line, "column": i.column, "path": i.path, "message": i.message}
                for i in exc.issues
            ],
            "_lines": [str(i) for i in exc.issues],
        }
    return {
        "file": str(path),
        "ok": True,
        "axon": axon.metadata.name,
        "errors": [],
        "_lines": [
            f"ok {path}: axon {axon.metadata.name} "
            f"({len(axon.spec.tasks)} tasks, {len(axon.spec.sensors)} sensors)"
        ],
    }


def validate(
    files: Annotated[list[Path], typer.Argument(help="Axon files to check.", show_default=False)],
    output: Annotated[
        OutputFormat, typer.Option("--output", "-o", help="text (one line per issue) or json.")
    ] = OutputFormat.text,
) -> None:
    """Check Axon files: prints every error as FILE:LINE:COL: error: PATH: MESSAGE."""
    results = [_result(path) for path in files]
    if output is OutputFormat.json:
        public = [{k: v for k, v in r.items() if not k.startswith("_")} for r in results]
        typer.echo(json.dumps(public, indent=2))
    else:
        for result in results:
            for line in result["_lines"]:
                typer.echo(line)
    if not all(r["ok"] for r in results):
        raise typer.Exit(1)


def schema() -> None:
    """Print the Axon JSON Schema (draft 2020-12)."""
    typer.echo(schema_text(), nl=False)


def schema_text() -> str:
    """The schema exactly as `ranvier schema` prints it and the repository stores it."""
    return json.dumps(json_schema(), indent=2, sort_keys=False) + "\n"


def register(app: typer.Typer) -> None:
    """Add `validate` and `schema` to the CLI."""
    app.command("validate")(validate)
    app.command("schema")(schema)
