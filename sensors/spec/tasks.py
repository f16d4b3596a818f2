"""Tasks: a name and one body (container, train, deploy, spark, tfJob) and how its image is made."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import ConfigDict, Field, model_validator

from sensors.spec.base import Duration, ScalarStr, SpecModel, exactly_one
from sensors.spec.hptuning import HpTuning
from sensors.spec.storage import ResourceRequirements, SecretKeyRef


class EnvVarSource(SpecModel):
    """Where an environment variable's value comes from."""

    secret_key_ref: SecretKeyRef | None = Field(
        None, alias="secretKeyRef", description="A key of a Secret."
    )
    config_map_key_ref: SecretKeyRef | None = Field(
        None, alias="configMapKeyRef", description="A key of a ConfigMap."
    )

    @model_validator(mode="after")
    def _one_source(self) -> EnvVarSource:
        exactly_one(
            self,
            {"secret_key_ref": "secretKeyRef", "config_map_key_ref": "configMapKeyRef"},
            "valueFrom",
        )
        return self


class EnvVar(SpecModel):
    """An environment variable for a task or an action."""

    name: str = Field(description="Variable name.")
    value: ScalarStr | None = Field(None, description="Literal value.")
    value_from: EnvVarSource | None = Field(
        None, alias="valueFrom", description="Take the value from a Secret or ConfigMap."
    )


class Dockerfile(SpecModel):
    """Build with a Dockerfile."""

    path: str = Field(description="Dockerfile path, relative to buildLocation.")


def _s2i_schema(schema: dict[str, Any]) -> None:
    """Document Myelin's "buiderImage" spelling, which S2I accepts (either key is required)."""
    schema["properties"]["buiderImage"] = {
        "type": "string",
        "description": "Myelin's misspelling of builderImage in some examples (accepted).",
    }
    schema.pop("required", None)
    schema["oneOf"] = [{"required": ["builderImage"]}, {"required": ["buiderImage"]}]


class S2I(SpecModel):
    """Build with source-to-image (Myelin's model-server builder images)."""

    model_config = ConfigDict(json_schema_extra=_s2i_schema)

    context_dir: str | None = Field(
        None, alias="contextDir", description="Source directory, relative to buildLocation."
    )
    builder_image: str = Field(alias="builderImage", description="The s2i builder image.")

    @model_validator(mode="before")
    @classmethod
    def _myelin_typo(cls, data: Any) -> Any:
        """Myelin's older examples spell it "buiderImage"; read that as builderImage."""
        if isinstance(data, dict) and "buiderImage" in data and "builderImage" not in data:
            data = {("builderImage" if k == "buiderImage" else k): v for k, v in data.items()}
        return data


class ImageBuild(SpecModel):
    """Build the task's image from an artifact (kaniko on Kubernetes)."""

    repository_name: str = Field(alias="repositoryName", description="Image repository name.")
    artifact: str = Field(description="Name of the artifact holding the sources.")
    build_location: str = Field(
        "/", alias="buildLocation", description="Build context directory inside the artifact."
    )
    dockerfile: Dockerfile | None = Field(None, description="Build with a Dockerfile.")
    s2i: S2I | None = Field(None, description="Build with source-to-image.")
    tag: str | None = Field(None, description="Image tag; derived from the sources when unset.")
    check_image_exists: bool = Field(
        True,
        alias="checkImageExists",
        description="Skip the build when the image's tag is already in the registry (false: "
        "always build); Kubernetes backend only: the local backend builds no images.",
    )
    volumes: list[dict[str, Any]] = Field(
        default_factory=list,
        description="Kubernetes volumes of the build pod (e.g. a Secret with credentials the "
        "build needs); passed through to the kaniko Job, ignored by the local backend.",
    )
    volume_mounts: list[dict[str, Any]] = Field(
        default_factory=list,
        alias="volumeMounts",
        description="Where `volumes` are mounted in the build container ({name, mountPath}); "
        "ignored by the local backend.",
    )

    @model_validator(mode="after")
    def _one_method(self) -> ImageBuild:
        exactly_one(self, {"dockerfile": "dockerfile", "s2i": "s2i"}, "an imageBuild")
        return self


class TaskBody(SpecModel):
    """Fields every task kind has: how to get the image and how to run it."""

    image: str | None = Field(None, description="Image to run (Kubernetes backends).")
    image_build: ImageBuild | None = Field(
        None, alias="imageBuild", description="Build the image from an artifact instead."
    )
    env: list[EnvVar] = Field(default_factory=list, description="Environment variables.")
    resources: ResourceRequirements | None = Field(
        None, description="CPU, memory, GPU requests and limits."
    )
    node_selector: dict[str, ScalarStr] = Field(
        default_factory=dict, alias="nodeSelector", description="Kubernetes node selector."
    )
    command: list[str] = Field(
        default_factory=list,
        description="Local backend: argv to run (never a shell string); also the container "
        "command on Kubernetes.",
    )
    args: list[str] = Field(default_factory=list, description="Arguments appended to command.")
    working_dir: str | None = Field(
        None,
        alias="workingDir",
        description="Working directory, relative to the artifact or to the Axon file.",
    )
    timeout: Duration | None = Field(None, description="Fail the task after this long.")

    @model_validator(mode="after")
    def _image_xor_build(self) -> TaskBody:
        if self.image is not None and self.image_build is not None:
            raise ValueError("a task has image and imageBuild; give only one of them")
        return self


class ContainerTask(TaskBody):
    """A plain job (data preparation, evaluation): runs to completion."""


class MetricDecl(SpecModel):
    """A metric a training task reports."""

    name: str = Field(description="Metric name.")
    type: Literal["Gauge", "Counter", "Histogram", "Summary"] = Field(
        "Gauge", description="Prometheus metric type."
    )
    help: str | None = Field(None, description="What the metric measures.")


class TrainTask(TaskBody):
    """A training job: produces a model version with metrics."""

    loss_metric: str | None = Field(
        None, alias="lossMetric", description="Metric that ranks model versions."
    )
    loss_metric_selector: Literal["greater", "lower"] = Field(
        "lower",
        alias="lossMetricSelector",
        description="Whether a greater or a lower lossMetric is better.",
    )
    metrics: list[MetricDecl] = Field(
        default_factory=list, description="Metrics the training reports."
    )
    hp_tuning: HpTuning | None = Field(
        None, alias="hpTuning", description="Hyper-parameter search settings."
    )
    tf_job_spec: dict[str, Any] | None = Field(
        None,
        alias="tfJobSpec",
        description="Kubeflow TFJob spec for distributed training (passed through).",
    )

    @model_validator(mode="after")
    def _tuning_needs_loss(self) -> TrainTask:
        if self.hp_tuning is not None and not self.loss_metric:
            raise ValueError(
                "hpTuning needs lossMetric: the metric each trial reports and the search "
                "minimises (or maximises with lossMetricSelector: greater)"
            )
        return self


class DeployTask(TaskBody):
    """A model server: a long-running deployment answering predictions."""

    endpoint_type: Literal["REST", "GRPC"] = Field(
        "REST", alias="endpointType", description="Protocol of the model server."
    )
    endpoint_rest_type: str | None = Field(
        None, alias="endpointRestType", description="REST flavour (Myelin: Multipart)."
    )
    replicas: int = Field(1, ge=0, description="Server replicas.")
    model: str | None = Field(
        None,
        description="Local backend: the model class, `module.Class` or a file-named class "
        "(Myelin's MODEL_NAME).",
    )
    deployment_type: str | None = Field(
        None, alias="deploymentType", description="Myelin's older deployment type (canary)."
    )


class SparkSpec(SpecModel):
    """spark-submit settings, in Myelin's names or the Spark operator's."""

    properties: str | None = Field(
        None, description="spark-defaults style properties (`key value` per line)."
    )
    class_: str | None = Field(None, alias="class", description="Main class.")
    main_class: str | None = Field(
        None, alias="mainClass", description="Main class (the Spark operator's name for class)."
    )
    jars: list[str] = Field(default_factory=list, description="Jars to add.")
    main_application_file: str | None = Field(
        None, alias="mainApplicationFile", description="Application jar or Python file."
    )
    application_file: str | None = Field(
        None,
        alias="applicationFile",
        description="Application jar or Python file (Myelin's name for mainApplicationFile).",
    )
    arguments: list[str] = Field(default_factory=list, description="Application arguments.")
    args: list[str] = Field(
        default_factory=list, description="Application arguments (Myelin's name for arguments)."
    )
    spark_conf: dict[str, ScalarStr] = Field(
        default_factory=dict, alias="sparkConf", description="Spark configuration properties."
    )
    spark_version: str | None = Field(
        None, alias="sparkVersion", description="Spark version of the image (operator field)."
    )
    type: Literal["Java", "Python", "Scala", "R"] | None = Field(
        None, description="Application language (default: Python for a .py file, else Scala)."
    )
    properties_config_map: str | None = Field(
        None,
        alias="propertiesConfigMap",
        description="A ConfigMap holding the properties instead of `properties`.",
    )
    properties_config_map_key: str | None = Field(
        None, alias="propertiesConfigMapKey", description="The key of propertiesConfigMap."
    )
    deploy_mode: Literal["cluster", "client"] | None = Field(
        None, alias="deployMode", description="spark-submit deploy mode (default cluster)."
    )

    @model_validator(mode="after")
    def _one_application(self) -> SparkSpec:
        if self.application_file is not None and self.main_application_file is not None:
            raise ValueError("give mainApplicationFile or applicationFile, not both")
        return self

    @property
    def application(self) -> str | None:
        """The application jar or Python file, whichever name the Axon used."""
        return self.main_application_file or self.application_file

    @property
    def all_arguments(self) -> list[str]:
        """Application arguments under either name, `arguments` first."""
        return [*self.arguments, *self.args]


class SparkTask(TaskBody):
    """A Spark application (Kubernetes only)."""

    spark_spec: SparkSpec | None = Field(
        None, alias="sparkSpec", description="spark-submit settings."
    )


class TfJobTask(TaskBody):
    """A Kubeflow TFJob (Kubernetes only)."""

    tf_job_spec: dict[str, Any] = Field(
        default_factory=dict, alias="tfJobSpec", description="Kubeflow TFJob spec (passed through)."
    )


TaskKind = Literal["container", "train", "deploy", "spark", "tfJob"]
_TASK_KINDS: dict[str, str] = {
    "container": "container",
    "train": "train",
    "deploy": "deploy",
    "spark": "spark",
    "tf_job": "tfJob",
}


class Task(SpecModel):
    """A unit of work: a name and exactly one body (container, train, deploy, spark, tfJob)."""

    name: str = Field(description="Task name, unique in the Axon; actions refer to it.")
    container: ContainerTask | None = Field(None, description="A job that runs to completion.")
    train: TrainTask | None = Field(None, description="A training job producing a model version.")
    deploy: DeployTask | None = Field(None, description="A model server.")
    spark: SparkTask | None = Field(None, description="A Spark application.")
    tf_job: TfJobTask | None = Field(None, alias="tfJob", description="A Kubeflow TFJob.")
    inputs: Any = Field(
        None,
        description="Myelin's task inputs; accepted and not used: ranvier gives every task the "
        "Axon's artifacts and shared store (workingDir, imageBuild, DATA_PATH).",
    )
    sidecars: list[dict[str, Any]] = Field(
        default_factory=list,
        description="Myelin's sidecar containers of the task's pod; accepted and not run (the "
        "local backend runs one process per task; the Kubernetes backend does not render "
        "them yet).",
    )

    @model_validator(mode="after")
    def _one_body(self) -> Task:
        exactly_one(self, _TASK_KINDS, f"task {self.name!r}")
        return self

    @property
    def kind(self) -> TaskKind:
        """Which body is set, by its YAML name."""
        for name, yaml in _TASK_KINDS.items():
            if getattr(self, name) is not None:
                return yaml  # type: ignore[return-value]  # values of _TASK_KINDS are TaskKind
        raise AssertionError("validated Task has no body")  # pragma: no cover

    @property
    def body(self) -> TaskBody:
        """The one body that is set."""
        for name in _TASK_KINDS:
            value = getattr(self, name)
            if value is not None:
                return value  # type: ignore[no-any-return]  # every body is a TaskBody
        raise AssertionError("validated Task has no body")  # pragma: no cover
