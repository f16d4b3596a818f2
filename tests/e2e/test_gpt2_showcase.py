"""The GPT-2 Shakespeare showcase, run by ranvier end to end as the README tells users to.

`ranvier up examples/gpt2-shakespeare/axon.yaml -d --until deployed` on the example folder
itself (the Axon's `local` artifact: the scripts run where they are, with the executor's
interpreter for `python`), in the tiny configuration (`RANVIER_DEMO_TINY=1`) with the committed
sample corpus (`SHAKESPEARE_SOURCE`, which preprocess.py reads; the Axon is not edited). Then,
as a user would: the fixed URL from `ranvier endpoint ml-gpt2 -o json`, a `/predict` that
continues Hamlet's line, 20 rewards of 0 through `/send-feedback` (request + reward, as the
README sends them), the accuracy gauge below 0.90, exactly one retrain fine-tuned from version
1, version 2 deployed next to version 1 (Myelin's rolloutSpec: 50/50 across the two newest
versions) and answering, the Alert's condition reading both versions' gauges (their mean), and
no further retrain over several metric intervals.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.timeout(180)]

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "gpt2-shakespeare"
NAME = "ml-gpt2"
PROMPT = "To be, or not to be: that is the question"
PAYLOAD = {"data": {"ndarray": [PROMPT]}}
GAUGE = "shakespeare_gpt2_deploy_accuracy"
INTERVAL = 5.0
"""The Axon's metric interval: spec.metrics is unset, so the default (scrape, 5 s)."""
WAIT = 90.0


def showcase_env(tmp_path: Path) -> dict[str, str]:
    """The user's environment, tiny, offline: the sample corpus and a private cache."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RANVIER_", "GPT2_"))}
    env.update(
        RANVIER_DEMO_TINY="1",
        RANVIER_CACHE=str(tmp_path / "cache"),
        SHAKESPEARE_SOURCE=str(EXAMPLE / "sample"),
    )
    return env


def ranvier(*argv: str, state: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ranvier", *argv, "--state-dir", str(state)],
        capture_output=True,
        text=True,
        env=env,
        cwd=state.parent,
        timeout=150,
        check=False,
    )


def until(what: str, check: Callable[[], Any], limit: float = WAIT) -> Any:
    """Poll `check` until it returns something truthy; fail naming `what` after `limit` s."""
    deadline = time.monotonic() + limit
    while True:
        found = check()
        if found:
            return found
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.5)


def gauge(text: str) -> float | None:
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == GAUGE:
                return float(sample.value)
    return None


class User:
    """What a user of the showcase runs: the CLI and curl (here httpx)."""

    def __init__(self, state: Path, env: dict[str, str], http: httpx.Client) -> None:
        self.state, self.env, self.http = state, env, http

    def status(self) -> dict[str, Any]:
        shown = ranvier("get", "axon", NAME, "-o", "json", state=self.state, env=self.env)
        assert shown.returncode == 0, shown.stderr
        found: dict[str, Any] = json.loads(shown.stdout)
        return found

    def runs(self, kind: str, name: str) -> list[dict[str, Any]]:
        status = self.status()
        return next(x["runs"] for x in status[kind] if x["name"] == name)

    def backends(self) -> dict[str, dict[str, Any]]:
        shown = ranvier("endpoint", NAME, "-o", "json", state=self.state, env=self.env)
        assert shown.returncode == 0, shown.stderr
        found = json.loads(shown.stdout)["models"]
        return {b["version"]: b for m in found for b in m["backends"]}

    def condition_value(self, after: float) -> float | None:
        """The alert's query value the watcher published from a scrape after `after` (epoch s)."""
        argv = ("events", "export", "--axon", NAME, "--type", "metric")
        shown = ranvier(*argv, state=self.state, env=self.env)
        assert shown.returncode == 0, shown.stderr
        for line in reversed(shown.stdout.splitlines()):
            data = json.loads(line)["data"]
            if data.get("trigger") != "DeployAccuracy":
                continue
            stamp = datetime.fromisoformat(data["sample_time"].replace("Z", "+00:00"))
            if stamp.timestamp() > after and data["value"] is not None:
                return float(data["value"])
        return None

    def predict(self, url: str) -> dict[str, Any]:
        answer = self.http.post(f"{url}predict", json=PAYLOAD)
        assert answer.status_code == 200, answer.text
        found: dict[str, Any] = answer.json()
        return found


def test_gpt2_showcase_retrains_on_bad_feedback(tmp_path: Path) -> None:
    state = tmp_path / "state"
    env = showcase_env(tmp_path)
    axon = str(EXAMPLE / "axon.yaml")
    up = ranvier("up", axon, "-d", "--until", "deployed", "--timeout", "120", state=state, env=env)
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        with httpx.Client(timeout=30.0) as http:
            check_showcase(User(state, env, http))
    finally:
        down = ranvier("down", state=state, env=env)
        assert down.returncode == 0, down.stdout + down.stderr


def check_showcase(user: User) -> None:
    shown = ranvier("endpoint", NAME, "-o", "json", state=user.state, env=user.env)
    assert shown.returncode == 0, shown.stderr
    url = json.loads(shown.stdout)["fixedUrl"]

    # Version 1 serves: the prompt plus at least 50 characters.
    [first] = user.backends().values()
    assert first["version"] == "1"
    answer = user.predict(url)
    [text] = answer["data"]["ndarray"]
    assert text.startswith(PROMPT)
    assert len(text) - len(PROMPT) >= 50, text
    assert answer["meta"]["modelVersion"] == "1"
    assert user.runs("sensors", "PostDeploymentDecisionMaker") == []

    # 20 rewards of 0, sent as the README sends them (request + reward, no response): the
    # gauge (mean of the last 20) falls below 0.90.
    for _ in range(20):
        sent = user.http.post(f"{url}send-feedback", json={"request": PAYLOAD, "reward": 0})
        assert sent.status_code == 200, sent.text
    accuracy = gauge(user.http.get(f"{first['url']}/metrics").text)
    assert accuracy is not None
    assert accuracy < 0.90

    # Exactly one retrain, fine-tuned from version 1; then version 2 serves next to version 1.
    [retrain] = until(
        "the PostDeploymentDecisionMaker retrain",
        lambda: user.runs("sensors", "PostDeploymentDecisionMaker"),
    )
    assert retrain["trigger"] == "DeployAccuracy"
    backends = until("version 2 deployed", lambda: (b := user.backends()) and "2" in b and b)
    assert {v: b["weight"] for v, b in backends.items()} == {"2": 50.0, "1": 50.0}
    trains = user.runs("tasks", "TrainGPT2")
    assert [(r["phase"], r["version"]) for r in trains] == [("Succeeded", 1), ("Succeeded", 2)]
    [model] = [m for m in user.status()["models"] if m["task"] == "TrainGPT2"]
    metrics = {v["version"]: v["metrics"] for v in model["versions"]}
    assert metrics[2]["initialised_from"] == 1
    assert metrics[1]["initialised_from"] == 0  # version 1 started from fresh weights

    # Both versions answer at the fixed URL (the rolloutSpec splits traffic between them).
    seen: set[str] = set()

    def both_answer() -> bool:
        found = user.predict(url)
        [text] = found["data"]["ndarray"]
        assert text.startswith(PROMPT)
        seen.add(found["meta"]["modelVersion"])
        return seen == {"1", "2"}

    until("versions 1 and 2 answering", both_answer, limit=30.0)

    # Good feedback without an answer now reaches both serving versions, each with its own
    # gauge; Myelin's condition still reads a value (a bare {{name}} is the Axon's: the mean
    # of its series), not an unknown one.
    # Right after the redeploy the router's table may still name one version for a moment
    # (seen once in CI: 23 of 40 feedbacks reached only the new one), so rounds of 20 go until
    # both gauges are back at 1.0, a bounded number of times.
    gauges: list[float | None] = []
    for _ in range(10):
        for _ in range(20):
            sent = user.http.post(f"{url}send-feedback", json={"request": PAYLOAD, "reward": 1})
            assert sent.status_code == 200, sent.text
        gauges = [gauge(user.http.get(f"{b['url']}/metrics").text) for b in backends.values()]
        if gauges == [1.0, 1.0]:
            break
    stopped = time.time()
    assert gauges == [1.0, 1.0], gauges  # feedback without an answer reached both versions
    read = until("the watcher reading both gauges", lambda: user.condition_value(stopped))
    assert read == pytest.approx(sum(g for g in gauges if g is not None) / len(gauges))

    # No further retrain over several metric intervals.
    time.sleep(4 * INTERVAL)
    assert len(user.runs("sensors", "PostDeploymentDecisionMaker")) == 1
    assert len(user.runs("tasks", "TrainGPT2")) == 2
    assert len(user.runs("tasks", "DataPrepGPT2")) == 2  # the retrain prepares data again
