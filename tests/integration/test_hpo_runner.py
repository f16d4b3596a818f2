"""A study run by the executor on a real bus: the trials it runs, the one lifecycle it reports,
and a graceful executor shutdown mid-study that the next executor resumes."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest

from events import subjects
from events.bus import Bus
from events.model import ActionRequest
from executors.hpo import read_study
from sensors.axons import AxonStore
from sensors.loader import load_axon
from tests.integration.test_local_backend import until
from tests.integration.test_runner import finals, running

pytestmark = pytest.mark.integration

AXON = """
apiVersion: ranvier.dev/v1alpha1
kind: Axon
metadata: {name: study}
spec:
  tasks:
    - name: Fit
      train:
        command: [%(py)s, %(script)s, %(marks)s]
        lossMetric: loss
        hpTuning:
          optimiser: RandomSearch
          numIteration: 5
          concurrency: 2
          maxBudget: 2
          params:
            - {name: x, type: UniformFloat, numerical: {lower: -1, upper: 1, default_value: 0}}
  sensors:
    - name: s
      triggers: [{name: r, type: Rest}]
      tasks: [{trainer: {task: Fit}}]
"""

TRIAL = """
import json, os, sys, time
args = dict(zip(sys.argv[2::2], sys.argv[3::2]))
open(sys.argv[1], "a").write(args["--config_id"] + " " + os.environ["LOSS_METRIC"] + "\\n")
if os.path.exists(sys.argv[1] + ".slow"):
    time.sleep(30)
conf = json.loads(__import__("base64").b64decode(os.environ["HPO_PARAMS"]))
assert conf["hpo-conf"]["x"] == float(args["--x"]) and conf["budget"] == 2
with open(os.path.join(os.environ["MODEL_PATH"], "metrics.json"), "w") as out:
    json.dump({"loss": (float(args["--x"]) - 0.3) ** 2}, out)
"""


async def setup(bus: Bus, tmp_path: Path) -> tuple[ActionRequest, Path]:
    script = tmp_path / "trial.py"
    script.write_text(TRIAL, encoding="utf-8")
    marks = tmp_path / "marks.txt"
    path = tmp_path / "study.yaml"
    values = {
        k: json.dumps(str(v))
        for k, v in {"py": sys.executable, "script": script, "marks": marks}.items()
    }
    path.write_text(AXON % values, encoding="utf-8")
    await AxonStore(bus).submit(load_axon(path), path)
    request = ActionRequest.model_validate(
        {
            "axon": "study",
            "sensor": "s",
            "sensor_run_id": "r1",
            "step": 0,
            "kind": "trainer",
            "task": "Fit",
        }
    )
    return request, marks


def started(marks: Path) -> int:
    return len(marks.read_text().splitlines()) if marks.exists() else 0


async def study_of(bus: Bus) -> dict[str, Any]:
    found = await read_study(bus, "default", "study", "Fit")
    assert found is not None
    return found


async def test_a_study_runs_its_trials_and_reports_once(bus: Bus, tmp_path: Path) -> None:
    request, marks = await setup(bus, tmp_path)
    async with running(bus, tmp_path, ack_wait=2.0):
        await bus.publish(request.to_event(source="test"))
        [done] = await finals(bus, 1, axon="study")
    assert done.phase == "Succeeded", done.message
    assert "study: 5 trials (0 failed); best trial" in done.message
    study = await study_of(bus)
    assert (study["done"], study["planned"], study["phase"]) == (5, 5, "Succeeded")
    assert study["trials"][0]["params"] == {"x": 0.0}
    assert done.outputs["version"] == study["best"]["version"]
    assert done.outputs["metrics"] == study["best"]["metrics"]
    assert sorted(line.split()[0] for line in marks.read_text().splitlines()) == [
        f"0.0.{n}" for n in range(5)
    ]
    assert {line.split()[1] for line in marks.read_text().splitlines()} == {"loss"}
    phases = [
        item.event.data["phase"]
        async for item in bus.replay(filter_subject=subjects.events_filter("study", "lifecycle"))
    ]
    assert phases == ["Pending", "Running", "Succeeded"]  # no lifecycle per trial


async def test_a_shutdown_mid_study_is_resumed_by_the_next_executor(
    bus: Bus, tmp_path: Path
) -> None:
    request, marks = await setup(bus, tmp_path)
    slow = Path(f"{marks}.slow")
    slow.write_text("", encoding="utf-8")  # noqa: ASYNC240  # trials hang until the shutdown
    async with running(bus, tmp_path, ack_wait=2.0):
        await bus.publish(request.to_event(source="test"))
        await until(lambda: started(marks) >= 2)
    slow.unlink()  # noqa: ASYNC240  # a test file, instant
    async with running(bus, tmp_path, ack_wait=2.0):
        [done] = await finals(bus, 1, axon="study")
    assert done.phase == "Succeeded", done.message
    study = await study_of(bus)
    assert (study["done"], study["planned"]) == (5, 5)
    assert [t["number"] for t in study["trials"]] == list(range(5))
    interrupted = [t for t in study["trials"] if t["attempt"] == 2]
    assert [t["number"] for t in interrupted] == [0, 1]  # the runs the shutdown stopped
    assert all(t["phase"] == "Succeeded" for t in study["trials"])
