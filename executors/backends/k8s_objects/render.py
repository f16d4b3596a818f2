"""Everything an Axon would create, as `ranvier k8s render` prints it."""

from __future__ import annotations

from typing import Any, Final

from events.model import ActionRequest
from executors.backends.k8s_objects.builds import build_job, image_ref
from executors.backends.k8s_objects.jobs import check_runnable, task_object
from executors.backends.k8s_objects.ownership import (
    RenderSettings,
    Run,
    anchor_config_map,
    placeholder_owner,
    store_claim,
)
from executors.backends.k8s_objects.servers import server_objects
from sensors.spec import Axon, Task


def render_request(axon: Axon, task: Task) -> ActionRequest:
    """The action a render shows for a task (the first sensor action that runs it, if any)."""
    kind = RENDER_ACTIONS[task.kind]
    for sensor in axon.spec.sensors:
        for step_index, step in enumerate(sensor.steps):
            for index, action in enumerate(step):
                names = {action.task_name}
                if action.deployer is not None:
                    names = {b.deployer for m in action.deployer.models for b in m.backend_models}
                if task.name in names:
                    return ActionRequest(
                        axon=axon.metadata.name,
                        namespace=axon.metadata.namespace,
                        sensor=sensor.name,
                        sensor_run_id="render",
                        step=step_index,
                        index=index,
                        kind=action.kind,
                        task=action.task_name,
                        params={"env": [e.model_dump(by_alias=True) for e in action.env]},
                    )
    return ActionRequest(
        axon=axon.metadata.name,
        namespace=axon.metadata.namespace,
        sensor="render",
        sensor_run_id="render",
        step=0,
        kind=kind,  # type: ignore[arg-type]  # the mapping's values are ActionKind
        task=task.name,
    )


# The action `ranvier k8s render` shows each task kind run by.
RENDER_ACTIONS: Final = {
    "container": "resourceExecutor",
    "spark": "resourceExecutor",
    "train": "trainer",
    "tfJob": "trainer",
    "deploy": "deployer",
}


def render_axon(
    axon: Axon, settings: RenderSettings, *, existing_images: frozenset[str] = frozenset()
) -> tuple[list[dict[str, Any]], list[str]]:
    """The objects an Axon's tasks would create (anchor, store, builds, Jobs, servers) and notes.

    Runs are shown with the run id `render` and model version `1`. Image builds whose image is in
    `existing_images` are left out (as `checkImageExists` skips them); an s2i build is left out
    with a note, since the backend runs such a task only when its image already exists.
    """
    owner = placeholder_owner(axon)
    head: list[dict[str, Any]] = [anchor_config_map(axon)]
    claim = store_claim(axon, owner)
    if claim is not None:
        head.append(claim)
    builds: dict[str, dict[str, Any]] = {}
    runs: list[dict[str, Any]] = []
    notes: list[str] = []
    kinds = RENDER_ACTIONS
    for task in axon.spec.tasks:
        if task.kind not in kinds:
            notes.append(f"task {task.name!r} ({task.kind}) is not run by the kubernetes backend")
            continue
        check_runnable(axon, kinds[task.kind], task.name)
        image = image_ref(axon, task, settings)
        build = task.body.image_build
        if build is not None and image not in existing_images:
            if build.s2i is not None:
                notes.append(
                    f"task {task.name!r} builds with s2i, which is not supported: it runs only "
                    f"if {image} already exists (build it yourself, or use a dockerfile)"
                )
            else:
                job = build_job(axon, task, settings, owner)
                builds.setdefault(job["metadata"]["name"], job)
        request = render_request(axon, task)
        run = Run(
            request, "render", model_version="1" if task.kind in ("train", "deploy") else None
        )
        if task.kind == "deploy":
            runs.extend(server_objects(axon, task, run, image, settings=settings, owner=owner))
        else:
            runs.append(task_object(axon, task, run, image, settings=settings, owner=owner))
    return [*head, *builds.values(), *runs], notes
