"""Where a local run's sources are (`task_source`), what it inherits, what `python` means.

One rule, shared by the local backend and the local deployer (table-driven below): the
imageBuild's artifact when it is local; else the Axon's only local artifact; else the named (or
only) git artifact; else the Axon file's directory.
"""

from __future__ import annotations

import sys
import typing
from typing import Any

import pytest
from pydantic import SecretStr

from executors.backends.local import (
    CREDENTIAL_VARIABLES,
    TaskSetupError,
    task_argv,
    task_environment,
    task_source,
)
from ranvier.settings import Settings
from sensors.spec import Axon

GIT = {"name": "repo", "path": "/src", "git": {"repo": "https://example.invalid/r.git"}}
GIT2 = {"name": "other", "git": {"repo": "https://example.invalid/o.git"}}
HERE = {"name": "here", "local": {"path": "."}}
CODE = {"name": "code", "local": {"path": "code"}}
S3 = {"name": "bucket", "s3": {"bucket": "b", "key": "k"}}


def axon(artifacts: list[dict[str, Any]], build: str | None, **body: Any) -> Axon:
    task: dict[str, Any] = {"command": ["python", "job.py"], **body}
    if build is not None:
        task["imageBuild"] = {
            "repositoryName": "img",
            "artifact": build,
            "buildLocation": "/src/app",
            "dockerfile": {"path": "Dockerfile"},
        }
    return Axon.model_validate(
        {
            "apiVersion": "ranvier.dev/v1alpha1",
            "kind": "Axon",
            "metadata": {"name": "demo"},
            "spec": {"artifacts": artifacts, "tasks": [{"name": "Job", "container": task}]},
        }
    )


@pytest.mark.parametrize(
    ("artifacts", "build", "body", "artifact", "subdir"),
    [
        # 1. the imageBuild's artifact when it is local (buildLocation applies, it is that one)
        ([GIT, HERE, CODE], "code", {}, "code", "src/app"),
        # 2. else the Axon's only local artifact (buildLocation is the git artifact's: ignored)
        ([GIT, HERE], "repo", {}, "here", None),
        ([HERE, GIT], "repo", {"workingDir": "jobs"}, "here", "jobs"),
        ([HERE], None, {}, "here", None),
        ([S3, HERE], "bucket", {}, "here", None),
        # 3. else the named git artifact (buildLocation relative to its mount path) ...
        ([GIT], "repo", {}, "repo", "app"),
        ([GIT, GIT2], "other", {}, "other", "src/app"),
        ([GIT, HERE, CODE], "repo", {}, "repo", "app"),
        ([GIT], "repo", {"workingDir": "w"}, "repo", "w"),
        # ... or, without an imageBuild, the only git artifact
        ([GIT], None, {}, "repo", None),
        ([GIT, S3], None, {}, "repo", None),
        # 4. else the Axon file's directory
        ([], None, {}, None, None),
        ([GIT, GIT2], None, {}, None, None),
        ([HERE, CODE], None, {"workingDir": "w"}, None, "w"),
        ([S3], None, {}, None, None),
    ],
)
def test_task_source(
    artifacts: list[dict[str, Any]],
    build: str | None,
    body: dict[str, Any],
    artifact: str | None,
    subdir: str | None,
) -> None:
    spec = axon(artifacts, build, **body)
    [task] = spec.spec.tasks
    found = task_source(spec, task)
    assert (found.artifact.name if found.artifact else None, found.subdir) == (artifact, subdir)


@pytest.mark.parametrize(
    ("artifacts", "build", "message"),
    [
        ([GIT], "missing", "builds from artifact 'missing', which is not in spec.artifacts"),
        ([S3, GIT], "bucket", "artifact 'bucket' of task 'Job' is in S3"),
        ([S3, HERE, CODE], "bucket", "artifact 'bucket' of task 'Job' is in S3"),
    ],
)
def test_task_source_errors(artifacts: list[dict[str, Any]], build: str, message: str) -> None:
    spec = axon(artifacts, build)
    with pytest.raises(TaskSetupError, match=message):
        task_source(spec, spec.spec.tasks[0])


def _credential_settings() -> set[str]:
    """`RANVIER_<FIELD>` of every Settings field that holds or points at a credential."""
    found = set()
    for name, field in Settings.model_fields.items():
        secret = SecretStr in typing.get_args(field.annotation) or field.annotation is SecretStr
        if secret or name in {"user", "creds_file", "nkey_seed"}:
            found.add(f"RANVIER_{name.upper()}")
    return found


def test_every_credential_setting_is_listed() -> None:
    assert _credential_settings() == {
        "RANVIER_USER",
        "RANVIER_PASSWORD",
        "RANVIER_TOKEN",
        "RANVIER_CREDS_FILE",
        "RANVIER_NKEY_SEED",
    }
    assert _credential_settings() <= CREDENTIAL_VARIABLES


@pytest.mark.parametrize(
    ("name", "kept"),
    [
        *((name, False) for name in sorted(CREDENTIAL_VARIABLES)),
        ("RANVIER_NATS_PASSWORD", False),
        ("RANVIER_REGISTRY_SECRET", False),
        ("RANVIER_API_KEY", False),
        ("RANVIER_DEMO_TINY", True),
        ("RANVIER_CACHE", True),
        ("RANVIER_LOG_LEVEL", True),
        ("RANVIER_STATE_DIR", True),
        ("RANVIER_TLS_CA_FILE", True),  # a public CA bundle, not a secret
        ("PATH", True),
        ("GPT2_STEPS", True),
        ("MY_TOKEN", True),  # not ranvier's: the user's business
    ],
)
def test_task_environment(name: str, kept: bool) -> None:
    env = task_environment({name: "v", "HOME": "/h"})
    assert env == ({name: "v", "HOME": "/h"} if kept else {"HOME": "/h"})


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["python", "train.py"], ["/venv/bin/python", "train.py"]),
        (["python3", "-m", "x"], ["/venv/bin/python", "-m", "x"]),
        (["python3.11", "x.py"], ["python3.11", "x.py"]),
        (["/usr/bin/python3", "x.py"], ["/usr/bin/python3", "x.py"]),
        (["sh", "-c", "python x.py"], ["sh", "-c", "python x.py"]),
        (["echo", "python"], ["echo", "python"]),
        ([], []),
    ],
)
def test_task_argv(argv: list[str], expected: list[str]) -> None:
    assert task_argv(argv, "/venv/bin/python") == expected


def test_the_default_python_is_this_interpreter() -> None:
    assert task_argv(["python"], sys.executable) == [sys.executable]
