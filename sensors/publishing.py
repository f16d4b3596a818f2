"""What the engine publishes, encoded without a second validation: action requests, decision
records, tick ids, and the one-ack-per-batch publishing of the streams only engines write."""

from __future__ import annotations

import asyncio
import functools
import json
from typing import Final

import structlog

from events import subjects
from events.bus import Outgoing
from events.model import (
    ACTION,
    DECISION,
    ActionRequest,
    DecisionData,
    TickData,
    format_time,
)
from sensors.port import EngineBus

log = structlog.get_logger(__name__)

SOURCE: Final = "ranvier/engine"
_MAX_ID: Final = 128
DECISIONS: Final = subjects.DECISIONS_STREAM


def tick_id(tick: TickData) -> str:
    """The event id of a tick: the same Axon and deadline give the same id."""
    return event_id("tick", f"{tick.namespace}.{tick.axon}.{format_time(tick.due)}", 0)


def event_id(prefix: str, base: str, index: int) -> str:
    """A deterministic message id from a base id; hashed when it would be too long."""
    text = f"{prefix}-{base}-{index}"
    if len(text) <= _MAX_ID:
        return text
    import hashlib  # local: only long ids need it

    return f"{prefix}-{hashlib.blake2b(text.encode(), digest_size=20).hexdigest()}"


_quote: Final = json.encoder.encode_basestring_ascii  # the C helper json.dumps uses for a str


def _envelope(ev_id: str, type_: str, subject_attr: str, time: str, data_json: bytes) -> bytes:
    """CloudEvents JSON, byte for byte what `Event.to_json()` gives for these fields.

    Built directly because pydantic validating and re-serialising an envelope per record was
    most of the cost of publishing decisions (see bench/engine.py).
    """
    head = (
        f'{{"specversion":"1.0","id":{_quote(ev_id)},"source":"{SOURCE}",'
        f'"type":"{type_}","subject":{_quote(subject_attr)},"time":"{time}",'
        '"datacontenttype":"application/json","data":'
    )
    return head.encode() + data_json + b"}"


@functools.lru_cache(maxsize=65536)
def _action_subject(axon: str, kind: str) -> str:
    return subjects.action_subject(axon, kind)


@functools.lru_cache(maxsize=65536)
def _decision_subject(axon: str, sensor: str) -> str:
    return subjects.decision_subject(axon, sensor)


def encode_action(action: ActionRequest, time: str) -> Outgoing:
    """An action request as published: id and Nats-Msg-Id = its idempotency key."""
    key = action.idempotency_key
    data = action.model_dump_json(exclude_none=True).encode()
    return Outgoing(
        _action_subject(action.axon, action.kind),
        _envelope(key, ACTION, action.task, time, data),
        key,
    )


def decision_event(decision: DecisionData, ev_id: str, time: str) -> Outgoing:
    """A decision record as published on `ranvier.dec.<axon>.<sensor>`."""
    data = decision.model_dump_json(exclude_none=True).encode()
    return Outgoing(
        _decision_subject(decision.axon, decision.sensor),
        _envelope(ev_id, DECISION, decision.sensor, time, data),
        ev_id,
    )


class Records:
    """Publishes the records of every partition a process holds.

    Action requests and decision records go to streams that only engines write; while this
    process holds every partition (`sole`), it is their only writer, and one ack per batch
    will do (`Bus.publish_tail_acked`); the lock keeps its partitions' batches from
    interleaving on a stream, which would break that check. Otherwise each record gets its
    own ack.
    """

    def __init__(self, bus: EngineBus) -> None:
        self._bus = bus
        self.sole = True
        self._last: dict[str, int | None] = {subjects.ACTIONS_STREAM: None, DECISIONS: None}
        self._locks = {stream: asyncio.Lock() for stream in self._last}

    async def tail(self, stream: str, items: list[Outgoing], window: int) -> None:
        if not items:
            return
        async with self._locks[stream]:
            last = self._last[stream] if self.sole else None
            self._last[stream] = None  # unknown until the publish returns
            self._last[stream] = await self._bus.publish_tail_acked(
                items, last_seq=last, max_in_flight=window
            )
