"""The streams and KV buckets ranvier needs: created or updated on connect, safe to race."""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

import nats
import nats.errors
import nats.js.errors
import structlog
from nats.js import api
from nats.js.kv import KeyValue

from events import subjects
from events.bus.connection import BusConnection
from events.bus.core import (
    PLACEMENT_ERRORS,
    TOPOLOGY_PATIENCE,
    BusError,
    NoAnswerError,
)

log = structlog.get_logger(__name__)


class BusTopology(BusConnection):
    """Streams and buckets on top of the connection."""

    async def _ensure_topology_patiently(self) -> None:
        """`ensure_topology`, asked again for a while when JetStream does not answer: on a
        cluster a stream whose leader just died answers nothing until its servers have elected
        another (seconds), and a process starting then should wait rather than fail."""
        deadline = time.monotonic() + min(self.options.publish_retry_for, TOPOLOGY_PATIENCE)
        attempt = 0
        while True:
            attempt += 1
            try:
                await self.ensure_topology()
                return
            except NoAnswerError as exc:
                if time.monotonic() >= deadline:
                    raise
                log.info("bus.topology_retry", url=self.url, attempt=attempt, error=str(exc))
                await asyncio.sleep(min(0.2 * attempt, 1.0))

    # -- topology ----------------------------------------------------------------------------

    def stream_configs(self) -> list[api.StreamConfig]:
        """The three ranvier streams (docs/architecture.md, Events)."""
        dup = self.limits.duplicate_window.total_seconds()
        replicas = self.limits.num_replicas
        source, dest = subjects.partition_transform(self.partitions)
        return [
            api.StreamConfig(
                name=subjects.EVENTS_STREAM,
                subjects=[subjects.EVENTS_SUBJECTS],
                retention=api.RetentionPolicy.LIMITS,
                storage=api.StorageType.FILE,
                max_age=self.limits.events_max_age.total_seconds(),
                duplicate_window=dup,
                num_replicas=replicas,
                subject_transform=api.SubjectTransform(src=source, dest=dest),
                metadata={subjects.PARTITIONS_KEY: str(self.partitions)},
            ),
            api.StreamConfig(
                name=subjects.ACTIONS_STREAM,
                subjects=[subjects.ACTIONS_SUBJECTS],
                retention=api.RetentionPolicy.WORK_QUEUE,
                storage=api.StorageType.FILE,
                duplicate_window=dup,
                num_replicas=replicas,
            ),
            api.StreamConfig(
                name=subjects.DECISIONS_STREAM,
                subjects=[subjects.DECISIONS_SUBJECTS],
                retention=api.RetentionPolicy.LIMITS,
                storage=api.StorageType.FILE,
                max_age=self.limits.decisions_max_age.total_seconds(),
                duplicate_window=dup,
                num_replicas=replicas,
            ),
        ]

    async def ensure_topology(self) -> None:
        """Create or update the streams and KV buckets; idempotent, safe to race.

        The events stream's partition count is fixed when it is created: a stream created
        with another count than `limits.partitions` asks for is an error (never silent
        re-partitioning); with no count asked for, the stream's own is adopted.
        """
        try:
            await self._adopt_partitions()
            for config in self.stream_configs():
                await self._ensure_stream(config)
            for bucket in (
                subjects.AXONS_BUCKET,
                subjects.STATE_BUCKET,
                subjects.RUNS_BUCKET,
                subjects.MODELS_BUCKET,
            ):
                await self._bucket(bucket)
                if self.limits.replicas is not None:
                    await self._ensure_replicas(f"KV_{bucket}", self.limits.replicas)
            if self.limits.replicas is not None:  # the engines' lease bucket, once they made it
                with contextlib.suppress(nats.js.errors.NotFoundError):
                    leases = f"KV_{subjects.LEASES_BUCKET}"
                    await self._ensure_replicas(leases, self.limits.replicas)
        except nats.js.errors.APIError as exc:
            raise self._placement_error(exc) or BusError(
                f"cannot set up ranvier's streams on {self.url}: {exc.description}",
                hint="is JetStream enabled on this server (nats-server --jetstream)?",
            ) from None
        except (nats.errors.TimeoutError, nats.js.errors.NoStreamResponseError):
            raise NoAnswerError(
                f"JetStream does not answer on {self.url}",
                hint="enable it (nats-server --jetstream) or use `ranvier server`",
            ) from None

    async def _adopt_partitions(self) -> None:
        try:
            info = await self.js.stream_info(subjects.EVENTS_STREAM)
        except nats.js.errors.NotFoundError:
            return  # created with ours
        recorded = (info.config.metadata or {}).get(subjects.PARTITIONS_KEY)
        if recorded is None:
            if info.state.messages:
                raise BusError(
                    f"the events stream on {self.url} holds {info.state.messages} events stored "
                    "without partitions (by an older ranvier); they cannot be partitioned in place",
                    hint="`ranvier events export` them, delete the stream "
                    f"{subjects.EVENTS_STREAM} (or the state dir), then `ranvier events import`",
                )
            return  # empty: updated to ours
        count = int(recorded)
        wanted = self.limits.partitions
        if wanted is not None and wanted != count:
            raise BusError(
                f"the events stream on {self.url} has {count} partitions, but {wanted} are "
                "configured; the partition count is fixed when the stream is created",
                hint=f"use --partitions {count} (or RANVIER_PARTITIONS={count}), or export the "
                "events, delete the stream and import them into a new one",
            )
        self.partitions = count

    async def _ensure_stream(self, config: api.StreamConfig) -> None:
        try:
            info = await self.js.stream_info(config.name or "")
        except nats.js.errors.NotFoundError:
            try:
                await self.js.add_stream(config)
            except nats.js.errors.BadRequestError as exc:  # lost a creation race, or...
                if self._placement_error(exc) is not None:  # ...cannot place its replicas
                    raise
            else:
                log.info("bus.stream_created", stream=config.name, replicas=config.num_replicas)
                return
            info = await self.js.stream_info(config.name or "")
        current = info.config
        if self.limits.replicas is None:  # not asked for: an existing stream keeps its count
            config = config.evolve(num_replicas=current.num_replicas)
        if (
            current.subjects != config.subjects
            or (current.max_age or 0) != (config.max_age or 0)
            or (current.duplicate_window or 0) != (config.duplicate_window or 0)
            or (current.num_replicas or 1) != (config.num_replicas or 1)
            or current.subject_transform != config.subject_transform
        ):
            await self.js.update_stream(config)
            log.info(
                "bus.stream_updated",
                stream=config.name,
                replicas=config.num_replicas,
                was_replicas=current.num_replicas,
            )

    async def _ensure_replicas(self, stream: str, replicas: int) -> None:
        """Scale an existing stream (a KV bucket's) to `replicas` copies, keeping the rest."""
        current = (await self.js.stream_info(stream)).config
        if (current.num_replicas or 1) != replicas:
            await self.js.update_stream(current.evolve(num_replicas=replicas))
            log.info(
                "bus.stream_updated",
                stream=stream,
                replicas=replicas,
                was_replicas=current.num_replicas,
            )

    def _placement_error(self, exc: nats.js.errors.APIError) -> BusError | None:
        """A clear error when the server cannot hold the replicas asked for, else None."""
        wanted = self.limits.num_replicas
        if wanted <= 1 or exc.err_code not in PLACEMENT_ERRORS:
            return None
        info: dict[str, Any] = getattr(self.nc, "_server_info", None) or {}  # INFO from the server
        if not info.get("cluster"):
            return BusError(
                f"cannot keep ranvier's streams and buckets with {wanted} replicas: the NATS "
                f"server at {self.url} is not part of a cluster ({exc.description})",
                hint="use --replicas 1 (RANVIER_REPLICAS=1) with a single server, "
                "or connect to a NATS cluster",
            )
        found = len(info.get("connect_urls") or ()) or None
        servers = f"{found} server(s)" if found else "fewer servers"
        return BusError(
            f"cannot keep ranvier's streams and buckets with {wanted} replicas: the NATS "
            f"cluster at {self.url} has {servers} up ({exc.description})",
            hint=f"lower --replicas (RANVIER_REPLICAS) to at most {found or 'its size'}, "
            "or add servers to the cluster",
        )

    async def _bucket(self, bucket: str) -> KeyValue:
        kv = self._kv.get(bucket)
        if kv is None:
            try:
                kv = await self.js.key_value(bucket)
            except nats.js.errors.BucketNotFoundError:
                kv = await self.create_bucket(bucket)
            self._kv[bucket] = kv
        return kv

    async def create_bucket(self, bucket: str, *, ttl: float = 0.0, history: int = 5) -> KeyValue:
        """Create a KV bucket (every key expiring `ttl` seconds after its last write, if set),
        with the streams' replica count; a bucket that exists already is returned as it is."""
        replicas = self.limits.num_replicas
        try:
            kv = await self.js.create_key_value(
                bucket=bucket,
                history=history,
                ttl=ttl or None,
                storage=api.StorageType.FILE,
                replicas=replicas,
            )
        except nats.js.errors.APIError as exc:
            raise self._placement_error(exc) or exc from None
        log.info("bus.bucket_created", bucket=bucket, ttl=ttl, replicas=replicas)
        self._kv[bucket] = kv
        return kv

    async def stream_info(self, stream: str = subjects.EVENTS_STREAM) -> api.StreamInfo:
        """The server's view of a stream (messages, first/last sequence, config)."""
        try:
            return await self.js.stream_info(stream)
        except nats.js.errors.NotFoundError:
            raise BusError(f"no stream named {stream!r} on {self.url}") from None
