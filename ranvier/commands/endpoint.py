"""`ranvier endpoint NAME`: where an Axon's deployed models answer, for people and scripts.

Myelin's recipe is `URL=$(... -o json | jq -r '.fixedUrl'); curl -d "$DATA" ${URL}predict`, so
`fixedUrl` is the router's base URL plus `/<axon>/`, always ending in `/`. It is read from the
URL the running router recorded (`router.url`), not from the deployment record, so it stays
right when the router restarts on another port. Per model, the backends (version, URL, weight)
come from the deployment records the deployer writes after each switch.
"""

from __future__ import annotations

import enum
import json
from typing import Annotated, Any

import typer
import yaml

from events.bus import Bus, kv_key
from events.errors import RanvierError
from events.subjects import MODELS_BUCKET
from executors.deploy_flow import fixed_url
from executors.serving.kv_table import ROUTER_URL_KEY
from ranvier.commands.common import (
    AllNamespaces,
    Connection,
    axon_namespace,
    run_command,
    with_connection,
)


class NothingDeployedError(RanvierError, LookupError):
    """The Axon has no deployment to show."""


class OutputFormat(enum.StrEnum):
    """Output formats of `endpoint`."""

    json = "json"
    yaml = "yaml"


def _decode(raw: bytes) -> dict[str, Any] | None:
    try:
        value = json.loads(raw)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def endpoint_document(
    name: str, namespace: str, router_url: str | None, records: list[dict[str, Any]]
) -> dict[str, Any]:
    """The `endpoint` answer from the router URL and the Axon's deployment records."""
    if not records:
        raise NothingDeployedError(
            f"nothing is deployed for axon {name!r} in namespace {namespace!r}",
            hint="run its deploy sensor first, e.g. `ranvier up AXON.yaml --until deployed`",
        )
    recorded = next((r["url"] for r in records if isinstance(r.get("url"), str)), None)
    url = fixed_url(router_url, name) if router_url else recorded
    if url is None:
        raise NothingDeployedError(
            f"axon {name!r} is deployed but no router is running",
            hint="start one with `ranvier run --role router` (or `ranvier up`)",
        )
    return {
        "name": name,
        "namespace": namespace,
        "fixedUrl": url,
        "deployments": [
            {
                "deployer": r.get("deployer"),
                "url": url if len(records) == 1 else f"{url}{r.get('deployer')}/",
                "updated": r.get("updated"),
                "models": r.get("models", []),
            }
            for r in records
        ],
        "models": [m for r in records for m in r.get("models", [])],
    }


async def read_endpoint(bus: Bus, name: str, namespace: str) -> dict[str, Any]:
    """The `endpoint` answer, read from `ranvier_models`."""
    records: list[dict[str, Any]] = []
    prefix = kv_key("deploy", namespace, name)
    for key in sorted(await bus.kv_keys(MODELS_BUCKET, f"{prefix}.>")):
        found = await bus.kv_get(MODELS_BUCKET, key)
        record = _decode(found[0]) if found else None
        if record is not None:
            records.append(record)
    found = await bus.kv_get(MODELS_BUCKET, ROUTER_URL_KEY)
    router = _decode(found[0]) if found else None
    router_url = router.get("url") if router else None
    return endpoint_document(
        name, namespace, router_url if isinstance(router_url, str) else None, records
    )


@with_connection
def endpoint(
    name: Annotated[str, typer.Argument(metavar="NAME", help="The Axon (metadata.name).")],
    *,
    namespace: Annotated[
        str, typer.Option("--namespace", "-n", help="The Axon's namespace.")
    ] = "default",
    all_namespaces: AllNamespaces = False,
    output: Annotated[
        OutputFormat, typer.Option("--output", "-o", help="json or yaml.")
    ] = OutputFormat.json,
    connection: Connection,
) -> None:
    """Print where an Axon's models answer: fixedUrl (POST ${fixedUrl}predict) and backends."""
    settings = connection.settings()

    async def go() -> dict[str, Any]:
        async with Bus.connect(
            settings.connect_options(), limits=settings.stream_limits(), ensure=False
        ) as bus:
            ns = await axon_namespace(bus, name, namespace, all_namespaces)
            return await read_endpoint(bus, name, ns)

    document = run_command(go())
    if output is OutputFormat.yaml:
        typer.echo(yaml.safe_dump(document, sort_keys=False).rstrip("\n"))
    else:
        typer.echo(json.dumps(document, indent=2))


def register(app: typer.Typer) -> None:
    """Add `endpoint` to the CLI."""
    app.command(name="endpoint")(endpoint)
