"""The Axon commands: `submit`, `list`, `get`, `watch`, `delete`, `trigger`, `logs`, `open`.

They are thin readers of the KV records the roles write (`get`, `list`, `watch`, `logs`) or one
call into the Axon store (`submit`, `delete`, `trigger`), and take the same connection flags as
every command that connects. `register` adds them, and `run`/`up`/`down`
(`ranvier.commands.up`), to the root CLI.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import IO, Annotated

import structlog
import typer
import yaml
from rich.console import Console
from rich.table import Table

from events.bus import Bus
from executors.runner import TaskRun
from ranvier.app import (
    AppError,
    axon_status,
    task_runs,
    trigger_rest,
)
from ranvier.commands.common import (
    AllNamespaces,
    Connection,
    StateDir,
    axon_namespace,
    connect_or_start,
    on_own_server,
    run_command,
    with_connection,
)
from ranvier.commands.status import GetFormat, Progress, status_table
from ranvier.commands.up import POLL, down, run, up
from ranvier.settings import (
    Settings,
)
from sensors.axons import AxonStore, StoredAxon
from sensors.loader import load_axon
from sensors.spec import Axon

log = structlog.get_logger(__name__)

Namespace = Annotated[str, typer.Option("--namespace", "-n", help="The Axon's namespace.")]
list_app = typer.Typer(name="list", help="List submitted resources.", no_args_is_help=True)
get_app = typer.Typer(name="get", help="Show one resource.", no_args_is_help=True)
watch_app = typer.Typer(name="watch", help="Follow a resource live.", no_args_is_help=True)
delete_app = typer.Typer(name="delete", help="Delete a resource.", no_args_is_help=True)


# ---------------------------------------------------------------------------------------------
# submit, list, get, watch, delete, trigger, logs


async def _read_only(settings: Settings, body: Callable[[Bus], Awaitable[None]]) -> None:
    """Connect for reading; with no server recorded, open the state dir's store."""
    _, origin = settings.resolve_url()
    if origin != "default" or not settings.store_dir.is_dir():
        await connect_or_start(settings, body, read_only=True)
        return
    await on_own_server(settings, body)


def _with_namespace(axon: Axon, namespace: str | None) -> Axon:
    if namespace is None or namespace == axon.metadata.namespace:
        return axon
    metadata = axon.metadata.model_copy(update={"namespace": namespace})
    return axon.model_copy(update={"metadata": metadata})


async def _stored(bus: Bus, namespace: str, name: str) -> StoredAxon:
    stored = await AxonStore(bus).get(namespace, name)
    if stored is None:
        raise AppError(f"no Axon {namespace}/{name} was submitted", hint="see `ranvier list axon`")
    return stored


async def _watch(bus: Bus, stored: StoredAxon) -> None:
    with Progress() as progress:
        while True:
            progress.update(await axon_status(bus, stored))
            await asyncio.sleep(POLL)


@with_connection
def submit(
    file: Annotated[Path, typer.Argument(help="The Axon file to submit.")],
    *,
    namespace: Annotated[
        str | None, typer.Option("--namespace", "-n", help="Override metadata.namespace.")
    ] = None,
    watch: Annotated[bool, typer.Option("--watch", help="Then follow its progress.")] = False,
    connection: Connection,
) -> None:
    """Submit an Axon to a running control plane (a new generation if it changed)."""
    axon = _with_namespace(load_axon(file), namespace)
    settings = connection.settings()

    async def go() -> None:
        async with Bus.connect(settings.connect_options(), limits=settings.stream_limits()) as bus:
            stored = await AxonStore(bus).submit(axon, file)
            typer.echo(
                f"axon {stored.namespace}/{stored.name} submitted (generation {stored.generation})"
            )
            if watch:
                await _watch(bus, stored)

    run_command(go())


@list_app.command("axon")
@with_connection
def list_axon(
    *,
    namespace: Annotated[
        str | None, typer.Option("--namespace", "-n", help="Only this namespace's Axons.")
    ] = None,
    all_namespaces: Annotated[
        bool, typer.Option("--all-namespaces", "-A", help="Every namespace's (the default).")
    ] = False,
    output: Annotated[str, typer.Option("--output", "-o", help="text or json.")] = "text",
    connection: Connection,
) -> None:
    """List submitted Axons (of every namespace unless -n names one)."""
    if output not in ("text", "json"):
        raise AppError(f"-o {output}: choose text or json")
    if namespace is not None and all_namespaces:
        raise AppError("-n and -A contradict each other", hint="give one of them")
    settings = connection.settings()

    async def body(bus: Bus) -> None:
        rows = [
            {
                "name": s.name,
                "namespace": s.namespace,
                "generation": s.generation,
                "submitted": s.submitted.isoformat(),
                "source": str(s.source) if s.source else None,
            }
            for s in await AxonStore(bus).list()
            if namespace is None or s.namespace == namespace
        ]
        if output == "json":
            typer.echo(json.dumps(rows, indent=2))
            return
        table = Table("NAMESPACE", "NAME", "GENERATION", "SUBMITTED")
        for row in rows:
            table.add_row(
                str(row["namespace"]),
                str(row["name"]),
                str(row["generation"]),
                str(row["submitted"]),
            )
        Console().print(table)

    run_command(_read_only(settings, body))


@get_app.command("axon")
@with_connection
def get_axon(
    name: Annotated[str, typer.Argument(help="The Axon's name.")],
    *,
    namespace: Namespace = "default",
    all_namespaces: AllNamespaces = False,
    output: Annotated[
        GetFormat, typer.Option("--output", "-o", help="text, json, yaml or wide.")
    ] = GetFormat.text,
    connection: Connection,
) -> None:
    """Show an Axon's sensor runs, steps, task runs, model versions and deployments."""
    settings = connection.settings()

    async def body(bus: Bus) -> None:
        ns = await axon_namespace(bus, name, namespace, all_namespaces)
        doc = await axon_status(bus, await _stored(bus, ns, name))
        if output is GetFormat.json:
            typer.echo(json.dumps(doc, indent=2))
        elif output is GetFormat.yaml:
            typer.echo(yaml.safe_dump(doc, sort_keys=False), nl=False)
        else:
            Console().print(status_table(doc, wide=output is GetFormat.wide))

    run_command(_read_only(settings, body))


@watch_app.command("axon")
@with_connection
def watch_axon(
    name: Annotated[str, typer.Argument(help="The Axon's name.")],
    *,
    namespace: Namespace = "default",
    all_namespaces: AllNamespaces = False,
    connection: Connection,
) -> None:
    """Follow an Axon's progress live until Ctrl-C."""
    settings = connection.settings()

    async def go() -> None:
        async with Bus.connect(settings.connect_options(), limits=settings.stream_limits()) as bus:
            ns = await axon_namespace(bus, name, namespace, all_namespaces)
            await _watch(bus, await _stored(bus, ns, name))

    run_command(go())


@delete_app.command("axon")
@with_connection
def delete_axon(
    name: Annotated[str, typer.Argument(help="The Axon's name.")],
    *,
    namespace: Namespace = "default",
    all_namespaces: AllNamespaces = False,
    connection: Connection,
) -> None:
    """Delete an Axon: its sensors stop and its running tasks are stopped."""
    settings = connection.settings()

    async def go() -> None:
        async with Bus.connect(settings.connect_options(), limits=settings.stream_limits()) as bus:
            ns = await axon_namespace(bus, name, namespace, all_namespaces)
            stored = await AxonStore(bus).delete(ns, name)
        typer.echo(f"axon {stored.namespace}/{stored.name} deleted")

    run_command(go())


@with_connection
def trigger(
    axon: Annotated[str, typer.Argument(help="The Axon's name.")],
    sensor: Annotated[str, typer.Argument(help="The sensor to fire (it needs a Rest trigger).")],
    *,
    data: Annotated[str, typer.Option("--data", help="JSON object passed as the payload.")] = "{}",
    namespace: Namespace = "default",
    all_namespaces: AllNamespaces = False,
    connection: Connection,
) -> None:
    """Fire a sensor's Rest trigger."""
    try:
        payload = json.loads(data)
    except json.JSONDecodeError as exc:
        raise AppError(f"--data is not JSON: {exc.msg} at column {exc.colno}") from None
    if not isinstance(payload, dict):
        raise AppError("--data must be a JSON object")
    settings = connection.settings()

    async def go() -> None:
        async with Bus.connect(settings.connect_options(), limits=settings.stream_limits()) as bus:
            ns = await axon_namespace(bus, axon, namespace, all_namespaces)
            event_id = await trigger_rest(bus, ns, axon, sensor, payload)
        typer.echo(f"triggered {axon}/{sensor} (event {event_id})")

    run_command(go())


def _pick_run(runs: list[TaskRun], run_id: str | None, axon: str, task: str) -> TaskRun:
    if not runs:
        raise AppError(f"task {task!r} of Axon {axon} has no runs yet")
    if run_id is None:
        return runs[-1]
    found = [r for r in runs if r.id == run_id or r.id.endswith(run_id)]
    if len(found) != 1:
        ids = ", ".join(r.id for r in runs[-5:])
        raise AppError(f"no single run of {task} matches {run_id!r}", hint=f"recent runs: {ids}")
    return found[0]


def _copy(source: IO[bytes], sink: IO[bytes]) -> int:
    chunk = source.read()
    sink.write(chunk)
    sink.flush()
    return len(chunk)


@with_connection
def logs(
    axon: Annotated[str, typer.Argument(help="The Axon's name.")],
    task: Annotated[str, typer.Argument(help="The task.")],
    *,
    run_id: Annotated[
        str | None, typer.Option("--run", help="Run id (or its end); default the latest.")
    ] = None,
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Follow until it ends.")] = False,
    namespace: Namespace = "default",
    all_namespaces: AllNamespaces = False,
    kube_api_url: Annotated[
        str | None,
        typer.Option(
            "--kube-api-url",
            envvar="RANVIER_KUBE_API_URL",
            help="Runs on Kubernetes: the API server (plain HTTP, e.g. kubectl proxy); "
            "default: KUBECONFIG, else the pod's service account.",
        ),
    ] = None,
    connection: Connection,
) -> None:
    """Print a task run's log (stdout and stderr of its process, or its pods' on Kubernetes)."""
    settings = connection.settings()

    async def body(bus: Bus) -> None:
        ns = await axon_namespace(bus, axon, namespace, all_namespaces)
        run = _pick_run(await task_runs(bus, ns, axon, task), run_id, axon, task)
        if not run.log_path and await _cluster_log(run, follow, kube_api_url):
            return
        if not run.log_path:
            raise AppError(f"run {run.id} of {task} has no log ({run.phase}: {run.message})")
        path = Path(run.log_path)
        sink = sys.stdout.buffer
        try:
            source = path.open("rb")  # noqa: ASYNC230  # a local file, read in small pieces
        except OSError as exc:
            raise AppError(f"cannot read {path}: {exc.strerror}") from None
        with source:
            _copy(source, sink)
            while follow and run.phase not in ("Succeeded", "Failed"):
                await asyncio.sleep(POLL)
                _copy(source, sink)
                got = await bus.kv_get("ranvier_runs", run.key)
                run = TaskRun.from_json(got[0]) if got is not None else run
            _copy(source, sink)

    run_command(_read_only(settings, body))


def open_console(
    *,
    state_dir: StateDir = None,
    print_only: Annotated[
        bool, typer.Option("--print", help="Print the console's URL; open no browser.")
    ] = False,
) -> None:
    """Open the console of the `ranvier up` running in the state dir in a browser."""
    from ranvier.api.role import URL_FILE

    root = Settings.from_flags(state_dir=state_dir).state_dir
    try:
        url = (root / URL_FILE).read_text(encoding="utf-8").strip()
    except OSError:
        raise AppError(
            f"no console is running for {root.resolve()}",
            hint="start one with `ranvier up AXON.yaml -d` or `ranvier run --role api`",
        ) from None
    typer.echo(url)
    if not print_only:
        import webbrowser

        webbrowser.open(url)


async def _cluster_log(run: TaskRun, follow: bool, kube_api_url: str | None) -> bool:
    """Print the pod logs of a run on Kubernetes; False when the run ran elsewhere."""
    from executors.backends.kubernetes import (  # slow: only for runs on a cluster
        api_client_for,
        run_log_chunks,
        run_object,
    )

    found = run_object(run.outputs)
    if found is None:
        return False
    kind, name = found
    api = api_client_for(api_url=kube_api_url)
    shown: str | None = None
    async for pod, chunk in run_log_chunks(api, run.namespace, kind, name, follow=follow):
        if pod != shown:
            typer.echo(f"==> pod {pod} <==", err=True)
            shown = pod
        sys.stdout.buffer.write(chunk)
        sys.stdout.buffer.flush()
    return True


def register(app: typer.Typer) -> None:
    """Add the control-plane commands to the root CLI."""
    app.command("open")(open_console)
    app.command("run")(run)
    app.command("up")(up)
    app.command("down")(down)
    app.command("submit")(submit)
    app.command("trigger")(trigger)
    app.command("logs")(logs)
    app.add_typer(list_app, name="list")
    app.add_typer(get_app, name="get")
    app.add_typer(watch_app, name="watch")
    app.add_typer(delete_app, name="delete")


__all__ = ["register"]
