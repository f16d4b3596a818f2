"""The quickstart's acceptance path, through the real CLI as a user types it.

`ranvier up examples/01-quickstart/axon.yaml -d --until deployed` (embedded NATS, engine,
executor, deployer, router in one background process), then `ranvier endpoint -o json`, a
prediction at `${fixedUrl}predict`, feedback counted in the model server's `/metrics`, and
`ranvier down` leaving no process behind.
"""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from executors.backends.local import group_members
from tests.e2e.kit import REPO, alive, ranvier

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

AXON = REPO / "examples" / "01-quickstart" / "axon.yaml"
PAYLOAD = {"data": {"ndarray": [[1, 2]]}}


def feedback_count(metrics: str) -> float:
    for family in text_string_to_metric_families(metrics):
        if family.name == "ranvier_model_feedback":
            return sum(s.value for s in family.samples if s.name.endswith("_total"))
    return 0.0


def test_up_deployed_predict_feedback_down(tmp_path: Path) -> None:
    state = tmp_path / "state"
    up = ranvier("up", str(AXON), "-d", "--until", "deployed", "--timeout", "150", state=state)
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        shown = ranvier("endpoint", "quickstart", "-o", "json", state=state)
        assert shown.returncode == 0, shown.stderr
        endpoint = json.loads(shown.stdout)
        url = endpoint["fixedUrl"]
        assert url.endswith("/quickstart/")
        [backend] = endpoint["models"][0]["backends"]
        servers = [
            json.loads(p.read_text())["pid"] for p in (state / "local-servers").glob("*.json")
        ]
        assert servers
        up_pid = json.loads((state / "up.pid").read_text())["pid"]

        with httpx.Client(timeout=30.0) as client:
            answer = client.post(f"{url}predict", json=PAYLOAD)
            assert answer.status_code == 200, answer.text
            body = answer.json()
            [[at_one, at_two]] = body["data"]["ndarray"]
            assert at_two > at_one  # the trained slope is positive (y = 3x + 2 + noise)
            assert body["meta"]["modelVersion"] == backend["version"]

            before = feedback_count(client.get(f"{backend['url']}/metrics").text)
            feedback = {"request": PAYLOAD, "response": body, "reward": 1.0}
            sent = client.post(f"{url}send-feedback", json=feedback)
            assert sent.status_code == 200, sent.text
            after = feedback_count(client.get(f"{backend['url']}/metrics").text)
            assert after == before + 1
    finally:
        down = ranvier("down", state=state)
    assert down.returncode == 0, down.stdout + down.stderr
    assert not alive(up_pid)
    assert not any(alive(pid) or group_members(pid) for pid in servers)
    assert list((state / "local-servers").glob("*.json")) == []


def up_deployed(state: Path) -> None:
    up = ranvier("up", str(AXON), "-d", "--until", "deployed", "--timeout", "150", state=state)
    assert up.returncode == 0, up.stdout + up.stderr


def served(state: Path) -> tuple[list[Any], str, set[int]]:
    """The prediction at `${fixedUrl}predict`, the version that answered, the server pids."""
    shown = ranvier("endpoint", "quickstart", "-o", "json", state=state)
    assert shown.returncode == 0, shown.stderr
    url = json.loads(shown.stdout)["fixedUrl"]
    status = ranvier("get", "axon", "quickstart", "-o", "json", state=state)
    assert status.returncode == 0, status.stderr
    [deployment] = json.loads(status.stdout)["deployments"]
    assert deployment["url"] == url  # the running router's, not the one before a restart
    answer = httpx.post(f"{url}predict", json=PAYLOAD, timeout=30.0)
    assert answer.status_code == 200, answer.text
    body = answer.json()
    pids = {json.loads(p.read_text())["pid"] for p in (state / "local-servers").glob("*.json")}
    return body["data"]["ndarray"], body["meta"]["modelVersion"], pids


def task_runs(state: Path) -> dict[str, list[str]]:
    shown = ranvier("get", "axon", "quickstart", "-o", "json", state=state)
    assert shown.returncode == 0, shown.stderr
    return {t["name"]: [r["id"] for r in t["runs"]] for t in json.loads(shown.stdout)["tasks"]}


def test_a_restarted_up_serves_what_was_deployed_without_training_again(tmp_path: Path) -> None:
    state = tmp_path / "state"
    servers: set[int] = set()
    try:
        up_deployed(state)
        runs = task_runs(state)
        assert [len(runs[t]) for t in ("PrepareData", "TrainModel", "quickstart")] == [1, 1, 1]
        prediction, version, first = served(state)
        servers |= first

        # a clean stop, then up again on the same state dir
        down = ranvier("down", state=state)
        assert down.returncode == 0, down.stdout + down.stderr
        assert not any(alive(pid) for pid in first)
        up_deployed(state)
        again, again_version, second = served(state)
        servers |= second
        assert (again, again_version) == (prediction, version)
        assert not second & first
        assert task_runs(state) == runs

        # a crash of the whole control plane (nats-server included), then up again
        up_pid = json.loads((state / "up.pid").read_text())["pid"]
        os.killpg(up_pid, signal.SIGKILL)
        while alive(up_pid):
            time.sleep(0.05)
        assert all(alive(pid) for pid in second)  # model servers outlive it, in their sessions
        up_deployed(state)
        after, after_version, third = served(state)
        servers |= third
        assert (after, after_version) == (prediction, version)
        assert not third & second
        assert not any(alive(pid) or group_members(pid) for pid in second)  # orphans stopped
        assert task_runs(state) == runs
    finally:
        down = ranvier("down", state=state)
    assert down.returncode == 0, down.stdout + down.stderr
    assert not any(alive(pid) or group_members(pid) for pid in servers)
    assert list((state / "local-servers").glob("*.json")) == []
