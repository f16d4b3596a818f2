"""How `get` and `watch` show a study: progress (done/planned), failures and the best trial."""

from __future__ import annotations

from typing import Any

from rich.console import Console

from executors.hpo import StudyRecord, TrialRecord
from ranvier.commands.status import progress_lines, status_table, study_progress


def study(*trials: TrialRecord) -> dict[str, Any]:
    record = StudyRecord(
        axon="a",
        task="Train",
        run_id="study-run",
        optimiser="HyperBand",
        loss_metric="rmse",
        greater=False,
        planned=13,
        trials=list(trials),
    )
    return record.summary()


def status(*studies: dict[str, Any]) -> dict[str, Any]:
    return {
        "name": "a",
        "namespace": "default",
        "generation": 1,
        "sensors": [],
        "tasks": [],
        "models": [],
        "deployments": [],
        "studies": list(studies),
    }


OK = TrialRecord(
    number=0,
    config_id="0.0.0",
    params={"lr": 0.123456, "k": "rbf"},
    budget=1.0,
    phase="Succeeded",
    loss=0.25,
    version=3,
    run_id="trial-run-0",
)
BAD = TrialRecord(number=1, config_id="0.0.1", phase="Failed", message="reported no 'rmse'")
RUNNING = TrialRecord(number=2, config_id="0.0.2", phase="Running")


def test_progress_counts_finished_trials_and_names_the_best() -> None:
    assert study_progress(study()) == "0/13 trials"
    assert study_progress(study(OK, BAD, RUNNING)) == (
        "2/13 trials (1 failed), best rmse=0.25 (trial 0, v3)"
    )


def test_watch_prints_a_new_line_when_the_study_moves_on() -> None:
    before = progress_lines(status(study(OK, RUNNING)))
    after = progress_lines(
        status(
            study(OK, RUNNING.model_copy(update={"phase": "Succeeded", "loss": 0.1, "version": 4}))
        )
    )
    assert (
        before["h/study-run"]
        == "study Train HyperBand Running: 1/13 trials, best rmse=0.25 (trial 0, v3)"
    )
    assert after["h/study-run"].endswith("2/13 trials, best rmse=0.1 (trial 2, v4)")


def test_wide_shows_a_row_per_trial() -> None:
    console = Console(width=250, record=True)
    console.print(status_table(status(study(OK, BAD)), wide=True))
    text = console.export_text()
    assert "Train #0" in text
    assert "budget 1; k=rbf, lr=0.1235; rmse=0.25" in text
    assert "reported no 'rmse'" in text
    console = Console(width=250, record=True)
    console.print(status_table(status(study(OK, BAD))))
    assert "Train #0" not in console.export_text()
