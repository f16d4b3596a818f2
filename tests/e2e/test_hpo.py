"""Hyper-parameter search through `ranvier up`, as a user runs it.

- examples/03-hpo: RandomSearch, 8 trials 2 at a time, `--until deployed`: 8 model versions with
  distinct params, the study's Lifecycle Succeeded fires the deploy sensor once, and the best
  trial's version is the one served;
- examples/03-hpo/hyperband.yaml: HyperBand over budgets 1..9 runs 9 configurations at budget 1,
  the best 3 of them at budget 3 and the best of those at budget 9;
- SIGKILL of the whole `ranvier up` mid-study, then `ranvier up` again: the trials that had
  finished are not run again and the study ends with exactly the trials asked for;
- a trial that writes no loss is a failed trial with the reason, and the study goes on.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.kit import REPO, alive, clean_env, ranvier

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.timeout(300)]

EXAMPLE = REPO / "examples" / "03-hpo"


def get_axon(name: str, state: Path) -> dict[str, Any]:
    shown = ranvier("get", "axon", name, "-o", "json", state=state)
    assert shown.returncode == 0, shown.stdout + shown.stderr
    doc: dict[str, Any] = json.loads(shown.stdout)
    return doc


def test_random_search_versions_and_the_best_deployed(tmp_path: Path) -> None:
    state = tmp_path / "state"
    up = ranvier(
        "up",
        str(EXAMPLE / "axon.yaml"),
        "-d",
        "--until",
        "deployed",
        "--timeout",
        "200",
        state=state,
    )
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        doc = get_axon("hpo-search", state)
        [study] = doc["studies"]
        assert (study["phase"], study["done"], study["planned"]) == ("Succeeded", 8, 8)
        assert [t["number"] for t in study["trials"]] == list(range(8))
        assert all(t["phase"] == "Succeeded" and t["budget"] == 3 for t in study["trials"])
        # the first trial runs the default_values
        assert study["trials"][0]["params"] == {"lr": 0.1, "degree": 3, "init": "zeros"}
        [model] = doc["models"]
        versions = model["versions"]
        assert len(versions) == 8
        assert len({json.dumps(v["params"], sort_keys=True) for v in versions}) == 8
        best = min(versions, key=lambda v: v["metrics"]["val_mse"])
        assert study["best"]["version"] == best["version"]

        # one study, one Succeeded of TrainModel: the deploy sensor ran once
        tasks = {t["name"]: t["runs"] for t in doc["tasks"]}
        assert [r["phase"] for r in tasks["TrainModel"]] == ["Succeeded"]
        sensors = {s["name"]: s["runs"] for s in doc["sensors"]}
        assert [r["phase"] for r in sensors["DeployBest"]] == ["Succeeded"]

        [deployment] = doc["deployments"]
        [served] = deployment["models"][0]["backends"]
        assert str(served["version"]) == str(best["version"])
        with httpx.Client(timeout=30.0) as client:
            answer = client.post(f"{deployment['url']}predict", json={"data": {"ndarray": [[0.5]]}})
        assert answer.status_code == 200, answer.text
        assert str(answer.json()["meta"]["modelVersion"]) == str(best["version"])

        env = {**clean_env(), "COLUMNS": "250"}
        wide = ranvier("get", "axon", "hpo-search", "-o", "wide", state=state, env=env)
        assert "8/8 trials" in wide.stdout
        assert "TrainModel #7" in wide.stdout
    finally:
        down = ranvier("down", state=state)
    assert down.returncode == 0, down.stdout + down.stderr


@pytest.mark.parametrize("optimiser", ["HyperBand", "BOHB"])
def test_hyperband_promotes_the_better_configurations(tmp_path: Path, optimiser: str) -> None:
    example = tmp_path / "example"
    shutil.copytree(EXAMPLE, example)
    axon = example / "hyperband.yaml"
    text = axon.read_text(encoding="utf-8")
    axon.write_text(text.replace("optimiser: HyperBand", f"optimiser: {optimiser}"), "utf-8")
    state = tmp_path / "state"
    up = ranvier(
        "up",
        str(axon),
        "--until",
        "succeeded",
        "--timeout",
        "200",
        state=state,
    )
    assert up.returncode == 0, up.stdout + up.stderr
    [study] = get_axon("hpo-hyperband", state)["studies"]
    assert (study["phase"], study["done"], study["planned"]) == ("Succeeded", 13, 13)
    rungs: dict[float, list[dict[str, Any]]] = {}
    for trial in study["trials"]:
        rungs.setdefault(trial["budget"], []).append(trial)
    assert {b: len(ts) for b, ts in rungs.items()} == {1: 9, 3: 3, 9: 1}

    def key(trial: dict[str, Any]) -> str:
        return json.dumps(trial["params"], sort_keys=True)

    def best(trials: list[dict[str, Any]], n: int) -> set[str]:
        ok = [t for t in trials if t["loss"] is not None]
        return {key(t) for t in sorted(ok, key=lambda t: t["loss"])[:n]}

    assert {key(t) for t in rungs[3]} == best(rungs[1], 3)
    assert {key(t) for t in rungs[9]} == best(rungs[3], 1)


SLOW_TRIALS = """
apiVersion: ranvier.dev/v1alpha1
kind: Axon
metadata: {name: crashy}
spec:
  tasks:
    - name: Search
      train:
        command: %(argv)s
        lossMetric: loss
        hpTuning:
          optimiser: RandomSearch
          numIteration: 8
          concurrency: 2
          params:
            - {name: x, type: UniformFloat, numerical: {lower: -2, upper: 2}}
            - {name: mode, type: Categorical, categorical: {values: %(modes)s}}
  sensors:
    - name: OnStart
      tasks: [{trainer: {task: Search}}]
"""

TRIAL = """
import json, os, sys, time
args = dict(zip(sys.argv[2::2], sys.argv[3::2]))
with open(sys.argv[1], "a") as marks:
    marks.write(f"start {args['--config_id']} {os.getpid()}\\n")
time.sleep(float(os.environ.get("TRIAL_SLEEP", "0")))
x = float(args["--x"])
if args["--mode"] == "ok":
    with open(os.path.join(os.environ["MODEL_PATH"], "metrics.json"), "w") as out:
        json.dump({"loss": (x - 0.5) ** 2}, out)
with open(sys.argv[1], "a") as marks:
    marks.write(f"end {args['--config_id']} {os.getpid()}\\n")
"""


def trial_axon(tmp_path: Path, modes: list[str]) -> tuple[Path, Path]:
    script = tmp_path / "trial.py"
    script.write_text(TRIAL, encoding="utf-8")
    marks = tmp_path / "marks.txt"
    argv = json.dumps([sys.executable, str(script), str(marks)])
    axon = tmp_path / "crashy.yaml"
    axon.write_text(SLOW_TRIALS % {"argv": argv, "modes": json.dumps(modes)}, encoding="utf-8")
    return axon, marks


def marks_of(marks: Path) -> list[tuple[str, str]]:
    if not marks.exists():
        return []
    return [
        (what, config)
        for what, config, _ in (line.split() for line in marks.read_text().splitlines())
    ]


def test_sigkill_mid_study_then_up_again_runs_no_finished_trial_twice(tmp_path: Path) -> None:
    axon, marks = trial_axon(tmp_path, ["ok"])
    state = tmp_path / "state"
    env = clean_env()
    env["TRIAL_SLEEP"] = "1.5"
    first = ranvier("up", str(axon), "-d", state=state, env=env)
    assert first.returncode == 0, first.stdout + first.stderr
    up_pid = json.loads((state / "up.pid").read_text())["pid"]
    deadline = time.monotonic() + 120
    while sum(what == "end" for what, _ in marks_of(marks)) < 3:
        assert alive(up_pid), (state / "up.log").read_text()
        assert time.monotonic() < deadline, marks_of(marks)
        time.sleep(0.1)
    # trials that ended at least 0.5 s before the kill have had their result recorded
    finished_before = {config for what, config in marks_of(marks) if what == "end"}
    time.sleep(0.5)
    os.killpg(up_pid, signal.SIGKILL)  # the whole control plane, nats-server included
    while alive(up_pid):
        time.sleep(0.05)
    before = marks_of(marks)
    ended = {config for what, config in before if what == "end"}
    in_flight = {config for what, config in before if what == "start"} - ended
    assert in_flight, before  # the kill cut trials off mid-run

    env["TRIAL_SLEEP"] = "0"
    again = ranvier(
        "up", str(axon), "--until", "succeeded", "--timeout", "200", state=state, env=env
    )
    assert again.returncode == 0, again.stdout + again.stderr

    after = marks_of(marks)[len(before) :]
    started_after = [config for what, config in after if what == "start"]
    assert not finished_before & set(started_after), (finished_before, started_after)
    doc = get_axon("crashy", state)
    [study] = doc["studies"]
    assert (study["phase"], study["done"], study["planned"]) == ("Succeeded", 8, 8)
    assert [t["number"] for t in study["trials"]] == list(range(8))
    assert all(t["phase"] == "Succeeded" for t in study["trials"])
    for trial in study["trials"]:  # a run cut off by the kill is run again as attempt 2
        if trial["config_id"] in in_flight:
            assert trial["attempt"] == 2, trial
        if trial["config_id"] in finished_before:
            assert trial["attempt"] == 1, trial
    ended_all = [config for what, config in marks_of(marks) if what == "end"]
    assert sorted(set(ended_all)) == sorted(t["config_id"] for t in study["trials"])
    assert len(doc["models"][0]["versions"]) == 8
    [run] = {t["name"]: t["runs"] for t in doc["tasks"]}["Search"]
    assert run["phase"] == "Succeeded"


def test_a_trial_without_a_loss_fails_with_the_reason_and_the_study_goes_on(
    tmp_path: Path,
) -> None:
    axon, _ = trial_axon(tmp_path, ["silent", "ok"])
    axon.write_text(
        axon.read_text().replace(
            'values: ["silent", "ok"]}', 'values: ["silent", "ok"], default_value: silent}'
        ),
        encoding="utf-8",
    )
    state = tmp_path / "state"
    up = ranvier("up", str(axon), "--until", "succeeded", "--timeout", "200", state=state)
    assert up.returncode == 0, up.stdout + up.stderr
    [study] = get_axon("crashy", state)["studies"]
    assert study["done"] == 8
    silent = [t for t in study["trials"] if t["params"]["mode"] == "silent"]
    assert silent  # the first trial runs the default
    for trial in silent:
        assert trial["phase"] == "Failed"
        assert "reported no 'loss'" in trial["message"]
    assert all(t["phase"] == "Succeeded" for t in study["trials"] if t not in silent)
