"""Hyper-parameter search: a train task with `hpTuning` runs as a study of trials.

A trainer action on such a task is one *study*; the executor that claims it runs this
controller instead of the task itself. The controller asks optuna for configurations, runs each
as a *trial* (one run of the task's command with the configuration handed over the two ways
Myelin does: argv `--config_id ID --budget B --NAME VALUE` and env `HPO_PARAMS`, base64 JSON
`{"config-id", "budget", "hpo-conf"}`, plus `LOSS_METRIC`), reads the trial's loss from the
metrics it reported, and tells optuna. The study's own lifecycle is the action's: Running when
it starts, Succeeded (with the best trial's version and metrics) or Failed once, when it ends,
so a `Lifecycle Succeeded` trigger on the task fires once per study, never per trial.

Optimisers (optuna samplers; the budget schedule is ours):
- RandomSearch: `numIteration` configurations from `RandomSampler`, each run at `maxBudget`
  (or with no budget when none is given);
- HyperBand: HpBandSter's schedule: `numIteration` successive-halving brackets over budgets
  minBudget..maxBudget (factor 3); each bracket samples its configurations at its smallest
  budget and promotes the best third to the next budget, up to maxBudget;
- BOHB: the same brackets, configurations from optuna's `TPESampler` (a model-based sampler
  fitted on the trials so far) instead of random sampling.
optuna's `HyperbandPruner` is not used: it prunes one long-running trial by its intermediate
reports, whereas a Myelin trial is a separate process run to completion at a given budget; a
promotion is a new run of the same configuration at a larger budget, which the schedule does.

Crash safety: the study's state lives on the bus. optuna keeps it in a `JournalStorage` whose
journal is one `ranvier_runs` key written with compare-and-set after every change, before the
controller acts on it; each trial run is claimed exactly once like any action (a KV create on
the claim of its own idempotency key, `<study key>/trial/<n>/<attempt>`), and its result is
recorded under that key before optuna is told. An executor that restarts mid-study resumes it
from the journal: configurations and slots already asked for are reused, finished trials are
read back, never run again, and a trial whose run was lost with the executor is run again as
a new attempt of the same configuration. So the study ends with exactly the trials planned.
A failed trial (a non-zero exit, no loss reported) is recorded with its reason and the study
goes on; the study fails only when no trial produced a loss.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import math
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Final, Literal

import optuna
import structlog
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)
from optuna.storages import JournalStorage
from optuna.storages.journal import BaseJournalBackend
from optuna.trial import TrialState
from pydantic import BaseModel, Field

from events import subjects
from events.bus import Bus, RevisionMismatch, kv_key
from events.errors import RanvierError
from events.model import ActionRequest, LifecycleData, format_time, new_id, utcnow
from executors.backends.base import Backend, Started, lifecycle
from executors.kv import claim_key
from executors.registry import ModelRegistry, ModelVersion
from sensors.spec import Axon, HpParam, HpTuning, TrainTask

log = structlog.get_logger(__name__)
optuna.logging.set_verbosity(optuna.logging.WARNING)

HPO_PARAM: Final = "hpo"
"""The key of an action request's params that makes it a trial (its configuration)."""
ETA: Final = 3
"""HyperBand's reduction factor: each rung keeps the best third at three times the budget."""

TrialPhase = Literal["Running", "Succeeded", "Failed"]


class StudyError(RanvierError, RuntimeError):
    """A study could not go on (its journal was changed by another executor, a bad record)."""


class StudyInterrupted(RuntimeError):
    """The executor is shutting down mid-study: leave the study to be resumed, report nothing."""


SHUTDOWN: Final = "cancelled: executor shut down"
"""The message of a run stopped by an executor shutdown (the backends' default reason)."""


# ---------------------------------------------------------------------------------------------
# Handing a configuration to a trial (pure)


def format_value(value: Any) -> str:
    """A parameter or budget as a trial reads it on its command line: 3.0 -> "3", 0.1 -> "0.1"."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def trial_argv(config_id: str, budget: float | None, params: Mapping[str, Any]) -> list[str]:
    """`--config_id ID [--budget B] --NAME VALUE...`: appended to the task's command."""
    argv = ["--config_id", config_id]
    if budget is not None:
        argv += ["--budget", format_value(budget)]
    for name, value in params.items():
        argv += [f"--{name}", format_value(value)]
    return argv


def trial_env(
    config_id: str, budget: float | None, params: Mapping[str, Any], loss_metric: str | None
) -> dict[str, str]:
    """`HPO_PARAMS` (base64 JSON `{"config-id", "budget", "hpo-conf"}`) and `LOSS_METRIC`."""
    conf = {"config-id": config_id, "budget": budget, "hpo-conf": dict(params)}
    env = {"HPO_PARAMS": base64.b64encode(json.dumps(conf).encode("utf-8")).decode("ascii")}
    if loss_metric:
        env["LOSS_METRIC"] = loss_metric
    return env


def handover(request: ActionRequest) -> tuple[list[str], dict[str, str]] | None:
    """The extra argv and env of a trial request (None for any other request)."""
    hpo = request.params.get(HPO_PARAM)
    if not isinstance(hpo, dict):
        return None
    config_id = str(hpo.get("config_id", ""))
    budget = hpo.get("budget")
    budget = float(budget) if isinstance(budget, int | float) else None
    given = hpo.get("params")
    params: dict[str, Any] = given if isinstance(given, dict) else {}
    loss = hpo.get("loss_metric")
    return (
        trial_argv(config_id, budget, params),
        trial_env(config_id, budget, params, loss if isinstance(loss, str) else None),
    )


def is_study(axon: Axon, request: ActionRequest) -> bool:
    """Whether a request is a whole study (a trainer action on a task with hpTuning)."""
    if request.kind != "trainer" or HPO_PARAM in request.params:
        return False
    task = axon.spec.task(request.task)
    return task is not None and task.train is not None and task.train.hp_tuning is not None


# ---------------------------------------------------------------------------------------------
# The budget schedule (pure)


@dataclass(frozen=True)
class Stage:
    """A rung of the schedule: `count` trials at `budget`; stage 0 of a bracket samples new
    configurations, a later stage runs the best `count` of the stage before at a larger budget."""

    bracket: int
    rung: int
    count: int
    budget: float | None


def schedule(hp: HpTuning) -> list[list[Stage]]:
    """The brackets of a study, each a list of stages in order (see the module docstring)."""
    if hp.optimiser == "RandomSearch":
        return [[Stage(0, 0, hp.num_iteration, hp.max_budget)]]
    low, high = float(hp.min_budget or 1.0), float(hp.max_budget or 1.0)
    s_max = math.floor(math.log(high / low) / math.log(ETA) + 1e-9)
    brackets = []
    for i in range(hp.num_iteration):
        s = s_max - (i % (s_max + 1))
        n = math.ceil((s_max + 1) / (s + 1) * ETA**s)
        stages = []
        for k in range(s + 1):
            count = max(math.floor(n * ETA ** (-k)), 1)
            budget = high * ETA ** (k - s)
            stages.append(Stage(i, k, count, round(budget, 6)))
        brackets.append(stages)
    return brackets


def planned_trials(hp: HpTuning) -> int:
    """How many trial runs the study makes in all."""
    return sum(stage.count for bracket in schedule(hp) for stage in bracket)


def distributions(params: Sequence[HpParam]) -> dict[str, BaseDistribution]:
    """optuna's distribution for each parameter of the search space."""
    out: dict[str, BaseDistribution] = {}
    for p in params:
        if p.type == "Categorical":
            assert p.categorical is not None  # HpParam checks it
            out[p.name] = CategoricalDistribution(list(p.categorical.values))
            continue
        assert p.numerical is not None
        low, high = p.numerical.bounds
        if p.type == "UniformInteger":
            out[p.name] = IntDistribution(int(low), int(high), log=p.numerical.log)
        else:
            out[p.name] = FloatDistribution(low, high, log=p.numerical.log)
    return out


def defaults(params: Sequence[HpParam]) -> dict[str, Any]:
    """The `default_value`s of the search space: the configuration of the first trial."""
    out: dict[str, Any] = {}
    for p in params:
        if p.categorical is not None and p.categorical.default_value is not None:
            out[p.name] = p.categorical.default_value
        elif p.numerical is not None and p.numerical.default_value is not None:
            value = float(p.numerical.default_value)
            out[p.name] = int(value) if p.type == "UniformInteger" else value
    return out


def pick(results: Iterable[tuple[int, float | None]], count: int, greater: bool) -> list[int]:
    """The `count` best trial numbers by loss (trials without a loss never go on)."""
    scored = [(loss, number) for number, loss in results if loss is not None]
    scored.sort(key=lambda item: ((-item[0] if greater else item[0]), item[1]))
    return [number for _, number in scored[:count]]


# ---------------------------------------------------------------------------------------------
# Records


class TrialRecord(BaseModel):
    """One trial run of a study: its configuration, budget and result."""

    number: int = Field(description="optuna's trial number (unique in the study).")
    config_id: str = Field(description="The id handed to the trial as --config_id.")
    bracket: int = Field(0, description="HyperBand bracket (0 for RandomSearch).")
    rung: int = Field(0, description="Stage in the bracket: 0 samples, later ones promote.")
    params: dict[str, Any] = Field(default_factory=dict, description="The configuration.")
    budget: float | None = Field(None, description="The budget it ran with.")
    phase: TrialPhase = Field("Running", description="Running, Succeeded or Failed.")
    loss: float | None = Field(None, description="The lossMetric it reported.")
    metrics: dict[str, float] = Field(default_factory=dict, description="Everything it reported.")
    version: int | None = Field(None, description="The model version it produced.")
    run_id: str | None = Field(None, description="The run of the task's command.")
    attempt: int = Field(1, description="Runs of this trial (a run lost in a crash is redone).")
    message: str = Field("", description="Why it failed.")


class StudyRecord(BaseModel):
    """A study as `ranvier get axon` shows it: its trials, progress and best trial so far."""

    axon: str
    namespace: str = "default"
    task: str
    run_id: str = Field(description="The study's run (the trainer action's task run).")
    optimiser: str
    loss_metric: str
    greater: bool = Field(description="Whether a greater loss is better.")
    planned: int = Field(description="Trial runs the schedule makes in all.")
    phase: TrialPhase = "Running"
    trials: list[TrialRecord] = Field(default_factory=list)
    updated: str = ""

    @property
    def done(self) -> int:
        """Finished trials."""
        return sum(t.phase != "Running" for t in self.trials)

    @property
    def best(self) -> TrialRecord | None:
        """The Succeeded trial with the best loss (ties: the earlier one)."""
        scored = [t for t in self.trials if t.phase == "Succeeded" and t.loss is not None]
        if not scored:
            return None
        sign = -1.0 if self.greater else 1.0
        return min(scored, key=lambda t: (sign * float(t.loss or 0.0), t.number))

    def summary(self) -> dict[str, Any]:
        """The JSON `ranvier get axon -o json` shows (trials, progress, best)."""
        best = self.best
        return {
            **self.model_dump(mode="json"),
            "done": self.done,
            "best": best.model_dump(mode="json") if best is not None else None,
        }


def study_key(namespace: str, axon: str, task: str) -> str:
    """`study.<ns>.<axon>.<task>`: the task's latest study in `ranvier_runs`."""
    return kv_key("study", namespace, axon, task)


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:24]


# ---------------------------------------------------------------------------------------------
# optuna's journal, on the bus


class BusJournal(BaseJournalBackend):
    """optuna's journal held in memory and written to one `ranvier_runs` key by `flush()`.

    optuna calls `append_logs` synchronously; the controller awaits `flush()` right after each
    optuna call, before it acts on the result, so nothing is done that the bus does not know.
    The write is a compare-and-set: a second executor resuming the same study loses it.
    """

    def __init__(self, bus: Bus, key: str) -> None:
        self.bus = bus
        self.key = key
        self.logs: list[dict[str, Any]] = []
        self.pending = False
        self.revision: int | None = None

    async def load(self) -> None:
        """Read the journal written so far (none for a new study)."""
        found = await self.bus.kv_get(subjects.RUNS_BUCKET, self.key)
        if found is not None:
            try:
                self.logs = list(json.loads(found[0]))
            except ValueError as exc:
                raise StudyError(f"corrupt study journal {self.key}: {exc}") from None
            self.revision = found[1]

    def read_logs(self, log_number_from: int) -> Iterable[dict[str, Any]]:
        """optuna: the logs from `log_number_from` on."""
        return self.logs[log_number_from:]

    def append_logs(self, logs: list[dict[str, Any]]) -> None:
        """optuna: new logs (written by the next `flush()`)."""
        self.logs.extend(logs)
        self.pending = True

    async def flush(self) -> None:
        """Write the journal if it changed (compare-and-set on the revision read or written)."""
        if not self.pending:
            return
        raw = json.dumps(self.logs, separators=(",", ":")).encode("utf-8")
        if self.revision is None:
            revision = await self.bus.kv_create(subjects.RUNS_BUCKET, self.key, raw)
            if revision is None:
                raise StudyError(f"study journal {self.key} was created by another executor")
        else:
            try:
                revision = await self.bus.kv_update(
                    subjects.RUNS_BUCKET, self.key, raw, self.revision
                )
            except RevisionMismatch as exc:  # another executor resumed the study
                raise StudyError(f"study journal {self.key} changed under us: {exc}") from None
        self.revision = revision
        self.pending = False


# ---------------------------------------------------------------------------------------------
# The controller


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
        self.backend = backend
        self.registry = registry
        self.request = request
        self.axon = axon
        self.axon_dir = axon_dir
        self.run_id = run_id
        self.executor = executor
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
        """Run trial `number` exactly once (again as a new attempt if its run was lost)."""
        config_id = f"{stage.bracket}.{stage.rung}.{number}"
        attempt = 1
        while True:
            key = f"{self.request.idempotency_key}/trial/{number}/{attempt}"
            result_key = kv_key("trial", self.id, str(number), str(attempt))
            found = await self.bus.kv_get(subjects.RUNS_BUCKET, result_key)
            if found is not None:
                record = TrialRecord.model_validate_json(found[0])
                await self._finish(record)
                return record
            run_id = new_id()
            claim = {"run_id": run_id, "action_key": key, "executor": self.executor}
            won = await self.bus.kv_create(
                subjects.RUNS_BUCKET,
                claim_key(key),
                json.dumps({**claim, "claimed": format_time(utcnow())}).encode("utf-8"),
            )
            if won is None:  # claimed before a crash and never finished: run it again
                self.bound.info("study.trial_lost", trial=number, attempt=attempt)
                attempt += 1
                continue
            record = TrialRecord(
                number=number,
                config_id=config_id,
                bracket=stage.bracket,
                rung=stage.rung,
                params=params,
                budget=stage.budget,
                run_id=run_id,
                attempt=attempt,
            )
            self._upsert(record)
            await self._save_record()
            record = await self._execute(record)
            await self.bus.kv_put(
                subjects.RUNS_BUCKET, result_key, record.model_dump_json().encode("utf-8")
            )
            await self._finish(record)
            return record

    async def _execute(self, record: TrialRecord) -> TrialRecord:
        """Run the task's command with the trial's configuration; register its version."""
        hpo = {
            "config_id": record.config_id,
            "budget": record.budget,
            "params": record.params,
            "loss_metric": self.loss_metric,
            "trial": record.number,
        }
        # HPO_PARAMS and LOSS_METRIC also go in as action env, which every backend passes to
        # the run; the argv handover is applied by the backend (`handover`).
        env = trial_env(record.config_id, record.budget, record.params, self.loss_metric)
        action_env = [
            *self.request.params.get("env", []),
            *({"name": k, "value": v} for k, v in env.items()),
        ]
        request = self.request.model_copy(
            update={"params": {**self.request.params, HPO_PARAM: hpo, "env": action_env}}
        )
        assert record.run_id is not None
        outcome = await self.backend.run(request, self.axon, self.axon_dir, run_id=record.run_id)
        if outcome.phase == "Failed" and outcome.message == SHUTDOWN:
            raise StudyInterrupted(f"trial {record.number} stopped: {SHUTDOWN}")
        if outcome.phase == "Failed" and outcome.message.startswith("cancelled"):
            # the Axon was deleted (or the run stopped by hand): the study ends here
            raise StudyError(f"study stopped at trial {record.number}: {outcome.message}")
        data = outcome.to_lifecycle(request)
        metrics = data.outputs.get("metrics")
        metrics = metrics if isinstance(metrics, dict) else {}
        version = data.outputs.get("version")
        loss = metrics.get(self.loss_metric)
        phase: TrialPhase = "Succeeded"
        message = ""
        if outcome.phase != "Succeeded":
            phase, message = "Failed", outcome.message
        elif not isinstance(loss, int | float) or not math.isfinite(loss):
            error = data.outputs.get("metrics_error")
            phase = "Failed"
            message = (
                f"the trial reported no {self.loss_metric!r} (lossMetric): write it to "
                f"MODEL_PATH/metrics.json or call ranvier.sdk.publish_result(value)"
                + (f"; {error}" if isinstance(error, str) else "")
            )
            loss = None
        done = record.model_copy(
            update={
                "phase": phase,
                "loss": float(loss) if loss is not None else None,
                "metrics": metrics,
                "version": version if isinstance(version, int) else None,
                "message": message,
            }
        )
        if isinstance(version, int):
            await self.registry.put(
                ModelVersion(
                    namespace=self.request.namespace,
                    axon=self.request.axon,
                    task=self.request.task,
                    version=version,
                    run_id=record.run_id,
                    path=str(data.outputs.get("model_path", "")),
                    phase=phase,
                    metrics=metrics,
                    metrics_error=message or None,
                    params=record.params,
                    budget=record.budget,
                    trial=record.number,
                )
            )
        self.bound.info(
            "study.trial_finished",
            trial=record.number,
            budget=record.budget,
            phase=phase,
            loss=done.loss,
            reason=message or None,
        )
        return done

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


async def read_study(bus: Bus, namespace: str, axon: str, task: str) -> dict[str, Any] | None:
    """The latest study summary of a task, as saved by its controller (None if it has none)."""
    found = await bus.kv_get(subjects.RUNS_BUCKET, study_key(namespace, axon, task))
    if found is None:
        return None
    try:
        data = json.loads(found[0])
    except ValueError:
        return None
    return data if isinstance(data, dict) else None


__all__ = [
    "HPO_PARAM",
    "BusJournal",
    "Stage",
    "Study",
    "StudyError",
    "StudyInterrupted",
    "StudyOutcome",
    "StudyRecord",
    "TrialRecord",
    "defaults",
    "distributions",
    "handover",
    "is_study",
    "pick",
    "planned_trials",
    "read_study",
    "schedule",
    "study_key",
    "trial_argv",
    "trial_env",
]
