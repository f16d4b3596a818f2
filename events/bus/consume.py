"""Consuming: durable pull consumers in batches, ordered replay, following a stream live."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import time
from collections.abc import (
    AsyncGenerator,
)
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import nats
import nats.errors
import nats.js.errors
import structlog
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import api

from events import subjects
from events.aio import checkpoint
from events.bus.core import RETRYABLE, TOPOLOGY_PATIENCE, BusError, NoAnswerError
from events.bus.publish import BusPublishing
from events.model import Event, EventError

log = structlog.get_logger(__name__)


class Received:
    """A message delivered by a durable consumer, with its event parsed on first use."""

    __slots__ = ("_error", "_event", "_meta", "_parsed", "_seq", "msg")

    def __init__(self, msg: Msg) -> None:
        self.msg = msg
        self._parsed = False
        self._event: Event | None = None
        self._error: EventError | None = None
        self._meta: Msg.Metadata | None = None
        self._seq = 0

    def _parse(self) -> None:
        if not self._parsed:
            try:
                self._event = Event.from_json(self.msg.data, stored_at=self._stored_at)
            except EventError as exc:
                self._error = exc
            self._parsed = True

    def _stored_at(self) -> datetime:
        return self.timestamp

    @property
    def event(self) -> Event | None:
        """The event, or None when the message is not a valid event (see `error`)."""
        self._parse()
        return self._event

    @property
    def error(self) -> EventError | None:
        """Why the message is not a valid event, if it is not."""
        self._parse()
        return self._error

    @property
    def data(self) -> bytes:
        """The raw bytes as stored."""
        return bytes(self.msg.data)

    @property
    def subject(self) -> str:
        """The subject it was published on."""
        return str(self.msg.subject)

    @property
    def metadata(self) -> Msg.Metadata:
        """JetStream metadata (sequences, deliveries, timestamp), parsed once."""
        if self._meta is None:
            self._meta = self.msg.metadata
        return self._meta

    @property
    def seq(self) -> int:
        """Stream sequence number.

        Read straight from the reply subject: `$JS.ACK.<stream>.<consumer>.<delivered>.<seq>...`
        (9 tokens), or with domain and account hash before the stream (12 or more). The engine
        reads it for every event; nats-py's full `metadata` (a datetime, two dataclasses) was
        5% of the engine runtime's time (bench/engine.py).
        """
        if not self._seq:
            tokens = (self.msg.reply or "").split(".", 8)
            if len(tokens) == 9 and tokens[0] == "$JS" and tokens[1] == "ACK":
                tail = tokens[8]
                if tail.count(".") == 0:  # the 9-token form: tokens[5] is the stream sequence
                    self._seq = int(tokens[5])
            if not self._seq:  # any other form: nats-py knows them all
                self._seq = int(self.metadata.sequence.stream)
        return self._seq

    @property
    def num_delivered(self) -> int:
        """How many times it was delivered (more than 1 means a redelivery)."""
        return int(self.metadata.num_delivered)

    @property
    def timestamp(self) -> datetime:
        """When the server stored it."""
        stamp: datetime = self.metadata.timestamp
        return stamp

    async def ack(self) -> None:
        """Done with it: never deliver again."""
        await self.msg.ack()

    async def nak(self, delay: float | None = None) -> None:
        """Not done: deliver again (after `delay` seconds)."""
        await self.msg.nak(delay=delay)

    async def term(self) -> None:
        """Give up on it: never deliver again, without having processed it."""
        await self.msg.term()

    async def in_progress(self) -> None:
        """Still working on it: restart its ack timer."""
        await self.msg.in_progress()


@dataclass(frozen=True)
class Replayed:
    """One event read by `Bus.replay`: stream sequence, stored bytes, parsed event."""

    seq: int
    raw: bytes
    event: Event
    stored: datetime


class Consumer:
    """A durable pull consumer on one stream; `fetch()` returns batches of `Received`.

    Pull requests are made here rather than with nats-py's `PullSubscription.fetch`, which
    spends a task, a uuid and a wait_for on every message (most of its cost, see
    bench/bus.py). The protocol is JetStream's own: a request to `CONSUMER.MSG.NEXT` with a
    reply inbox; messages arrive on the inbox, and a status message (404 no messages, 408
    expired, 409 ...) ends a request that was not filled. Each request here ends on its own
    (a `no_wait` request, or a lingering one for a single message), so no status is ever
    mistaken for another request's.
    """

    def __init__(
        self,
        nc: Client,
        *,
        stream: str,
        durable: str,
        registry: set[Any] | None = None,
        prefix: str = api.DEFAULT_PREFIX,
    ) -> None:
        self._nc = nc
        self._registry = registry
        self.stream = stream
        self.durable = durable
        self._next_subject = f"{prefix}.CONSUMER.MSG.NEXT.{stream}.{durable}"
        self._info_subject = f"{prefix}.CONSUMER.INFO.{stream}.{durable}"
        self._sub: Any = None
        self._inbox = ""
        self._msgs: collections.deque[Msg] = collections.deque()
        self._ended = False  # the current request got its status
        self._arrived = asyncio.Event()

    async def _listen(self) -> None:
        """(Re)subscribe to a fresh inbox; replies to abandoned requests then go nowhere."""
        if self._sub is not None:
            with contextlib.suppress(nats.errors.Error):
                await self._sub.unsubscribe()
            if self._registry is not None:
                self._registry.discard(self._sub)
        self._inbox = self._nc.new_inbox()
        self._sub = await self._nc.subscribe(self._inbox, cb=self._on_msg)
        if self._registry is not None:
            self._registry.add(self._sub)

    async def _on_msg(self, msg: Msg) -> None:
        status = msg.headers.get(api.Header.STATUS) if msg.headers else None
        if status is None:
            self._msgs.append(msg)
        elif status != "100":  # 100: heartbeat; anything else ends the request
            self._ended = True
            if status not in ("404", "408"):
                desc = msg.headers.get(api.Header.DESCRIPTION) if msg.headers else None
                log.warning("bus.pull_status", consumer=self.durable, status=status, desc=desc)
        self._arrived.set()

    async def _request(self, batch: int, *, expires: float | None) -> bool:
        """One pull request; True if it ended (filled or by status) within its time."""
        want = len(self._msgs) + batch
        self._ended = False
        req: dict[str, Any] = {"batch": batch}
        if expires is None:
            req["no_wait"] = True
        else:
            req["expires"] = int(expires * 1e9)
        await self._nc.publish(self._next_subject, json.dumps(req).encode(), reply=self._inbox)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + (expires or 0) + 2.0  # the server answers well within this
        while len(self._msgs) < want and not self._ended:
            self._arrived.clear()
            left = deadline - loop.time()
            if left <= 0:
                return False
            try:
                async with asyncio.timeout(left):  # not wait_for: see events/aio.py
                    await self._arrived.wait()
            except TimeoutError:
                return False
        return True

    async def fetch(self, batch: int = 100, wait: float = 1.0) -> list[Received]:
        """Up to `batch` messages; an empty list if none came within `wait` seconds."""
        if self._sub is None:
            await self._listen()
        if not self._msgs:
            ok = await self._request(batch, expires=None)
            if ok and not self._msgs and wait > 0:
                ok = await self._request(1, expires=wait)
                if ok and self._msgs and batch > 1:
                    ok = await self._request(batch - 1, expires=None)
            if not ok:  # no answer (a reconnect?): late replies must not reach the next fetch
                await self._listen()
        out: list[Received] = []
        while self._msgs and len(out) < batch:
            out.append(Received(self._msgs.popleft()))
        return out

    async def num_pending(self) -> int:
        """Messages matching the filter not yet delivered to this consumer."""
        reply = await self._nc.request(self._info_subject, b"", timeout=5)
        info = json.loads(reply.data)
        if "error" in info:
            raise nats.js.errors.APIError.from_error(info["error"])
        return int(info.get("num_pending") or 0)

    async def close(self) -> None:
        """Stop fetching (the durable consumer stays on the server)."""
        if self._sub is None:
            return
        if self._registry is not None:
            self._registry.discard(self._sub)
        with contextlib.suppress(nats.errors.Error):
            await self._sub.unsubscribe()
        self._sub = None


class BusConsuming(BusPublishing):
    """Durable consumers, replay and follow."""

    # -- consuming ---------------------------------------------------------------------------

    async def consumer(
        self,
        stream: str,
        durable: str,
        *,
        filter_subject: str | None = None,
        ack_wait: float = 30.0,
        max_deliver: int = -1,
        max_ack_pending: int = 10_000,
        deliver_from: int | datetime | None = None,
    ) -> Consumer:
        """Create (or bind to) a durable pull consumer with explicit acks."""
        config = api.ConsumerConfig(
            durable_name=durable,
            ack_policy=api.AckPolicy.EXPLICIT,
            ack_wait=ack_wait,
            max_deliver=max_deliver,
            max_ack_pending=max_ack_pending,
            filter_subject=filter_subject,
            **_deliver_policy(deliver_from),
        )
        # A stream whose leader just died answers nothing until its servers have elected
        # another (seconds): a process starting then waits rather than fails.
        deadline = time.monotonic() + min(self.options.publish_retry_for, TOPOLOGY_PATIENCE)
        attempt = 0
        while True:
            attempt += 1
            try:
                await self._bind_or_add(stream, durable, config)
                break
            except RETRYABLE as exc:
                if time.monotonic() >= deadline:
                    raise NoAnswerError(
                        f"JetStream does not answer for stream {stream!r} on {self.url}",
                        hint="is a majority of the cluster's servers up?",
                    ) from None
                log.info("bus.consumer_retry", durable=durable, attempt=attempt, error=repr(exc))
                await asyncio.sleep(min(0.2 * attempt, 1.0))
        return Consumer(self.nc, stream=stream, durable=durable, registry=self._open_subs)

    async def _bind_or_add(self, stream: str, durable: str, config: api.ConsumerConfig) -> None:
        """Bind to durable consumer `durable` if it exists, else create it with `config`."""
        try:
            try:
                await self.js.consumer_info(stream, durable)
            except nats.js.errors.NotFoundError as exc:
                if exc.err_code == 10059:  # the stream itself does not exist
                    raise
                await self.js.add_consumer(stream, config)
        except nats.js.errors.ServiceUnavailableError:
            raise  # no leader yet: retried by the caller
        except nats.js.errors.NotFoundError:
            raise BusError(f"no stream named {stream!r} on {self.url}") from None
        except nats.js.errors.APIError as exc:
            raise BusError(f"cannot create consumer {durable!r}: {exc.description}") from None

    async def ack_floor(self, stream: str, durable: str) -> int | None:
        """The last stream sequence durable consumer `durable` has acked up to (0: none yet),
        or None when there is no such consumer."""
        try:
            info = await self.js.consumer_info(stream, durable)
        except nats.js.errors.NotFoundError:
            return None
        return info.ack_floor.stream_seq if info.ack_floor is not None else 0

    async def restart_consumer(
        self,
        stream: str,
        durable: str,
        *,
        start: int,
        filter_subject: str,
        ack_wait: float,
        max_ack_pending: int,
    ) -> Consumer:
        """Create durable consumer `durable` afresh, delivering from sequence `start` with
        ack-all (acking a message acks every earlier one); an existing one is deleted first.

        Unacked messages of a dead process would come back only after their ack wait, behind
        newer ones; a fresh consumer from the ack floor brings them back in order.
        """
        with contextlib.suppress(nats.js.errors.NotFoundError):
            await self.js.delete_consumer(stream, durable)
        config = api.ConsumerConfig(
            durable_name=durable,
            ack_policy=api.AckPolicy.ALL,
            ack_wait=ack_wait,
            max_ack_pending=max_ack_pending,
            deliver_policy=api.DeliverPolicy.BY_START_SEQUENCE,
            opt_start_seq=start,
            filter_subject=filter_subject,
        )
        await self.js.add_consumer(stream, config)
        return Consumer(self.nc, stream=stream, durable=durable, registry=self._open_subs)

    async def consumer_backlog(self, stream: str, durable: str) -> int | None:
        """Messages durable consumer `durable` has not delivered or not had acked yet, or None
        when there is no such consumer."""
        try:
            info = await self.js.consumer_info(stream, durable)
        except nats.js.errors.NotFoundError:
            return None
        return int(info.num_pending or 0) + int(info.num_ack_pending or 0)

    async def stored_subjects(self, stream: str, filter_subject: str) -> list[str]:
        """The subjects stream `stream` holds messages on, among those matching the filter."""
        info = await self.js.stream_info(stream, subjects_filter=filter_subject)
        return sorted(info.state.subjects or {})

    async def consume(
        self,
        stream: str,
        durable: str,
        *,
        filter_subject: str | None = None,
        batch: int = 100,
        max_wait: float = 1.0,
        ack_wait: float = 30.0,
        max_deliver: int = -1,
        yield_empty: bool = False,
        stop_when_empty: bool = False,
    ) -> AsyncGenerator[list[Received], None]:
        """Yield batches from a durable consumer until the caller stops iterating.

        Each message must be acked, nak'ed or term'ed by the caller. `yield_empty` yields `[]`
        after `max_wait` seconds without messages (for idle work); `stop_when_empty` ends the
        iteration at the first such pause instead.
        """
        consumer = await self.consumer(
            stream,
            durable,
            filter_subject=filter_subject,
            ack_wait=ack_wait,
            max_deliver=max_deliver,
        )
        try:
            while True:
                checkpoint()  # see events/aio.py
                got = await consumer.fetch(batch, wait=max_wait)
                if got or yield_empty:
                    yield got
                if not got and stop_when_empty:
                    return
        finally:
            await consumer.close()

    # -- replay ------------------------------------------------------------------------------

    async def replay(
        self,
        *,
        since: int | datetime | None = None,
        until: datetime | None = None,
        filter_subject: str | None = None,
        stream: str = subjects.EVENTS_STREAM,
        idle: float = 2.0,
    ) -> AsyncGenerator[Replayed, None]:
        """Read stored events in order, from `since` (a stream sequence or a store time).

        Ends at the last message the stream held when the replay began (or at `until`,
        compared with the time the server stored each message). Messages that are not valid
        events are skipped with a warning.
        """
        info = await self.stream_info(stream)
        last = int(info.state.last_seq or 0)
        if not info.state.messages or (isinstance(since, int) and since > last):
            return
        config = api.ConsumerConfig(**_deliver_policy(since))
        sub = await self.js.subscribe(
            filter_subject or _stream_subjects(stream),
            stream=stream,
            ordered_consumer=True,
            config=config,
            idle_heartbeat=idle,
        )
        self._open_subs.add(sub)
        try:
            start = await sub.consumer_info()
            if not start.num_pending and not (start.delivered and start.delivered.consumer_seq):
                return  # nothing matches (what was delivered already waits in our queue)
            while True:
                try:
                    msg = await sub.next_msg(timeout=idle * 2)
                except nats.errors.TimeoutError:
                    if not (await sub.consumer_info()).num_pending:
                        return
                    continue
                meta = msg.metadata
                seq = int(meta.sequence.stream)
                if seq > last or (until is not None and meta.timestamp > until):
                    return
                raw = bytes(msg.data)
                try:
                    event = Event.from_json(raw, stored_at=meta.timestamp)
                except EventError as exc:
                    log.warning("bus.replay_skipped", seq=seq, error=str(exc))
                else:
                    yield Replayed(seq, raw, event, meta.timestamp)
                if seq >= last or meta.num_pending == 0:
                    return
        finally:
            self._open_subs.discard(sub)
            with contextlib.suppress(nats.errors.Error):
                await sub.unsubscribe()

    async def follow(
        self,
        *,
        since: int | datetime | None = None,
        filter_subject: str | None = None,
        stream: str = subjects.EVENTS_STREAM,
    ) -> AsyncGenerator[Replayed, None]:
        """Events as they arrive (from `since`, else only new ones), until the caller stops."""
        policy = (
            {"deliver_policy": api.DeliverPolicy.NEW} if since is None else _deliver_policy(since)
        )
        sub = await self.js.subscribe(
            filter_subject or _stream_subjects(stream),
            stream=stream,
            ordered_consumer=True,
            config=api.ConsumerConfig(**policy),
        )
        self._open_subs.add(sub)
        try:
            while True:
                checkpoint()
                try:
                    msg = await sub.next_msg(timeout=None)
                except nats.errors.TimeoutError:
                    continue
                meta = msg.metadata
                raw = bytes(msg.data)
                try:
                    event = Event.from_json(raw, stored_at=meta.timestamp)
                except EventError as exc:
                    log.warning("bus.follow_skipped", seq=meta.sequence.stream, error=str(exc))
                    continue
                yield Replayed(int(meta.sequence.stream), raw, event, meta.timestamp)
        finally:
            self._open_subs.discard(sub)
            with contextlib.suppress(nats.errors.Error):
                await sub.unsubscribe()


def _stream_subjects(stream: str) -> str:
    """The subject filter that covers a whole ranvier stream."""
    return {
        subjects.EVENTS_STREAM: subjects.STORED_EVENTS,
        subjects.ACTIONS_STREAM: subjects.ACTIONS_SUBJECTS,
        subjects.DECISIONS_STREAM: subjects.DECISIONS_SUBJECTS,
    }.get(stream, ">")


def _deliver_policy(since: int | datetime | None) -> dict[str, Any]:
    if since is None:
        return {"deliver_policy": api.DeliverPolicy.ALL}
    if isinstance(since, datetime):
        return {"deliver_policy": api.DeliverPolicy.BY_START_TIME, "opt_start_time": since}
    return {"deliver_policy": api.DeliverPolicy.BY_START_SEQUENCE, "opt_start_seq": max(since, 1)}
