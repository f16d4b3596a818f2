"""The Axon models on plain data: durations, shapes, convenience properties, the JSON Schema."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from events.errors import RanvierError
from sensors.spec import (
    ActionSpec,
    AlertTrigger,
    Axon,
    CalendarTrigger,
    DurationError,
    Retry,
    Sensor,
    Task,
    TaskRef,
    format_duration,
    json_schema,
    parse_duration,
)


def _axon(**spec: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"tasks": [{"name": "Train", "train": {"image": "t:1"}}], **spec}
    return {
        "apiVersion": "myelinproj.io/v1alpha1",
        "kind": "Axon",
        "metadata": {"name": "demo"},
        "spec": body,
    }


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("30s", 30.0),
        ("5m", 300.0),
        ("1h30m", 5400.0),
        ("250ms", 0.25),
        ("2d", 172800.0),
        ("90", 90.0),
        ("1.5s", 1.5),
        (" 10s ", 10.0),
        ("1m30s500ms", 90.5),
    ],
)
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "5 minutes", "s", "-5s", "1y", "1h-30m", "30S", "1e3s"])
def test_parse_duration_refuses_what_it_cannot_read(text: str) -> None:
    with pytest.raises(DurationError, match="invalid duration") as info:
        parse_duration(text)
    # a user mistake (RanvierError) that pydantic also treats as a validation error (ValueError)
    assert isinstance(info.value, RanvierError)
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0, "0s"), (30, "30s"), (90, "1m30s"), (0.25, "250ms"), (5400, "1h30m"), (86400, "1d")],
)
def test_format_duration_round_trips(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text
    assert parse_duration(text) == pytest.approx(seconds)


def test_durations_accept_numbers_and_strings_and_serialise_as_strings() -> None:
    trigger = AlertTrigger.model_validate(
        {
            "name": "low",
            "type": "Alert",
            "condition": "{{acc}} < 0.9",
            "for": "1m",
            "keepFiringFor": 30,
            "cooldown": "1h",
        }
    )
    assert (trigger.for_, trigger.keep_firing_for, trigger.cooldown) == (60.0, 30.0, 3600.0)
    dumped = trigger.model_dump(by_alias=True)
    assert dumped["for"] == "1m"
    assert dumped["keepFiringFor"] == "30s"
    assert AlertTrigger.model_validate(dumped) == trigger


@pytest.mark.parametrize("bad", [True, -1, float("inf"), "soon"])
def test_durations_refuse_booleans_negatives_and_words(bad: object) -> None:
    with pytest.raises(ValidationError):
        Retry.model_validate({"limit": 1, "backoff": bad})


def test_python_names_work_as_well_as_yaml_names() -> None:
    retry = Retry(limit=2, backoff=1.0)
    ref = TaskRef(task="Train", retry=retry)
    assert ActionSpec(trainer=ref) == ActionSpec.model_validate(
        {"trainer": {"task": "Train", "retry": {"limit": 2, "backoff": "1s"}}}
    )


def test_models_are_frozen() -> None:
    ref = TaskRef(task="Train")
    with pytest.raises(ValidationError, match="frozen"):
        ref.task = "Other"  # type: ignore[misc]  # the point of the test


@pytest.mark.parametrize(
    ("body", "kind"),
    [
        ({"container": {"image": "a"}}, "container"),
        ({"train": {"image": "a"}}, "train"),
        ({"deploy": {"model": "M"}}, "deploy"),
        ({"spark": {"image": "a"}}, "spark"),
        ({"tfJob": {"image": "a"}}, "tfJob"),
    ],
)
def test_task_kind_and_body(body: dict[str, Any], kind: str) -> None:
    task = Task.model_validate({"name": "T", **body})
    assert task.kind == kind
    assert task.body is getattr(task, "tf_job" if kind == "tfJob" else kind)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({}, "needs exactly one of: container, train"),
        ({"container": {}, "train": {}}, "has container and train"),
        ({"train": {"image": "a", "imageBuild": {}}}, "imageBuild"),
    ],
)
def test_task_shape_errors(body: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        Task.model_validate({"name": "T", **body})


def test_sensor_steps_normalise_single_actions_and_parallel_groups() -> None:
    sensor = Sensor.model_validate(
        {
            "name": "S",
            "tasks": [
                [{"resourceExecutor": {"task": "A"}}, {"resourceExecutor": {"task": "B"}}],
                {"trainer": {"task": "T", "retry": {"limit": 3, "backoff": "5s"}}},
                {"deployer": {"name": "web", "models": [_model()]}},
            ],
        }
    )
    steps = sensor.steps
    assert [[a.kind for a in step] for step in steps] == [
        ["resourceExecutor", "resourceExecutor"],
        ["trainer"],
        ["deployer"],
    ]
    assert [[a.task_name for a in step] for step in steps] == [["A", "B"], ["T"], ["web"]]
    assert steps[1][0].retry == Retry(limit=3, backoff=5.0)
    assert steps[0][0].retry is None
    assert sensor.concurrency == "Forbid"
    assert sensor.triggers == []


def _model() -> dict[str, Any]:
    return {"name": "M", "backendModels": [{"name": "b", "trainer": "T", "deployer": "D"}]}


def test_triggers_are_chosen_by_type() -> None:
    sensor = Sensor.model_validate(
        {
            "name": "S",
            "triggers": [
                {"name": "a", "type": "Lifecycle", "task": "T", "condition": "Failed"},
                {"name": "b", "type": "Alert", "condition": "{{x}} > 1"},
                {"name": "c", "type": "Rest"},
                {"name": "d", "type": "Calendar", "interval": "1h"},
            ],
            "tasks": [{"trainer": {"task": "T"}}],
        }
    )
    assert [type(t).__name__ for t in sensor.triggers] == [
        "LifecycleTrigger",
        "AlertTrigger",
        "RestTrigger",
        "CalendarTrigger",
    ]
    assert sensor.trigger("d") == CalendarTrigger(name="d", type="Calendar", interval=3600.0)
    assert sensor.trigger("nope") is None


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({}, "needs exactly one of: schedule, interval"),
        ({"schedule": "0 3 * * *", "interval": "1h"}, "has schedule and interval"),
        ({"schedule": "every day"}, "invalid cron schedule"),
        ({"interval": 0}, "greater than 0"),
        ({"interval": "1h", "timezone": "Nowhere/Land"}, "unknown timezone"),
    ],
)
def test_calendar_trigger_errors(fields: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        CalendarTrigger.model_validate({"name": "c", "type": "Calendar", **fields})


def test_axon_convenience_lookups_and_defaults() -> None:
    axon = Axon.model_validate(_axon(artifacts=[{"name": "src", "local": {"path": "."}}]))
    assert axon.metadata.namespace == "default"
    assert axon.spec.task("Train") is axon.spec.tasks[0]
    assert axon.spec.task("Nope") is None
    assert axon.spec.sensor("Nope") is None
    assert axon.spec.artifact("src") is axon.spec.artifacts[0]
    assert axon.spec.metrics is None
    train = axon.spec.tasks[0].train
    assert train is not None
    assert train.loss_metric_selector == "lower"


def test_s2i_accepts_myelins_builder_image_typo() -> None:
    task = Task.model_validate(
        {
            "name": "Serve",
            "deploy": {
                "imageBuild": {
                    "repositoryName": "r",
                    "artifact": "a",
                    "s2i": {"contextDir": "x", "buiderImage": "builder:1"},
                }
            },
        }
    )
    build = task.body.image_build
    assert build is not None
    assert build.s2i is not None
    assert build.s2i.builder_image == "builder:1"


def test_scalar_strings_accept_yaml_numbers() -> None:
    axon = Axon.model_validate(_axon(parameters=[{"name": "epochs", "value": 3}]))
    assert axon.spec.parameters[0].value == "3"


def test_json_schema_is_draft_2020_12_with_a_description_on_every_property() -> None:
    schema = json_schema()
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    undocumented = [
        f"{name}.{prop}"
        for name, definition in schema["$defs"].items()
        for prop, body in definition.get("properties", {}).items()
        if not body.get("description")
    ]
    assert undocumented == []
    assert set(schema["properties"]) == {"apiVersion", "kind", "metadata", "spec"}
    assert "for" in schema["$defs"]["AlertTrigger"]["properties"]
    assert "keepFiringFor" in schema["$defs"]["AlertTrigger"]["properties"]
