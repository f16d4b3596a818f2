"""The one small interface the runner drives a backend through (local or kubernetes).

A backend runs one action to its end and reports how it went; it never talks to the bus. The
runner turns what it returns (a `RunOutcome`, on every backend) into lifecycle events
(`to_lifecycle`). Both
`executors.backends.local.LocalBackend` and `executors.backends.kubernetes.KubernetesBackend`
satisfy `Backend` structurally (mypy checks it in the tests).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Literal, Protocol

from events.model import ActionRequest, LifecycleData, Phase, utcnow
from sensors.spec import Axon

OutcomePhase = Literal["Succeeded", "Failed"]


def lifecycle(
    request: ActionRequest,
    run_id: str,
    phase: Phase,
    *,
    message: str = "",
    exit_code: int | None = None,
    outputs: Mapping[str, Any] | None = None,
) -> LifecycleData:
    """The lifecycle payload for a run of `request` entering `phase` (what the runner publishes)."""
    return LifecycleData(
        axon=request.axon,
        namespace=request.namespace,
        task=request.task,
        run_id=run_id,
        phase=phase,
        sensor=request.sensor,
        sensor_run_id=request.sensor_run_id,
        step=request.step,
        index=request.index,
        attempt=request.attempt,
        action_key=request.idempotency_key,
        message=message,
        exit_code=exit_code,
        outputs=dict(outputs or {}),
    )


@dataclass(frozen=True)
class RunOutcome:
    """How a run ended: Succeeded or Failed, with a message, exit code and outputs."""

    run_id: str
    phase: OutcomePhase
    message: str = ""
    exit_code: int | None = None
    outputs: dict[str, Any] = field(default_factory=dict)
    started: datetime | None = None
    finished: datetime = field(default_factory=utcnow)
    log_path: Path | None = None
    version: int | None = None
    model_path: Path | None = None

    def to_lifecycle(self, request: ActionRequest) -> LifecycleData:
        """The Succeeded or Failed lifecycle payload."""
        return lifecycle(
            request,
            self.run_id,
            self.phase,
            message=self.message,
            exit_code=self.exit_code,
            outputs=self.outputs,
        )


class Started(Protocol):
    """A run is up (process started, Job created): what the runner reports as Running."""

    @property
    def run_id(self) -> str: ...

    def to_lifecycle(self, request: ActionRequest) -> LifecycleData:
        """The Running lifecycle payload."""
        ...


OnStarted = Callable[[Started], Awaitable[None]]
"""Awaited once a run is up (the runner reports it Running)."""


class Outcome(Protocol):
    """How a run ended."""

    @property
    def run_id(self) -> str: ...

    @property
    def phase(self) -> Literal["Succeeded", "Failed"]: ...

    @property
    def message(self) -> str: ...

    def to_lifecycle(self, request: ActionRequest) -> LifecycleData:
        """The Succeeded or Failed lifecycle payload."""
        ...


class Lost(Protocol):
    """A run found by `recover()` that must be reported Failed."""

    def to_lifecycle(self) -> LifecycleData | None:
        """The Failed lifecycle payload (None when the request behind it is unknown)."""
        ...


class Backend(Protocol):
    """Runs actions somewhere; the runner claims them, calls `run`, publishes the results."""

    @property
    def name(self) -> str: ...

    async def run(
        self,
        request: ActionRequest,
        axon: Axon,
        axon_dir: Path,
        *,
        run_id: str | None = None,
        on_running: Callable[[Started], Awaitable[None]] | None = None,
    ) -> Outcome:
        """Run one action to its end; never raises for the task's own failure."""
        ...

    async def cancel(self, run_id: str, reason: str = "cancelled") -> bool:
        """Stop a live run; False if this backend does not know it."""
        ...

    async def cancel_axon(
        self, axon: str, namespace: str = "default", reason: str = "cancelled: axon deleted"
    ) -> list[str]:
        """Stop every live run of an Axon; the run ids stopped."""
        ...

    async def shutdown(self, reason: str = "cancelled: executor shut down") -> None:
        """Stop (or let go of) live runs and refuse new ones."""
        ...

    async def recover(self) -> Sequence[Lost]:
        """At start-up: runs a previous executor left behind that must be reported Failed."""
        ...
