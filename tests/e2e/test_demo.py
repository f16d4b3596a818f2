"""`make demo` (`python -m ranvier.demo`): the showcase reaches deployed and says what to try.

Tiny configuration (`RANVIER_DEMO_TINY=1`, the committed sample corpus), a tmp state dir; the
`ranvier up` the demo leaves running is stopped with `ranvier down` in the teardown. The curl it
prints is then run as printed (through the fixed URL the endpoint command gives).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.timeout(180)]

REPO = Path(__file__).resolve().parents[2]
CURL = """URL=$(ranvier endpoint ml-gpt2 -o json | jq -r '.fixedUrl')
  curl -d "$DATA" ${URL}predict"""
DATA = """DATA='{"data": {"ndarray": ["To be, or not to be: that is the question"]}}'"""


def ranvier(*argv: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ranvier", *argv],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )


def test_demo_reaches_deployed_and_prints_the_curl(tmp_path: Path) -> None:
    state = tmp_path / "demo-state"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RANVIER_", "GPT2_"))}
    env.update(
        RANVIER_DEMO_TINY="1",
        RANVIER_CACHE=str(tmp_path / "cache"),
        RANVIER_DEMO_STATE_DIR=str(state),
    )
    env.pop("SHAKESPEARE_SOURCE", None)  # the demo picks the sample corpus itself when tiny
    try:
        done = subprocess.run(
            [sys.executable, "-m", "ranvier.demo"],
            capture_output=True,
            text=True,
            env=env,
            cwd=tmp_path,
            timeout=170,
            check=False,
        )
        assert done.returncode == 0, done.stdout + done.stderr
        out = done.stdout
        assert "--until deployed reached" in out
        assert "TrainGPT2 #1 (version 1): Succeeded" in out
        assert DATA in out
        assert CURL in out
        assert "ranvier watch axon ml-gpt2" in out
        assert "ranvier down" in out
        assert f'RANVIER_STATE_DIR="{state}"' in out
        console = (state / "api.url").read_text().strip()
        assert f"console: {console}" in out  # printed by `ranvier up -d`
        assert f"\n  {console}\n" in out  # and again with the next steps

        # What the printed lines do: the endpoint's fixed URL continues the prompt.
        shown = ranvier(
            "endpoint", "ml-gpt2", "-o", "json", env={**env, "RANVIER_STATE_DIR": str(state)}
        )
        assert shown.returncode == 0, shown.stderr
        url = json.loads(shown.stdout)["fixedUrl"]
        payload = json.loads(DATA.removeprefix("DATA='").removesuffix("'"))
        answer = httpx.post(f"{url}predict", content=json.dumps(payload), timeout=30.0)
        assert answer.status_code == 200, answer.text
        [text] = answer.json()["data"]["ndarray"]
        assert text.startswith("To be, or not to be: that is the question")
    finally:
        if (state / "up.pid").exists():
            down = ranvier("down", "--state-dir", str(state), env=env)
            # a demo whose `up` already exited leaves nothing to stop
            assert down.returncode == 0 or "no ranvier up is running" in down.stderr, down.stderr
