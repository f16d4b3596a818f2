"""The benchmarks still run and print their documented shape (docs/benchmarks.md), at tiny
sizes; speed is never asserted."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
import structlog

from bench import engine as engine_bench
from bench import replay as replay_bench
from bench import scale as scale_bench

pytestmark = pytest.mark.integration


@pytest.fixture(autouse=True)
def _logging_kept() -> Iterator[None]:
    """`main()` quiets structlog to warnings for the whole process; later tests read info logs."""
    saved = structlog.get_config()
    yield
    structlog.configure(**saved)


def test_engine_bench_prints_one_json_object_in_the_design_shape(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert engine_bench.main(["--pure-only", "--events", "600", "--sizes", "1,100"]) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert report["bench"] == "engine"
    assert [r["sensors"] for r in report["results"]] == [1, 100]
    assert all(r["pure_events_per_s"] > 0 for r in report["results"])


def test_engine_bench_measures_the_runtime_against_the_raw_reference() -> None:
    row = engine_bench.measure_runtime(100, 600)
    assert set(row) == {"events_per_s", "raw_consume_per_s", "ratio"}
    assert row["events_per_s"] > 0
    assert row["raw_consume_per_s"] > 0
    assert row["ratio"] == pytest.approx(row["events_per_s"] / row["raw_consume_per_s"], rel=0.01)


def test_engine_bench_measures_latency_with_the_engine_in_its_own_process() -> None:
    latency = engine_bench.measure_latency(100, 200, 1.0)
    assert latency["events"] == 200  # every action request arrived
    assert 0 < latency["p50_ms"] <= latency["p99_ms"]


def test_replay_bench_reads_every_event_and_reports_the_design_shape() -> None:
    report = replay_bench.measure(600, 1)
    assert {"bench", "events", "events_per_s", "raw_read_per_s", "ratio"} <= set(report)
    assert (report["bench"], report["events"]) == ("replay", 600)
    assert report["decisions"] >= 300


@pytest.mark.slow
def test_scale_bench_runs_every_replica_count_against_the_raw_reference(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert scale_bench.main(["--replicas", "1,2", "--events", "640", "--sensors", "5"]) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert report["bench"] == "scale"
    assert [r["replicas"] for r in report["results"]] == [1, 2]
    for row in report["results"]:
        assert row["events_per_s"] > 0
        assert row["raw_consume_per_s"] > 0
