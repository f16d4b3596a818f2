"""SparkApplications and TFJobs: the runs the Spark and Kubeflow training operators carry out.

Both are made from the same pod as a Job (`RunPod`): the driver and executors, or every
TensorFlow replica, get the task's image, environment and the Axon's store.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Mapping
from typing import Any, Final

from executors.backends.k8s_objects.names import JOB_TTL, RenderError
from executors.backends.k8s_objects.ownership import Owner, RenderSettings, Run
from executors.backends.k8s_objects.pods import RunPod, merge_env
from sensors.spec import Axon, SparkSpec, Task

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


def _spark_main(task: Task, spark: SparkSpec) -> tuple[str, list[str], str, str | None]:
    """(application file, dependency jars, language, main class) of a spark task.

    Myelin names the application in `jars` (its last entry) when it has no `applicationFile`;
    the other jars become dependencies. A RenderError says what is missing.
    """
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
    return app_file, jars, language, main_class


def _spark_pods(
    axon: Axon, parts: RunPod, conf: Mapping[str, str]
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The driver and the executors: the run's labels, environment and store mounts each."""
    (container,) = parts.pod["containers"]
    roles: dict[str, Any] = {
        "labels": dict(parts.labels),
        "env": container["env"],
        "volumeMounts": container["volumeMounts"],
    }
    driver: dict[str, Any] = {**roles, "initContainers": parts.pod["initContainers"]}
    if axon.spec.service_account_name:
        driver["serviceAccount"] = axon.spec.service_account_name
    instances = conf.get("spark.executor.instances", "1")
    executor = {
        **copy.deepcopy(roles),
        "instances": int(instances) if instances.isdigit() else 1,
    }
    return driver, executor


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

    The driver and executors get the task's environment and the Axon's store, as a Job's pod
    does.
    """
    assert task.spark is not None
    spark = task.spark.spark_spec or SparkSpec()
    app_file, jars, language, main_class = _spark_main(task, spark)
    parts = RunPod.of(axon, task, run, image, settings=settings, owner=owner)
    pod = parts.pod
    conf = spark_conf(spark)
    driver, executor = _spark_pods(axon, parts, conf)
    spec: dict[str, Any] = {
        "type": language,
        "mode": "cluster",
        "image": image,
        "imagePullPolicy": "IfNotPresent",
        "mainApplicationFile": app_file,
        "sparkVersion": spark.spark_version or DEFAULT_SPARK_VERSION,
        "restartPolicy": {"type": "Never"},
        "driver": driver,
        "executor": executor,
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
    return parts.manifest(SPARK_API, SPARK_KIND, spec)


def _tf_container(mine: Mapping[str, Any], theirs: Mapping[str, Any]) -> dict[str, Any]:
    """The user's TensorFlow container filled in from the task (image, env, store, command)."""
    out = dict(theirs)
    out["name"] = theirs.get("name") or TF_CONTAINER
    out.setdefault("image", mine["image"])
    out["env"] = merge_env(
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


def _tf_job_spec(task: Task) -> tuple[Mapping[str, Any], Mapping[str, Any]]:
    """The task's tfJobSpec and its `tfReplicaSpecs`; a RenderError when there are none."""
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
    return raw, replicas


def _tf_replica(given: object, parts: RunPod) -> dict[str, Any]:
    """One replica spec as the user wrote it, its pod filled in from the run's pod."""
    pod = parts.pod
    (mine,) = pod["containers"]
    replica = dict(given) if isinstance(given, Mapping) else {}
    template = dict(replica.get("template") or {})
    theirs = dict(template.get("spec") or {})
    containers = list(theirs.get("containers") or [{"name": TF_CONTAINER}])
    spec = {
        **copy.deepcopy({k: v for k, v in pod.items() if k not in ("containers", "restartPolicy")}),
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
    meta["labels"] = {**parts.labels, **(meta.get("labels") or {})}
    return {
        **replica,
        "replicas": int(replica.get("replicas", 1)),
        "restartPolicy": replica.get("restartPolicy", "Never"),
        "template": {"metadata": meta, "spec": spec},
    }


def _tf_run_policy(raw: Mapping[str, Any], task: Task) -> dict[str, Any]:
    """`runPolicy`, with Myelin's top-level `cleanPodPolicy` moved there and no retries."""
    policy = dict(raw.get("runPolicy") or {})
    if "cleanPodPolicy" in raw:
        policy.setdefault("cleanPodPolicy", raw["cleanPodPolicy"])
    policy.setdefault("backoffLimit", 0)
    if task.body.timeout is not None:
        policy.setdefault("activeDeadlineSeconds", max(1, round(task.body.timeout)))
    return policy


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
    raw, replicas = _tf_job_spec(task)
    parts = RunPod.of(axon, task, run, image, settings=settings, owner=owner)
    specs = {str(role): _tf_replica(given, parts) for role, given in replicas.items()}
    body: dict[str, Any] = {
        **{k: v for k, v in raw.items() if k not in ("cleanPodPolicy", "runPolicy")},
        "runPolicy": _tf_run_policy(raw, task),
        "tfReplicaSpecs": specs,
    }
    return parts.manifest(TFJOB_API, TFJOB_KIND, body)
