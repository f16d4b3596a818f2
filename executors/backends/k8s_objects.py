"""The Kubernetes objects an Axon's actions create, as plain dicts (pure: no client, no I/O).

Keeping the rendering apart from the client means `ranvier k8s render` prints exactly what the
backend would create, and the tests validate every object against the official schemas without a
cluster. The backend (`executors.backends.kubernetes`) only adds what the cluster knows: the
owner's uid, and which images already exist.

What an Axon becomes:

- container and train tasks: a `Job` per run (`backoffLimit: 0`: retries are the sensors' job);
- deploy tasks: a `Deployment` and a `Service` per (task, model version), re-labelled by each run;
- an `imageBuild` without `image`: a kaniko `Job` that builds the Dockerfile from the artifact at
  `buildLocation` and pushes `<registry>/<repositoryName>:<content hash>` (s2i is refused);
- `volumeClaimTemplate`: one `PersistentVolumeClaim` per Axon; `volume`: used as given; either
  way the store is mounted at `/ranvier` (`DATA_PATH=/ranvier/data`, models under
  `/ranvier/models`), as the local backend lays out its workspace;
- git artifacts: an init container clones the revision (with the ssh key Secret when given)
  into a volume mounted at the artifact's `path`.

Ownership: every object carries an ownerReference to the Axon custom object when one exists in
the namespace, else to a per-Axon ConfigMap anchor (`ranvier-axon-<name>`). Deleting either
deletes everything the Axon created, through Kubernetes' garbage collector.

Labels are for selecting (sanitised to Kubernetes' label rules, with a digest when anything had
to change, so different names never share a value); annotations keep the exact names and the
action request, so the lifecycle watcher can report a run without asking the executor.
"""

from __future__ import annotations

import copy
import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from events.errors import RanvierError
from events.model import ActionRequest
from executors.hpo import handover
from sensors.spec import Artifact, Axon, EnvVar, ImageBuild, SparkSpec, Task, TaskBody

# The Axon custom resource (manifests/crd).
GROUP: Final = "ranvier.dev"
VERSION: Final = "v1alpha1"
PLURAL: Final = "axons"
KIND: Final = "Axon"

# Labels (selectable, sanitised) and annotations (exact).
MANAGED_BY: Final = "app.kubernetes.io/managed-by"
MANAGER: Final = "ranvier"
L_AXON: Final = "ranvier.dev/axon"
L_TASK: Final = "ranvier.dev/task"
L_RUN: Final = "ranvier.dev/run"
L_VERSION: Final = "ranvier.dev/version"
L_MODEL_VERSION: Final = "ranvier.dev/model-version"
L_ROLE: Final = "ranvier.dev/role"
L_DEPLOYMENT: Final = "ranvier.dev/deployment"
A_AXON: Final = "ranvier.dev/axon"
A_NAMESPACE: Final = "ranvier.dev/namespace"
A_TASK: Final = "ranvier.dev/task"
A_RUN: Final = "ranvier.dev/run-id"
A_ACTION: Final = "ranvier.dev/action"
A_IMAGE: Final = "ranvier.dev/image"

ROLE_TASK: Final = "task"
ROLE_BUILD: Final = "build"
ROLE_SERVER: Final = "server"
ROLE_ANCHOR: Final = "anchor"
ROLE_STORE: Final = "store"

STORE_MOUNT: Final = "/ranvier"
DATA_PATH: Final = f"{STORE_MOUNT}/data"
MODELS_PATH: Final = f"{STORE_MOUNT}/models"
SERVER_PORT: Final = 8000
SERVICE_PORT: Final = 80
TERMINATION_LOG: Final = "/dev/termination-log"
JOB_TTL: Final = 86_400  # finished Jobs stay a day, long enough for a watcher to catch up

_LABEL_BAD = re.compile(r"[^A-Za-z0-9_.-]")
_DNS_BAD = re.compile(r"[^a-z0-9-]")
_ENV_BAD = re.compile(r"[^A-Za-z0-9_]")


class RenderError(RanvierError, ValueError):
    """An Axon task that cannot become Kubernetes objects as written (say what to change)."""


# ---------------------------------------------------------------------------------------------
# Names


def _digest(text: str, size: int = 4) -> str:
    return hashlib.blake2s(text.encode("utf-8"), digest_size=size).hexdigest()


def label_value(text: str) -> str:
    """`text` as a label value: at most 63 of `[A-Za-z0-9_.-]`, alphanumeric at both ends.

    Values that are already valid are kept; anything else is cleaned and gets a digest of the
    original, so two different names never map to the same value.
    """
    if len(text) <= 63 and re.fullmatch(r"([A-Za-z0-9]([A-Za-z0-9_.-]*[A-Za-z0-9])?)?", text):
        return text
    cleaned = _LABEL_BAD.sub("-", text).strip("-_.")[:54].strip("-_.")
    return f"{cleaned}-{_digest(text)}" if cleaned else _digest(text)


def dns_label(*parts: str, limit: int = 63) -> str:
    """A DNS-1035 label (lowercase, digits, `-`; starts with a letter) made of `parts`.

    Kept readable when it fits; shortened with a digest of all parts when it does not, or when
    cleaning changed anything, so distinct inputs give distinct names.
    """
    raw = "-".join(parts)
    cleaned = re.sub(r"-+", "-", _DNS_BAD.sub("-", raw.lower())).strip("-")
    if not cleaned or not cleaned[0].isalpha():
        cleaned = f"r-{cleaned}".rstrip("-")
    if cleaned == raw and len(cleaned) <= limit:
        return cleaned
    digest = _digest(raw)
    return f"{cleaned[: limit - len(digest) - 1].rstrip('-')}-{digest}"


def anchor_name(axon: str) -> str:
    """The per-Axon ConfigMap that owns its objects when there is no Axon custom object."""
    return dns_label("ranvier-axon", axon)


def job_name(axon: str, task: str, run_id: str) -> str:
    """The Job of one task run."""
    return dns_label(axon, task, run_id)


def server_name(axon: str, task: str, version: str) -> str:
    """The Deployment and Service of one deploy task serving one model version."""
    return dns_label(axon, task, f"v{version}")


def claim_name(axon: Axon) -> str | None:
    """The PersistentVolumeClaim of the Axon's store, if it declares a volumeClaimTemplate."""
    template = axon.spec.volume_claim_template
    if template is None:
        return None
    return dns_label(axon.metadata.name, template.metadata.name)


def env_name(task_name: str) -> str:
    """The DATA_PATH_<Task> variable (as the local backend names it)."""
    return f"DATA_PATH_{_ENV_BAD.sub('_', task_name)}"


# ---------------------------------------------------------------------------------------------
# Settings and ownership


@dataclass(frozen=True)
class RenderSettings:
    """What the cluster deployment decides, not the Axon (from RANVIER_* settings)."""

    registry: str | None = None
    registry_secret: str | None = None
    nats_url: str | None = None
    kaniko_image: str = "gcr.io/kaniko-project/executor:v1.23.2"
    git_image: str = "alpine/git:2.45.2"
    busybox_image: str = "busybox:1.36.1"
    image_pull_secrets: tuple[str, ...] = ()


@dataclass(frozen=True)
class Owner:
    """The object every object of an Axon is owned by (Axon custom object or anchor ConfigMap)."""

    api_version: str
    kind: str
    name: str
    uid: str

    def reference(self) -> dict[str, Any]:
        """The ownerReference: not a controller, so nothing else is implied."""
        return {
            "apiVersion": self.api_version,
            "kind": self.kind,
            "name": self.name,
            "uid": self.uid,
            "blockOwnerDeletion": False,
        }


PLACEHOLDER_UID: Final = "00000000-0000-0000-0000-000000000000"


def placeholder_owner(axon: Axon) -> Owner:
    """The anchor as `ranvier k8s render` shows it (the cluster assigns the uid)."""
    return Owner("v1", "ConfigMap", anchor_name(axon.metadata.name), PLACEHOLDER_UID)


@dataclass(frozen=True)
class Run:
    """One action run, as far as rendering needs it."""

    request: ActionRequest
    run_id: str
    model_version: str | None = None
    labels: Mapping[str, str] = field(default_factory=dict)


def _base_labels(axon: Axon, role: str) -> dict[str, str]:
    return {
        MANAGED_BY: MANAGER,
        L_AXON: label_value(axon.metadata.name),
        L_ROLE: role,
    }


def _meta(
    name: str,
    axon: Axon,
    owner: Owner | None,
    labels: Mapping[str, str],
    annotations: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    meta: dict[str, Any] = {
        "name": name,
        "namespace": axon.metadata.namespace,
        "labels": dict(labels),
    }
    if annotations:
        meta["annotations"] = dict(annotations)
    if owner is not None:
        meta["ownerReferences"] = [owner.reference()]
    return meta


def run_labels(axon: Axon, task: str, run: Run, role: str) -> dict[str, str]:
    """Labels of a run's objects: axon, task, run, version (spec generation), model version."""
    labels = _base_labels(axon, role)
    labels[L_TASK] = label_value(task)
    labels[L_RUN] = label_value(run.run_id)
    labels[L_VERSION] = str(run.request.generation)
    if run.model_version is not None:
        labels[L_MODEL_VERSION] = label_value(run.model_version)
    labels.update(run.labels)
    return labels


def run_annotations(axon: Axon, task: str, run: Run) -> dict[str, str]:
    """Exact names and the action request, for the lifecycle watcher."""
    return {
        A_AXON: axon.metadata.name,
        A_NAMESPACE: axon.metadata.namespace,
        A_TASK: task,
        A_RUN: run.run_id,
        A_ACTION: json.dumps(run.request.model_dump(mode="json"), sort_keys=True),
    }


def anchor_config_map(axon: Axon) -> dict[str, Any]:
    """The ConfigMap that owns an Axon's objects when there is no Axon custom object."""
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": _meta(
            anchor_name(axon.metadata.name),
            axon,
            None,
            _base_labels(axon, ROLE_ANCHOR),
            {
                A_AXON: axon.metadata.name,
                "ranvier.dev/purpose": "Owns the objects this Axon created; delete it to "
                "delete them all.",
            },
        ),
        "data": {"axon": axon.metadata.name},
    }


def store_claim(axon: Axon, owner: Owner | None) -> dict[str, Any] | None:
    """The PersistentVolumeClaim of the Axon's volumeClaimTemplate, or None."""
    template = axon.spec.volume_claim_template
    name = claim_name(axon)
    if template is None or name is None:
        return None
    spec: dict[str, Any] = {"accessModes": list(template.spec.access_modes)}
    resources: dict[str, Any] = {}
    if template.spec.resources.requests:
        resources["requests"] = dict(template.spec.resources.requests)
    if template.spec.resources.limits:
        resources["limits"] = dict(template.spec.resources.limits)
    if not resources.get("requests", {}).get("storage"):
        raise RenderError(
            f"volumeClaimTemplate {template.metadata.name!r} of axon {axon.metadata.name!r} "
            f"has no resources.requests.storage",
            hint="add e.g. `resources: {requests: {storage: 1Gi}}`",
        )
    spec["resources"] = resources
    if template.spec.storage_class_name is not None:
        spec["storageClassName"] = template.spec.storage_class_name
    if template.spec.volume_mode is not None:
        spec["volumeMode"] = template.spec.volume_mode
    if template.spec.volume_name is not None:
        spec["volumeName"] = template.spec.volume_name
    labels = {**_base_labels(axon, ROLE_STORE), **template.metadata.labels}
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": _meta(name, axon, owner, labels, dict(template.metadata.annotations)),
        "spec": spec,
    }


# ---------------------------------------------------------------------------------------------
# Pod pieces


def _store_volume(axon: Axon) -> dict[str, Any]:
    """The pod volume of the Axon's store (claim, the given volume, or a scratch dir)."""
    name = claim_name(axon)
    if name is not None:
        return {"name": "store", "persistentVolumeClaim": {"claimName": name}}
    volume = axon.spec.volume
    if volume is None:
        return {"name": "store", "emptyDir": {}}
    if volume.host_path is not None:
        source: dict[str, Any] = {"path": volume.host_path.path}
        if volume.host_path.type is not None:
            source["type"] = volume.host_path.type
        return {"name": "store", "hostPath": source}
    if volume.flex_volume is not None:
        flex = volume.flex_volume
        source = {"driver": flex.driver, "readOnly": flex.read_only}
        if flex.fs_type is not None:
            source["fsType"] = flex.fs_type
        if flex.options:
            source["options"] = dict(flex.options)
        if flex.secret_ref is not None:
            source["secretRef"] = dict(flex.secret_ref)
        return {"name": "store", "flexVolume": source}
    if volume.persistent_volume_claim is not None:
        pvc = volume.persistent_volume_claim
        return {
            "name": "store",
            "persistentVolumeClaim": {"claimName": pvc.claim_name, "readOnly": pvc.read_only},
        }
    if volume.nfs is not None:
        nfs = volume.nfs
        return {
            "name": "store",
            "nfs": {"server": nfs.server, "path": nfs.path, "readOnly": nfs.read_only},
        }
    empty = volume.empty_dir
    source = {}
    if empty is not None and empty.medium is not None:
        source["medium"] = empty.medium
    if empty is not None and empty.size_limit is not None:
        source["sizeLimit"] = empty.size_limit
    return {"name": "store", "emptyDir": source}


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


def _merge_env(*groups: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Later groups override earlier ones by name; order of first appearance is kept."""
    merged: dict[str, dict[str, Any]] = {}
    for group in groups:
        for item in group:
            merged.pop(item["name"], None)
            merged[item["name"]] = item
    return list(merged.values())


def _artifact_mount(artifact: Artifact) -> str:
    return artifact.path or f"/artifacts/{artifact.name}"


def _artifact_volume(artifact: Artifact) -> str:
    return dns_label("artifact", artifact.name)


def _git_init(artifact: Artifact, settings: RenderSettings) -> tuple[dict[str, Any], list[Any]]:
    """The init container cloning a git artifact, and the volumes it needs."""
    git = artifact.git
    assert git is not None
    volume = _artifact_volume(artifact)
    mount = _artifact_mount(artifact)
    # The script never interpolates user text: repo, revision and credentials are variables.
    script = (
        "set -eu\n"
        'if [ -n "${GIT_PASSWORD:-}" ]; then\n'
        '  set -- -c "credential.helper=!f() { echo username=\\$GIT_USERNAME; '
        'echo password=\\$GIT_PASSWORD; }; f"\n'
        "fi\n"
        'git "$@" clone --quiet --no-checkout "$GIT_REPO" "$GIT_DEST"\n'
        'git -C "$GIT_DEST" checkout --quiet --detach "$GIT_REVISION" 2>/dev/null || '
        'git -C "$GIT_DEST" checkout --quiet --detach "origin/$GIT_REVISION"\n'
    )
    env: list[dict[str, Any]] = [
        {"name": "GIT_REPO", "value": git.repo},
        {"name": "GIT_REVISION", "value": git.revision},
        {"name": "GIT_DEST", "value": mount},
        {"name": "GIT_TERMINAL_PROMPT", "value": "0"},
        {"name": "HOME", "value": "/tmp"},
    ]
    mounts: list[dict[str, Any]] = [{"name": volume, "mountPath": mount}]
    volumes: list[Any] = [{"name": volume, "emptyDir": {}}]
    if git.ssh_private_key_secret is not None:
        key_volume = dns_label("git-ssh", artifact.name)
        volumes.append(
            {
                "name": key_volume,
                "secret": {
                    "secretName": git.ssh_private_key_secret.name,
                    "items": [{"key": git.ssh_private_key_secret.key, "path": "id"}],
                    "defaultMode": 0o400,
                },
            }
        )
        mounts.append({"name": key_volume, "mountPath": "/etc/ranvier/git-ssh", "readOnly": True})
        env.append(
            {
                "name": "GIT_SSH_COMMAND",
                "value": "ssh -i /etc/ranvier/git-ssh/id -o StrictHostKeyChecking=accept-new "
                "-o UserKnownHostsFile=/tmp/known_hosts",
            }
        )
    for var, secret in (
        ("GIT_USERNAME", git.username_secret),
        ("GIT_PASSWORD", git.password_secret),
    ):
        if secret is not None:
            env.append(
                {
                    "name": var,
                    "valueFrom": {"secretKeyRef": {"name": secret.name, "key": secret.key}},
                }
            )
    container = {
        "name": dns_label("clone", artifact.name),
        "image": settings.git_image,
        "command": ["sh", "-c", script],
        "env": env,
        "volumeMounts": mounts,
        "securityContext": _restricted(),
    }
    return container, volumes


def _restricted() -> dict[str, Any]:
    return {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}}


def _prepare_init(paths: Sequence[str], settings: RenderSettings) -> dict[str, Any]:
    """An init container creating the run's directories in the store (argv, no shell)."""
    return {
        "name": "prepare-store",
        "image": settings.busybox_image,
        "command": ["mkdir", "-p", *paths],
        "volumeMounts": [{"name": "store", "mountPath": STORE_MOUNT}],
        "securityContext": _restricted(),
    }


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


def _git_artifacts(axon: Axon) -> list[Artifact]:
    return [a for a in axon.spec.artifacts if a.git is not None]


def _pod_spec(
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
    body = task.body
    volumes: list[Any] = [_store_volume(axon)]
    init: list[dict[str, Any]] = [
        _prepare_init(
            sorted({DATA_PATH, model_path, *(f"{DATA_PATH}/{t.name}" for t in axon.spec.tasks)}),
            settings,
        )
    ]
    mounts: list[dict[str, Any]] = [{"name": "store", "mountPath": STORE_MOUNT}]
    for artifact in _git_artifacts(axon):
        clone, extra = _git_init(artifact, settings)
        init.append(clone)
        volumes.extend(extra)
        mounts.append({"name": _artifact_volume(artifact), "mountPath": _artifact_mount(artifact)})
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
    env = _merge_env(
        system_env,
        _env_list(body.env, f"task {task.name!r}"),
        _env_list(run.request.params.get("env"), f"action for {task.name!r}"),
    )
    container: dict[str, Any] = {"name": "main", "image": image, "env": env, "volumeMounts": mounts}
    command = list(body.command)
    trial = handover(run.request)  # a study's trial: `--config_id --budget --NAME VALUE`
    args = [*body.args, *(trial[0] if trial is not None else ())]
    if not command and task.deploy is not None and task.deploy.model is not None:
        command = ["ranvier", "serve", task.deploy.model, "--model-path", model_path]
        args = ["--port", str(port or SERVER_PORT), *args]
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
        sources = _git_artifacts(axon)
        artifact = sources[0] if len(sources) == 1 else None
    if artifact is None:
        raise RenderError(
            f"task {task.name!r} has a relative workingDir {working_dir!r} but no git artifact "
            f"it could be relative to",
            hint="give an absolute workingDir inside the image",
        )
    return f"{_artifact_mount(artifact).rstrip('/')}/{working_dir}"


def model_path(task: Task, run: Run) -> str:
    """MODEL_PATH of a run: a version directory for train and deploy, the models root else."""
    if task.kind in ("train", "deploy") and run.model_version is not None:
        return f"{MODELS_PATH}/{task.name}/{run.model_version}"
    return MODELS_PATH


# ---------------------------------------------------------------------------------------------
# Jobs, Deployments, Services


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
    name = job_name(axon.metadata.name, task.name, run.run_id)
    labels = run_labels(axon, task.name, run, ROLE_TASK)
    pod = _pod_spec(
        axon, task, run, image, settings, model_path=model_path(task, run), restart="Never"
    )
    spec: dict[str, Any] = {
        "backoffLimit": 0,
        "ttlSecondsAfterFinished": JOB_TTL,
        "template": {"metadata": {"labels": labels}, "spec": pod},
    }
    if task.body.timeout is not None:
        spec["activeDeadlineSeconds"] = max(1, round(task.body.timeout))
    annotations = {**run_annotations(axon, task.name, run), A_IMAGE: image}
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": _meta(name, axon, owner, labels, annotations),
        "spec": spec,
    }


# ---------------------------------------------------------------------------------------------
# Spark applications and TFJobs (the Spark and Kubeflow training operators run them)

SPARK_API: Final = "sparkoperator.k8s.io/v1beta2"
SPARK_KIND: Final = "SparkApplication"
SPARK_PLURAL: Final = "sparkapplications"
TFJOB_API: Final = "kubeflow.org/v1"
TFJOB_KIND: Final = "TFJob"
TFJOB_PLURAL: Final = "tfjobs"
DEFAULT_SPARK_VERSION: Final = "3.5.1"
TF_CONTAINER: Final = "tensorflow"  # the container the training operator runs TensorFlow in


def is_tf_job(task: Task) -> bool:
    """Whether a task runs as a TFJob: a tfJob task, or a train task with a tfJobSpec."""
    return task.kind == "tfJob" or (task.train is not None and bool(task.train.tf_job_spec))


_PROPERTY: Final = re.compile(r"(\S+?)(?:\s*=\s*|\s+)(.*)$")


def spark_conf(spec: SparkSpec) -> dict[str, str]:
    """Myelin's `properties` (spark-defaults lines: `key value` or `key=value`), then
    `sparkConf` over them."""
    conf: dict[str, str] = {}
    for raw in (spec.properties or "").splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        found = _PROPERTY.match(line)
        key, value = (found.group(1), found.group(2)) if found else (line, "")
        conf[key.strip()] = value.strip()
    conf.update({k: str(v) for k, v in spec.spark_conf.items()})
    return conf


def spark_application(
    axon: Axon,
    task: Task,
    run: Run,
    image: str,
    *,
    settings: RenderSettings,
    owner: Owner | None,
) -> dict[str, Any]:
    """The SparkApplication of one spark run (cluster mode, the task's image for every pod).

    Myelin names the application in `jars` (its last entry) when it has no `applicationFile`;
    the other jars become dependencies. The driver and executors get the task's environment and
    the Axon's store, as a Job's pod does.
    """
    assert task.spark is not None
    spark = task.spark.spark_spec or SparkSpec()
    app_file = spark.main_application_file or spark.application_file
    jars = list(spark.jars)
    if app_file is None and jars:
        app_file = jars.pop()
    if app_file is None:
        raise RenderError(
            f"spark task {task.name!r} names no application",
            hint="add sparkSpec.applicationFile (a jar or .py file), or the application jar "
            "to sparkSpec.jars",
        )
    language = spark.type or ("Python" if app_file.endswith(".py") else "Scala")
    main_class = spark.main_class or spark.class_
    if language in ("Scala", "Java") and main_class is None:
        raise RenderError(
            f"spark task {task.name!r} runs a {language} application but names no main class",
            hint="add sparkSpec.class (e.g. org.example.Main)",
        )
    pod = _pod_spec(
        axon, task, run, image, settings, model_path=model_path(task, run), restart="Never"
    )
    (container,) = pod["containers"]
    labels = run_labels(axon, task.name, run, ROLE_TASK)
    conf = spark_conf(spark)
    roles: dict[str, Any] = {
        "labels": dict(labels),
        "env": container["env"],
        "volumeMounts": container["volumeMounts"],
    }
    driver: dict[str, Any] = {**roles, "initContainers": pod["initContainers"]}
    if axon.spec.service_account_name:
        driver["serviceAccount"] = axon.spec.service_account_name
    instances = conf.get("spark.executor.instances", "1")
    spec: dict[str, Any] = {
        "type": language,
        "mode": "cluster",
        "image": image,
        "imagePullPolicy": "IfNotPresent",
        "mainApplicationFile": app_file,
        "sparkVersion": spark.spark_version or DEFAULT_SPARK_VERSION,
        "restartPolicy": {"type": "Never"},
        "driver": driver,
        "executor": {
            **copy.deepcopy(roles),
            "instances": int(instances) if instances.isdigit() else 1,
        },
        "volumes": pod["volumes"],
    }
    if language == "Python":
        spec["pythonVersion"] = "3"
    if main_class is not None:
        spec["mainClass"] = main_class
    arguments = [*spark.arguments, *spark.args, *task.body.args]
    if arguments:
        spec["arguments"] = arguments
    if conf:
        spec["sparkConf"] = conf
    if jars:
        spec["deps"] = {"jars": jars}
    if pod.get("nodeSelector"):
        spec["nodeSelector"] = pod["nodeSelector"]
    if pod.get("imagePullSecrets"):
        spec["imagePullSecrets"] = [s["name"] for s in pod["imagePullSecrets"]]
    if task.body.timeout is not None:
        spec["timeToLiveSeconds"] = JOB_TTL
    name = job_name(axon.metadata.name, task.name, run.run_id)
    annotations = {**run_annotations(axon, task.name, run), A_IMAGE: image}
    return {
        "apiVersion": SPARK_API,
        "kind": SPARK_KIND,
        "metadata": _meta(name, axon, owner, labels, annotations),
        "spec": spec,
    }


def _tf_container(mine: Mapping[str, Any], theirs: Mapping[str, Any]) -> dict[str, Any]:
    """The user's TensorFlow container filled in from the task (image, env, store, command)."""
    out = dict(theirs)
    out["name"] = theirs.get("name") or TF_CONTAINER
    out.setdefault("image", mine["image"])
    out["env"] = _merge_env(
        copy.deepcopy(list(mine.get("env") or [])), list(theirs.get("env") or [])
    )
    out["volumeMounts"] = [
        *copy.deepcopy(mine.get("volumeMounts", [])),
        *(theirs.get("volumeMounts") or []),
    ]
    for key in ("command", "args", "workingDir", "resources"):
        if key in mine and key not in out:
            out[key] = copy.deepcopy(mine[key])
    return out


def tf_job(
    axon: Axon,
    task: Task,
    run: Run,
    image: str,
    *,
    settings: RenderSettings,
    owner: Owner | None,
) -> dict[str, Any]:
    """The TFJob of one run of a tfJob task (or a train task with a tfJobSpec).

    `tfReplicaSpecs` (PS, Worker, Chief, ...) keep what the user wrote; each replica's
    `tensorflow` container gets the task's image (unless it names one), environment, command
    and the Axon's store, as a Job's pod does. Myelin's top-level `cleanPodPolicy` moves to
    `runPolicy`, where the v1 API has it.
    """
    raw: Mapping[str, Any]
    if task.train is not None:
        raw = task.train.tf_job_spec or {}
    else:
        assert task.tf_job is not None
        raw = task.tf_job.tf_job_spec
    replicas = raw.get("tfReplicaSpecs")
    if not isinstance(replicas, Mapping) or not replicas:
        raise RenderError(
            f"task {task.name!r}: tfJobSpec has no tfReplicaSpecs",
            hint="add tfJobSpec.tfReplicaSpecs, e.g. {Worker: {replicas: 2}}",
        )
    pod = _pod_spec(
        axon, task, run, image, settings, model_path=model_path(task, run), restart="Never"
    )
    (mine,) = pod["containers"]
    labels = run_labels(axon, task.name, run, ROLE_TASK)
    specs: dict[str, Any] = {}
    for role, given in replicas.items():
        replica = dict(given) if isinstance(given, Mapping) else {}
        template = dict(replica.get("template") or {})
        theirs = dict(template.get("spec") or {})
        containers = list(theirs.get("containers") or [{"name": TF_CONTAINER}])
        spec = {
            **copy.deepcopy(
                {k: v for k, v in pod.items() if k not in ("containers", "restartPolicy")}
            ),
            **theirs,
            "containers": [
                _tf_container(mine, c) if c.get("name", TF_CONTAINER) == TF_CONTAINER else c
                for c in containers
            ],
            "initContainers": [
                *copy.deepcopy(pod["initContainers"]),
                *(theirs.get("initContainers") or []),
            ],
            "volumes": [*copy.deepcopy(pod["volumes"]), *(theirs.get("volumes") or [])],
        }
        meta = dict(template.get("metadata") or {})
        meta["labels"] = {**labels, **(meta.get("labels") or {})}
        specs[str(role)] = {
            **replica,
            "replicas": int(replica.get("replicas", 1)),
            "restartPolicy": replica.get("restartPolicy", "Never"),
            "template": {"metadata": meta, "spec": spec},
        }
    policy = dict(raw.get("runPolicy") or {})
    if "cleanPodPolicy" in raw:
        policy.setdefault("cleanPodPolicy", raw["cleanPodPolicy"])
    policy.setdefault("backoffLimit", 0)
    if task.body.timeout is not None:
        policy.setdefault("activeDeadlineSeconds", max(1, round(task.body.timeout)))
    body: dict[str, Any] = {
        **{k: v for k, v in raw.items() if k not in ("cleanPodPolicy", "runPolicy")},
        "runPolicy": policy,
        "tfReplicaSpecs": specs,
    }
    name = job_name(axon.metadata.name, task.name, run.run_id)
    annotations = {**run_annotations(axon, task.name, run), A_IMAGE: image}
    return {
        "apiVersion": TFJOB_API,
        "kind": TFJOB_KIND,
        "metadata": _meta(name, axon, owner, labels, annotations),
        "spec": body,
    }


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
    if task.kind == "spark":
        return spark_application(axon, task, run, image, settings=settings, owner=owner)
    if is_tf_job(task):
        return tf_job(axon, task, run, image, settings=settings, owner=owner)
    return task_job(axon, task, run, image, settings=settings, owner=owner)


def server_objects(
    axon: Axon,
    task: Task,
    run: Run,
    image: str,
    *,
    settings: RenderSettings,
    owner: Owner | None,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The Deployment and Service of a deploy task serving `run.model_version`."""
    assert task.deploy is not None
    version = run.model_version or "latest"
    name = server_name(axon.metadata.name, task.name, version)
    selector = {MANAGED_BY: MANAGER, L_DEPLOYMENT: name}
    labels = {**run_labels(axon, task.name, run, ROLE_SERVER), L_DEPLOYMENT: name}
    labels[L_MODEL_VERSION] = label_value(version)
    pod = _pod_spec(
        axon,
        task,
        run,
        image,
        settings,
        model_path=model_path(task, run),
        restart="Always",
        port=SERVER_PORT,
    )
    annotations = {**run_annotations(axon, task.name, run), A_IMAGE: image}
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _meta(name, axon, owner, labels, annotations),
        "spec": {
            "replicas": task.deploy.replicas,
            "selector": {"matchLabels": selector},
            "template": {
                "metadata": {
                    "labels": labels,
                    "annotations": {
                        "prometheus.io/scrape": "true",
                        "prometheus.io/port": str(SERVER_PORT),
                        "prometheus.io/path": "/metrics",
                    },
                },
                "spec": pod,
            },
        },
    }
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _meta(name, axon, owner, labels, annotations),
        "spec": {
            "selector": selector,
            "ports": [
                {"name": "http", "port": SERVICE_PORT, "targetPort": "http", "protocol": "TCP"}
            ],
        },
    }
    return deployment, service


def service_url(axon: Axon, task: str, version: str) -> str:
    """The in-cluster URL of a deploy task's model server for one version (the router's)."""
    name = server_name(axon.metadata.name, task, version)
    return f"http://{name}.{axon.metadata.namespace}.svc:{SERVICE_PORT}"


# ---------------------------------------------------------------------------------------------
# Image builds


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
    mount = _artifact_mount(artifact).rstrip("/")
    location = build_location.rstrip("/") or "/"
    if location == mount or location.startswith(f"{mount}/"):
        return location
    return f"{mount}/{location.lstrip('/')}".rstrip("/") or "/"


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
    assert build.dockerfile is not None
    artifact = build_source(axon, build, task.name)
    image = image_ref(axon, task, settings)
    tag = image.rsplit(":", 1)[1]
    name = build_job_name(axon.metadata.name, build, tag)
    context = _context_dir(artifact, build.build_location)
    clone, volumes = _git_init(artifact, settings)
    mounts: list[dict[str, Any]] = [
        {"name": _artifact_volume(artifact), "mountPath": _artifact_mount(artifact)}
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
    labels = {
        **_base_labels(axon, ROLE_BUILD),
        L_TASK: label_value(task.name),
        "ranvier.dev/image-tag": label_value(tag),
    }
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
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": _meta(
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


# ---------------------------------------------------------------------------------------------
# Everything an Axon would create (`ranvier k8s render`)


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


# ---------------------------------------------------------------------------------------------
# The Axon CustomResourceDefinition (manifests/crd/axon.yaml is generated from this)

_DROP: Final = frozenset({"$schema", "$id", "$defs", "discriminator", "default", "const", "title"})


def _structural(node: Any, defs: Mapping[str, Any]) -> dict[str, Any]:
    """A JSON Schema node as a Kubernetes structural schema (refs inlined, unions loosened).

    Unions of objects become one object with every variant's properties; unions of different
    types (and multi-type nodes) keep their value unchecked (`x-kubernetes-preserve-unknown-
    fields`): ranvier's loader validates Axons fully, the CRD only keeps the shape.
    """
    if not isinstance(node, Mapping):
        return {"x-kubernetes-preserve-unknown-fields": True}
    if "$ref" in node:
        target = defs[str(node["$ref"]).rsplit("/", 1)[-1]]
        merged = {**target, **{k: v for k, v in node.items() if k != "$ref"}}
        return _structural(merged, defs)
    description = node.get("description")
    out: dict[str, Any] = {"description": description} if description else {}
    variants = node.get("anyOf") or node.get("oneOf")
    if variants and "properties" not in node:
        parts = [_structural(v, defs) for v in variants if v.get("type") != "null"]
        types = {p.get("type") for p in parts}
        if len(parts) == 1:
            return {**parts[0], **out}
        if types == {"object"}:
            props: dict[str, Any] = {}
            for part in parts:
                props.update(part.get("properties", {}))
            return {**out, "type": "object", "properties": props}
        return {**out, "x-kubernetes-preserve-unknown-fields": True}
    kind = node.get("type")
    if isinstance(kind, list):
        real = [t for t in kind if t != "null"]
        if len(real) != 1:
            return {**out, "x-kubernetes-preserve-unknown-fields": True}
        kind = real[0]
    if kind == "object" or "properties" in node:
        out["type"] = "object"
        if "properties" in node:
            out["properties"] = {k: _structural(v, defs) for k, v in node["properties"].items()}
            if node.get("required"):
                out["required"] = list(node["required"])
        elif isinstance(node.get("additionalProperties"), Mapping):
            out["additionalProperties"] = _structural(node["additionalProperties"], defs)
        else:
            out["x-kubernetes-preserve-unknown-fields"] = True
        return out
    if kind == "array":
        return {**out, "type": "array", "items": _structural(node.get("items", {}), defs)}
    if kind is None:
        return {**out, "x-kubernetes-preserve-unknown-fields": True}
    out["type"] = kind
    if "enum" in node or "const" in node:
        out["enum"] = list(node.get("enum", [node.get("const")]))
    for key in ("minimum", "maximum", "minLength", "maxLength", "pattern", "minItems"):
        if key in node:
            out[key] = node[key]
    return out


MYELIN_GROUPS: Final = ("myelinproj.io", "myelin.io")

# What `kubectl get axons` shows, from the `.status` the Axon controller writes.
PRINTER_COLUMNS: Final = (
    {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
    {"name": "Generation", "type": "integer", "jsonPath": ".status.observedGeneration"},
    {
        "name": "Valid",
        "type": "string",
        "jsonPath": '.status.conditions[?(@.type=="Valid")].status',
    },
    {"name": "Endpoint", "type": "string", "jsonPath": ".status.endpoint"},
    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
)


def axon_crd(schema: Mapping[str, Any], group: str = GROUP) -> dict[str, Any]:
    """The Axon CRD (`axons.<group>`: ours, or one of Myelin's) embedding the Axon JSON Schema's
    `spec`, with the status subresource and printer columns the Axon controller fills."""
    defs = schema.get("$defs", {})
    spec = _structural(schema["properties"]["spec"], defs)
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": f"{PLURAL}.{group}",
            "labels": {MANAGED_BY: MANAGER},
            "annotations": {"ranvier.dev/generated-from": "manifests/schema/axon.schema.json"},
        },
        "spec": {
            "group": group,
            "scope": "Namespaced",
            "names": {
                "kind": KIND,
                "plural": PLURAL,
                "singular": "axon",
                "listKind": "AxonList",
                "shortNames": ["ax"],
            },
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "description": schema.get("description", "An Axon."),
                            "properties": {
                                "apiVersion": {"type": "string"},
                                "kind": {"type": "string"},
                                "metadata": {"type": "object"},
                                "spec": spec,
                                "status": {
                                    "type": "object",
                                    "x-kubernetes-preserve-unknown-fields": True,
                                },
                            },
                            "required": ["spec"],
                        }
                    },
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": [dict(c) for c in PRINTER_COLUMNS],
                }
            ],
        },
    }
