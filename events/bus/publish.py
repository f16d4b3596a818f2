"""Publishing with `Nats-Msg-Id`: one at a time, pipelined, or with one ack for a batch."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import (
    Callable,
    Iterable,
    Sequence,
)

import nats
import nats.errors
import nats.js.errors
import structlog
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import api

from events.bus.connection import Callbacks
from events.bus.core import (
    MSG_ID,
    RETRYABLE,
    BusError,
    ConnectOptions,
    Outgoing,
    Published,
    StreamLimits,
    subject_of,
)
from events.bus.topology import BusTopology
from events.model import Event

log = structlog.get_logger(__name__)


class BusPublishing(BusTopology):
    """Publishing, retried through outages with the same Msg-Id (stored once)."""

    def __init__(
        self,
        nc: Client,
        options: ConnectOptions,
        limits: StreamLimits,
        callbacks: Callbacks | None = None,
    ) -> None:
        super().__init__(nc, options, limits, callbacks)
        self._acks = _AckRouter(nc)

    # -- publishing --------------------------------------------------------------------------

    def outgoing(self, event: Event, *, subject: str | None = None) -> Outgoing:
        """Encode an event for publishing (refusing oversized ones); subject from its type."""
        data = event.encode(self.max_payload)
        return Outgoing(subject or subject_of(event), data, event.id)

    async def publish(
        self, event: Event, *, msg_id: str | None = None, subject: str | None = None
    ) -> Published:
        """Publish one event and wait for the stream's ack (retrying with the same Msg-Id)."""
        item = self.outgoing(event, subject=subject)
        if msg_id is not None:
            item = item._replace(msg_id=msg_id)
        return await self.publish_encoded(item)

    async def publish_encoded(self, item: Outgoing) -> Published:
        """Publish one already-encoded message, retrying through outages."""
        deadline = time.monotonic() + self.options.publish_retry_for
        attempt = 0
        while True:
            attempt += 1
            try:
                ack = await self.js.publish(
                    item.subject,
                    item.data,
                    timeout=self.options.request_timeout,
                    headers={MSG_ID: item.msg_id},
                )
                return Published(ack.stream, ack.seq, bool(ack.duplicate))
            except RETRYABLE as exc:
                if time.monotonic() >= deadline:
                    raise self._publish_failed(1, exc) from None
                log.info("bus.publish_retry", msg_id=item.msg_id, attempt=attempt, error=repr(exc))
                await asyncio.sleep(min(0.05 * attempt, 1.0))
            except nats.js.errors.APIError as exc:
                raise BusError(f"cannot publish to {item.subject}: {exc.description}") from None

    async def publish_many(
        self, events: Iterable[Event], *, max_in_flight: int = 256
    ) -> list[Published]:
        """Publish events concurrently (bounded); all are encoded and checked first."""
        items = [self.outgoing(ev) for ev in events]
        return await self.publish_many_encoded(items, max_in_flight=max_in_flight)

    async def publish_many_encoded(
        self, items: Sequence[Outgoing], *, max_in_flight: int = 256
    ) -> list[Published]:
        """Publish encoded messages with at most `max_in_flight` unacknowledged.

        Acks come back through one inbox subscription (`_AckRouter`). A message whose ack fails
        with a retryable error, or does not come within the request timeout (a reconnect lost
        it), is published again in a later round with the same Msg-Id, so the stream stores it
        once.
        Order is kept within a round; a retried message lands after the ones that went through.
        """
        results: list[Published | None] = [None] * len(items)
        todo = list(range(len(items)))
        deadline = time.monotonic() + self.options.publish_retry_for
        last_error: BaseException | None = None
        timeout = self.options.request_timeout
        while todo:
            round_ = _PublishRound(
                nc=self.nc,
                router=self._acks,
                items=items,
                results=results,
                max_in_flight=max_in_flight,
                timeout=timeout,
            )
            failed = await round_.run(todo)
            if not failed:
                break
            last_error = failed[1]
            if time.monotonic() >= deadline:
                raise self._publish_failed(len(failed[0]), last_error)
            log.info("bus.publish_retry", count=len(failed[0]), error=repr(last_error))
            todo = failed[0]
            await asyncio.sleep(0.1)
        return [r for r in results if r is not None]

    async def publish_tail_acked(
        self, items: Sequence[Outgoing], *, last_seq: int | None, max_in_flight: int = 1024
    ) -> int | None:
        """Publish to a stream this process alone writes to, asking an ack of the last only.

        `last_seq` is the stream's last sequence before these messages, as the previous call
        returned it (None: not known). The server stores one connection's messages to a stream
        in the order they were sent, so when the last message's ack says it was stored at
        `last_seq + len(items)`, every one of them was stored, once: a message lost (an outage,
        a stream leader changing) or found to be a duplicate would have left a gap, and nothing
        else writes there. Otherwise, or when `last_seq` is not known, all of them are published
        again with an ack each (`publish_many_encoded`; their Msg-Ids make that store nothing
        twice). Returns the stream's last sequence afterwards, None when it is not known.

        One ack per call instead of one per message: the engine runtime's action requests and
        decision records (about 1.4 per event) made most of its acks (bench/engine.py).
        """
        if not items:
            return last_seq
        stored: list[int] = []
        if last_seq is not None and len(items) > 1:
            for item in items[:-1]:
                await self.nc.publish(item.subject, item.data, headers={MSG_ID: item.msg_id})
            [ack] = await self.publish_many_encoded(items[-1:])
            if not ack.duplicate and ack.seq == last_seq + len(items):
                return ack.seq
            if not ack.duplicate:
                stored.append(ack.seq)
            log.info(
                "bus.tail_ack_gap", stream=ack.stream, expected=last_seq + len(items), got=ack.seq
            )
        acks = await self.publish_many_encoded(items, max_in_flight=max_in_flight)
        stored += [a.seq for a in acks if not a.duplicate]
        return max(stored) if stored else None

    def _publish_failed(self, count: int, exc: BaseException | None) -> BusError:
        return BusError(
            f"could not publish {count} message(s) to {self.url} within "
            f"{self.options.publish_retry_for:g}s: {exc!r}",
            hint="is the server running and JetStream enabled?",
        )


AckHandler = Callable[[int, Published | None, BaseException | None], None]


class _AckRouter:
    """Publish acks for pipelined publishes, through one wildcard inbox subscription.

    nats-py's `publish_async` makes a Future, a wait_for and a PubAck dataclass per message;
    at tens of thousands of messages per second that is most of the client's cost. Here each
    publish carries a reply subject `<inbox>.<n>` and its ack calls a plain callback, which is
    what the JetStream protocol needs and nothing more. nats-py re-subscribes the inbox after a
    reconnect; acks lost in an outage are handled by the caller's timeout and retry.
    """

    def __init__(self, nc: Client) -> None:
        self._nc = nc
        self._prefix = ""
        self._next = 0
        self._handlers: dict[str, tuple[AckHandler, int]] = {}

    async def start(self) -> None:
        """Subscribe to the ack inbox (once)."""
        if not self._prefix:
            prefix = f"{self._nc.new_inbox()}."
            await self._nc.subscribe(f"{prefix}*", cb=self._on_ack)
            self._prefix = prefix

    def expect(self, handler: AckHandler, index: int) -> tuple[str, str]:
        """A fresh reply subject whose ack goes to `handler(index, ...)`; returns (token, reply)."""
        self._next += 1
        token = str(self._next)
        self._handlers[token] = (handler, index)
        return token, self._prefix + token

    def forget(self, token: str) -> None:
        """Stop waiting for an ack (a late one is then ignored)."""
        self._handlers.pop(token, None)

    async def _on_ack(self, msg: Msg) -> None:
        entry = self._handlers.pop(msg.subject[len(self._prefix) :], None)
        if entry is None:
            return
        handler, index = entry
        published, error = _parse_ack(msg)
        handler(index, published, error)


def _parse_ack(msg: Msg) -> tuple[Published | None, BaseException | None]:
    """A JetStream publish ack: the stored position, or the error the server gave."""
    if msg.headers and msg.headers.get(api.Header.STATUS) == "503":
        return None, nats.js.errors.NoStreamResponseError()
    try:
        resp = json.loads(msg.data)
    except ValueError:
        return None, nats.errors.Error(f"bad publish ack: {msg.data[:80]!r}")
    if "error" in resp:
        return None, nats.js.errors.APIError.from_error(resp["error"])
    return Published(resp["stream"], int(resp["seq"]), bool(resp.get("duplicate", False))), None


class _PublishRound:
    """One pass of `publish_many_encoded` over the messages still to publish."""

    def __init__(
        self,
        *,
        nc: Client,
        router: _AckRouter,
        items: Sequence[Outgoing],
        results: list[Published | None],
        max_in_flight: int,
        timeout: float,
    ) -> None:
        self.nc = nc
        self.router = router
        self.items = items
        self.results = results
        self.timeout = timeout
        self.free = max_in_flight
        # Wake the publisher when a quarter of the window is free, not on every ack: one
        # wake-up per burst instead of one per message.
        self.low_water = max(1, max_in_flight // 4)
        self.wake_at = 1
        self.waiter: asyncio.Future[None] | None = None
        self.inflight: dict[str, int] = {}  # ack token -> item index
        self.tokens: dict[int, str] = {}  # item index -> ack token
        self.retry: list[int] = []
        self.errors: list[BaseException] = []
        self.fatal: list[BaseException] = []

    def settle(self, index: int, published: Published | None, error: BaseException | None) -> None:
        """Ack callback: record the position, or queue a retry, and free a window slot."""
        token = self.tokens.pop(index, None)
        if token is None:
            return
        del self.inflight[token]
        if published is not None:
            self.results[index] = published
        elif isinstance(error, RETRYABLE):
            self.retry.append(index)
            self.errors.append(error)
        else:
            self.fatal.append(error or RuntimeError("publish failed"))
        self.free += 1
        if self.free >= self.wake_at and self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)

    def give_up_on_inflight(self) -> None:
        """Acks that did not come are presumed lost: forget them and queue them again."""
        self.errors.append(TimeoutError(f"no ack within {self.timeout}s"))
        for token, index in self.inflight.items():
            self.router.forget(token)
            self.retry.append(index)
        self.free += len(self.inflight)
        self.inflight.clear()
        self.tokens.clear()

    async def wait_for_acks(self, *, all_of_them: bool) -> None:
        """Wait for a free slot (or for every ack); a window stuck for `timeout` is reset."""
        while self.inflight and (all_of_them or self.free <= 0):
            self.wake_at = self.free + len(self.inflight) if all_of_them else self.low_water
            self.waiter = asyncio.get_running_loop().create_future()
            try:
                async with asyncio.timeout(self.timeout):
                    await self.waiter
            except TimeoutError:
                self.give_up_on_inflight()
            finally:
                self.waiter = None

    async def run(self, todo: list[int]) -> tuple[list[int], BaseException] | None:
        """Publish `todo`; returns the indexes to retry and the last error, if any."""
        await self.router.start()
        for pos, i in enumerate(todo):
            if self.fatal:
                break
            if self.free <= 0:
                await self.wait_for_acks(all_of_them=False)
            item = self.items[i]
            token, reply = self.router.expect(self.settle, i)
            self.inflight[token] = i
            self.tokens[i] = token
            self.free -= 1
            try:
                await self.nc.publish(
                    item.subject, item.data, reply=reply, headers={MSG_ID: item.msg_id}
                )
            except nats.errors.Error as exc:
                self.errors.append(exc)
                self.give_up_on_inflight()
                self.retry.extend(todo[pos + 1 :])
                break
        await self.wait_for_acks(all_of_them=True)
        if self.fatal:
            first = self.fatal[0]
            desc = getattr(first, "description", None) or repr(first)
            raise BusError(f"cannot publish: {desc}")
        if self.retry:
            return sorted(set(self.retry)), self.errors[-1] if self.errors else TimeoutError("lost")
        return None
