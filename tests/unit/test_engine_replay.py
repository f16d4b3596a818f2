"""Dry-run replay and `ranvier sensors test`: virtual clock, ticks, byte-identical output."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

import pytest

from events.model import AxonData, DecisionData, Event, LifecycleData, MetricData, RestData
from ranvier.cli import main
from sensors import engine
from sensors.replay import decision_line, replay, replay_lines, synthetic_submit
from tests.unit.engine_kit import AXON, T0, TASKS, at, make_axon

SENSORS = """
- name: OnStart
  tasks:
    - resourceExecutor: {task: Prep}
    - trainer: {task: Train}
- name: Deploy
  triggers:
    - {name: trained, type: Lifecycle, task: Train, condition: Succeeded}
  tasks:
    - resourceExecutor: {task: Deploy}
- name: Retrain
  triggers:
    - {name: low, type: Alert, condition: "{{acc}} < 0.9", for: 10s}
    - {name: manual, type: Rest}
  tasks:
    - trainer: {task: Train}
"""


def _axon_file(tmp_path: Path) -> Path:
    tasks = "\n".join(
        f"    - {{name: {t}, {'train' if t == 'Train' else 'container'}: "
        f"{{image: busybox, command: [echo, {t}]}}}}"
        for t in TASKS
    )
    body = "\n".join("    " + line for line in SENSORS.strip().splitlines())
    path = tmp_path / "axon.yaml"
    path.write_text(
        f"apiVersion: ranvier.dev/v1alpha1\nkind: Axon\nmetadata: {{name: {AXON}}}\n"
        f"spec:\n  tasks:\n{tasks}\n  sensors:\n{body}\n"
    )
    return path


def _recording() -> list[Event]:
    return [
        LifecycleData(axon=AXON, task="Train", run_id="tr1", phase="Succeeded").to_event(
            source="t", id="01A", time=at(1)
        ),
        MetricData(axon=AXON, name="acc", value=0.5).to_event(source="t", id="01B", time=at(2)),
        RestData(axon=AXON, sensor="Retrain").to_event(source="t", id="01C", time=at(30)),
    ]


def _events_file(tmp_path: Path, events: list[Event], extra: str = "") -> Path:
    path = tmp_path / "events.jsonl"
    path.write_bytes(b"".join(e.to_json() + b"\n" for e in events) + extra.encode())
    return path


def _lines(capsys: pytest.CaptureFixture[str], argv: list[str]) -> tuple[int, str, str]:
    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_the_axon_counts_as_submitted_just_before_the_first_event() -> None:
    axon = make_axon(SENSORS)
    lines = [json.loads(line) for line in replay_lines(axon, _recording())]
    submit_id = synthetic_submit(axon, T0).id
    assert [(d["event_id"], d["sensor"], d["fired"]) for d in lines] == [
        (submit_id, "OnStart", False),
        (submit_id, "Deploy", False),
        (submit_id, "Retrain", False),
        (submit_id, "OnStart", True),
        ("01A", "Deploy", True),
        ("01B", "Retrain", False),
        ("01C", "Retrain", True),
    ]
    assert lines[3]["actions"] == [{"kind": "resourceExecutor", "step": 0, "task": "Prep"}]
    assert lines[4]["sensor_run_id"] == engine.sensor_run_id("01A", "Deploy")
    assert set(lines[0]) == {
        "event_id",
        "sensor",
        "trigger",
        "fired",
        "reason",
        "sensor_run_id",
        "actions",
    }


def test_ticks_let_for_elapse_between_events() -> None:
    axon = make_axon(SENSORS)
    plain = [json.loads(x) for x in replay_lines(axon, _recording())]
    ticked = [json.loads(x) for x in replay_lines(axon, _recording(), tick=1.0)]
    assert [(d["event_id"], d["trigger"]) for d in plain if d["fired"]][-1] == ("01C", "manual")
    alert = [d for d in ticked if d["trigger"] == "low" and d["fired"]]
    assert len(alert) == 1
    assert "tick at 2026-03-01T12:00:12.000000Z" in alert[0]["reason"]
    assert alert[0]["event_id"] == "01B"  # the event that started the pending episode
    last = ticked[-1]
    assert (last["trigger"], last["fired"]) == ("manual", False)
    assert "is still active (concurrency Forbid)" in last["reason"]


@pytest.mark.parametrize("tick", [0.5, 1.0, 3.0, 7.0])
def test_skipping_idle_boundaries_is_the_same_as_ticking_every_one(tick: float) -> None:
    axon = make_axon(SENSORS)
    events = _recording()
    fast = list(replay_lines(axon, events, tick))
    state = engine.EngineState()
    slow: list[DecisionData] = []
    slow += engine.submit(state, axon, 1, synthetic_submit(axon, events[0].time), at(1)).decisions
    boundary = events[0].time
    for event in events:
        while boundary + timedelta(seconds=tick) <= event.time:
            boundary += timedelta(seconds=tick)
            slow += engine.tick(state, boundary).decisions
        slow += engine.step(state, event, event.time).decisions
    expected = [json.dumps(decision_line(d), sort_keys=True, separators=(",", ":")) for d in slow]
    assert fast == expected


def test_a_recorded_submit_replaces_the_synthetic_one() -> None:
    axon = make_axon(SENSORS)
    submit = AxonData(axon=AXON, generation=4, action="submitted").to_event(
        source="t", id="01S", time=at(0)
    )
    decisions = list(replay(axon, [submit, *_recording()]))
    assert {d.event_id for d in decisions if d.sensor == "OnStart"} == {"01S"}
    assert "generation 4" in decisions[0].reason


def test_events_of_other_axons_are_skipped() -> None:
    axon = make_axon(SENSORS)
    other = RestData(axon="elsewhere", sensor="Retrain").to_event(source="t", id="X", time=at(1))
    decisions = list(replay(axon, [other]))
    assert all(d.event_id != "X" for d in decisions)


def test_sensors_test_prints_byte_identical_json_lines(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = [
        "sensors",
        "test",
        str(_axon_file(tmp_path)),
        "--events",
        str(_events_file(tmp_path, _recording())),
        "--tick",
        "1s",
    ]
    code, first, err = _lines(capsys, argv)
    assert (code, err) == (0, "")
    again = _lines(capsys, argv)
    assert again == (0, first, "")
    lines = first.splitlines()
    assert len(lines) == 8
    for line in lines:
        assert line == json.dumps(json.loads(line), sort_keys=True, separators=(",", ":"))


def test_an_empty_recording_shows_what_the_submission_alone_does(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """OnStart has no triggers: submitting the Axon runs it once, and a dry run shows that."""
    argv = ["sensors", "test", str(_axon_file(tmp_path)), "--events"]
    argv += [str(_events_file(tmp_path, [])), "-o", "text"]
    code, out, err = _lines(capsys, argv)
    assert (code, err) == (0, "")
    fired = [line for line in out.splitlines() if "FIRED" in line]
    assert len(out.splitlines()) == 4  # each sensor is new in generation 1; OnStart runs
    [line] = fired
    assert "OnStart" in line
    assert "resourceExecutor Prep (step 0)" in line
    json_argv = [*argv[:-2], "-o", "json"]
    code, first, _ = _lines(capsys, json_argv)
    decisions = [json.loads(x) for x in first.splitlines()]
    assert [(d["sensor"], d["fired"]) for d in decisions if d["fired"]] == [("OnStart", True)]
    assert _lines(capsys, json_argv) == (code, first, "")  # the same bytes on every run


def test_sensors_test_text_output(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["sensors", "test", str(_axon_file(tmp_path)), "--events"]
    argv += [str(_events_file(tmp_path, _recording())), "-o", "text"]
    code, out, _ = _lines(capsys, argv)
    assert code == 0
    assert "01A  Deploy/trained  FIRED  task Train run tr1 Succeeded; fired" in out
    assert "resourceExecutor Deploy (step 0)" in out


@pytest.mark.parametrize(
    ("extra", "where", "what"),
    [
        ("not json\n", ":4: error:", "not a ranvier event"),
        ('{"id": "x"}\n', ":4: error:", "source"),
        ('\n\n{"id":"","source":"s","type":"t","time":"2026-01-01T00:00:00Z"}\n', ":6:", "id"),
    ],
)
def test_sensors_test_reports_bad_lines_and_prints_no_decisions(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: str, where: str, what: str
) -> None:
    events = _events_file(tmp_path, _recording(), extra)
    code, out, err = _lines(
        capsys, ["sensors", "test", str(_axon_file(tmp_path)), "-e", str(events)]
    )
    assert code == 1
    assert out == ""
    first = err.splitlines()[0]
    assert first.startswith(f"{events}{where}")
    assert what in first
    assert "Traceback" not in err
    assert err.splitlines()[-1].startswith("error: ")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--tick", "soon"], "invalid duration 'soon'"),
        (["--tick", "0s"], "must be longer than 0s"),
    ],
)
def test_sensors_test_option_mistakes_are_one_line_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    events = _events_file(tmp_path, _recording())
    argv = ["sensors", "test", str(_axon_file(tmp_path)), "-e", str(events), *args]
    code, out, err = _lines(capsys, argv)
    assert (code, out) == (1, "")
    assert err.startswith("error: ")
    assert message in err
    assert len(err.strip().splitlines()) == 1


def test_sensors_test_with_a_bad_axon_file_is_a_one_line_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    axon = tmp_path / "axon.yaml"
    axon.write_text("kind: Axon\n")
    events = _events_file(tmp_path, _recording())
    code, out, err = _lines(capsys, ["sensors", "test", str(axon), "-e", str(events)])
    assert (code, out) == (1, "")
    assert "axon.yaml" in err
    assert "Traceback" not in err
