"""`ranvier k8s render AXON.yaml`: print the Kubernetes objects an Axon's tasks would create.

Nothing is sent to a cluster: the objects are rendered by `executors.backends.k8s_objects`, the
same code the kubernetes backend creates them with, as a multi-document YAML stream that
`kubectl apply --dry-run=server -f -` can check. Notes (tasks the backend cannot run, s2i builds
that need an existing image) go to stderr.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer
import yaml

from executors.backends.k8s_objects import RenderSettings, render_axon
from sensors.loader import load_axon

k8s_app = typer.Typer(
    name="k8s", help="Kubernetes: render the objects an Axon creates.", no_args_is_help=True
)


@k8s_app.command("render")
def render(
    file: Annotated[Path, typer.Argument(help="The Axon file.")],
    registry: Annotated[
        str | None,
        typer.Option(help="Registry images are built into (default: RANVIER_REGISTRY)."),
    ] = None,
    namespace: Annotated[
        str | None, typer.Option("--namespace", "-n", help="Override metadata.namespace.")
    ] = None,
) -> None:
    """Print the objects (YAML) an Axon's tasks would create on Kubernetes."""
    axon = load_axon(file)
    if namespace:
        axon = axon.model_copy(
            update={"metadata": axon.metadata.model_copy(update={"namespace": namespace})}
        )
    settings = RenderSettings(
        registry=registry or os.environ.get("RANVIER_REGISTRY") or "registry.invalid/ranvier",
        registry_secret=os.environ.get("RANVIER_REGISTRY_SECRET") or None,
        nats_url=os.environ.get("RANVIER_NATS_URL") or None,
    )
    objects, notes = render_axon(axon, settings)
    typer.echo(yaml.safe_dump_all(objects, sort_keys=False), nl=False)
    for note in notes:
        typer.echo(f"note: {note}", err=True)


def register(app: typer.Typer) -> None:
    """Add the `k8s` command group."""
    app.add_typer(k8s_app)
