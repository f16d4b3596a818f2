"""The PURE rules engine: (state, event, now) in, decisions and action requests out.

Everything ranvier decides happens here, as plain functions over plain data: no I/O, no clock
reads (`now` is always an argument), no randomness. That is what makes a dry-run replay give the
same answers as the live runtime, and what lets the runtime retry a batch after a crash and get
the same action keys: `sensor_run_id` is a uuid5 of the event id and the sensor, and an action's
idempotency key is derived from it.

Shape (kopf's causes: data in, decisions out):

* `EngineState` holds, per Axon, the compiled spec with its indexes (never persisted; rebuilt
  from the spec) and the mutable state: alert phases and metric values, conditions' values,
  active and recently finished sensor runs, recently seen lifecycle edges, maxRuns windows.
  `dump_axon()` / `load_axon()` turn one Axon's state into canonical JSON and back, because the
  runtime stores one KV key per Axon with compare-and-set.
* `submit()` applies a new spec generation (or a deletion), `step()` applies one event,
  `tick()` applies the passing of time (an Alert's `for` elapsing, `keepFiringFor` or a
  cooldown running out). Each returns a `StepResult`: decision records and action requests in a
  deterministic order (spec order of sensors and triggers).
* These functions MUTATE the `EngineState` in place (for speed); the runtime keeps its own copy
  of the persisted state and rebuilds from KV when a batch fails. Their result depends only on
  (state, arguments): the same state and event always give the same result.

Indexes, built on submit, so an event's cost does not grow with the sensors it
cannot concern: lifecycle triggers by (task, phase); Alert triggers and Metric conditions by query
key and by (sensor, name); Rest and Calendar by sensor; active runs by sensor_run_id.

Decision records: an event yields one record per (sensor, trigger) it could concern, and one per
sensor run it advances, so "why did (not) this fire" always has an answer. An event that concerns
nothing (another Axon, a metric nobody reads) yields none; an event that cannot be read (unknown
type, invalid payload) yields no record but `StepResult.ignored` saying why (a decision needs an
Axon and a sensor, which such an event may not have). `fired` is true exactly when the record
requested actions (a run started, advanced to its next step, or retried an action).
"""

from __future__ import annotations

from sensors.engine.base import (
    AXON_DELETED,
    FINISHED_RUNS_LIMIT,
    SEEN_EDGES_LIMIT,
    STATE_VERSION,
    ActionPhase,
    AlertPhase,
    EndedRun,
    EngineError,
    RunAction,
    RunPhase,
    RunView,
    StepResult,
    axon_key,
    sensor_run_id,
)
from sensors.engine.rules import event_axon, step
from sensors.engine.state import EngineState
from sensors.engine.submit import submit
from sensors.engine.timing import due_ticks, next_deadline, tick

__all__ = [
    "AXON_DELETED",
    "FINISHED_RUNS_LIMIT",
    "SEEN_EDGES_LIMIT",
    "STATE_VERSION",
    "ActionPhase",
    "AlertPhase",
    "EndedRun",
    "EngineError",
    "EngineState",
    "RunAction",
    "RunPhase",
    "RunView",
    "StepResult",
    "axon_key",
    "due_ticks",
    "event_axon",
    "next_deadline",
    "sensor_run_id",
    "step",
    "submit",
    "tick",
]
