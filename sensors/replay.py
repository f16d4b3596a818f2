"""Dry-run: the pure engine over recorded events, on a virtual clock, executing nothing.

`ranvier sensors test` answers "what would this Axon have done with these events?" before it is
submitted, and replays a recording of a live run to explain it. It must agree with the live
runtime, so it drives the very same `sensors.engine` functions at the same times: each event
is stepped at its own `time` (as the live runtime steps it, never at the wall clock), and the
ticks the live engine acted on are in the recording as `ranvier.tick` events, stepped like any
other. So a recording of a live run replays exactly, timed Alerts included. The output is
canonical JSON, so the same input always gives byte-identical output.

The Axon counts as submitted (generation 1) just before the first event, unless the recording
holds a `ranvier.axon` event for it (a live recording does); an empty recording replays the
submission alone (what the Axon does as soon as it is submitted). The synthetic submit event
has a deterministic id derived from the Axon's namespace and name. With a tick interval (a "what
if" for recordings without ticks, such as hand-written ones), `tick()` is also called at each
tick boundary (the first event's time plus whole ticks) that falls between two
events and at which something waits on time; boundaries where nothing can happen are skipped,
which gives the same output as calling `tick()` at every one of them.
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime
from typing import Any, Final

from events.model import AXON, AxonData, DecisionData, Event, canonical_json
from sensors import engine
from sensors.spec import Axon

SOURCE: Final = "ranvier/replay"
# An empty recording has no time to take: its submission is stepped at a fixed moment, so the
# output stays the same on every run (decisions carry no time).
_NO_TIME: Final = datetime(1970, 1, 1, tzinfo=UTC)
_SUBMIT_NAMESPACE: Final = uuid.uuid5(uuid.NAMESPACE_URL, "https://ranvier.dev/replay-submit")


def synthetic_submit(axon: Axon, time: datetime) -> Event:
    """The `ranvier.axon` event a dry-run submits the Axon with (deterministic id)."""
    name, namespace = axon.metadata.name, axon.metadata.namespace
    ev_id = f"replay-{uuid.uuid5(_SUBMIT_NAMESPACE, f'{namespace}/{name}/1')}"
    data = AxonData(axon=name, namespace=namespace, generation=1, action="submitted")
    return data.to_event(source=SOURCE, id=ev_id, time=time)


def _is_own_axon_event(axon: Axon, event: Event) -> bool:
    own = engine.axon_key(axon.metadata.namespace, axon.metadata.name)
    return event.type == AXON and engine.event_axon(event) == own


def replay(
    axon: Axon, events: Iterable[Event], tick: float | None = None
) -> Iterator[DecisionData]:
    """The decisions the engine makes for `axon` over `events`, in order."""
    if tick is not None and not tick > 0:
        raise engine.EngineError(f"tick must be more than 0 seconds, not {tick}")
    recorded = list(events)
    state = engine.EngineState()
    if not recorded:  # the submission alone: sensors without triggers run once
        yield from engine.submit(
            state, axon, 1, synthetic_submit(axon, _NO_TIME), _NO_TIME
        ).decisions
        return
    own_submits = any(_is_own_axon_event(axon, e) for e in recorded)
    start = _seconds(recorded[0].time)
    clock = start
    if not own_submits:
        yield from engine.submit(
            state, axon, 1, synthetic_submit(axon, recorded[0].time), recorded[0].time
        ).decisions
    last_boundary = start
    for event in recorded:
        clock = max(clock, _seconds(event.time))  # tick boundaries only move forward
        if tick is not None:
            for boundary in _boundaries(state, start, last_boundary, clock, tick):
                last_boundary = boundary
                yield from engine.tick(state, _time(boundary)).decisions
        if _is_own_axon_event(axon, event):
            payload = event.data
            generation = payload.get("generation")
            if isinstance(generation, int) and generation >= 1:
                yield from engine.submit(state, axon, generation, event, event.time).decisions
            continue
        yield from engine.step(state, event, event.time).decisions


def _boundaries(
    state: engine.EngineState, start: float, last: float, until: float, tick: float
) -> Iterator[float]:
    """Tick boundaries in (last, until] at which something waits on time.

    The first looks at every deadline (an event may have unblocked an overdue one); after a tick
    at a boundary, deadlines at or before it wait for an event, so only later ones count.
    """
    after: datetime | None = None
    while True:
        due = engine.next_deadline(state, after)
        if due is None:
            return
        k = max(math.ceil((_seconds(due) - start) / tick), math.floor((last - start) / tick) + 1)
        boundary = start + k * tick
        if boundary > until:
            return
        yield boundary
        last, after = boundary, _time(boundary)


def decision_line(decision: DecisionData) -> dict[str, Any]:
    """One decision as `sensors test` prints it."""
    return {
        "event_id": decision.event_id,
        "sensor": decision.sensor,
        "trigger": decision.trigger,
        "fired": decision.fired,
        "reason": decision.reason,
        "sensor_run_id": decision.sensor_run_id,
        "actions": [{"kind": a.kind, "task": a.task, "step": a.step} for a in decision.actions],
    }


def replay_lines(axon: Axon, events: Iterable[Event], tick: float | None = None) -> Iterator[str]:
    """Canonical JSON lines (sorted keys, compact), one per decision."""
    for decision in replay(axon, events, tick):
        yield canonical_json(decision_line(decision)).decode()


def _seconds(value: datetime) -> float:
    return value.timestamp()


def _time(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, UTC)
