"""Which tasks the kubernetes backend runs, and the object one run of a task creates."""

from __future__ import annotations

from typing import Any

from executors.backends.k8s_objects.names import JOB_TTL, RenderError
from executors.backends.k8s_objects.operators import (
    SPARK_KIND,
    TFJOB_KIND,
    is_tf_job,
    spark_application,
    tf_job,
)
from executors.backends.k8s_objects.ownership import Owner, RenderSettings, Run
from executors.backends.k8s_objects.pods import RunPod
from sensors.spec import Axon, Task


def check_runnable(axon: Axon, kind: str, task_name: str) -> Task:
    """The task an action runs on Kubernetes, or a RenderError saying why it cannot."""
    task = axon.spec.task(task_name)
    if task is None:
        names = ", ".join(t.name for t in axon.spec.tasks)
        raise RenderError(
            f"no task named {task_name!r} in axon {axon.metadata.name!r} (tasks: {names})"
        )
    wanted = {
        "resourceExecutor": ("container", "spark", "tfJob"),
        "trainer": ("train", "tfJob"),
        "deployer": ("deploy",),
    }
    if task.kind not in wanted.get(kind, ()):
        raise RenderError(f"task {task.name!r} is a {task.kind} task; {kind} cannot run it")
    if task.body.image is None and task.body.image_build is None:
        raise RenderError(
            f"task {task.name!r} has neither image nor imageBuild, which the kubernetes "
            f"backend needs",
            hint="add `image:` (or `imageBuild:`) to the task",
        )
    return task


def task_job(
    axon: Axon,
    task: Task,
    run: Run,
    image: str,
    *,
    settings: RenderSettings,
    owner: Owner | None,
) -> dict[str, Any]:
    """The Job of one container or train run."""
    parts = RunPod.of(axon, task, run, image, settings=settings, owner=owner)
    spec: dict[str, Any] = {
        "backoffLimit": 0,
        "ttlSecondsAfterFinished": JOB_TTL,
        "template": {"metadata": {"labels": parts.labels}, "spec": parts.pod},
    }
    if task.body.timeout is not None:
        spec["activeDeadlineSeconds"] = max(1, round(task.body.timeout))
    return parts.manifest("batch/v1", "Job", spec)


def run_kind(task: Task) -> str:
    """The kind of object one run of a non-deploy task creates: Job, SparkApplication, TFJob."""
    if task.kind == "spark":
        return SPARK_KIND
    if is_tf_job(task):
        return TFJOB_KIND
    return "Job"


def task_object(
    axon: Axon,
    task: Task,
    run: Run,
    image: str,
    *,
    settings: RenderSettings,
    owner: Owner | None,
) -> dict[str, Any]:
    """What one run of a non-deploy task creates: a Job, a SparkApplication or a TFJob."""
    kind = run_kind(task)
    if kind == SPARK_KIND:
        return spark_application(axon, task, run, image, settings=settings, owner=owner)
    if kind == TFJOB_KIND:
        return tf_job(axon, task, run, image, settings=settings, owner=owner)
    return task_job(axon, task, run, image, settings=settings, owner=owner)
