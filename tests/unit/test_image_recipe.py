"""The Dockerfile (not built in CI: no container engine there) keeps the promises the README
and the manifests rely on: multi-stage, slim base, installs through constraints.txt, runs as
the uid the manifests set, no compiler in the final stage, and `.dockerignore` lets in exactly
what it copies."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]


def stages() -> list[list[str]]:
    lines = [
        line.strip()
        for line in (ROOT / "Dockerfile").read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]
    found: list[list[str]] = []
    for line in lines:
        if line.startswith("FROM "):
            found.append([])
        if found:
            found[-1].append(line)
    return found


def test_two_stages_on_a_slim_python_and_the_final_one_has_no_compiler() -> None:
    build, final = stages()
    text = (ROOT / "Dockerfile").read_text(encoding="utf-8")
    assert re.search(r"ARG PYTHON_IMAGE=python:3\.11-slim", text)
    assert "build-essential" in " ".join(build)
    assert not any("apt-get" in line or "pip install" in line for line in final)
    assert any(line.startswith("COPY --from=build /opt/ranvier") for line in final)
    assert any("-c constraints.txt" in line for line in build)


def test_the_image_runs_as_the_uid_the_manifests_set() -> None:
    _, final = stages()
    (user,) = [line for line in final if line.startswith("USER ")]
    uid = user.split()[1].split(":")[0]
    plane = yaml.safe_load_all((ROOT / "manifests/base/control-plane.yaml").read_text())
    for doc in plane:
        if doc["kind"] == "Deployment":
            assert str(doc["spec"]["template"]["spec"]["securityContext"]["runAsUser"]) == uid
    assert any(line == 'ENTRYPOINT ["ranvier"]' for line in final)


def test_dockerignore_lets_in_what_the_dockerfile_copies() -> None:
    build, _ = stages()
    allowed = {
        line[1:].rstrip("/")
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.startswith("!")
    }
    copied: set[str] = set()
    for line in build:
        if line.startswith("COPY ") and "--from" not in line:
            copied.update(line.split()[1:-1])
    assert copied == allowed
    for name in copied:
        assert (ROOT / name).exists(), name
