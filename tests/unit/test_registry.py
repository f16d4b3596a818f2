"""Model registry: reading metrics.json, best/latest selection, records over the KV protocol."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from executors.registry import (
    KeyExistsError,
    KvEntry,
    ModelRegistry,
    ModelVersion,
    RegistryError,
    RevisionMismatchError,
    Selector,
    VersionPhase,
    newest_first,
    read_metrics,
    select_best,
    select_latest,
)
from executors.sdk_metrics import METRICS_FILE, MetricsError, report_metrics


class MemoryStore:
    """An in-memory `KeyValueStore` with NATS KV semantics; each call yields to the loop."""

    def __init__(self) -> None:
        self.data: dict[str, KvEntry] = {}
        self.revision = 0

    async def get(self, key: str) -> KvEntry | None:
        await asyncio.sleep(0)
        return self.data.get(key)

    async def create(self, key: str, value: bytes) -> int:
        await asyncio.sleep(0)
        if key in self.data:
            raise KeyExistsError(f"key {key} exists")
        return self._put(key, value)

    async def update(self, key: str, value: bytes, last: int) -> int:
        await asyncio.sleep(0)
        current = self.data.get(key)
        if current is None or current.revision != last:
            raise RevisionMismatchError(f"key {key} is not at revision {last}")
        return self._put(key, value)

    async def keys(self, prefix: str = "") -> list[str]:
        await asyncio.sleep(0)
        return [k for k in self.data if k.startswith(prefix)]

    def _put(self, key: str, value: bytes) -> int:
        self.revision += 1
        self.data[key] = KvEntry(value, self.revision)
        return self.revision


def version(
    n: int, metrics: dict[str, float] | None = None, phase: VersionPhase = "Succeeded"
) -> ModelVersion:
    return ModelVersion(
        axon="ax",
        task="Train",
        version=n,
        run_id=f"run-{n}",
        path=f"/m/{n}",
        phase=phase,
        metrics=metrics or {},
        created=datetime(2026, 1, 1, tzinfo=UTC) + timedelta(minutes=n),
    )


# ---------------------------------------------------------------------------------------------
# read_metrics


@pytest.mark.parametrize(
    ("content", "metrics", "error"),
    [
        pytest.param(None, {}, None, id="missing-file-is-no-metrics"),
        pytest.param('{"loss": 0.5, "acc": 1}', {"loss": 0.5, "acc": 1.0}, None, id="valid"),
        pytest.param("{}", {}, None, id="empty-object"),
        pytest.param('{"loss": ', {}, "not valid JSON", id="truncated"),
        pytest.param("[1, 2]", {}, "JSON list, not an object", id="array"),
        pytest.param('{"loss": NaN}', {}, "not valid JSON", id="nan-constant"),
        pytest.param('{"loss": 0.1, "x": {"y": 1}}', {"loss": 0.1}, "'x'", id="nested"),
        pytest.param('{"ok": true, "s": "1", "l": 2}', {"l": 2.0}, "'ok', 's'", id="non-numbers"),
        pytest.param("\udcff", {}, "cannot read", id="not-utf8"),
    ],
)
def test_read_metrics(
    tmp_path: Path, content: str | None, metrics: dict[str, float], error: str | None
) -> None:
    if content is not None:
        (tmp_path / METRICS_FILE).write_bytes(content.encode("utf-8", "surrogateescape"))
    reading = read_metrics(tmp_path)
    assert reading.metrics == metrics
    if error is None:
        assert reading.error is None
    else:
        assert reading.error is not None
        assert error in reading.error
        assert "flat JSON object" in reading.error or "cannot read" in reading.error


def test_read_metrics_refuses_oversized_files(tmp_path: Path) -> None:
    (tmp_path / METRICS_FILE).write_text('{"a": 1}' + " " * (1024 * 1024 + 1))
    reading = read_metrics(tmp_path)
    assert reading.metrics == {}
    assert reading.error is not None
    assert "over 1 MiB" in reading.error


# ---------------------------------------------------------------------------------------------
# selection


@pytest.mark.parametrize(
    ("versions", "selector", "expected"),
    [
        pytest.param(
            [version(1, {"loss": 0.3}), version(2, {"loss": 0.2})], "lower", 2, id="lower"
        ),
        pytest.param(
            [version(1, {"loss": 0.3}), version(2, {"loss": 0.2})], "greater", 1, id="greater"
        ),
        pytest.param(
            [version(3, {"loss": 0.2}), version(1, {"loss": 0.2}), version(2, {"loss": 0.5})],
            "lower",
            3,
            id="tie-goes-to-the-newest",
        ),
        pytest.param(
            [version(1, {"loss": 0.3}), version(2, {"acc": 0.9}), version(3)],
            "lower",
            1,
            id="missing-metric-skipped",
        ),
        pytest.param(
            [version(1, {"loss": 0.3}), version(2, {"loss": 0.1}, phase="Failed")],
            "lower",
            1,
            id="failed-run-skipped",
        ),
        pytest.param([version(1, {"acc": 0.3})], "lower", None, id="nobody-has-it"),
        pytest.param([], "greater", None, id="empty"),
    ],
)
def test_select_best(
    versions: list[ModelVersion], selector: Selector, expected: int | None
) -> None:
    best = select_best(versions, "loss", selector)
    assert (best.version if best else None) == expected


@pytest.mark.parametrize(
    ("versions", "expected"),
    [
        pytest.param([version(1), version(3), version(2)], 3, id="highest-version"),
        pytest.param([version(1), version(2, phase="Failed")], 1, id="failed-skipped"),
        pytest.param([version(1, phase="Running")], None, id="running-skipped"),
        pytest.param([], None, id="empty"),
    ],
)
def test_select_latest(versions: list[ModelVersion], expected: int | None) -> None:
    latest = select_latest(versions)
    assert (latest.version if latest else None) == expected


def test_newest_first() -> None:
    assert [v.version for v in newest_first([version(1), version(3), version(2)])] == [3, 2, 1]


# ---------------------------------------------------------------------------------------------
# report_metrics (the SDK side)


def test_report_metrics_merges_and_is_readable(tmp_path: Path) -> None:
    report_metrics(tmp_path, loss=0.5)
    path = report_metrics(tmp_path, loss=0.25, accuracy=0.9)
    assert path == tmp_path / METRICS_FILE
    assert json.loads(path.read_text()) == {"loss": 0.25, "accuracy": 0.9}
    assert read_metrics(tmp_path).metrics == {"loss": 0.25, "accuracy": 0.9}
    assert sorted(p.name for p in tmp_path.iterdir()) == [METRICS_FILE]  # no temp files left


def test_report_metrics_uses_model_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MODEL_PATH", str(tmp_path / "v1"))
    report_metrics(acc=1)
    assert read_metrics(tmp_path / "v1").metrics == {"acc": 1.0}


def test_report_metrics_replaces_a_broken_file(tmp_path: Path) -> None:
    (tmp_path / METRICS_FILE).write_text("not json")
    report_metrics(tmp_path, loss=1.5)
    assert read_metrics(tmp_path).metrics == {"loss": 1.5}


@pytest.mark.parametrize(
    ("metrics", "fragment"),
    [
        ({"loss": True}, "not a number"),
        ({"loss": "0.1"}, "not a number"),
        ({"loss": float("nan")}, "finite"),
        ({"loss": float("inf")}, "finite"),
        ({}, "no metrics given"),
    ],
)
def test_report_metrics_refuses_non_numbers(
    tmp_path: Path, metrics: dict[str, float], fragment: str
) -> None:
    with pytest.raises(MetricsError, match=fragment):
        report_metrics(tmp_path, **metrics)
    assert not (tmp_path / METRICS_FILE).exists()


def test_report_metrics_without_model_path(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MODEL_PATH", raising=False)
    with pytest.raises(MetricsError, match="MODEL_PATH is not set"):
        report_metrics(loss=0.1)


# ---------------------------------------------------------------------------------------------
# ModelRegistry over the KV protocol


async def test_record_run_stores_metrics_and_reads_back(tmp_path: Path) -> None:
    registry = ModelRegistry(MemoryStore())
    report_metrics(tmp_path, loss=0.4)
    stored = await registry.record_run(
        axon="ax", task="Train", version=1, run_id="r1", model_dir=tmp_path, succeeded=True
    )
    assert stored.metrics == {"loss": 0.4}
    assert stored.phase == "Succeeded"
    assert await registry.get("ax", "Train", 1) == stored
    assert await registry.get("ax", "Train", 2) is None


async def test_invalid_metrics_are_recorded_not_raised(tmp_path: Path) -> None:
    registry = ModelRegistry(MemoryStore())
    (tmp_path / METRICS_FILE).write_text("{oops")
    stored = await registry.record_run(
        axon="ax", task="Train", version=1, run_id="r1", model_dir=tmp_path, succeeded=True
    )
    assert stored.metrics == {}
    assert stored.metrics_error is not None
    assert "not valid JSON" in stored.metrics_error
    assert await registry.best("ax", "Train", "loss") is None
    assert await registry.latest("ax", "Train") == stored


async def test_versions_are_listed_per_axon_and_task() -> None:
    store = MemoryStore()
    registry = ModelRegistry(store)
    records = [
        ModelVersion(axon="ax", task=task, version=n, run_id=f"{task}{n}", path="/", metrics=m)
        for task, n, m in [
            ("B", 2, {"loss": 0.1}),
            ("A", 10, {"loss": 0.3}),
            ("A", 9, {"loss": 0.2}),
            ("B", 1, {}),
        ]
    ]
    await asyncio.gather(*(registry.put(r) for r in records))
    await registry.put(ModelVersion(axon="other", task="A", version=1, run_id="x", path="/"))
    await registry.put(
        ModelVersion(namespace="ns2", axon="ax", task="A", version=1, run_id="y", path="/")
    )
    assert [(r.task, r.version) for r in await registry.versions("ax")] == [
        ("A", 9),
        ("A", 10),
        ("B", 1),
        ("B", 2),
    ]
    assert [r.version for r in await registry.versions("ax", "A")] == [9, 10]
    assert [r.run_id for r in await registry.versions("ax", namespace="ns2")] == ["y"]
    best = await registry.best("ax", "A", "loss")
    assert best is not None
    assert best.version == 9
    best_greater = await registry.best("ax", "A", "loss", "greater")
    assert best_greater is not None
    assert best_greater.version == 10


async def test_put_is_idempotent_and_last_write_wins_under_races() -> None:
    store = MemoryStore()
    registry = ModelRegistry(store)
    running = version(1, phase="Running")
    done = version(1, {"loss": 0.1})
    await registry.put(running)
    await registry.put(running)  # a redelivered write does not fail
    await asyncio.gather(registry.put(done), registry.put(done), registry.put(done))
    assert await registry.get("ax", "Train", 1) == done
    assert len(store.data) == 1


async def test_corrupt_record_is_a_clear_error() -> None:
    store = MemoryStore()
    registry = ModelRegistry(store)
    await store.create(version(1).key, b"{not a record")
    with pytest.raises(RegistryError, match="corrupt model version record"):
        await registry.versions("ax", "Train")
