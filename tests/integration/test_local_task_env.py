"""A local run's interpreter and inherited environment, seen from inside the task's process.

`command: [python, ...]` runs the executor's own interpreter (its virtualenv's packages without
activating it), and tasks inherit ranvier's non-secret settings (RANVIER_DEMO_TINY) but none
of its credentials.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

from events.model import ActionRequest
from executors.backends.local import CREDENTIAL_VARIABLES, LocalBackend
from sensors.spec import Axon

pytestmark = pytest.mark.integration

DUMP = (
    "import json, os, sys; "
    "print(json.dumps({'python': sys.executable, "
    "'env': {k: v for k, v in os.environ.items() if k.startswith('RANVIER_')}}))"
)


def axon(argv0: str) -> Axon:
    return Axon.model_validate(
        {
            "apiVersion": "ranvier.dev/v1alpha1",
            "kind": "Axon",
            "metadata": {"name": "envcheck"},
            "spec": {"tasks": [{"name": "Dump", "container": {"command": [argv0, "-c", DUMP]}}]},
        }
    )


@pytest.mark.parametrize("argv0", ["python", "python3"])
async def test_python_is_the_executors_interpreter_and_secrets_stay_out(
    tmp_path: Path, argv0: str
) -> None:
    secrets = dict.fromkeys(CREDENTIAL_VARIABLES, "s3cret")
    base = {
        **{k: v for k, v in os.environ.items() if not k.startswith("RANVIER_")},
        **secrets,
        "RANVIER_NATS_PASSWORD": "s3cret",
        "RANVIER_DEMO_TINY": "1",
        "RANVIER_CACHE": str(tmp_path / "cache"),
        "PATH": "/nonexistent",  # no `python` to find: only the substitution can run it
    }
    backend = LocalBackend(
        tmp_path / "state", nats_url="nats://127.0.0.1:4999", grace=0.5, base_env=base
    )
    request = ActionRequest(
        axon="envcheck",
        sensor="s",
        sensor_run_id="r",
        step=0,
        kind="resourceExecutor",
        task="Dump",
    )
    outcome = await backend.run(request, axon(argv0), tmp_path, run_id=f"run-{argv0}")
    assert outcome.phase == "Succeeded", outcome.message
    assert outcome.log_path is not None
    seen = json.loads(outcome.log_path.read_text().splitlines()[0])
    assert seen["python"] == sys.executable
    assert seen["env"] == {
        "RANVIER_DEMO_TINY": "1",
        "RANVIER_CACHE": str(tmp_path / "cache"),
        "RANVIER_NATS_URL": "nats://127.0.0.1:4999",
    }
