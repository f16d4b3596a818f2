"""What a study writes to `ranvier_runs` for people to read: its trials, progress and best."""

from __future__ import annotations

import json
from typing import Any, Literal

from pydantic import BaseModel, Field

from events import subjects
from events.bus import Bus, kv_key

TrialPhase = Literal["Running", "Succeeded", "Failed"]


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
