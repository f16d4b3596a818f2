"""What `get`, `watch` and `up` show of an Axon: the status table and the live progress.

Pure rendering of the status `ranvier.app.axon_status` reads from the bus (sensor runs, task
runs, studies, model versions, the endpoint), so it is unit-tested without a server.
"""

from __future__ import annotations

import enum
import sys
from typing import Any

import structlog
import typer
from rich.console import Console
from rich.live import Live
from rich.table import Table

log = structlog.get_logger(__name__)


class GetFormat(enum.StrEnum):
    """Output formats of `get axon`."""

    text = "text"
    json = "json"
    yaml = "yaml"
    wide = "wide"


# ---------------------------------------------------------------------------------------------
# Small pure helpers


def _short(run_id: object) -> str:
    text = str(run_id or "-")
    return text[-8:] if len(text) > 12 else text


def study_progress(study: dict[str, Any]) -> str:
    """`3/8 trials (1 failed), best val_mse=0.0165 (trial 5, v6)`: a study's progress."""
    trials = study.get("trials") or []
    failed = sum(t.get("phase") == "Failed" for t in trials)
    text = f"{study.get('done', 0)}/{study.get('planned', '?')} trials"
    if failed:
        text += f" ({failed} failed)"
    best = study.get("best")
    if best:
        text += (
            f", best {study.get('loss_metric')}={best.get('loss'):g} "
            f"(trial {best.get('number')}, v{best.get('version')})"
        )
    return text


def progress_lines(status: dict[str, Any]) -> dict[str, str]:
    """One line per sensor run and task run, keyed so that a change of state is a new line."""
    lines: dict[str, str] = {}
    for sensor in status["sensors"]:
        for run in sensor["runs"]:
            steps = " ".join(
                f"{s.get('index')}:{s.get('task')}={s.get('phase')}" for s in run["steps"]
            )
            lines[f"s/{run['id']}"] = (
                f"sensor {sensor['name']} run {_short(run['id'])} {run['phase']}"
                + (f" [{steps}]" if steps else "")
                + (f": {run['reason']}" if run.get("reason") and run["phase"] == "Failed" else "")
            )
    for task in status["tasks"]:
        for run in task["runs"]:
            extra = f" version {run['version']}" if run.get("version") is not None else ""
            message = f": {run['message']}" if run.get("message") else ""
            lines[f"t/{run['id']}"] = (
                f"task {task['name']} run {_short(run['id'])} {run['phase']}{extra}{message}"
            )
    for study in status.get("studies", []):
        lines[f"h/{study.get('run_id')}"] = (
            f"study {study.get('task')} {study.get('optimiser')} {study.get('phase')}: "
            + study_progress(study)
        )
    return lines


def status_table(status: dict[str, Any], *, wide: bool = False) -> Table:
    """A rich table of an Axon's sensor runs, task runs and model versions."""
    table = Table(title=f"axon {status['namespace']}/{status['name']} g{status['generation']}")
    for column in ("WHAT", "NAME", "RUN", "PHASE", "DETAIL"):
        table.add_column(column)
    for sensor in status["sensors"]:
        if not sensor["runs"]:
            table.add_row("sensor", sensor["name"], "-", "-", "no runs yet")
        for run in sensor["runs"]:
            steps = ", ".join(f"{s.get('task')} {s.get('phase')}" for s in run["steps"])
            detail = steps if run["phase"] != "Failed" else str(run.get("reason") or "")
            table.add_row("sensor", sensor["name"], _short(run["id"]), run["phase"], detail)
    for task in status["tasks"]:
        for run in task["runs"]:
            parts = []
            if run.get("version") is not None:
                parts.append(f"version {run['version']}")
            if run.get("message"):
                parts.append(str(run["message"]))
            if wide and run.get("log_path"):
                parts.append(str(run["log_path"]))
            run_id = str(run["id"]) if wide else _short(run["id"])
            table.add_row("task", task["name"], run_id, run["phase"], "; ".join(parts))
    for model in status["models"]:
        for version in model["versions"]:
            metrics = ", ".join(f"{k}={v:g}" for k, v in sorted(version["metrics"].items()))
            table.add_row(
                "model", model["task"], _short(version["run_id"]), f"v{version['version']}", metrics
            )
    for study in status.get("studies", []):
        table.add_row(
            "study",
            str(study.get("task")),
            _short(study.get("run_id")),
            str(study.get("phase")),
            f"{study.get('optimiser')}: {study_progress(study)}",
        )
        if not wide:
            continue
        for trial in study.get("trials") or []:
            params = ", ".join(
                f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                for k, v in sorted((trial.get("params") or {}).items())
            )
            loss = trial.get("loss")
            budget = trial.get("budget")
            shown = [f"budget {budget:g}" if isinstance(budget, int | float) else "", params]
            shown.append(f"{study.get('loss_metric')}={loss:g}" if loss is not None else "")
            shown.append(str(trial.get("message") or ""))
            table.add_row(
                "trial",
                f"{study.get('task')} #{trial.get('number')}",
                _short(trial.get("run_id")),
                str(trial.get("phase")),
                "; ".join(p for p in shown if p),
            )
    for deployment in status["deployments"]:
        table.add_row("deploy", str(deployment["deployer"]), "-", "-", str(deployment.get("url")))
    return table


class Progress:
    """Shows an Axon's progress: a live rich table on a terminal, plain lines otherwise."""

    def __init__(self, *, tty: bool | None = None) -> None:
        self.console = Console()
        self.tty = self.console.is_terminal if tty is None else tty
        self._seen: dict[str, str] = {}
        self._live: Live | None = None

    def __enter__(self) -> Progress:
        if self.tty:
            self._live = Live(console=self.console, auto_refresh=False, transient=False)
            self._live.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._live is not None:
            self._live.__exit__(None, None, None)

    def update(self, status: dict[str, Any]) -> None:
        """Show the new state (only what changed, in plain mode)."""
        if self._live is not None:
            self._live.update(status_table(status), refresh=True)
            return
        for key, line in progress_lines(status).items():
            if self._seen.get(key) != line:
                self._seen[key] = line
                typer.echo(line)
        sys.stdout.flush()

    def note(self, text: str) -> None:
        """A one-off message (goal reached, timed out...)."""
        if self._live is not None:
            self._live.console.print(text)
        else:
            typer.echo(text)
