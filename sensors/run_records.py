"""The sensor-run records a partition engine writes: kept in memory (a bounded number), read
back from `ranvier_runs` after a restart, merged with a batch's output (`sensors.records`) and
encoded for publishing with the batch."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping, Sequence, Set
from typing import Any, Final, TypeVar

from events import subjects
from events.bus import Outgoing, kv_key
from events.model import ActionRequest, DecisionData, SensorRunRecord, new_id
from sensors import engine
from sensors.port import EngineBus
from sensors.records import merge_run_record, new_record

_I = TypeVar("_I")
RUN_RECORDS_KEPT: Final = 4096
"""Sensor-run records kept in memory (to update them without reading KV back)."""


class RunRecordStore:
    """One partition engine's sensor-run records."""

    def __init__(self, bus: EngineBus) -> None:
        self._bus = bus
        self._runs: OrderedDict[str, SensorRunRecord] = OrderedDict()
        # Msg-Ids of run records: unique to this process and record (a ULID each cost 2%).
        self._instance = new_id()
        self._record_ids = itertools.count(1)

    def clear(self) -> None:
        """Forget what is in memory (the state is reloaded: records are read back as needed)."""
        self._runs.clear()

    async def for_batch(
        self,
        state: engine.EngineState,
        *,
        actions: Sequence[ActionRequest],
        decisions: Sequence[DecisionData],
        ended: Sequence[engine.EndedRun],
        lifecycle: Sequence[Mapping[str, Any]],
        started: Set[str],
        stamp: str,
    ) -> list[Outgoing]:
        """Records of the sensor runs this batch touched (ranvier_runs, contract layout).

        A record is the engine's view of the run (`EngineState.run`: phase, trigger, every step
        up to the current one with its actions' attempts and phases) merged with what only the
        record holds: the task run ids reported for earlier steps. So the previous record is
        needed for every run not started in this batch: from memory, else read back from KV
        (after a restart). Even if that read finds nothing, the steps the engine knows of are
        all there; only their task run ids would be missing.
        """
        touched = _touched(actions, decisions, ended)
        if not touched:
            return []
        missing = [
            ref[3]
            for rid, ref in touched.items()
            if ref[3] not in self._runs and rid not in started
        ]
        if missing:
            await self._fetch(missing)
        reasons = {d.sensor_run_id: d for d in decisions if d.sensor_run_id}
        reports = _by_run(lifecycle, lambda r: str(r["sensor_run_id"]))
        by_run = _by_run(actions, lambda a: a.sensor_run_id)
        out: list[Outgoing] = []
        ends = {e.run_id: e for e in ended}
        for rid, (ns, axon, sensor, rkey) in touched.items():
            view = state.run(engine.axon_key(ns, axon), rid)
            end = ends.get(rid)
            previous = self._runs.get(rkey)
            if view is None and end is None and previous is None and rid not in started:
                continue  # a report about a run nobody knows (long gone, or never started)
            record = merge_run_record(
                previous or new_record(rid, namespace=ns, axon=axon, sensor=sensor, started=stamp),
                stamp=stamp,
                decision=reasons.get(rid),
                actions=by_run.get(rid, ()),
                reports=reports.get(rid, ()),
                view=view,
                end=end,
            )
            self._remember(rkey, record)
            out.append(
                Outgoing(
                    f"$KV.{subjects.RUNS_BUCKET}.{rkey}",
                    record.to_json(),
                    f"{self._instance}-{next(self._record_ids)}",
                )
            )
        return out

    async def _fetch(self, keys: Iterable[str]) -> None:
        """Read back records of runs this process has not seen (after a restart)."""

        async def one(key: str) -> None:
            got = await self._bus.kv_get(subjects.RUNS_BUCKET, key)
            if got is not None:
                with contextlib.suppress(ValueError):
                    self._remember(key, SensorRunRecord.from_json(got[0]))

        await asyncio.gather(*(one(k) for k in keys))

    def _remember(self, key: str, record: SensorRunRecord) -> None:
        self._runs[key] = record
        self._runs.move_to_end(key)
        while len(self._runs) > RUN_RECORDS_KEPT:
            self._runs.popitem(last=False)


def _by_run(items: Iterable[_I], run_of: Callable[[_I], str]) -> dict[str, list[_I]]:
    out: dict[str, list[_I]] = {}
    for item in items:
        out.setdefault(run_of(item), []).append(item)
    return out


def _touched(
    actions: Iterable[ActionRequest],
    decisions: Iterable[DecisionData],
    ended: Iterable[engine.EndedRun],
) -> dict[str, tuple[str, str, str, str]]:
    """The runs a batch touched: run id -> (namespace, axon, sensor, record key)."""
    touched: dict[str, tuple[str, str, str, str]] = {}
    for action in actions:
        touched.setdefault(action.sensor_run_id, _run_ref(action))
    for decision in decisions:
        if decision.sensor_run_id is not None:
            touched.setdefault(decision.sensor_run_id, _run_ref(decision))
    for end in ended:  # a run replaced or dropped is named by no decision of its own
        touched.setdefault(end.run_id, _run_ref(end))
    return touched


def _run_ref(item: ActionRequest | DecisionData | engine.EndedRun) -> tuple[str, str, str, str]:
    rid = (item.run_id if isinstance(item, engine.EndedRun) else item.sensor_run_id) or ""
    key = f"{_runs_prefix(item.namespace, item.axon, item.sensor)}.{subjects.token(rid)}"
    return item.namespace, item.axon, item.sensor, key


@functools.lru_cache(maxsize=65536)
def _runs_prefix(namespace: str, axon: str, sensor: str) -> str:
    """`kv_key("sensor", namespace, axon, sensor)`: the start of its runs' record keys."""
    return kv_key("sensor", namespace, axon, sensor)


__all__ = ["RUN_RECORDS_KEPT", "RunRecordStore"]
