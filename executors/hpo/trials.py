"""Running one trial exactly once: claim it, run the task's command, judge what it reported.

A trial run is claimed like any action (a KV create on the claim of its own idempotency key,
`<study key>/trial/<n>/<attempt>`), and its result is recorded under that key before the study
is told. A trial whose result is recorded is read back, never run again; one claimed but never
finished (its executor died with the run) runs again as the next attempt of the same
configuration. A trial that fails (a non-zero exit, no loss reported) is recorded with its
reason; a run stopped by a shutdown or a deleted Axon stops the study instead.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from structlog.typing import FilteringBoundLogger

from events import subjects
from events.bus import Bus, kv_key
from events.model import ActionRequest
from executors.backends.base import Backend, Outcome
from executors.hpo.errors import SHUTDOWN, StudyError, StudyInterrupted
from executors.hpo.params import HPO_PARAM, trial_env
from executors.hpo.plan import Stage
from executors.hpo.records import TrialPhase, TrialRecord
from executors.kv import claim
from executors.registry import ModelRegistry, ModelVersion
from sensors.spec import Axon


def trial_request(request: ActionRequest, record: TrialRecord, loss_metric: str) -> ActionRequest:
    """The study's request made into one trial's: its configuration under `HPO_PARAM`.

    `HPO_PARAMS` and `LOSS_METRIC` also go in as action env, which every backend passes to the
    run; the argv handover is applied by the backend (`handover`).
    """
    hpo = {
        "config_id": record.config_id,
        "budget": record.budget,
        "params": record.params,
        "loss_metric": loss_metric,
        "trial": record.number,
    }
    env = trial_env(record.config_id, record.budget, record.params, loss_metric)
    action_env = [
        *request.params.get("env", []),
        *({"name": k, "value": v} for k, v in env.items()),
    ]
    return request.model_copy(
        update={"params": {**request.params, HPO_PARAM: hpo, "env": action_env}}
    )


def stop_if_cancelled(outcome: Outcome, number: int) -> None:
    """Raise when trial `number`'s run was stopped rather than ended: a shutdown interrupts the
    study (to be resumed), a deleted Axon (or a run stopped by hand) ends it."""
    if outcome.phase == "Failed" and outcome.message == SHUTDOWN:
        raise StudyInterrupted(f"trial {number} stopped: {SHUTDOWN}")
    if outcome.phase == "Failed" and outcome.message.startswith("cancelled"):
        raise StudyError(f"study stopped at trial {number}: {outcome.message}")


def judged(
    record: TrialRecord,
    outcome: Outcome,
    outputs: Mapping[str, Any],
    loss_metric: str,
) -> TrialRecord:
    """The trial's record once its run ended: Succeeded with the loss it reported, or Failed
    with why (the run failed, or it reported no finite `loss_metric`)."""
    metrics = outputs.get("metrics")
    metrics = metrics if isinstance(metrics, dict) else {}
    version = outputs.get("version")
    loss = metrics.get(loss_metric)
    phase: TrialPhase = "Succeeded"
    message = ""
    if outcome.phase != "Succeeded":
        phase, message = "Failed", outcome.message
    elif not isinstance(loss, int | float) or not math.isfinite(loss):
        error = outputs.get("metrics_error")
        phase = "Failed"
        message = (
            f"the trial reported no {loss_metric!r} (lossMetric): write it to "
            f"MODEL_PATH/metrics.json or call ranvier.sdk.publish_result(value)"
            + (f"; {error}" if isinstance(error, str) else "")
        )
        loss = None
    return record.model_copy(
        update={
            "phase": phase,
            "loss": float(loss) if loss is not None else None,
            "metrics": metrics,
            "version": version if isinstance(version, int) else None,
            "message": message,
        }
    )


@dataclass(frozen=True)
class TrialRunner:
    """Runs the trials of one study (one trainer action) through the executor's backend."""

    bus: Bus
    backend: Backend
    registry: ModelRegistry
    request: ActionRequest
    axon: Axon
    axon_dir: Path
    executor: str
    study_id: str
    loss_metric: str
    log: FilteringBoundLogger

    async def run(
        self,
        stage: Stage,
        number: int,
        params: dict[str, Any],
        started: Callable[[TrialRecord], Awaitable[None]],
    ) -> TrialRecord:
        """Trial `number`'s result: read back if recorded, else run (again as a new attempt if
        its run was lost); `started` is awaited with the record of a run about to start."""
        attempt = 1
        while True:
            result_key = kv_key("trial", self.study_id, str(number), str(attempt))
            found = await self.bus.kv_get(subjects.RUNS_BUCKET, result_key)
            if found is not None:
                return TrialRecord.model_validate_json(found[0])
            key = f"{self.request.idempotency_key}/trial/{number}/{attempt}"
            run_id = await claim(self.bus, key, self.executor)
            if run_id is None:  # claimed before a crash and never finished: run it again
                self.log.info("study.trial_lost", trial=number, attempt=attempt)
                attempt += 1
                continue
            record = TrialRecord(
                number=number,
                config_id=f"{stage.bracket}.{stage.rung}.{number}",
                bracket=stage.bracket,
                rung=stage.rung,
                params=params,
                budget=stage.budget,
                run_id=run_id,
                attempt=attempt,
            )
            await started(record)
            record = await self._execute(record)
            await self.bus.kv_put(
                subjects.RUNS_BUCKET, result_key, record.model_dump_json().encode("utf-8")
            )
            return record

    async def _execute(self, record: TrialRecord) -> TrialRecord:
        """Run the task's command with the trial's configuration; register its version."""
        request = trial_request(self.request, record, self.loss_metric)
        assert record.run_id is not None
        outcome = await self.backend.run(request, self.axon, self.axon_dir, run_id=record.run_id)
        stop_if_cancelled(outcome, record.number)
        outputs = outcome.to_lifecycle(request).outputs
        done = judged(record, outcome, outputs, self.loss_metric)
        if done.version is not None:
            await self.registry.put(self._version(done, str(outputs.get("model_path", ""))))
        self.log.info(
            "study.trial_finished",
            trial=done.number,
            budget=done.budget,
            phase=done.phase,
            loss=done.loss,
            reason=done.message or None,
        )
        return done

    def _version(self, done: TrialRecord, path: str) -> ModelVersion:
        """The model version a finished trial produced, with its configuration and budget."""
        assert done.version is not None  # only a trial that produced a version registers it
        assert done.run_id is not None  # set when the run was claimed
        return ModelVersion(
            namespace=self.request.namespace,
            axon=self.request.axon,
            task=self.request.task,
            version=done.version,
            run_id=done.run_id,
            path=path,
            phase=done.phase,
            metrics=done.metrics,
            metrics_error=done.message or None,
            params=done.params,
            budget=done.budget,
            trial=done.number,
        )
