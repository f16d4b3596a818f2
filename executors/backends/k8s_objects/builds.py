"""Image builds: which image a task runs, and the kaniko Job that builds it from git.

An `imageBuild` without `image` runs `<registry>/<repositoryName>:<content hash>`; one build
Job per tag is shared by concurrent runs. s2i is refused.
"""

from __future__ import annotations

import copy
import hashlib
import json
from typing import Any

from executors.backends.k8s_objects.names import (
    A_AXON,
    A_IMAGE,
    A_TASK,
    JOB_TTL,
    L_TASK,
    ROLE_BUILD,
    RenderError,
    dns_label,
    label_value,
)
from executors.backends.k8s_objects.ownership import Owner, RenderSettings, base_labels, object_meta
from executors.backends.k8s_objects.volumes import artifact_mount, artifact_volume, git_init
from sensors.spec import Artifact, Axon, ImageBuild, Task


def build_source(axon: Axon, build: ImageBuild, task: str) -> Artifact:
    """The artifact an imageBuild builds from; RenderError when it cannot be built here."""
    artifact = axon.spec.artifact(build.artifact)
    if artifact is None:
        raise RenderError(
            f"task {task!r} builds from artifact {build.artifact!r}, which is not in spec.artifacts"
        )
    if artifact.git is None:
        raise RenderError(
            f"task {task!r} builds from artifact {artifact.name!r}, which is not a git "
            f"artifact; the kubernetes backend builds images from git sources",
            hint="use a git artifact, or build the image yourself and set `image`",
        )
    return artifact


def content_tag(axon: Axon, build: ImageBuild, task: str) -> str:
    """The tag of a build: its `tag`, else a digest of what determines the image's content.

    That is the source (repository and revision), the build location and the Dockerfile (or s2i
    settings). A branch revision gives the same tag until the spec changes: pin a commit (or
    set `tag`) when a branch moves.
    """
    if build.tag:
        return build.tag
    artifact = build_source(axon, build, task)
    assert artifact.git is not None
    source = {
        "repo": artifact.git.repo,
        "revision": artifact.git.revision,
        "buildLocation": build.build_location,
        "dockerfile": build.dockerfile.path if build.dockerfile else None,
        "s2i": build.s2i.model_dump(by_alias=True) if build.s2i else None,
    }
    raw = json.dumps(source, sort_keys=True).encode("utf-8")
    return hashlib.sha256(raw).hexdigest()[:16]


def image_ref(axon: Axon, task: Task, settings: RenderSettings) -> str:
    """The image a task runs: its `image`, or where its imageBuild pushes."""
    body = task.body
    if body.image is not None:
        return body.image
    build = body.image_build
    assert build is not None
    if not settings.registry:
        raise RenderError(
            f"task {task.name!r} builds its image, but no registry is configured",
            hint="set RANVIER_REGISTRY (e.g. registry.example.com/ml)",
        )
    tag = content_tag(axon, build, task.name)
    return f"{settings.registry.rstrip('/')}/{build.repository_name}:{tag}"


def build_job_name(axon: str, build: ImageBuild, tag: str) -> str:
    """One build Job per (repository, content tag): concurrent runs share it."""
    return dns_label(axon, "build", build.repository_name, tag[:12])


def _context_dir(artifact: Artifact, build_location: str) -> str:
    """The build context inside the kaniko pod: buildLocation, relative to the artifact mount."""
    mount = artifact_mount(artifact).rstrip("/")
    location = build_location.rstrip("/") or "/"
    if location == mount or location.startswith(f"{mount}/"):
        return location
    return f"{mount}/{location.lstrip('/')}".rstrip("/") or "/"


def _kaniko_pod(
    axon: Axon, build: ImageBuild, artifact: Artifact, image: str, settings: RenderSettings
) -> dict[str, Any]:
    """The build's pod: clone the artifact, then kaniko builds the Dockerfile and pushes
    `image` (with the registry Secret mounted as its docker config, when one is set)."""
    assert build.dockerfile is not None
    context = _context_dir(artifact, build.build_location)
    clone, volumes = git_init(artifact, settings)
    mounts: list[dict[str, Any]] = [
        {"name": artifact_volume(artifact), "mountPath": artifact_mount(artifact)}
    ]
    if settings.registry_secret:
        volumes.append(
            {
                "name": "registry-auth",
                "secret": {
                    "secretName": settings.registry_secret,
                    "items": [{"key": ".dockerconfigjson", "path": "config.json"}],
                },
            }
        )
        mounts.append({"name": "registry-auth", "mountPath": "/kaniko/.docker", "readOnly": True})
    kaniko = {
        "name": "kaniko",
        "image": settings.kaniko_image,
        "args": [
            f"--context=dir://{context}",
            f"--dockerfile={context.rstrip('/')}/{build.dockerfile.path}",
            f"--destination={image}",
            "--cache=true",
        ],
        "volumeMounts": [*mounts, *copy.deepcopy(build.volume_mounts)],
    }
    pod: dict[str, Any] = {
        "restartPolicy": "Never",
        "initContainers": [clone],
        "containers": [kaniko],
        "volumes": [*volumes, *copy.deepcopy(build.volumes)],
    }
    if axon.spec.service_account_name:
        pod["serviceAccountName"] = axon.spec.service_account_name
    return pod


def build_job(
    axon: Axon, task: Task, settings: RenderSettings, owner: Owner | None
) -> dict[str, Any]:
    """The kaniko Job that builds a task's image from its git artifact and pushes it."""
    build = task.body.image_build
    assert build is not None
    if build.s2i is not None:
        raise RenderError(
            f"task {task.name!r} builds its image with s2i, which the kubernetes backend "
            f"does not support",
            hint="use `dockerfile:` in imageBuild, or build the image yourself and set `image`",
        )
    artifact = build_source(axon, build, task.name)
    image = image_ref(axon, task, settings)
    tag = image.rsplit(":", 1)[1]
    name = build_job_name(axon.metadata.name, build, tag)
    pod = _kaniko_pod(axon, build, artifact, image, settings)
    labels = {
        **base_labels(axon, ROLE_BUILD),
        L_TASK: label_value(task.name),
        "ranvier.dev/image-tag": label_value(tag),
    }
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": object_meta(
            name,
            axon,
            owner,
            labels,
            {A_AXON: axon.metadata.name, A_TASK: task.name, A_IMAGE: image},
        ),
        "spec": {
            "backoffLimit": 1,
            "ttlSecondsAfterFinished": JOB_TTL,
            "template": {"metadata": {"labels": labels}, "spec": pod},
        },
    }
