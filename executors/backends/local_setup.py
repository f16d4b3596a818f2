"""What a task needs to run on this machine, decided before anything starts (pure).

Which task kinds the local backend can run (`unsupported_reason`, so an impossible task fails
at once with a message naming the backend that can), the argv (a spark task's spark-submit in
local mode; `python` meaning the executor's interpreter), the environment a task inherits (the
executor's, minus ranvier's credentials) and where a task's sources are (`task_source`, the one
rule the local backend and the local deployer share).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Final

from events.errors import RanvierError
from events.subjects import token
from sensors.spec import Artifact, Axon, EnvVar, SparkSpec, Task

SPARK_SUBMIT: Final = "spark-submit"
_ENV_NAME: Final = re.compile(r"[^A-Za-z0-9_]")
_KUBERNETES: Final = "run it with --backend kubernetes"
CREDENTIAL_VARIABLES: Final = frozenset(
    {"RANVIER_USER", "RANVIER_PASSWORD", "RANVIER_TOKEN", "RANVIER_CREDS_FILE", "RANVIER_NKEY_SEED"}
)
"""ranvier/settings.py's credential settings (the NATS user, password, token, creds, nkey)."""
_SECRET_WORDS: Final = re.compile(r"PASSWORD|TOKEN|SECRET|CREDS|NKEY|SEED|KEY")
_PYTHONS: Final = frozenset({"python", "python3"})


def task_environment(environ: Mapping[str, str]) -> dict[str, str]:
    """What tasks inherit of the executor's environment: all of it but ranvier's credentials.

    The credential settings (`CREDENTIAL_VARIABLES`), any other `RANVIER_*` variable whose
    name says it holds a secret (PASSWORD, TOKEN, SECRET, CREDS, NKEY, SEED, KEY) and a
    `RANVIER_NATS_URL` with credentials in it (`nats://TOKEN@host:port`) are dropped; the rest
    (`RANVIER_DEMO_TINY`, `RANVIER_CACHE`, `RANVIER_LOG_LEVEL`, ...) passes through. A task
    gets the bus's URL, with what it needs to connect, from the backend alone.
    """
    return {
        k: v
        for k, v in environ.items()
        if not (
            k in CREDENTIAL_VARIABLES
            or (k.startswith("RANVIER_") and _SECRET_WORDS.search(k.removeprefix("RANVIER_")))
            or (k == "RANVIER_NATS_URL" and "@" in v)
        )
    }


def task_argv(argv: list[str], python: str) -> list[str]:
    """A task's argv, with an argv[0] of exactly `python` or `python3` replaced by `python`."""
    if argv and argv[0] in _PYTHONS:
        return [python, *argv[1:]]
    return argv


class TaskSetupError(RanvierError, RuntimeError):
    """A run could not be started (no such task, bad working directory, git clone failed)."""


def spark_submit_argv(axon: Axon, task: Task, spark_submit: str) -> list[str]:
    """The spark-submit command of a spark task in local mode (`--master local[*]`): the same
    application, class, jars, properties and arguments the SparkApplication would get."""
    from executors.backends.k8s_objects import spark_conf

    assert task.spark is not None
    spark = task.spark.spark_spec or SparkSpec()
    jars = list(spark.jars)
    app_file = spark.main_application_file or spark.application_file or (jars.pop() if jars else "")
    argv = [spark_submit, "--master", "local[*]", "--name", f"{axon.metadata.name}-{task.name}"]
    main_class = spark.main_class or spark.class_
    if main_class:
        argv += ["--class", main_class]
    if jars:
        argv += ["--jars", ",".join(jars)]
    for key, value in spark_conf(spark).items():
        argv += ["--conf", f"{key}={value}"]
    return [*argv, app_file, *spark.arguments, *spark.args, *task.body.args]


def unsupported_reason(
    axon: Axon, kind: str, task_name: str, *, spark_submit: str | None = None
) -> str | None:
    """Why the local backend cannot run action `kind` on task `task_name`, or None if it can.

    `spark_submit`: the spark-submit found on PATH (spark tasks run with it in local mode).
    """
    if kind == "deployer":
        return f"deployer {task_name!r} is served by the serving executor, not as a local process"
    task = axon.spec.task(task_name)
    if task is None:
        names = ", ".join(t.name for t in axon.spec.tasks)
        return f"no task named {task_name!r} in axon {axon.metadata.name!r} (tasks: {names})"
    if task.kind == "spark":
        spark = task.spark.spark_spec if task.spark is not None else None
        if spark is None or not (
            spark.main_application_file or spark.application_file or spark.jars
        ):
            return f"spark task {task.name!r} names no application (sparkSpec.applicationFile)"
        if spark_submit is None:
            return (
                f"spark task {task.name!r} runs locally with spark-submit, which is not on PATH; "
                f"install Apache Spark (`pip install pyspark` brings spark-submit) or "
                f"{_KUBERNETES}"
            )
        return None
    if task.kind == "tfJob":
        return (
            f"task {task.name!r} is a distributed TFJob, which needs the Kubeflow training "
            f"operator; {_KUBERNETES}"
        )
    if task.kind == "train" and task.train is not None and task.train.tf_job_spec is not None:
        return f"task {task.name!r} is a distributed TFJob training (tfJobSpec); {_KUBERNETES}"
    if task.kind == "deploy":
        return f"task {task.name!r} is a deploy task; run it with a deployer action, not {kind}"
    if not task.body.command:
        what = "an image-only task" if task.body.image or task.body.image_build else "a task"
        return (
            f"task {task.name!r} is {what} without `command`, which the local backend needs; "
            f"add command (and args) or {_KUBERNETES}"
        )
    return None


def env_name(task_name: str) -> str:
    """The DATA_PATH_<Task> variable name for a task (non-identifier characters become `_`)."""
    return f"DATA_PATH_{_ENV_NAME.sub('_', task_name)}"


def env_pairs(items: object, where: str) -> dict[str, str]:
    """Environment variables from EnvVar models, `{name, value}` dicts, or a plain mapping."""
    if items is None:
        return {}
    if isinstance(items, Mapping):
        return {str(k): str(v) for k, v in items.items()}
    if not isinstance(items, list):
        raise TaskSetupError(f"{where}: env must be a list of {{name, value}}, got {items!r}")
    out: dict[str, str] = {}
    for item in items:
        try:
            var = item if isinstance(item, EnvVar) else EnvVar.model_validate(item)
        except ValueError as exc:
            raise TaskSetupError(f"{where}: invalid env entry {item!r}: {exc}") from None
        if var.value_from is not None:
            raise TaskSetupError(
                f"{where}: env {var.name} takes its value from a Secret or ConfigMap, which "
                f"only the kubernetes backend resolves",
                hint="give it a value for local runs",
            )
        out[var.name] = var.value or ""
    return out


@dataclass(frozen=True, slots=True)
class TaskSource:
    """Where a task runs from on this machine: an artifact (None: the Axon file's directory)."""

    artifact: Artifact | None
    subdir: str | None
    """workingDir, else the imageBuild's buildLocation when `artifact` is the one it names."""


def task_source(axon: Axon, task: Task) -> TaskSource:
    """The one rule, shared by the local backend and the local deployer, for a task's sources.

    Local runs prefer local sources, so an Axon can keep the git artifact its Kubernetes image
    builds use and still run from a checkout on this machine:

    1. the artifact the task's imageBuild names, when it is `local`;
    2. else the Axon's `local` artifact, when it has exactly one;
    3. else the git artifact the imageBuild names (or, without an imageBuild, the Axon's only
       git artifact), cloned into the workspace;
    4. else the Axon file's directory.

    An imageBuild naming a missing artifact, or an S3 one with no local artifact to use instead,
    is a TaskSetupError. `workingDir` is relative to the chosen source; without it, the
    imageBuild's `buildLocation` is used (relative to the artifact's mount `path`) only when
    the chosen artifact is the one the imageBuild names.
    """
    body = task.body
    build = body.image_build
    named: Artifact | None = None
    if build is not None:
        named = axon.spec.artifact(build.artifact)
        if named is None:
            raise TaskSetupError(
                f"task {task.name!r} builds from artifact {build.artifact!r}, which is not "
                f"in spec.artifacts"
            )
    locals_ = [a for a in axon.spec.artifacts if a.local is not None]
    gits = [a for a in axon.spec.artifacts if a.git is not None]
    chosen: Artifact | None
    if named is not None and named.local is not None:
        chosen = named
    elif len(locals_) == 1:
        chosen = locals_[0]
    elif named is not None:
        if named.git is None:
            raise TaskSetupError(
                f"artifact {named.name!r} of task {task.name!r} is in S3, which the local "
                f"backend does not fetch",
                hint=f"add a local artifact, use a git one, or {_KUBERNETES}",
            )
        chosen = named
    elif len(gits) == 1:
        chosen = gits[0]
    else:
        chosen = None
    subdir = body.working_dir
    if subdir is None and build is not None and chosen is named and named is not None:
        subdir = _inside(build.build_location, named.path)
    return TaskSource(chosen, subdir or None)


def _inside(location: str, mount: str | None) -> str:
    """A buildLocation (a path in the build's filesystem) relative to its artifact's mount."""
    loc = PurePosixPath(location)
    if mount and loc.is_relative_to(mount):
        loc = loc.relative_to(mount)
    text = str(loc).lstrip("/")
    return "" if text == "." else text


def local_base(source: TaskSource, axon_dir: Path) -> Path | None:
    """The directory of a source on this machine (the Axon file's, or a `local` artifact's);
    None for a git artifact, whose checkout is in the workspace (`checkout_dir`)."""
    artifact = source.artifact
    if artifact is None:
        return axon_dir.resolve()
    if artifact.local is not None:
        return (axon_dir / artifact.local.path).resolve()
    return None


def working_dir_in(base: Path, source: TaskSource, task: Task) -> Path:
    """The task's working directory in its sources at `base`; TaskSetupError if missing."""
    cwd = (base / source.subdir).resolve() if source.subdir else base
    if not cwd.is_dir():
        raise TaskSetupError(
            f"working directory {cwd} of task {task.name!r} does not exist",
            hint="fix workingDir (relative to the artifact or the Axon file)",
        )
    return cwd


def checkout_dir(workspace: Path, artifact: Artifact) -> Path:
    """`<workspace>/src/<artifact>/<revision>/`: where a git artifact is cloned."""
    assert artifact.git is not None
    return workspace / "src" / token(artifact.name) / token(artifact.git.revision)
