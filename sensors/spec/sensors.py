"""Sensors: when to run what (triggers, metric conditions), bounded by concurrency and maxRuns."""

from __future__ import annotations

from typing import Annotated, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import croniter
from pydantic import Field, field_validator, model_validator

from sensors.spec.actions import ActionSpec, Step
from sensors.spec.base import Duration, PositiveDuration, ScalarStr, SpecModel, exactly_one

LifecyclePhase = Literal["Pending", "Running", "Succeeded", "Failed"]


class LifecycleTrigger(SpecModel):
    """Fires when a task run enters a phase (edge-triggered: once per run and phase)."""

    name: str = Field(description="Trigger name, unique in its sensor.")
    type: Literal["Lifecycle"] = Field(description="Trigger type.")
    task: str = Field(description="The task whose runs are watched.")
    condition: LifecyclePhase = Field(description="The phase that fires the trigger.")


class AlertTrigger(SpecModel):
    """Fires when a metric condition holds (inactive -> pending -> firing -> resolved)."""

    name: str = Field(description="Trigger name, unique in its sensor.")
    type: Literal["Alert"] = Field(description="Trigger type.")
    condition: str = Field(
        description='Condition, e.g. "{{shakespeare_gpt2_deploy_accuracy}} < 0.90" or '
        "\"avg_over_time({{acc}}{job='x'}[5m]) < 0.2\"."
    )
    for_: Duration = Field(
        0.0, alias="for", description="The condition must hold this long before firing."
    )
    resolve: str | None = Field(
        None,
        description="While firing, the alert resolves only when this condition holds "
        "(hysteresis); by default when `condition` stops holding.",
    )
    keep_firing_for: Duration = Field(
        0.0,
        alias="keepFiringFor",
        description="Keep firing this long after the condition stops holding.",
    )
    cooldown: Duration = Field(0.0, description="After a firing, do not fire again for this long.")


class RestTrigger(SpecModel):
    """Fires when called over HTTP or with `ranvier trigger AXON SENSOR`."""

    name: str = Field(description="Trigger name, unique in its sensor.")
    type: Literal["Rest"] = Field(description="Trigger type.")


class CalendarTrigger(SpecModel):
    """Fires on a cron schedule or at a fixed interval."""

    name: str = Field(description="Trigger name, unique in its sensor.")
    type: Literal["Calendar"] = Field(description="Trigger type.")
    schedule: str | None = Field(None, description='Cron expression, e.g. "0 3 * * *".')
    interval: PositiveDuration | None = Field(None, description="Fixed interval between firings.")
    timezone: str = Field("UTC", description="IANA time zone of the schedule.")

    @field_validator("schedule")
    @classmethod
    def _cron(cls, value: str | None) -> str | None:
        if value is not None and not croniter.is_valid(value):
            raise ValueError(f"invalid cron schedule {value!r}; use five fields like '0 3 * * *'")
        return value

    @field_validator("timezone")
    @classmethod
    def _zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(
                f"unknown timezone {value!r}; use an IANA name like 'Europe/Paris'"
            ) from exc
        return value

    @model_validator(mode="after")
    def _one_kind(self) -> CalendarTrigger:
        exactly_one(self, {"schedule": "schedule", "interval": "interval"}, "a Calendar trigger")
        return self


AnyTrigger = LifecycleTrigger | AlertTrigger | RestTrigger | CalendarTrigger
Trigger = Annotated[AnyTrigger, Field(discriminator="type")]
"""A trigger, chosen by its `type`: Lifecycle, Alert, Rest or Calendar."""

TRIGGER_TYPES = ("Lifecycle", "Alert", "Rest", "Calendar")


class MetricCondition(SpecModel):
    """A metric condition that must hold when the sensor fires (AND), or the firing is skipped."""

    name: str = Field(description="Condition name, unique in its sensor.")
    type: Literal["Metric"] = Field("Metric", description="Condition type.")
    condition: str = Field(description='Condition, e.g. "{{accuracy}} > 0.5".')
    task: str | None = Field(
        None,
        description="A train task: its `{{metric}}` templates read the metrics its latest "
        "Succeeded run reported (metrics.json or the SDK) instead of the metric watcher.",
    )


UNION_TAGS = frozenset({"action", "group", *TRIGGER_TYPES})
"""Tags pydantic inserts into error locations after a list index (see sensors.loader)."""


class MaxRuns(SpecModel):
    """At most `count` runs started per `per` window (guards retrain loops)."""

    count: int = Field(ge=1, description="Runs allowed in the window.")
    per: PositiveDuration = Field(description="Window length.")


class SensorParameter(SpecModel):
    """A parameter of a sensor, as Myelin's docs list it."""

    name: str = Field(description="Parameter name.")
    value: ScalarStr | None = Field(None, description="Its value.")


class Sensor(SpecModel):
    """When to run what: triggers (any), conditions (all), then steps in order."""

    name: str = Field(description="Sensor name, unique in the Axon.")
    triggers: list[Trigger] = Field(
        default_factory=list,
        description="Any one fires the sensor; none: run once when the Axon is submitted.",
    )
    conditions: list[MetricCondition] = Field(
        default_factory=list, description="All must hold when a trigger fires."
    )
    tasks: list[Step] = Field(
        min_length=1, description="Steps in order; a list inside runs in parallel."
    )
    concurrency: Literal["Forbid", "Allow", "Replace"] = Field(
        "Forbid",
        description="A firing while a run is active: Forbid skips it, Allow starts another, "
        "Replace cancels the active run.",
    )
    max_runs: MaxRuns | None = Field(
        None, alias="maxRuns", description="Bound on runs started in a time window."
    )
    parameters: list[SensorParameter] = Field(
        default_factory=list,
        description="Myelin's sensor parameters; accepted and not used (use spec.parameters "
        "and an action's env to pass values to tasks).",
    )

    @property
    def steps(self) -> tuple[tuple[ActionSpec, ...], ...]:
        """Every step as a tuple of actions (one action = a group of one)."""
        return tuple(tuple(s) if isinstance(s, list) else (s,) for s in self.tasks)

    def trigger(self, name: str) -> AnyTrigger | None:
        """The trigger called `name`, if any."""
        return next((t for t in self.triggers if t.name == name), None)
