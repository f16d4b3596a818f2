"""Names on the bus: subject tokens and KV keys never carry wildcards or separators."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from events import model, subjects
from events.bus import kv_key, subject_of

KV_KEY = re.compile(r"[-/_=.a-zA-Z0-9]+")
TOKEN = re.compile(r"[A-Za-z0-9_-]+")


@given(st.text(max_size=80))
def test_any_name_becomes_one_safe_token(name: str) -> None:
    token = subjects.token(name)
    assert TOKEN.fullmatch(token)


@given(st.text(min_size=1, max_size=40), st.text(min_size=1, max_size=40))
def test_different_names_get_different_tokens(a: str, b: str) -> None:
    if a != b:
        assert subjects.token(a) != subjects.token(b)


@pytest.mark.parametrize("name", ["TrainGPT2", "ml-gpt2", "a_b", "x1"])
def test_loader_accepted_names_are_kept_as_they_are(name: str) -> None:
    assert subjects.token(name) == name
    assert kv_key("default", name) == f"default.{name}"


@given(st.lists(st.text(max_size=30), min_size=1, max_size=5))
def test_kv_keys_are_valid_and_keep_their_parts(parts: list[str]) -> None:
    key = kv_key(*parts)
    assert KV_KEY.fullmatch(key)
    assert key.count(".") == len(parts) - 1  # no part can add a level


@pytest.mark.parametrize(
    ("axon", "kind", "matches", "misses"),
    [
        ("ml", "metric", "ranvier.ev.ml.metric.acc", "ranvier.ev.ml.lifecycle.T"),
        ("ml", "axon", "ranvier.ev.ml.axon", "ranvier.ev.ml2.axon"),
        (None, "lifecycle", "ranvier.ev.x.lifecycle.T", "ranvier.ev.x.metric.m"),
    ],
)
def test_events_filter_narrows_by_axon_and_kind(
    axon: str | None, kind: str | None, matches: str, misses: str
) -> None:
    pattern = subjects.events_filter(axon, kind)
    assert _matches(pattern, subjects.stored_subject(matches, 16))
    assert not _matches(pattern, subjects.stored_subject(misses, 16))


def test_an_axon_name_with_dots_cannot_widen_the_filter() -> None:
    pattern = subjects.events_filter("a.b")
    own = subjects.stored_subject(f"ranvier.ev.{subjects.token('a.b')}.metric.m", 16)
    assert _matches(pattern, own)
    assert not _matches(pattern, subjects.stored_subject("ranvier.ev.a.b.metric.m", 16))
    wild = subjects.events_filter("a.*")
    assert not _matches(wild, subjects.stored_subject("ranvier.ev.a.x.metric.m", 16))


@pytest.mark.parametrize("partitions", [1, 2, 16, 97])
def test_partition_of_spreads_axons_over_every_partition_and_is_stable(partitions: int) -> None:
    names = [f"axon-{i}" for i in range(64 * partitions)]
    seen = {subjects.partition_of(n, partitions) for n in names}
    assert seen == set(range(partitions))
    assert subjects.partition_of("ml-gpt2", 16) == 6  # FNV-1a, as nats-server computes it
    assert subjects.partition_of("quickstart", 16) == 0


def test_stored_subject_puts_the_partition_first_and_keeps_the_rest() -> None:
    p = subjects.partition_of("ml", 16)
    assert (
        subjects.stored_subject("ranvier.ev.ml.metric.acc", 16) == f"ranvier.evp.{p}.ml.metric.acc"
    )
    assert subjects.stored_subject("ranvier.ev.ml.axon", 16) == f"ranvier.evp.{p}.ml.axon"
    assert subjects.stored_subject("ranvier.act.ml.trainer", 16) == "ranvier.act.ml.trainer"
    assert subjects.partition_filter(p) == f"ranvier.evp.{p}.>"


def _matches(pattern: str, subject: str) -> bool:
    """NATS wildcard matching: `*` is one token, a trailing `>` one or more."""
    p, s = pattern.split("."), subject.split(".")
    for i, tok in enumerate(p):
        if tok == ">":
            return len(s) > i
        if i >= len(s) or (tok != "*" and tok != s[i]):
            return False
    return len(p) == len(s)


def test_kv_key_needs_a_part() -> None:
    with pytest.raises(ValueError, match="at least one part"):
        kv_key()


PAYLOADS = [
    model.LifecycleData(axon="ml.x", task="Train GPT2", run_id="r", phase="Running"),
    model.MetricData(axon="ml", name="acc>0", value=0.5),
    model.RestData(axon="ml", sensor="s*"),
    model.CalendarData(axon="ml", sensor="nightly", trigger="t", scheduled_time=model.utcnow()),
    model.AxonData(axon="ml", generation=2, action="submitted"),
    model.ActionRequest(axon="ml", sensor="s", sensor_run_id="r", step=0, kind="trainer", task="t"),
    model.DecisionData(axon="ml", event_id="e", sensor="s", matched=True, fired=False, reason="x"),
]


@pytest.mark.parametrize("payload", PAYLOADS, ids=lambda p: type(p).__name__)
def test_publish_subject_is_the_validated_subject(payload: model.Payload) -> None:
    event = payload.to_event(source="test")
    assert subject_of(event) == event.nats_subject == payload.nats_subject()


def test_publish_subject_of_an_invalid_payload_is_an_event_error() -> None:
    missing = model.Event(
        id="x", source="s", type=model.LIFECYCLE, time=model.utcnow(), data={"axon": "a"}
    )
    with pytest.raises(model.EventError, match="task"):
        subject_of(missing)
    unknown = model.Event(id="y", source="s", type="com.example", time=model.utcnow())
    with pytest.raises(model.EventError, match="unknown type"):
        subject_of(unknown)
