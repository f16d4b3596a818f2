"""The event envelope: lossless JSON, typed payloads, safe subjects, size limits."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from cloudevents.core.formats.json import JSONFormat
from cloudevents.core.v1.event import CloudEvent
from hypothesis import given
from hypothesis import strategies as st

from events import model, subjects
from events.model import (
    ActionRequest,
    AxonData,
    Event,
    EventError,
    LifecycleData,
    MetricData,
)

T0 = datetime(2026, 11, 27, 12, 0, 0, 123456, tzinfo=UTC)
TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


def test_lifecycle_event_round_trips_byte_identical() -> None:
    data = LifecycleData(axon="ml-gpt2", task="TrainGPT2", run_id="r1", phase="Succeeded")
    ev = data.to_event(source="ranvier/executor", time=T0)
    raw = ev.to_json()
    back = Event.from_json(raw)
    assert back == ev
    assert back.to_json() == raw
    assert back.payload() == data
    assert ev.nats_subject == "ranvier.ev.ml-gpt2.lifecycle.TrainGPT2"
    assert b'"time":"2026-11-27T12:00:00.123456Z"' in raw


def test_times_are_normalised_to_utc() -> None:
    plus2 = timezone(timedelta(hours=2))
    ev = Event(id="x", source="s", type="t", time=datetime(2026, 1, 1, 14, tzinfo=plus2))
    assert ev.time == datetime(2026, 1, 1, 12, tzinfo=UTC)
    naive = Event(id="x", source="s", type="t", time=datetime(2026, 1, 1, 12))
    assert naive.time.tzinfo is UTC


def test_ids_are_unique_and_ordered() -> None:
    ids = [model.new_id() for _ in range(1000)]
    assert len(set(ids)) == 1000
    assert ids == sorted(ids)


@pytest.mark.parametrize(
    ("raw", "fragment"),
    [
        (b"not json", "not a ranvier event"),
        (b'{"id": "x"}', "source"),
        (b'{"id":"x","source":"s","type":"t","time":"yesterday"}', "time"),
        (b'{"id":"","source":"s","type":"t","time":"2026-01-01T00:00:00Z"}', "id"),
        (b'{"id":"x","source":"s","type":"t","time":"2026-01-01T00:00:00Z","X-y":1}', "X-y"),
        (b'{"id":"x","source":"s","type":"t","time":"2026-01-01T00:00:00Z","ext":{}}', "ext"),
        (b'{"id":"x","source":"s","type":"t","time":"2026-01-01T00:00:00Z","ext":1.5}', "ext"),
        (b'{"id":"x","source":"s","type":"t","time":"2026-01-01T00:00:00Z","ext":null}', "ext"),
        (
            b'{"id":"x","source":"s","type":"t","time":"2026-01-01T00:00:00Z","data_base64":"AA=="}',
            "binary data",
        ),
        (
            b'{"id":"x","source":"s","type":"t","time":"2026-01-01T00:00:00Z",'
            b'"datacontenttype":"text/plain"}',
            "not a JSON media type",
        ),
        (b'{"id":"x","source":"s","type":"t"}', "time"),
    ],
)
def test_malformed_envelopes_are_event_errors(raw: bytes, fragment: str) -> None:
    with pytest.raises(EventError, match=fragment):
        Event.from_json(raw)


def test_events_of_other_cloudevents_producers_are_read_as_the_spec_allows() -> None:
    """What the CloudEvents SDK writes (optional attributes, an extension, a media type with a
    parameter) is read, and written back out with the extension unchanged."""
    sdk_event = CloudEvent(
        {
            "id": "foreign-1",
            "source": "https://ci.example.com/pipelines/7",
            "type": model.REST,
            "specversion": "1.0",
            "time": T0,
            "traceparent": TRACEPARENT,
            "datacontenttype": "application/json; charset=utf-8",
            "dataschema": "https://example.com/schemas/rest.json",
            "sequence": 42,
        },
        {"axon": "shop", "sensor": "OnCall", "payload": {"n": 1}},
    )
    raw = JSONFormat().write(sdk_event)
    event = Event.from_json(raw)
    assert event.extensions == {"traceparent": TRACEPARENT, "sequence": 42}
    assert event.dataschema == "https://example.com/schemas/rest.json"
    assert event.time == T0
    payload = event.payload()
    assert isinstance(payload, model.RestData)
    assert (payload.sensor, payload.payload) == ("OnCall", {"n": 1})
    assert event.nats_subject == subjects.event_subject("shop", "rest", "OnCall")
    written = json.loads(event.to_json())
    assert written["traceparent"] == TRACEPARENT
    assert written["datacontenttype"] == "application/json; charset=utf-8"
    assert JSONFormat().read(None, event.to_json()).get_extension("traceparent") == TRACEPARENT


@pytest.mark.parametrize(
    "media_type",
    [
        "application/json",
        "Application/JSON",
        "application/json;charset=utf-8",
        "application/cloudevents+json",
        "text/json",
        "application/vnd.acme.order+json; v=2",
    ],
)
def test_json_media_types_with_parameters_and_suffixes_are_json(media_type: str) -> None:
    assert model.is_json_media_type(media_type)


@pytest.mark.parametrize("media_type", ["text/plain", "application/xml", "application/jsonx", ""])
def test_other_media_types_are_not_json(media_type: str) -> None:
    assert not model.is_json_media_type(media_type)


def test_an_event_without_time_takes_the_moment_the_stream_stored_it() -> None:
    raw = b'{"specversion":"1.0","id":"x","source":"s","type":"com.example.t"}'
    stored = datetime(2026, 11, 27, 12, 0, 5, tzinfo=UTC)
    assert Event.from_json(raw, stored_at=stored).time == stored
    assert Event.from_json(raw, stored_at=lambda: stored).time == stored
    asked: list[bool] = []

    def stored_time() -> datetime:
        asked.append(True)
        return stored

    Event.from_json(
        b'{"id":"x","source":"s","type":"t","time":"2026-01-01T00:00:00Z"}', stored_at=stored_time
    )
    assert not asked  # the stream's timestamp is read only when the event has no time
    with pytest.raises(EventError, match="source"):  # other faults are still faults
        Event.from_json(b'{"id":"x","type":"t"}', stored_at=stored)


def test_unknown_type_and_invalid_payload_are_event_errors() -> None:
    ev = Event(id="x", source="s", type="com.example.other", time=T0)
    with pytest.raises(EventError, match="unknown type"):
        ev.payload()
    bad = Event(id="y", source="s", type=model.LIFECYCLE, time=T0, data={"axon": "a"})
    with pytest.raises(EventError, match="task"):
        bad.payload()


def test_oversized_event_is_refused_before_publishing() -> None:
    ev = MetricData(axon="a", name="m", value=1.0, labels={"big": "x" * 2000}).to_event(source="s")
    assert len(ev.encode(max_payload=4096)) > 2000
    with pytest.raises(EventError, match="max payload of 1024 bytes"):
        ev.encode(max_payload=1024)


def test_action_request_id_is_its_idempotency_key() -> None:
    req = ActionRequest(
        axon="a", sensor="S", sensor_run_id="r", step=1, kind="trainer", task="T", attempt=2
    )
    assert req.idempotency_key == "a/S/r/1/2"
    assert req.to_event(source="engine").id == "a/S/r/1/2"
    second = req.model_copy(update={"index": 1})
    assert second.idempotency_key == "a/S/r/1.1/2"
    assert req.nats_subject() == "ranvier.act.a.trainer"


def test_axon_event_subject() -> None:
    data = AxonData(axon="quickstart", generation=3, action="submitted")
    assert data.nats_subject() == "ranvier.ev.quickstart.axon"
    assert subjects.events_filter("quickstart", "axon") == "ranvier.evp.*.quickstart.axon"
    assert subjects.events_filter(kind="lifecycle") == "ranvier.evp.*.*.lifecycle.*"
    assert subjects.events_filter() == "ranvier.evp.*.*.>"


@given(st.text(min_size=1, max_size=80))
def test_tokens_never_inject_subject_syntax(name: str) -> None:
    tok = subjects.token(name)
    assert tok
    assert not any(c in tok for c in ".*> \t\r\n")
    assert subjects.event_subject(name, "metric", name).count(".") == 4


@given(st.text(min_size=1, max_size=30), st.text(min_size=1, max_size=30))
def test_distinct_names_get_distinct_tokens(a: str, b: str) -> None:
    if a != b:
        assert subjects.token(a) != subjects.token(b)


json_values: st.SearchStrategy[Any] = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda kids: st.lists(kids, max_size=4) | st.dictionaries(st.text(), kids, max_size=4),
    max_leaves=20,
)


@given(st.dictionaries(st.text(), json_values, max_size=6))
def test_any_json_data_round_trips_losslessly(data: dict[str, Any]) -> None:
    ev = Event(id=model.new_id(), source="test", type="com.example", time=T0, data=data)
    back = Event.from_json(ev.to_json())
    assert back.data == data
    assert back.to_json() == ev.to_json()


def test_non_finite_metric_values_travel_as_unknown() -> None:
    # JSON has no NaN or infinity: they arrive as null, which the engine reads as "unknown".
    ev = MetricData(axon="a", name="m", value=float("nan")).to_event(source="s")
    back = Event.from_json(ev.to_json()).payload()
    assert isinstance(back, MetricData)
    assert back.value is None
