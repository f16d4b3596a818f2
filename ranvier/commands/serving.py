"""`ranvier serve CLASS`: run a user's model class as a Seldon-style model server.

This is what a deploy task runs (one process per model version) and what a user runs by
hand to try a class before deploying it. The class is loaded before the port opens, so a
bad class is a one-line error and a running server is a healthy one. The line
`ranvier: listening on URL` on stdout tells scripts and tests the bound port (`--port 0`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

from events.errors import RanvierError


def serve(  # noqa: PLR0917 -- typer maps each parameter to a CLI option
    model_class: Annotated[
        str,
        typer.Argument(
            metavar="CLASS",
            help="Class, module.Class or module:Class (Class alone: the file Class.py).",
            show_default=False,
        ),
    ],
    model_path: Annotated[
        Path | None,
        typer.Option(
            "--model-path", help="Model directory, passed as model_path= if the class takes it."
        ),
    ] = None,
    port: Annotated[
        int, typer.Option("--port", help="Port to listen on; 0 picks a free one.")
    ] = 9000,
    host: Annotated[str, typer.Option("--host", help="Address to listen on.")] = "127.0.0.1",
    workdir: Annotated[
        Path | None,
        typer.Option("--workdir", help="Directory holding the class's file (default: current)."),
    ] = None,
    version: Annotated[
        str | None,
        typer.Option("--model-version", help="Version shown in meta (default: RANVIER_VERSION)."),
    ] = None,
    max_body_bytes: Annotated[
        int | None,
        typer.Option(
            "--max-body-bytes",
            help="Largest request body; larger ones get 413 unread "
            "(default: RANVIER_MAX_BODY_BYTES, else 10 MB).",
            show_default=False,
        ),
    ] = None,
    max_in_flight: Annotated[
        int | None,
        typer.Option(
            "--max-in-flight",
            help="Requests worked on at once; more get 503 + Retry-After "
            "(default: RANVIER_MAX_IN_FLIGHT, else 32).",
            show_default=False,
        ),
    ] = None,
    timeout: Annotated[
        float | None,
        typer.Option(
            "--timeout",
            help="Seconds one request may take before it gets 504 "
            "(default: RANVIER_PREDICT_TIMEOUT, else 25).",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Serve a model class over HTTP: /predict, /send-feedback, OIP v2 (/v2/...), /health."""
    from executors.serving.hosting import run_loop, serve_app
    from executors.serving.limits import limits_from
    from executors.serving.loading import instantiate, load_class
    from executors.serving.server import create_model_app

    if not 0 <= port <= 65535:
        raise RanvierError(f"invalid --port {port}", hint="use 0..65535")
    if model_path is not None and not model_path.exists():
        raise RanvierError(f"--model-path {model_path} does not exist", hint="give a directory")
    limits = limits_from(
        max_body_bytes=max_body_bytes, max_in_flight=max_in_flight, timeout_s=timeout
    )
    search_dir = (workdir or Path.cwd()).resolve()
    cls = load_class(model_class, search_dir)
    model = instantiate(cls, model_path)
    name = os.environ.get("RANVIER_MODEL") or cls.__name__
    app = create_model_app(
        model,
        name=name,
        version=version or os.environ.get("RANVIER_VERSION", ""),
        limits=limits,
    )

    def announce(url: str) -> None:
        typer.echo(f"ranvier: listening on {url}")

    run_loop(serve_app(app, host, port, on_listening=announce))


def register(app: typer.Typer) -> None:
    """Add `serve` to the CLI."""
    app.command(name="serve")(serve)
