"""The study controller: runs one study (a trainer action on a task with hpTuning) to its end.

It asks optuna for the configurations of each stage of the plan (`plan.py`), runs them as
trials (`trials.py`), `concurrency` at once, tells optuna their losses, and keeps the study
record people read up to date. optuna's samplers pick the configurations: `RandomSampler` for
RandomSearch and HyperBand, `TPESampler` (a model-based sampler fitted on the trials so far)
for BOHB. Every optuna call is flushed to the journal on the bus (`journal.py`) before the
controller acts on it, so a restarted executor resumes the study where it was: the slots
already asked for are reused and the trials already told are not run again.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

import optuna
import structlog
from optuna.storages import JournalStorage
from optuna.trial import TrialState

from events import subjects
from events.bus import Bus, kv_key
from events.model import ActionRequest, LifecycleData, format_time, utcnow
from executors.backends.base import Backend, Started, lifecycle
from executors.hpo.errors import StudyError, StudyInterrupted
from executors.hpo.journal import BusJournal
from executors.hpo.params import format_value
from executors.hpo.plan import Stage, defaults, distributions, pick, planned_trials, schedule
from executors.hpo.records import StudyRecord, TrialRecord, study_key
from executors.hpo.trials import TrialRunner
from executors.registry import ModelRegistry
from sensors.spec import Axon, HpTuning, TrainTask

log = structlog.get_logger(__name__)
optuna.logging.set_verbosity(optuna.logging.WARNING)


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:24]


@dataclass(frozen=True)
class StudyOutcome:
    """How a study ended: what the runner reports as the trainer action's lifecycle."""

    run_id: str
    phase: Literal["Succeeded", "Failed"]
    message: str
    outputs: dict[str, Any] = field(default_factory=dict)
    finished: datetime = field(default_factory=utcnow)

    def to_lifecycle(self, request: ActionRequest) -> LifecycleData:
        """The study's Succeeded or Failed lifecycle payload."""
        return lifecycle(
            request, self.run_id, self.phase, message=self.message, outputs=self.outputs
        )


@dataclass(frozen=True)
class _StudyStarted:
    run_id: str

    def to_lifecycle(self, request: ActionRequest) -> LifecycleData:
        return lifecycle(request, self.run_id, "Running", outputs={"study": True})


class Study:
    """Runs one study (one trainer action on a task with hpTuning) to its end."""

    def __init__(
        self,
        bus: Bus,
        *,
        backend: Backend,
        registry: ModelRegistry,
        request: ActionRequest,
        axon: Axon,
        axon_dir: Path,
        run_id: str,
        executor: str,
    ) -> None:
        task = axon.spec.task(request.task)
        assert task is not None  # is_study() checked the task
        assert task.train is not None
        assert task.train.hp_tuning is not None
        self.bus = bus
        self.request = request
        self.run_id = run_id
        self.train: TrainTask = task.train
        self.hp: HpTuning = task.train.hp_tuning
        self.loss_metric = self.train.loss_metric or ""
        self.greater = self.train.loss_metric_selector == "greater"
        self.id = _digest(request.idempotency_key)
        self.journal = BusJournal(bus, kv_key("journal", self.id))
        self.lock = asyncio.Lock()
        self.dists = distributions(self.hp.params)
        self.record = StudyRecord(
            axon=request.axon,
            namespace=request.namespace,
            task=request.task,
            run_id=run_id,
            optimiser=self.hp.optimiser,
            loss_metric=self.loss_metric,
            greater=self.greater,
            planned=planned_trials(self.hp),
        )
        self.bound = log.bind(axon=request.axon, task=request.task, study=self.id)
        self.trials = TrialRunner(
            bus,
            backend=backend,
            registry=registry,
            request=request,
            axon=axon,
            axon_dir=axon_dir,
            executor=executor,
            study_id=self.id,
            loss_metric=self.loss_metric,
            log=self.bound,
        )

    async def run(self, on_running: Callable[[Started], Awaitable[None]] | None) -> StudyOutcome:
        """Resume or start the study, run every stage of the schedule, report the best trial."""
        await self.journal.load()
        resumed = bool(self.journal.logs)
        self.study = self._optuna_study()
        await self.journal.flush()
        self.bound.info("study.started", resumed=resumed, planned=self.record.planned)
        if on_running is not None:
            await on_running(_StudyStarted(self.run_id))
        await self._save_record()
        for bracket in schedule(self.hp):
            previous: list[TrialRecord] = []
            for stage in bracket:
                previous = await self._run_stage(stage, previous)
        outcome = self._outcome()
        await self._save_record()
        self.bound.info("study.finished", phase=outcome.phase, reason=outcome.message)
        return outcome

    def _optuna_study(self) -> optuna.Study:
        seed = int(_digest(f"{self.id}/{len(self.journal.logs)}"), 16) % (2**31)
        sampler: optuna.samplers.BaseSampler
        if self.hp.optimiser == "BOHB":
            sampler = optuna.samplers.TPESampler(seed=seed, n_startup_trials=4)
        else:
            sampler = optuna.samplers.RandomSampler(seed=seed)
        study = optuna.create_study(
            storage=JournalStorage(self.journal),
            study_name=self.id,
            sampler=sampler,
            direction="maximize" if self.greater else "minimize",
            load_if_exists=True,
        )
        if not study.trials:
            first = defaults(self.hp.params)
            if first:
                study.enqueue_trial(first, user_attrs={"slot": [0, 0, 0]})
        return study

    async def _run_stage(self, stage: Stage, previous: list[TrialRecord]) -> list[TrialRecord]:
        """Ask for (or find again) the stage's configurations, then run them, `concurrency` at
        once; the stage's trial records, in slot order."""
        promoted: list[dict[str, Any]] = []
        if stage.rung > 0:
            chosen = pick(((t.number, t.loss) for t in previous), stage.count, self.greater)
            by_number = {t.number: t for t in previous}
            promoted = [by_number[n].params for n in chosen]
            if not promoted:
                self.bound.info("study.stage_empty", bracket=stage.bracket, rung=stage.rung)
                return []
        count = len(promoted) if stage.rung > 0 else stage.count
        slots: list[tuple[int, dict[str, Any]]] = []
        async with self.lock:
            for slot in range(count):
                number, params = self._slot(stage, slot, promoted[slot] if promoted else None)
                slots.append((number, params))
            await self.journal.flush()
        gate = asyncio.Semaphore(self.hp.concurrency)

        async def one(number: int, params: dict[str, Any]) -> TrialRecord:
            async with gate:
                return await self._trial(stage, number, params)

        # a trial that stops the study (a shutdown, a deleted Axon) cancels the stage's others,
        # so none is claimed after the executor began to stop
        try:
            async with asyncio.TaskGroup() as group:
                running = [group.create_task(one(n, p)) for n, p in slots]
        except* (StudyInterrupted, StudyError) as stopped:
            raise stopped.exceptions[0] from None
        return [task.result() for task in running]

    def _slot(
        self, stage: Stage, slot: int, params: dict[str, Any] | None
    ) -> tuple[int, dict[str, Any]]:
        """The trial of a slot of the schedule: the one asked for before a restart, or a new one."""
        where = [stage.bracket, stage.rung, slot]
        for trial in self.study.get_trials(deepcopy=False):
            if trial.user_attrs.get("slot") == where and trial.state != TrialState.WAITING:
                return trial.number, dict(trial.params)
        if params is not None:
            self.study.enqueue_trial(params, user_attrs={"slot": where})
        asked = self.study.ask(self.dists)
        asked.set_user_attr("slot", where)
        asked.set_user_attr("budget", stage.budget)
        return asked.number, dict(asked.params)

    async def _trial(self, stage: Stage, number: int, params: dict[str, Any]) -> TrialRecord:
        """Run trial `number` exactly once (see `trials.py`) and tell optuna its result."""
        record = await self.trials.run(stage, number, params, started=self._started)
        await self._finish(record)
        return record

    async def _started(self, record: TrialRecord) -> None:
        """A trial run is about to start: show it in the study record."""
        self._upsert(record)
        await self._save_record()

    async def _finish(self, record: TrialRecord) -> None:
        """Tell optuna a trial's result (once) and save the study record."""
        async with self.lock:
            frozen = self.study.get_trials(deepcopy=False)
            trial = next((t for t in frozen if t.number == record.number), None)
            if trial is not None and trial.state == TrialState.RUNNING:
                if record.phase == "Succeeded" and record.loss is not None:
                    self.study.tell(record.number, record.loss)
                else:
                    self.study.tell(record.number, state=TrialState.FAIL)
                await self.journal.flush()
        self._upsert(record)
        await self._save_record()

    def _upsert(self, record: TrialRecord) -> None:
        trials = [t for t in self.record.trials if t.number != record.number]
        trials.append(record)
        trials.sort(key=lambda t: t.number)
        self.record = self.record.model_copy(update={"trials": trials})

    async def _save_record(self) -> None:
        self.record = self.record.model_copy(update={"updated": format_time(utcnow())})
        await self.bus.kv_put(
            subjects.RUNS_BUCKET,
            study_key(self.request.namespace, self.request.axon, self.request.task),
            json.dumps(self.record.summary(), separators=(",", ":")).encode("utf-8"),
        )

    def _outcome(self) -> StudyOutcome:
        best = self.record.best
        failed = sum(t.phase == "Failed" for t in self.record.trials)
        ran = len(self.record.trials)
        if best is None:
            self.record = self.record.model_copy(update={"phase": "Failed"})
            reasons = sorted({t.message for t in self.record.trials if t.message})
            return StudyOutcome(
                self.run_id,
                "Failed",
                f"study: none of {ran} trials reported {self.loss_metric!r}"
                + (f" ({reasons[0]})" if reasons else ""),
                outputs={"study": True},
            )
        self.record = self.record.model_copy(update={"phase": "Succeeded"})
        message = (
            f"study: {ran} trials ({failed} failed); best trial {best.number}: "
            f"{self.loss_metric}={best.loss:g} at budget {format_value(best.budget)}, "
            f"version {best.version}"
        )
        outputs: dict[str, Any] = {
            "study": True,
            "metrics": best.metrics,
            "best_trial": best.number,
            "params": best.params,
        }
        if best.version is not None:
            outputs["version"] = best.version
        return StudyOutcome(self.run_id, "Succeeded", message, outputs=outputs)
