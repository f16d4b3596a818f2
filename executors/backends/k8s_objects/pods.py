"""The pod of a run: its store and artifacts, environment, command and resources.

Every kind of run object (Job, SparkApplication, TFJob, model-server Deployment) is made from
this one pod spec, so a task sees the same paths and variables whatever runs it, as the local
backend lays out its workspace.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from executors.backends.k8s_objects.names import (
    A_IMAGE,
    DATA_PATH,
    MODELS_PATH,
    ROLE_TASK,
    SERVER_PORT,
    STORE_MOUNT,
    TERMINATION_LOG,
    RenderError,
    env_name,
    job_name,
)
from executors.backends.k8s_objects.ownership import (
    Owner,
    RenderSettings,
    Run,
    object_meta,
    run_annotations,
    run_labels,
)
from executors.backends.k8s_objects.volumes import (
    artifact_mount,
    artifact_volume,
    git_artifacts,
    git_init,
    prepare_init,
    store_volume,
)
from executors.hpo import handover
from sensors.spec import Axon, EnvVar, Task, TaskBody


def _env_list(items: Sequence[EnvVar] | object, where: str) -> list[dict[str, Any]]:
    """EnvVar models (or the `{name, value}` dicts of an action's params) as container env."""
    if items is None:
        return []
    if isinstance(items, Mapping):
        return [{"name": str(k), "value": str(v)} for k, v in items.items()]
    if not isinstance(items, list | tuple):
        raise RenderError(f"{where}: env must be a list of {{name, value}}, got {items!r}")
    out: list[dict[str, Any]] = []
    for item in items:
        try:
            var = item if isinstance(item, EnvVar) else EnvVar.model_validate(item)
        except ValueError as exc:
            raise RenderError(f"{where}: invalid env entry {item!r}: {exc}") from None
        if var.value_from is not None and var.value_from.secret_key_ref is not None:
            ref = var.value_from.secret_key_ref
            out.append(
                {
                    "name": var.name,
                    "valueFrom": {"secretKeyRef": {"name": ref.name, "key": ref.key}},
                }
            )
        elif var.value_from is not None and var.value_from.config_map_key_ref is not None:
            ref = var.value_from.config_map_key_ref
            out.append(
                {
                    "name": var.name,
                    "valueFrom": {"configMapKeyRef": {"name": ref.name, "key": ref.key}},
                }
            )
        else:
            out.append({"name": var.name, "value": var.value or ""})
    return out


def merge_env(*groups: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Later groups override earlier ones by name; order of first appearance is kept."""
    merged: dict[str, dict[str, Any]] = {}
    for group in groups:
        for item in group:
            merged.pop(item["name"], None)
            merged[item["name"]] = item
    return list(merged.values())


def _resources(body: TaskBody) -> dict[str, Any] | None:
    if body.resources is None:
        return None
    out: dict[str, Any] = {}
    if body.resources.requests:
        out["requests"] = dict(body.resources.requests)
    if body.resources.limits:
        out["limits"] = dict(body.resources.limits)
    # Kubernetes requires extended resources (GPUs) to be limits; a request alone is refused.
    for name, amount in out.get("requests", {}).items():
        if "/" in name and "." in name.split("/", 1)[0]:
            out.setdefault("limits", {}).setdefault(name, amount)
    return out or None


def _storage(
    axon: Axon, settings: RenderSettings, model_path: str
) -> tuple[list[dict[str, Any]], list[Any], list[dict[str, Any]]]:
    """(init containers, pod volumes, main container mounts) of the store and git artifacts."""
    volumes: list[Any] = [store_volume(axon)]
    init: list[dict[str, Any]] = [
        prepare_init(
            sorted({DATA_PATH, model_path, *(f"{DATA_PATH}/{t.name}" for t in axon.spec.tasks)}),
            settings,
        )
    ]
    mounts: list[dict[str, Any]] = [{"name": "store", "mountPath": STORE_MOUNT}]
    for artifact in git_artifacts(axon):
        clone, extra = git_init(artifact, settings)
        init.append(clone)
        volumes.extend(extra)
        mounts.append({"name": artifact_volume(artifact), "mountPath": artifact_mount(artifact)})
    return init, volumes, mounts


def _env(
    axon: Axon, task: Task, run: Run, settings: RenderSettings, model_path: str
) -> list[dict[str, Any]]:
    """The main container's environment: ranvier's variables, the task's, then the action's."""
    system_env: list[dict[str, Any]] = [
        {"name": "DATA_PATH", "value": DATA_PATH},
        {"name": "MODEL_PATH", "value": model_path},
        {"name": "TASK_ID", "value": run.run_id},
        {"name": "TASK_NAME", "value": task.name},
        {"name": "AXON_NAME", "value": axon.metadata.name},
        {"name": "NAMESPACE", "value": axon.metadata.namespace},
        {"name": "PYTHONUNBUFFERED", "value": "1"},
        *({"name": env_name(t.name), "value": f"{DATA_PATH}/{t.name}"} for t in axon.spec.tasks),
    ]
    if settings.nats_url:
        system_env.append({"name": "RANVIER_NATS_URL", "value": settings.nats_url})
    if task.kind == "train":  # ranvier.sdk's report_metrics mirrors metrics.json there
        system_env.append({"name": "RANVIER_TERMINATION_LOG", "value": TERMINATION_LOG})
    return merge_env(
        system_env,
        _env_list(task.body.env, f"task {task.name!r}"),
        _env_list(run.request.params.get("env"), f"action for {task.name!r}"),
    )


def _command(
    task: Task, run: Run, model_path: str, port: int | None
) -> tuple[list[str], list[str]]:
    """(command, args) of the main container: the task's, a study trial's arguments appended;
    a deploy task with a model class and no command runs `ranvier serve`."""
    body = task.body
    command = list(body.command)
    trial = handover(run.request)  # a study's trial: `--config_id --budget --NAME VALUE`
    args = [*body.args, *(trial[0] if trial is not None else ())]
    if not command and task.deploy is not None and task.deploy.model is not None:
        command = ["ranvier", "serve", task.deploy.model, "--model-path", model_path]
        args = ["--port", str(port or SERVER_PORT), *args]
    return command, args


def pod_spec(
    axon: Axon,
    task: Task,
    run: Run,
    image: str,
    settings: RenderSettings,
    *,
    model_path: str,
    restart: str,
    port: int | None = None,
) -> dict[str, Any]:
    """The pod of one run: a `main` container after the init containers filling the store and
    the artifacts; with `port`, the container serves HTTP there with health probes."""
    body = task.body
    init, volumes, mounts = _storage(axon, settings, model_path)
    env = _env(axon, task, run, settings, model_path)
    container: dict[str, Any] = {"name": "main", "image": image, "env": env, "volumeMounts": mounts}
    command, args = _command(task, run, model_path, port)
    if command:
        container["command"] = command
    if args:
        container["args"] = args
    if body.working_dir is not None:
        container["workingDir"] = _working_dir(axon, task, body.working_dir)
    resources = _resources(body)
    if resources:
        container["resources"] = resources
    if port is not None:
        container["ports"] = [{"name": "http", "containerPort": port, "protocol": "TCP"}]
        probe = {"httpGet": {"path": "/health", "port": "http"}, "periodSeconds": 5}
        container["readinessProbe"] = {**probe, "initialDelaySeconds": 2}
        container["livenessProbe"] = {**probe, "initialDelaySeconds": 30, "failureThreshold": 6}
    spec: dict[str, Any] = {
        "restartPolicy": restart,
        "initContainers": init,
        "containers": [container],
        "volumes": volumes,
    }
    if axon.spec.service_account_name:
        spec["serviceAccountName"] = axon.spec.service_account_name
    if body.node_selector:
        spec["nodeSelector"] = dict(body.node_selector)
    if settings.image_pull_secrets:
        spec["imagePullSecrets"] = [{"name": n} for n in settings.image_pull_secrets]
    return spec


def _working_dir(axon: Axon, task: Task, working_dir: str) -> str:
    if working_dir.startswith("/"):
        return working_dir
    build = task.body.image_build
    artifact = axon.spec.artifact(build.artifact) if build is not None else None
    if artifact is None:
        sources = git_artifacts(axon)
        artifact = sources[0] if len(sources) == 1 else None
    if artifact is None:
        raise RenderError(
            f"task {task.name!r} has a relative workingDir {working_dir!r} but no git artifact "
            f"it could be relative to",
            hint="give an absolute workingDir inside the image",
        )
    return f"{artifact_mount(artifact).rstrip('/')}/{working_dir}"


def model_path(task: Task, run: Run) -> str:
    """MODEL_PATH of a run: a version directory for train and deploy, the models root else."""
    if task.kind in ("train", "deploy") and run.model_version is not None:
        return f"{MODELS_PATH}/{task.name}/{run.model_version}"
    return MODELS_PATH


@dataclass(frozen=True)
class RunPod:
    """What every object of one run of a non-deploy task is made from: its pod and labels, and
    the object's metadata (name, owner, the annotations the lifecycle watcher reads)."""

    pod: dict[str, Any]
    labels: dict[str, str]
    metadata: dict[str, Any]

    @classmethod
    def of(
        cls,
        axon: Axon,
        task: Task,
        run: Run,
        image: str,
        *,
        settings: RenderSettings,
        owner: Owner | None,
    ) -> RunPod:
        """The run's pod (restartPolicy Never) and the metadata of the object that runs it."""
        labels = run_labels(axon, task.name, run, ROLE_TASK)
        pod = pod_spec(
            axon, task, run, image, settings, model_path=model_path(task, run), restart="Never"
        )
        name = job_name(axon.metadata.name, task.name, run.run_id)
        annotations = {**run_annotations(axon, task.name, run), A_IMAGE: image}
        return cls(pod, labels, object_meta(name, axon, owner, labels, annotations))

    def manifest(self, api_version: str, kind: str, spec: dict[str, Any]) -> dict[str, Any]:
        """The run's object of `kind` with this metadata and `spec`."""
        return {"apiVersion": api_version, "kind": kind, "metadata": self.metadata, "spec": spec}
