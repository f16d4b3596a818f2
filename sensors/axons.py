"""Submitted Axons: the `ranvier_axons` bucket, and the `ranvier.axon` events that announce them.

The engine's state for an Axon is only valid with the exact spec it was computed with, and the
engine learns about a new spec from a `ranvier.axon` event in the events stream (so that a spec
change is ordered with the events around it, and replays see it). This module keeps the two in
step:

- every generation is kept under its own key (`<ns>.<name>.g<N>`), so after a restart the engine
  can load the spec its persisted state was saved with, and then apply a newer one;
- the current record (`<ns>.<name>`) moves forward only by compare-and-set, so two concurrent
  submits cannot both claim generation N+1;
- the announcing event has a deterministic id (`axon.<ns>.<name>.g<N>`), so publishing it again
  (a retry, or a submit interrupted between the KV write and the publish) is a duplicate.

Submitting the same spec again (same digest) keeps the generation; it re-publishes the same
event id, which the stream drops as a duplicate, or the engine ignores as not newer.
"""

from __future__ import annotations

import hashlib
import json
import zlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Final

import structlog
from pydantic import ValidationError

from events import subjects
from events.bus import RevisionMismatch, kv_key
from events.errors import RanvierError
from events.model import AxonData, canonical_json, format_time, utcnow
from sensors.port import EngineBus
from sensors.spec import Axon

__all__ = ["AxonStore", "AxonStoreError", "StoredAxon", "axon_event_id"]

log = structlog.get_logger(__name__)

SOURCE: Final = "ranvier/axons"
BUCKET: Final = subjects.AXONS_BUCKET
_CAS_ATTEMPTS: Final = 20
COMPRESS_OVER: Final = 64 * 1024
_ZLIB: Final = b"zlib:"


class AxonStoreError(RanvierError, RuntimeError):
    """A stored Axon is missing, unreadable, or could not be written."""


def axon_event_id(namespace: str, name: str, generation: int, action: str = "submitted") -> str:
    """The deterministic id of the `ranvier.axon` event for one generation (and action)."""
    base = f"axon.{namespace}.{name}.g{generation}"
    return base if action == "submitted" else f"{base}.{action}"


def spec_digest(axon: Axon) -> str:
    """A digest of the spec as submitted (canonical JSON by alias): same spec, same digest."""
    return hashlib.sha256(canonical_json(_spec_json(axon))).hexdigest()


def _absolute(path: Path) -> Path:
    """`path` made absolute (reads only the working directory, no file system access)."""
    return path.absolute()


def _spec_json(axon: Axon) -> dict[str, Any]:
    return axon.model_dump(mode="json", by_alias=True)


@dataclass(frozen=True, slots=True)
class StoredAxon:
    """One generation of a submitted Axon, as kept in `ranvier_axons`."""

    name: str
    namespace: str
    generation: int
    digest: str
    axon: Axon
    source: Path | None
    submitted: datetime
    deleted: bool = False

    @property
    def axon_dir(self) -> Path | None:
        """The directory of the Axon file (for `workingDir`), or None when it had no file."""
        return self.source.parent if self.source is not None else None

    def to_json(self) -> bytes:
        """The stored record (contract: name, namespace, generation, digest, spec, ...);
        zlib-compressed behind a `zlib:` prefix when over 64 KiB (an Axon of thousands of
        sensors is megabytes of JSON, over NATS's default max payload)."""
        raw = canonical_json(
            {
                "name": self.name,
                "namespace": self.namespace,
                "generation": self.generation,
                "digest": self.digest,
                "spec": _spec_json(self.axon),
                "source": str(self.source) if self.source is not None else None,
                "submitted": format_time(self.submitted),
                "deleted": self.deleted,
            }
        )
        return _ZLIB + zlib.compress(raw, 1) if len(raw) > COMPRESS_OVER else raw

    @classmethod
    def from_json(cls, raw: bytes, where: str) -> StoredAxon:
        """Parse a stored record; `where` names the key in errors."""
        try:
            data = json.loads(zlib.decompress(raw[len(_ZLIB) :]) if raw[:1] != b"{" else raw)
            source = data.get("source")
            return cls(
                name=str(data["name"]),
                namespace=str(data["namespace"]),
                generation=int(data["generation"]),
                digest=str(data["digest"]),
                axon=Axon.model_validate(data["spec"]),
                source=Path(source) if source else None,
                submitted=datetime.fromisoformat(data["submitted"]),
                deleted=bool(data.get("deleted", False)),
            )
        except (ValueError, KeyError, TypeError, ValidationError, zlib.error) as exc:
            first = str(exc).splitlines()[0]
            raise AxonStoreError(f"{BUCKET}/{where} is unreadable: {first}") from None


class AxonStore:
    """Submitted Axons in KV, with the events that announce their generations."""

    def __init__(self, bus: EngineBus) -> None:
        self._bus = bus

    @staticmethod
    def key(namespace: str, name: str, generation: int | None = None) -> str:
        """The KV key of the current record, or of one generation's record."""
        if generation is None:
            return kv_key(namespace, name)
        return kv_key(namespace, name, f"g{generation}")

    async def _read(self, key: str) -> tuple[StoredAxon, int] | None:
        got = await self._bus.kv_get(BUCKET, key)
        if got is None:
            return None
        return StoredAxon.from_json(got[0], key), got[1]

    async def get(
        self, namespace: str, name: str, generation: int | None = None
    ) -> StoredAxon | None:
        """The current record (deleted ones included), or generation `generation`'s."""
        got = await self._read(self.key(namespace, name, generation))
        return got[0] if got is not None else None

    async def submit(self, axon: Axon, source: Path | None = None) -> StoredAxon:
        """Store `axon` as a new generation (unless unchanged) and announce it on the bus."""
        ns, name = axon.metadata.namespace, axon.metadata.name
        digest = spec_digest(axon)
        source = _absolute(source) if source is not None else None
        main = self.key(ns, name)
        for _ in range(_CAS_ATTEMPTS):
            current = await self._read(main)
            if current is not None and not current[0].deleted and current[0].digest == digest:
                stored = current[0]
                await self._announce(stored, "submitted")  # a duplicate unless it was lost
                return stored
            generation = current[0].generation + 1 if current is not None else 1
            stored = StoredAxon(
                name=name,
                namespace=ns,
                generation=generation,
                digest=digest,
                axon=axon,
                source=source,
                submitted=utcnow(),
            )
            history = self.key(ns, name, generation)
            encoded = stored.to_json()
            if len(encoded) > self._bus.max_payload:
                raise AxonStoreError(
                    f"Axon {ns}/{name} is too large to store ({len(encoded)} bytes "
                    f"compressed, the server takes {self._bus.max_payload})",
                    hint="raise the NATS server's max_payload",
                )
            if await self._bus.kv_create(BUCKET, history, encoded) is None:
                earlier = await self._read(history)
                if earlier is None or earlier[0].digest != digest:
                    continue  # another submit took generation N: start again from the top
                stored = earlier[0]  # an interrupted submit of this very spec
            try:
                if current is None:
                    if await self._bus.kv_create(BUCKET, main, stored.to_json()) is None:
                        continue
                else:
                    await self._bus.kv_update(BUCKET, main, stored.to_json(), current[1])
            except RevisionMismatch:
                continue
            log.info("axon.submitted", namespace=ns, axon=name, generation=generation)
            await self._announce(stored, "submitted")
            return stored
        raise AxonStoreError(
            f"could not submit Axon {ns}/{name}: it kept changing under us "
            f"({_CAS_ATTEMPTS} attempts)"
        )

    async def delete(self, namespace: str, name: str) -> StoredAxon:
        """Mark the Axon deleted (its generations stay) and announce it; error if unknown."""
        main = self.key(namespace, name)
        for _ in range(_CAS_ATTEMPTS):
            current = await self._read(main)
            if current is None:
                raise AxonStoreError(
                    f"no Axon {namespace}/{name} was submitted", hint="see `ranvier list axon`"
                )
            stored, revision = current
            if not stored.deleted:
                gone = StoredAxon(
                    name=stored.name,
                    namespace=stored.namespace,
                    generation=stored.generation,
                    digest=stored.digest,
                    axon=stored.axon,
                    source=stored.source,
                    submitted=stored.submitted,
                    deleted=True,
                )
                try:
                    await self._bus.kv_update(BUCKET, main, gone.to_json(), revision)
                except RevisionMismatch:
                    continue
                stored = gone
                log.info("axon.deleted", namespace=namespace, axon=name)
            await self._announce(stored, "deleted")
            return stored
        raise AxonStoreError(f"could not delete Axon {namespace}/{name}: it kept changing")

    async def list(self, *, include_deleted: bool = False) -> list[StoredAxon]:
        """The current record of every submitted Axon, sorted by namespace and name."""
        found: list[StoredAxon] = []
        for key in await self._bus.kv_keys(BUCKET, "*.*"):
            got = await self._read(key)
            if got is not None and (include_deleted or not got[0].deleted):
                found.append(got[0])
        return sorted(found, key=lambda s: (s.namespace, s.name))

    async def watch(self, *, include_current: bool = True) -> AsyncIterator[StoredAxon]:
        """Current records as they change (submits and deletions); current ones first."""
        async for change in self._bus.kv_watch(BUCKET, "*.*", include_current=include_current):
            if change.value is None:
                continue
            try:
                yield StoredAxon.from_json(change.value, change.key)
            except AxonStoreError as exc:
                log.warning("axon.unreadable", key=change.key, error=str(exc))

    async def _announce(self, stored: StoredAxon, action: str) -> None:
        data = AxonData(
            axon=stored.name,
            namespace=stored.namespace,
            generation=stored.generation,
            action="deleted" if action == "deleted" else "submitted",
        )
        event_id = axon_event_id(stored.namespace, stored.name, stored.generation, action)
        await self._bus.publish(data.to_event(source=SOURCE, id=event_id))
