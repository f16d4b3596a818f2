"""`ranvier up` as a user runs it: real processes, a fresh state dir, the CLI's exit codes.

- the quickstart reaches `--until succeeded`, and `get axon -o json` then shows the run, both
  task runs Succeeded and a model version with its metrics (read from the stopped state dir);
- a pipeline whose step fails makes `--until succeeded` exit non-zero with the reason;
- SIGKILL of the whole `ranvier up` (its process group: the control plane and nats-server)
  mid-run, then `ranvier up` again on the same state dir: the pipeline finishes, every step ran
  once per attempt, the interrupted attempt is reported Failed with why, no process is left.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from executors.backends.local import group_members
from tests.e2e.kit import REPO, alive, ranvier

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

QUICKSTART = REPO / "examples" / "01-quickstart" / "axon.yaml"


def get_axon(name: str, state: Path) -> dict[str, Any]:
    shown = ranvier("get", "axon", name, "-o", "json", state=state)
    assert shown.returncode == 0, shown.stderr
    doc: dict[str, Any] = json.loads(shown.stdout)
    return doc


def test_quickstart_until_succeeded_then_get_axon(tmp_path: Path) -> None:
    state = tmp_path / "state"
    up = ranvier("up", str(QUICKSTART), "--until", "succeeded", "--timeout", "120", state=state)
    assert up.returncode == 0, up.stdout + up.stderr
    assert "--until succeeded reached" in up.stdout
    assert not (state / "up.pid").exists()

    doc = get_axon("quickstart", state)
    assert (doc["name"], doc["namespace"], doc["generation"]) == ("quickstart", "default", 1)
    [train_on_start] = [s for s in doc["sensors"] if s["name"] == "TrainOnStart"]
    [run] = train_on_start["runs"]
    assert run["phase"] == "Succeeded"
    assert [(s["index"], s["task"], s["phase"]) for s in run["steps"]] == [
        (0, "PrepareData", "Succeeded"),
        (1, "TrainModel", "Succeeded"),
    ]
    tasks = {t["name"]: t for t in doc["tasks"]}
    for name in ("PrepareData", "TrainModel"):
        [task_run] = tasks[name]["runs"]
        assert task_run["phase"] == "Succeeded"
        assert task_run["started"] <= task_run["finished"]
    assert tasks["TrainModel"]["kind"] == "train"
    [model] = [m for m in doc["models"] if m["task"] == "TrainModel"]
    [version] = model["versions"]
    assert version["version"] == 1
    assert version["run_id"] == tasks["TrainModel"]["runs"][0]["id"]
    assert 0 <= version["metrics"]["loss"] < 0.1  # y = 3x + 2 with noise sd 0.1
    assert version["created"]


FAILING = """
apiVersion: ranvier.dev/v1alpha1
kind: Axon
metadata: {name: failing}
spec:
  tasks:
    - name: Broken
      container: {command: [%s, -c, "import sys; sys.exit('no data today')"]}
  sensors:
    - name: OnStart
      tasks: [{resourceExecutor: {task: Broken}}]
"""


def test_until_succeeded_exits_non_zero_with_the_reason(tmp_path: Path) -> None:
    axon = tmp_path / "failing.yaml"
    axon.write_text(FAILING % json.dumps(sys.executable), encoding="utf-8")
    state = tmp_path / "state"
    up = ranvier("up", str(axon), "--until", "succeeded", "--timeout", "120", state=state)
    assert up.returncode == 1, up.stdout + up.stderr
    assert "failed: sensor run" in up.stdout
    assert "no data today" in up.stdout


RESUME = """
apiVersion: ranvier.dev/v1alpha1
kind: Axon
metadata: {name: resume}
spec:
  tasks:
%(tasks)s
  sensors:
    - name: Pipeline
      tasks:
%(steps)s
"""

# Each step appends "<task> <run id> <pid>" to the marks file; Step1 then waits for a release
# file, so the test can kill everything while it runs.
STEP = """import os, pathlib, sys, time
marks = pathlib.Path(sys.argv[1])
with marks.open("a") as out:
    out.write(f"{os.environ['TASK_NAME']} {os.environ['TASK_ID']} {os.getpid()}\\n")
while sys.argv[2] != "-" and not pathlib.Path(sys.argv[2]).exists():
    time.sleep(0.05)
"""


def resume_axon(tmp_path: Path) -> tuple[Path, Path, Path]:
    script = tmp_path / "step.py"
    script.write_text(STEP, encoding="utf-8")
    marks, release = tmp_path / "marks.txt", tmp_path / "release"
    tasks, steps = [], []
    for i in range(4):
        wait = str(release) if i == 1 else "-"
        argv = json.dumps([sys.executable, str(script), str(marks), wait])
        tasks.append(f"    - name: Step{i}\n      container: {{command: {argv}}}")
        steps.append(f"        - resourceExecutor: {{task: Step{i}, retry: {{limit: 1}}}}")
    axon = tmp_path / "resume.yaml"
    axon.write_text(
        RESUME % {"tasks": "\n".join(tasks), "steps": "\n".join(steps)}, encoding="utf-8"
    )
    return axon, marks, release


def marks_of(marks: Path) -> list[tuple[str, str, int]]:
    if not marks.exists():
        return []
    return [
        (name, run, int(pid))
        for name, run, pid in (line.split() for line in marks.read_text().splitlines())
    ]


def test_sigkill_of_up_mid_run_then_up_again_resumes(tmp_path: Path) -> None:
    axon, marks, release = resume_axon(tmp_path)
    state = tmp_path / "state"
    first = ranvier("up", str(axon), "-d", state=state)
    assert first.returncode == 0, first.stdout + first.stderr
    up_pid = json.loads((state / "up.pid").read_text())["pid"]
    while not any(name == "Step1" for name, _, _ in marks_of(marks)):
        assert alive(up_pid), (state / "up.log").read_text()
        time.sleep(0.1)
    [(_, _, step1_pid)] = [m for m in marks_of(marks) if m[0] == "Step1"]
    os.killpg(up_pid, signal.SIGKILL)  # the whole control plane, nats-server included
    while alive(up_pid):
        time.sleep(0.05)
    assert alive(step1_pid)  # the task outlives the crash, in its own session

    release.touch()
    again = ranvier("up", str(axon), "--until", "succeeded", "--timeout", "150", state=state)
    assert again.returncode == 0, again.stdout + again.stderr

    runs = marks_of(marks)
    names = [name for name, _, _ in runs]
    assert names.count("Step0") == 1
    assert names.count("Step2") == 1
    assert names.count("Step3") == 1
    assert names.count("Step1") == 2  # the interrupted attempt, then its retry
    assert len({run for _, run, _ in runs}) == len(runs)
    assert not alive(step1_pid)
    assert group_members(step1_pid) == []

    doc = get_axon("resume", state)
    [sensor] = doc["sensors"]
    [run] = sensor["runs"]
    assert run["phase"] == "Succeeded"
    tasks = {t["name"]: t["runs"] for t in doc["tasks"]}
    # The run record keeps every step, also the one that ran before the crash; Step1's entry
    # is its last attempt.
    assert [(s["index"], s["task"], s["phase"], s["run_id"]) for s in run["steps"]] == [
        (i, f"Step{i}", "Succeeded", tasks[f"Step{i}"][-1]["id"]) for i in range(4)
    ]
    assert [r["phase"] for r in tasks["Step1"]] == ["Failed", "Succeeded"]
    assert "executor restart" in tasks["Step1"][0]["message"]
    assert all(len(tasks[f"Step{i}"]) == 1 for i in (0, 2, 3))


SLOW = """
apiVersion: ranvier.dev/v1alpha1
kind: Axon
metadata: {name: slow}
spec:
  tasks:
    - name: Wait
      container: {command: [%s, -c, "import time; time.sleep(120)"]}
  sensors:
    - name: OnStart
      tasks: [{resourceExecutor: {task: Wait}}]
"""


def test_until_not_reached_within_timeout_exits_non_zero_and_stops_the_task(
    tmp_path: Path,
) -> None:
    axon = tmp_path / "slow.yaml"
    axon.write_text(SLOW % json.dumps(sys.executable), encoding="utf-8")
    state = tmp_path / "state"
    up = ranvier("up", str(axon), "--until", "succeeded", "--timeout", "3", state=state)
    assert up.returncode == 3, up.stdout + up.stderr
    assert "timed out after 3s before succeeded" in up.stdout
    doc = get_axon("slow", state)
    [wait_run] = next(t["runs"] for t in doc["tasks"] if t["name"] == "Wait")
    assert wait_run["phase"] == "Failed"
    assert wait_run["message"] == "cancelled: executor shut down"
    assert list((state / "local-runs").glob("*.json")) == []


def test_cli_errors_are_one_line(tmp_path: Path) -> None:
    state = tmp_path / "state"
    down = ranvier("down", state=state)
    assert down.returncode == 1
    assert (
        down.stderr.strip()
        == f"error: no ranvier up is running for {state} (start one with `ranvier up`)"
    )
    bad = tmp_path / "bad.yaml"
    bad.write_text("apiVersion: ranvier.dev/v1alpha1\nkind: Axon\nmetadata: {name: x}\n")
    up = ranvier("up", str(bad), state=state)
    assert up.returncode == 1
    [line] = up.stderr.strip().splitlines()
    assert line.startswith(f"{bad}:")
    assert ": error: " in line
    assert "error: error" not in line
    assert not line.startswith("error:")
