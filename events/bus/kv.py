"""Key-value buckets: reads and writes retried through outages, create and compare-and-set
with a definite answer, exact key listing and watching."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import (
    AsyncGenerator,
    Awaitable,
    Callable,
)
from typing import NamedTuple

import nats
import nats.errors
import nats.js.errors
import structlog
from nats.js import api

from events.bus.connection import BusConnection
from events.bus.consume import BusConsuming
from events.bus.core import (
    KEYS_INACTIVE,
    KV_KEY_PATTERN,
    MSG_ID,
    RETRYABLE,
    WATCH_INACTIVE,
    WRONG_LAST_SEQUENCE,
    RevisionMismatch,
    T,
)

log = structlog.get_logger(__name__)


class BusKeyValue(BusConsuming):
    """KV reads, writes, listing and watching."""

    # -- key-value ---------------------------------------------------------------------------

    async def kv_get(self, bucket: str, key: str) -> tuple[bytes, int] | None:
        """The value and revision of `key`, or None if it does not exist (or was deleted).

        Retried through outages (a stream leader changing, a reconnect), as writes are.
        """
        kv = await self._bucket(bucket)
        try:
            entry = await self._retrying(lambda: kv.get(key), bucket=bucket, key=key)
        except nats.js.errors.KeyNotFoundError:
            return None
        return bytes(entry.value or b""), int(entry.revision or 0)

    async def _retrying(self, call: Callable[[], Awaitable[T]], *, bucket: str, key: str) -> T:
        """`call()` (a KV read) made again through outages (see `_Patience`)."""
        patience = _Patience(self)
        attempt = 0
        while True:
            attempt += 1
            try:
                return await call()
            except RETRYABLE as exc:
                if patience.over():
                    raise  # as without retrying: the caller knows this error
                log.info("bus.kv_retry", bucket=bucket, key=key, attempt=attempt, error=repr(exc))
                await asyncio.sleep(min(0.05 * attempt, 1.0))

    async def kv_put(self, bucket: str, key: str, value: bytes) -> int:
        """Set `key` unconditionally; returns the new revision.

        Retried through outages with one `Nats-Msg-Id`, so a put whose answer was lost is
        stored once (see `_kv_write`).
        """
        revision, _ = await self._kv_write(bucket, key, value, expected=None)
        return revision or 0  # never None: nothing was expected, so nothing refused

    async def kv_create(self, bucket: str, key: str, value: bytes) -> int | None:
        """Create `key` only if absent (or deleted): the revision if we won, None if it existed.

        A definite answer even across a stream leader's crash (see `_kv_write`); None also means
        the winner's value can be read now.
        """
        revision, last = await self._kv_write(bucket, key, value, expected=0, read_last=True)
        if revision is None and last is not None and _kv_deleted(last):
            revision, _ = await self._kv_write(bucket, key, value, expected=int(last.seq or 0))
        return revision

    async def kv_update(self, bucket: str, key: str, value: bytes, last_revision: int) -> int:
        """Compare-and-set: write only if `key` is at `last_revision` (else `RevisionMismatch`).

        A definite answer even across a stream leader's crash (see `_kv_write`).
        """
        revision, _ = await self._kv_write(bucket, key, value, expected=last_revision)
        if revision is None:
            raise RevisionMismatch(bucket, key, last_revision)
        return revision

    async def _kv_write(
        self,
        bucket: str,
        key: str,
        value: bytes,
        *,
        expected: int | None,
        read_last: bool = False,
    ) -> tuple[int | None, api.RawStreamMsg | None]:
        """Write `key` if its last revision is `expected` (0: none; None: whatever it is);
        (new revision, None) if it was, else (None, the key's last message as the stream's
        leader has it, when it was read: with `read_last`, or after a retry).

        On a replicated bucket a write's answer can be lost while the write itself is stored (the
        leader crashed after committing it), and asking again is refused: the key moved on. So
        the write is retried through outages with one `Nats-Msg-Id`, and a refusal after such a
        retry is checked against the key's last message: our Msg-Id there means we won. (The
        server checks the expected revision before duplicates, so the Msg-Id alone cannot tell.)
        A refusal can also come while the winning write is still being replicated, before the
        leader can read it back; the last message is awaited (a few seconds at most) so that a
        loser can read the winner's value as soon as it is told it lost.
        """
        if not KV_KEY_PATTERN.match(key) or key.startswith(".") or key.endswith("."):
            raise nats.js.errors.InvalidKeyError(description=f"invalid KV key {key!r}")
        await self._bucket(bucket)  # the bucket must exist (created here if not)
        subject = f"$KV.{bucket}.{key}"
        msg_id = uuid.uuid4().hex
        headers = {MSG_ID: msg_id}
        if expected is not None:
            headers[api.Header.EXPECTED_LAST_SUBJECT_SEQUENCE] = str(expected)
        patience = _Patience(self)
        attempt = 0
        while True:
            attempt += 1
            try:
                ack = await self.js.publish(
                    subject, value, timeout=self.options.request_timeout, headers=headers
                )
                return int(ack.seq), None
            except RETRYABLE as exc:
                if patience.over():
                    raise  # as without retrying: the caller knows this error
                log.info("bus.kv_retry", bucket=bucket, key=key, attempt=attempt, error=repr(exc))
                await asyncio.sleep(min(0.05 * attempt, 1.0))
            except nats.js.errors.APIError as exc:
                if exc.err_code not in WRONG_LAST_SEQUENCE:
                    raise
                break
        if attempt == 1 and not read_last:
            return None, None
        last = await self._kv_last(bucket, key)
        if attempt > 1 and last is not None and (last.headers or {}).get(MSG_ID) == msg_id:
            log.info("bus.kv_retry_stored", bucket=bucket, key=key, revision=last.seq)
            return int(last.seq or 0), None
        return None, last

    async def _kv_last(self, bucket: str, key: str) -> api.RawStreamMsg | None:
        """The last message of `key` in its bucket's stream, waiting briefly for one that was
        accepted but is not readable yet (None if none shows)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.options.request_timeout
        stream, subject = f"KV_{bucket}", f"$KV.{bucket}.{key}"
        while True:
            try:
                return await self._retrying(
                    lambda: self.js.get_msg(stream, subject=subject), bucket=bucket, key=key
                )
            except nats.js.errors.NotFoundError:
                if loop.time() >= deadline:
                    return None
            await asyncio.sleep(0.01)

    async def kv_delete(self, bucket: str, key: str, *, last_revision: int | None = None) -> None:
        """Delete `key` (a no-op if it does not exist); with `last_revision`, only if the key
        is still at that revision (else `RevisionMismatch`)."""
        kv = await self._bucket(bucket)
        if last_revision is None:
            await kv.delete(key)
            return
        try:
            await kv.delete(key, last=last_revision)
        except nats.js.errors.KeyWrongLastSequenceError:
            raise RevisionMismatch(bucket, key, last_revision) from None

    async def kv_keys(self, bucket: str, pattern: str = ">") -> list[str]:
        """Keys currently set in `bucket` that match `pattern` (NATS wildcards).

        Read with an ephemeral pull consumer (last message per key, headers only): a pull
        consumer delivers nothing until asked, so its pending count is exact before the first
        fetch. nats-py's `keys()` and watch-based listing decide "all current values seen" from
        a push consumer's info, which races with delivery: under load it could announce the end
        before the first key arrived and return too few keys.
        """
        await self._bucket(bucket)  # the bucket must exist; a clear error otherwise
        stream = f"KV_{bucket}"
        prefix = f"$KV.{bucket}."
        config = api.ConsumerConfig(
            deliver_policy=api.DeliverPolicy.LAST_PER_SUBJECT,
            ack_policy=api.AckPolicy.NONE,
            headers_only=True,
            filter_subject=prefix + pattern,
            inactive_threshold=KEYS_INACTIVE,
            max_ack_pending=-1,
        )
        sub = await self.js.pull_subscribe(prefix + pattern, stream=stream, config=config)
        keys: dict[str, None] = {}  # ordered set: a change while reading moves or drops a key
        try:
            remaining = (await sub.consumer_info()).num_pending or 0
            while remaining > 0:
                msgs = await sub.fetch(min(remaining, 1024), timeout=self.options.request_timeout)
                for msg in msgs:
                    remaining = msg.metadata.num_pending
                    key = msg.subject[len(prefix) :]
                    keys.pop(key, None)
                    if (msg.headers or {}).get("KV-Operation") not in ("DEL", "PURGE"):
                        keys[key] = None
        finally:
            with contextlib.suppress(nats.errors.Error):
                await sub.unsubscribe()
        return list(keys)

    async def kv_watch(
        self, bucket: str, pattern: str = ">", *, include_current: bool = True
    ) -> AsyncGenerator[KVChange, None]:
        """Changes to keys matching `pattern`, current values first (unless told otherwise).

        A deleted key yields a change with `value=None`. Iterate until you have seen enough.
        A change is `initial` when its revision is no newer than the bucket's last revision
        when the watch began: exact, where nats-py's "current values sent" marker races with
        delivery (the reason `kv_keys` does not use it either).
        """
        kv = await self._bucket(bucket)
        began = int((await self.stream_info(f"KV_{bucket}")).state.last_seq or 0)
        watcher = await kv.watch(pattern, inactive_threshold=WATCH_INACTIVE)
        try:
            async for entry in watcher:
                if entry is None:  # nats-py's marker after the current values: not needed
                    continue
                deleted = entry.operation in ("DEL", "PURGE")
                revision = int(entry.revision or 0)
                change = KVChange(
                    key=str(entry.key),
                    value=None if deleted else bytes(entry.value or b""),
                    revision=revision,
                    initial=revision <= began,
                )
                if include_current or not change.initial:
                    yield change
        finally:
            with contextlib.suppress(nats.errors.Error):
                await watcher.stop()  # type: ignore[no-untyped-call]  # nats-py leaves it untyped


class _Patience:
    """How long a KV operation keeps trying: through a leader election on a live connection
    (up to `publish_retry_for`), but only briefly while no server can be reached at all, so that
    a caller whose server is gone (a shutdown after a crash) hears of it as it did before."""

    def __init__(self, bus: BusConnection) -> None:
        self._nc = bus.nc
        now = time.monotonic()
        self._end = now + bus.options.publish_retry_for
        self._grace = 2 * bus.options.reconnect_wait + 0.5  # long enough to reach another server
        self._offline_end: float | None = None

    def over(self) -> bool:
        """Whether to give up now (called after each failed attempt)."""
        now = time.monotonic()
        if self._nc.is_connected:
            self._offline_end = None
        elif self._offline_end is None:
            self._offline_end = now + self._grace
        return now >= self._end or (self._offline_end is not None and now >= self._offline_end)


class KVChange(NamedTuple):
    """One change seen by `Bus.kv_watch`."""

    key: str
    value: bytes | None
    revision: int
    initial: bool


def _kv_deleted(msg: api.RawStreamMsg) -> bool:
    """Whether a KV stream message is a delete or purge marker."""
    return (msg.headers or {}).get("KV-Operation") in ("DEL", "PURGE")
