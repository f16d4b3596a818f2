"""Model versions and their metrics, and which version a deployer should serve.

Every trainer run produces one version (a directory, numbered 1, 2, 3... per task) and, at exit,
its `metrics.json`. The registry keeps one record per version in a key-value store: the bus's
`ranvier_models` bucket in production, anything that speaks the small `KeyValueStore` protocol
in tests. Keeping the storage behind that protocol means the registry's logic (idempotent
writes, compare-and-set updates, selection) is the same whichever store holds the bytes.

Selection is pure: `select_best` and `select_latest` take a list of records and answer, so the
rules engine, the deployer and `ranvier get` all pick the same version for the same data.
A broken `metrics.json` is a fact about a version, not a crash: it is stored on the record as
`metrics_error`, and the version is skipped by `best` selection (it has no loss metric).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Final, Literal, NamedTuple, Protocol

import structlog
from pydantic import BaseModel, ConfigDict, Field

from events.errors import RanvierError
from events.model import UtcDatetime, utcnow
from events.subjects import token
from executors.sdk_metrics import MAX_METRICS_BYTES, METRICS_FILE, MetricsError, check_metric

log = structlog.get_logger(__name__)

Selector = Literal["greater", "lower"]
VersionPhase = Literal["Running", "Succeeded", "Failed"]
KEY_PREFIX: Final = "models"
_CAS_ATTEMPTS: Final = 20


# ---------------------------------------------------------------------------------------------
# Reading metrics (pure file I/O)


@dataclass(frozen=True)
class MetricsReading:
    """What `metrics.json` held: the numbers, and an error message if it was not valid."""

    metrics: dict[str, float]
    error: str | None = None


def read_metrics(model_dir: Path) -> MetricsReading:
    """Read `model_dir/metrics.json`: a flat JSON object of finite numbers.

    A missing file is no metrics and no error (a trainer need not report any). An unreadable or
    malformed file gives no metrics and an error; entries that are not numbers are dropped and
    named in the error, and the numbers are kept.
    """
    path = model_dir / METRICS_FILE
    hint = 'write a flat JSON object of numbers, e.g. {"loss": 0.12}'
    try:
        size = path.stat().st_size
        if size > MAX_METRICS_BYTES:
            return MetricsReading({}, f"{METRICS_FILE} is {size} bytes, over 1 MiB; {hint}")
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return MetricsReading({})
    except (OSError, UnicodeDecodeError) as exc:
        return MetricsReading({}, f"cannot read {METRICS_FILE}: {exc}")
    return parse_metrics(text)


def parse_metrics(text: str) -> MetricsReading:
    """Parse the text of a `metrics.json` (from the file, or a pod's termination message)."""
    hint = 'write a flat JSON object of numbers, e.g. {"loss": 0.12}'
    try:
        raw = json.loads(text, parse_constant=_refuse_constant)
    except ValueError as exc:
        return MetricsReading({}, f"{METRICS_FILE} is not valid JSON ({exc}); {hint}")
    if not isinstance(raw, dict):
        return MetricsReading(
            {}, f"{METRICS_FILE} holds a JSON {type(raw).__name__}, not an object; {hint}"
        )
    metrics: dict[str, float] = {}
    bad: list[str] = []
    for name, value in raw.items():
        try:
            metrics[name] = check_metric(name, value)
        except MetricsError:
            bad.append(name)
    if bad:
        names = ", ".join(repr(b) for b in bad)
        return MetricsReading(metrics, f"{METRICS_FILE}: {names} not finite numbers; {hint}")
    return MetricsReading(metrics)


def _refuse_constant(name: str) -> float:
    raise ValueError(f"{name} is not a finite number")


# ---------------------------------------------------------------------------------------------
# Version records and selection (pure)


class ModelVersion(BaseModel):
    """One trained version of a task's model: where it is, how it was made, how good it is."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    namespace: str = Field("default", description="The Axon's namespace.")
    axon: str = Field(min_length=1, description="The Axon (metadata.name).")
    task: str = Field(min_length=1, description="The train task that produced it.")
    version: int = Field(ge=1, description="Version number, 1, 2, 3... per task.")
    run_id: str = Field(min_length=1, description="The task run that produced it.")
    path: str = Field(description="The version's directory (MODEL_PATH of its run).")
    phase: VersionPhase = Field("Succeeded", description="Outcome of the run that produced it.")
    metrics: dict[str, float] = Field(default_factory=dict, description="From metrics.json.")
    metrics_error: str | None = Field(None, description="Why metrics.json could not be read.")
    params: dict[str, Any] = Field(
        default_factory=dict, description="Hyper-parameters of the study trial that made it."
    )
    budget: float | None = Field(None, description="The budget of that trial, if any.")
    trial: int | None = Field(None, description="The study trial number, if any.")
    created: UtcDatetime = Field(default_factory=utcnow, description="When it was registered.")

    @property
    def key(self) -> str:
        """Its key in the store."""
        return version_key(self.namespace, self.axon, self.task, self.version)


def select_best(
    versions: Iterable[ModelVersion], loss_metric: str, selector: Selector = "lower"
) -> ModelVersion | None:
    """The Succeeded version with the best `loss_metric` (ties: the newest); None if none has it.

    Versions whose run failed, or that lack the metric, are skipped.
    """
    candidates = [
        v
        for v in versions
        if v.phase == "Succeeded"
        and loss_metric in v.metrics
        and math.isfinite(v.metrics[loss_metric])
    ]
    if not candidates:
        return None
    sign = 1.0 if selector == "greater" else -1.0
    return max(candidates, key=lambda v: (sign * v.metrics[loss_metric], v.version))


def select_latest(versions: Iterable[ModelVersion]) -> ModelVersion | None:
    """The newest Succeeded version, or None."""
    done = [v for v in versions if v.phase == "Succeeded"]
    return max(done, key=lambda v: v.version, default=None)


def version_key(namespace: str, axon: str, task: str, version: int) -> str:
    """`models.<namespace>.<axon>.<task>.<version>` (tokens sanitised for NATS KV)."""
    return f"{task_prefix(namespace, axon, task)}{version:08d}"


def task_prefix(namespace: str, axon: str, task: str | None = None) -> str:
    """The key prefix of an Axon's (or one task's) versions, ending with a dot."""
    base = f"{KEY_PREFIX}.{token(namespace)}.{token(axon)}."
    return base if task is None else f"{base}{token(task)}."


# ---------------------------------------------------------------------------------------------
# Storage protocol


class KvEntry(NamedTuple):
    """A stored value and its revision (for compare-and-set)."""

    value: bytes
    revision: int


class KeyExistsError(RanvierError, KeyError):
    """`create` found the key already there."""


class RevisionMismatchError(RanvierError, ValueError):
    """`update` was given a revision that is no longer the key's latest."""


class KeyValueStore(Protocol):
    """The little of a KV bucket the registry needs (NATS KV maps onto it one to one)."""

    async def get(self, key: str) -> KvEntry | None:
        """The latest value of `key`, or None if it has none (or was deleted)."""
        ...

    async def create(self, key: str, value: bytes) -> int:
        """Store `value` only if `key` has none; its revision, else `KeyExistsError`."""
        ...

    async def update(self, key: str, value: bytes, last: int) -> int:
        """Store `value` only if `key` is at revision `last`; else `RevisionMismatchError`."""
        ...

    async def keys(self, prefix: str = "") -> list[str]:
        """Keys that have a value and start with `prefix`."""
        ...


class RegistryError(RanvierError, RuntimeError):
    """The registry could not store a record (too much contention, or a corrupt record)."""


# ---------------------------------------------------------------------------------------------
# The registry


class ModelRegistry:
    """Model version records of every Axon, kept in a `KeyValueStore`."""

    def __init__(self, store: KeyValueStore) -> None:
        self._store = store

    async def put(self, record: ModelVersion) -> ModelVersion:
        """Store `record` (create, or replace the same version: a redelivered run is idempotent)."""
        raw = record.model_dump_json().encode("utf-8")
        for _ in range(_CAS_ATTEMPTS):
            current = await self._store.get(record.key)
            try:
                if current is None:
                    await self._store.create(record.key, raw)
                else:
                    await self._store.update(record.key, raw, current.revision)
            except (KeyExistsError, RevisionMismatchError):
                continue  # someone wrote in between: read again and retry
            log.info(
                "model.version_stored",
                axon=record.axon,
                task=record.task,
                version=record.version,
                run_id=record.run_id,
                phase=record.phase,
                metrics_error=record.metrics_error,
            )
            return record
        raise RegistryError(
            f"could not store {record.key} after {_CAS_ATTEMPTS} attempts (contention)"
        )

    async def record_run(
        self,
        *,
        axon: str,
        task: str,
        version: int,
        run_id: str,
        model_dir: Path,
        succeeded: bool,
        namespace: str = "default",
        created: datetime | None = None,
    ) -> ModelVersion:
        """Read a finished trainer run's `metrics.json` and store its version record."""
        reading = read_metrics(model_dir)
        record = ModelVersion(
            namespace=namespace,
            axon=axon,
            task=task,
            version=version,
            run_id=run_id,
            path=str(model_dir),
            phase="Succeeded" if succeeded else "Failed",
            metrics=reading.metrics,
            metrics_error=reading.error,
            created=created or utcnow(),
        )
        return await self.put(record)

    async def get(
        self, axon: str, task: str, version: int, *, namespace: str = "default"
    ) -> ModelVersion | None:
        """One version's record, or None."""
        entry = await self._store.get(version_key(namespace, axon, task, version))
        return None if entry is None else _decode(entry.value)

    async def versions(
        self, axon: str, task: str | None = None, *, namespace: str = "default"
    ) -> list[ModelVersion]:
        """An Axon's versions (of one task, or all), ordered by task then version."""
        prefix = task_prefix(namespace, axon, task)
        records: list[ModelVersion] = []
        for key in await self._store.keys(prefix):
            entry = await self._store.get(key)
            if entry is not None:
                records.append(_decode(entry.value))
        return sorted(records, key=lambda r: (r.task, r.version))

    async def best(
        self,
        axon: str,
        task: str,
        loss_metric: str,
        selector: Selector = "lower",
        *,
        namespace: str = "default",
    ) -> ModelVersion | None:
        """The task's best Succeeded version by `loss_metric` (see `select_best`)."""
        return select_best(
            await self.versions(axon, task, namespace=namespace), loss_metric, selector
        )

    async def latest(
        self, axon: str, task: str, *, namespace: str = "default"
    ) -> ModelVersion | None:
        """The task's newest Succeeded version."""
        return select_latest(await self.versions(axon, task, namespace=namespace))


def _decode(raw: bytes) -> ModelVersion:
    try:
        return ModelVersion.model_validate_json(raw)
    except ValueError as exc:
        raise RegistryError(f"corrupt model version record: {exc}") from None


def newest_first(versions: Sequence[ModelVersion]) -> list[ModelVersion]:
    """Versions ordered newest first (rollout `destinationIndex` 0 is the newest)."""
    return sorted(versions, key=lambda v: v.version, reverse=True)
