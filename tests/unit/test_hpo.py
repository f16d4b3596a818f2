"""The pure parts of a study: the budget schedule, the handover to a trial, selection, the SDK."""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

from events.model import ActionRequest, LifecycleData
from executors.hpo import (
    HPO_PARAM,
    Stage,
    StudyError,
    StudyInterrupted,
    StudyRecord,
    TrialRecord,
    defaults,
    distributions,
    handover,
    pick,
    planned_trials,
    schedule,
    trial_argv,
    trial_env,
)
from executors.hpo.errors import SHUTDOWN
from executors.hpo.trials import judged, stop_if_cancelled
from ranvier import sdk
from sensors.spec import HpTuning


def tuning(**fields: object) -> HpTuning:
    body = {
        "params": [{"name": "lr", "type": "UniformFloat", "numerical": {"lower": 0.1, "upper": 1}}]
    }
    return HpTuning.model_validate({**body, **fields})


def test_random_search_is_one_stage_of_num_iteration_trials_at_max_budget() -> None:
    hp = tuning(optimiser="RandomSearch", numIteration=8, maxBudget=3)
    assert schedule(hp) == [[Stage(0, 0, 8, 3.0)]]
    assert schedule(tuning(optimiser="RandomSearch", numIteration=2)) == [[Stage(0, 0, 2, None)]]


@pytest.mark.parametrize(
    ("low", "high", "iterations", "brackets"),
    [
        (1, 9, 1, [[(9, 1.0), (3, 3.0), (1, 9.0)]]),
        (1, 9, 3, [[(9, 1.0), (3, 3.0), (1, 9.0)], [(5, 3.0), (1, 9.0)], [(3, 9.0)]]),
        (1, 3, 2, [[(3, 1.0), (1, 3.0)], [(2, 3.0)]]),
        (5, 5, 2, [[(1, 5.0)], [(1, 5.0)]]),
    ],
)
def test_hyperband_brackets_halve_by_three_up_to_max_budget(
    low: float, high: float, iterations: int, brackets: list[list[tuple[int, float]]]
) -> None:
    for optimiser in ("HyperBand", "BOHB"):
        hp = tuning(optimiser=optimiser, minBudget=low, maxBudget=high, numIteration=iterations)
        got = [[(s.count, s.budget) for s in bracket] for bracket in schedule(hp)]
        assert got == brackets
        assert planned_trials(hp) == sum(n for bracket in brackets for n, _ in bracket)


def test_trial_argv_and_env_are_myelins_handover() -> None:
    params = {"lr": 0.5, "depth": 4, "kernel": "rbf"}
    assert trial_argv("0.0.3", 3.0, params) == [
        "--config_id",
        "0.0.3",
        "--budget",
        "3",
        "--lr",
        "0.5",
        "--depth",
        "4",
        "--kernel",
        "rbf",
    ]
    assert trial_argv("7", None, {}) == ["--config_id", "7"]
    env = trial_env("0.0.3", 2.5, params, "rmse")
    assert env["LOSS_METRIC"] == "rmse"
    assert json.loads(base64.b64decode(env["HPO_PARAMS"])) == {
        "config-id": "0.0.3",
        "budget": 2.5,
        "hpo-conf": params,
    }


def test_handover_reads_only_trial_requests() -> None:
    base = {
        "axon": "a",
        "sensor": "s",
        "sensor_run_id": "r",
        "step": 0,
        "kind": "trainer",
        "task": "T",
    }
    assert handover(ActionRequest.model_validate(base)) is None
    hpo = {"config_id": "0.0.1", "budget": 1, "params": {"x": 2}, "loss_metric": "loss"}
    argv, env = handover(ActionRequest.model_validate({**base, "params": {HPO_PARAM: hpo}})) or (
        [],
        {},
    )
    assert argv == ["--config_id", "0.0.1", "--budget", "1", "--x", "2"]
    assert env["LOSS_METRIC"] == "loss"


def test_distributions_and_defaults_follow_the_search_space() -> None:
    hp = HpTuning.model_validate(
        {
            "optimiser": "RandomSearch",
            "params": [
                {
                    "name": "k",
                    "type": "Categorical",
                    "categorical": {"values": ["a", "b"], "default_value": "b"},
                },
                {
                    "name": "lr",
                    "type": "UniformFloat",
                    "numerical": {
                        "lower": "0.01",
                        "upper": "1",
                        "log": True,
                        "default_value": "0.1",
                    },
                },
                {"name": "n", "type": "UniformInteger", "numerical": {"lower": 1, "upper": 9}},
            ],
        }
    )
    assert distributions(hp.params) == {
        "k": CategoricalDistribution(["a", "b"]),
        "lr": FloatDistribution(0.01, 1.0, log=True),
        "n": IntDistribution(1, 9),
    }
    assert defaults(hp.params) == {"k": "b", "lr": 0.1}


def test_pick_keeps_the_best_with_a_loss_in_either_direction() -> None:
    results = [(0, 0.5), (1, None), (2, 0.1), (3, 0.9), (4, 0.1)]
    assert pick(results, 2, greater=False) == [2, 4]
    assert pick(results, 2, greater=True) == [3, 0]
    assert pick(results, 9, greater=False) == [2, 4, 0, 3]
    assert pick([(0, None)], 1, greater=False) == []


def test_the_study_record_counts_progress_and_names_the_best() -> None:
    record = StudyRecord(
        axon="a",
        task="T",
        run_id="r",
        optimiser="RandomSearch",
        loss_metric="acc",
        greater=True,
        planned=3,
        trials=[
            TrialRecord(number=0, config_id="0", phase="Succeeded", loss=0.7, version=1),
            TrialRecord(number=1, config_id="1", phase="Failed", message="no loss"),
            TrialRecord(number=2, config_id="2", phase="Running"),
        ],
    )
    assert record.done == 2
    assert record.best is not None
    assert record.best.number == 0
    summary = record.summary()
    assert (summary["done"], summary["best"]["version"]) == (2, 1)


def test_sdk_publishes_the_result_under_the_loss_metric(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MODEL_PATH", str(tmp_path))
    monkeypatch.setenv("LOSS_METRIC", "rmse")
    sdk.report_metrics(acc=0.5)
    sdk.publish_result(0.25)
    sdk.publish_result(3, "epochs")
    assert json.loads((tmp_path / "metrics.json").read_text()) == {
        "acc": 0.5,
        "rmse": 0.25,
        "epochs": 3.0,
    }
    monkeypatch.delenv("LOSS_METRIC")
    sdk.publish_result(0.5)
    assert json.loads((tmp_path / "metrics.json").read_text())["loss"] == 0.5


def test_sdk_reads_hpo_params(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HPO_PARAMS", raising=False)
    assert sdk.hpo_params() == {}
    monkeypatch.setenv("HPO_PARAMS", trial_env("1", 3.0, {"lr": 0.1}, None)["HPO_PARAMS"])
    assert sdk.hpo_params() == {"config-id": "1", "budget": 3.0, "hpo-conf": {"lr": 0.1}}
    monkeypatch.setenv("HPO_PARAMS", "not base64!")
    with pytest.raises(sdk.MetricsError, match="not base64 JSON"):
        sdk.hpo_params()


@dataclass(frozen=True)
class Ended:
    """A backend's outcome of a trial run, as `judged` reads it."""

    phase: Literal["Succeeded", "Failed"]
    message: str = ""
    run_id: str = "run"

    def to_lifecycle(self, request: ActionRequest) -> LifecycleData:
        raise NotImplementedError


def test_a_trial_is_judged_by_the_loss_it_reported() -> None:
    ran = TrialRecord(number=3, config_id="0.0.3", run_id="run")
    good = judged(ran, Ended("Succeeded"), {"metrics": {"rmse": 0.5}, "version": 2}, "rmse")
    assert (good.phase, good.loss, good.version, good.message) == ("Succeeded", 0.5, 2, "")
    for outputs in ({"metrics": {"acc": 1.0}}, {"metrics": {"rmse": float("nan")}}, {}):
        silent = judged(ran, Ended("Succeeded"), outputs, "rmse")
        assert (silent.phase, silent.loss) == ("Failed", None)
        assert "reported no 'rmse' (lossMetric)" in silent.message
    unreadable = judged(ran, Ended("Succeeded"), {"metrics_error": "bad JSON"}, "rmse")
    assert unreadable.message.endswith("; bad JSON")
    failed = judged(ran, Ended("Failed", "exited with code 1"), {"metrics": {"rmse": 0.1}}, "rmse")
    assert (failed.phase, failed.loss, failed.message) == ("Failed", 0.1, "exited with code 1")


def test_a_stopped_trial_run_stops_the_study() -> None:
    stop_if_cancelled(Ended("Failed", "exited with code 1"), 0)
    with pytest.raises(StudyInterrupted):
        stop_if_cancelled(Ended("Failed", SHUTDOWN), 0)
    with pytest.raises(StudyError, match="study stopped at trial 4"):
        stop_if_cancelled(Ended("Failed", "cancelled: axon deleted"), 4)
