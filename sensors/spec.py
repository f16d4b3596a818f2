"""Pydantic models of the Axon YAML: the one input format everything else reads.

The models accept Myelin's examples as written (its field names, its camelCase) and our own
local-run additions, and refuse anything else (`extra="forbid"`), so a typo is an error rather
than a silently ignored key. Every field has a description because the models are also the
documentation: `ranvier schema` turns them into the checked-in JSON Schema.

Shape rules that need only one object ("exactly one of git, s3, local") live here as model
validators; rules that look across the file (names exist, weights sum to 100) live in
`sensors.checks`, and positions (file:line:col) come from `sensors.loader`.
"""

from __future__ import annotations

import math
import re
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import croniter
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    PlainSerializer,
    Tag,
    WithJsonSchema,
    field_validator,
    model_validator,
)

from events.errors import RanvierError

API_VERSIONS = ("myelinproj.io/v1alpha1", "myelin.io/v1alpha1", "ranvier.dev/v1alpha1")

# ---------------------------------------------------------------------------------------------
# Durations


class DurationError(RanvierError, ValueError):
    """A duration string that is not a number of seconds nor like `30s`, `5m`, `1h30m`."""


_UNITS: dict[str, float] = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
_DURATION_FULL = re.compile(r"(?:\d+(?:\.\d+)?(?:ms|s|m|h|d))+")
_NUMBER = re.compile(r"\d+(?:\.\d+)?")
DURATION_PATTERN = r"^(\d+(\.\d+)?|(\d+(\.\d+)?(ms|s|m|h|d))+)$"


def parse_duration(text: str) -> float:
    """Seconds in a duration like "30s", "5m", "1h30m", "250ms", "2d" or a plain "90"."""
    value = text.strip()
    if _NUMBER.fullmatch(value):
        return float(value)
    if not _DURATION_FULL.fullmatch(value):
        raise DurationError(
            f"invalid duration {text!r}",
            hint="use seconds or a string like 30s, 5m, 1h30m, 250ms, 2d",
        )
    return sum(float(n) * _UNITS[unit] for n, unit in _DURATION_PART.findall(value))


def format_duration(seconds: float) -> str:
    """The shortest duration string for `seconds`: 90 -> "1m30s", 0.25 -> "250ms", 0 -> "0s"."""
    millis = round(seconds * 1000)
    if millis == 0:
        return "0s"
    parts: list[str] = []
    for unit, size in (("d", 86_400_000), ("h", 3_600_000), ("m", 60_000), ("s", 1000)):
        count, millis = divmod(millis, size)
        if count:
            parts.append(f"{count}{unit}")
    if millis:
        parts.append(f"{millis}ms")
    return "".join(parts)


def _to_seconds(value: object) -> object:
    if isinstance(value, bool):
        raise DurationError("a duration cannot be true or false", hint="use e.g. 30s")
    if isinstance(value, int | float):
        if not math.isfinite(value) or value < 0:
            raise DurationError(f"invalid duration {value!r}", hint="use a non-negative number")
        return float(value)
    if isinstance(value, str):
        return parse_duration(value)
    return value  # let pydantic report the type error


Duration = Annotated[
    float,
    BeforeValidator(_to_seconds),
    PlainSerializer(format_duration, return_type=str),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "number", "minimum": 0},
                {"type": "string", "pattern": DURATION_PATTERN},
            ],
            "description": 'Seconds, or a string like "30s", "5m", "1h30m", "250ms", "2d".',
        }
    ),
]
"""Seconds as a float; YAML may say `30`, `"30s"`, `"1h30m"`; it serialises back to "30s"."""


def _scalar_to_str(value: object) -> object:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    return value


ScalarStr = Annotated[
    str,
    BeforeValidator(_scalar_to_str),
    WithJsonSchema({"type": ["string", "number", "boolean"]}),
]
"""A string that YAML may also have written as a number or a boolean (`storage: 1`, `"1Gi"`)."""


class _Model(BaseModel):
    """Strict, immutable base: unknown keys are errors, YAML names and Python names both work."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True, frozen=True)


def _exactly_one(model: BaseModel, fields: dict[str, str], what: str) -> None:
    """Raise when not exactly one of `fields` (python name -> YAML name) is set."""
    present = [yaml for name, yaml in fields.items() if getattr(model, name) is not None]
    names = ", ".join(fields.values())
    if not present:
        raise ValueError(f"{what} needs exactly one of: {names}")
    if len(present) > 1:
        raise ValueError(f"{what} has {' and '.join(present)}; give exactly one of: {names}")


# ---------------------------------------------------------------------------------------------
# Metadata, parameters, artifacts, volumes


class Metadata(_Model):
    """Kubernetes-style object metadata of an Axon."""

    name: str = Field(description="The Axon's name: unique in its namespace, used in subjects.")
    namespace: str = Field("default", description="Namespace the Axon belongs to.")
    labels: dict[str, ScalarStr] = Field(
        default_factory=dict, description="Labels (key/value pairs) attached to the Axon."
    )
    annotations: dict[str, ScalarStr] = Field(
        default_factory=dict, description="Free-form annotations attached to the Axon."
    )


class Parameter(_Model):
    """A workflow parameter, substituted wherever `{{workflow.parameters.NAME}}` appears."""

    name: str = Field(description="Parameter name, as used in `{{workflow.parameters.NAME}}`.")
    value: ScalarStr = Field(description="Value substituted for the parameter (as a string).")


class SecretKeyRef(_Model):
    """A key inside a Kubernetes Secret."""

    name: str = Field(description="Name of the Secret.")
    key: str = Field(description="Key inside the Secret.")


class GitArtifact(_Model):
    """Source code fetched from a git repository."""

    repo: str = Field(description="Repository URL (https or ssh).")
    revision: str = Field("HEAD", description="Branch, tag or commit to check out.")
    ssh_private_key_secret: SecretKeyRef | None = Field(
        None,
        alias="sshPrivateKeySecret",
        description="Secret holding the SSH private key for a private repository.",
    )
    username_secret: SecretKeyRef | None = Field(
        None, alias="usernameSecret", description="Secret holding the HTTPS user name."
    )
    password_secret: SecretKeyRef | None = Field(
        None, alias="passwordSecret", description="Secret holding the HTTPS password or token."
    )


class S3Artifact(_Model):
    """An object or prefix in an S3-compatible bucket."""

    endpoint: str | None = Field(None, description="S3 endpoint (host[:port]); AWS when unset.")
    bucket: str = Field(description="Bucket name.")
    key: str = Field(description="Object key or prefix.")
    region: str | None = Field(None, description="Bucket region.")
    insecure: bool = Field(False, description="Use plain HTTP instead of HTTPS.")
    access_key_secret: SecretKeyRef | None = Field(
        None, alias="accessKeySecret", description="Secret holding the access key id."
    )
    secret_key_secret: SecretKeyRef | None = Field(
        None, alias="secretKeySecret", description="Secret holding the secret access key."
    )


class LocalArtifact(_Model):
    """A directory on this machine (ranvier's local backend)."""

    path: str = Field(description="Directory, absolute or relative to the Axon file.")


class Artifact(_Model):
    """Named source material (code, data) that tasks build from or mount."""

    name: str = Field(description="Artifact name, referenced by `imageBuild.artifact`.")
    path: str | None = Field(None, description="Where the artifact is mounted inside tasks.")
    git: GitArtifact | None = Field(None, description="Fetch the artifact from git.")
    s3: S3Artifact | None = Field(None, description="Fetch the artifact from S3.")
    local: LocalArtifact | None = Field(None, description="Use a local directory (ranvier).")

    @model_validator(mode="after")
    def _one_source(self) -> Artifact:
        _exactly_one(self, {"git": "git", "s3": "s3", "local": "local"}, "an artifact")
        return self


class HostPathVolume(_Model):
    """A directory on the Kubernetes node."""

    path: str = Field(description="Directory on the node.")
    type: str | None = Field(None, description="Kubernetes hostPath type (e.g. Directory).")


class FlexVolume(_Model):
    """A Kubernetes flexVolume (e.g. Rook/Ceph, as Myelin's examples use)."""

    driver: str = Field(description="Flex volume driver name.")
    fs_type: str | None = Field(None, alias="fsType", description="Filesystem type.")
    options: dict[str, ScalarStr] = Field(
        default_factory=dict, description="Driver-specific options."
    )
    read_only: bool = Field(False, alias="readOnly", description="Mount read-only.")
    secret_ref: dict[str, str] | None = Field(
        None, alias="secretRef", description="Secret passed to the driver ({name})."
    )


class PvcVolumeSource(_Model):
    """An existing PersistentVolumeClaim."""

    claim_name: str = Field(alias="claimName", description="Name of the claim.")
    read_only: bool = Field(False, alias="readOnly", description="Mount read-only.")


class NfsVolume(_Model):
    """An NFS export."""

    server: str = Field(description="NFS server host.")
    path: str = Field(description="Exported path.")
    read_only: bool = Field(False, alias="readOnly", description="Mount read-only.")


class EmptyDirVolume(_Model):
    """A scratch directory that lives as long as the pod."""

    medium: str | None = Field(None, description='Storage medium ("" or "Memory").')
    size_limit: ScalarStr | None = Field(None, alias="sizeLimit", description="Size limit.")


class Volume(_Model):
    """The Axon's shared store, as a Kubernetes volume."""

    name: str = Field(description="Volume name.")
    host_path: HostPathVolume | None = Field(None, alias="hostPath", description="Node path.")
    flex_volume: FlexVolume | None = Field(None, alias="flexVolume", description="Flex volume.")
    persistent_volume_claim: PvcVolumeSource | None = Field(
        None, alias="persistentVolumeClaim", description="An existing claim."
    )
    nfs: NfsVolume | None = Field(None, description="An NFS export.")
    empty_dir: EmptyDirVolume | None = Field(None, alias="emptyDir", description="Scratch dir.")

    @model_validator(mode="after")
    def _one_source(self) -> Volume:
        _exactly_one(
            self,
            {
                "host_path": "hostPath",
                "flex_volume": "flexVolume",
                "persistent_volume_claim": "persistentVolumeClaim",
                "nfs": "nfs",
                "empty_dir": "emptyDir",
            },
            "a volume",
        )
        return self


class ClaimMetadata(_Model):
    """Metadata of the claim created from the template."""

    name: str = Field(description="Claim name.")
    labels: dict[str, ScalarStr] = Field(default_factory=dict, description="Claim labels.")
    annotations: dict[str, ScalarStr] = Field(
        default_factory=dict, description="Claim annotations."
    )


class ResourceRequirements(_Model):
    """Kubernetes compute or storage resources (quantities like `1Gi`, `500m`, `1`)."""

    requests: dict[str, ScalarStr] = Field(default_factory=dict, description="Requested amounts.")
    limits: dict[str, ScalarStr] = Field(default_factory=dict, description="Upper limits.")


AccessMode = Literal["ReadWriteOnce", "ReadOnlyMany", "ReadWriteMany", "ReadWriteOncePod"]


def _default_access_modes() -> list[AccessMode]:
    return ["ReadWriteOnce"]


class ClaimSpec(_Model):
    """The PersistentVolumeClaim spec fields Myelin uses."""

    storage_class_name: str | None = Field(
        None, alias="storageClassName", description="Storage class of the claim."
    )
    access_modes: list[AccessMode] = Field(
        default_factory=_default_access_modes,
        alias="accessModes",
        description="Access modes of the claim.",
    )
    resources: ResourceRequirements = Field(
        default_factory=ResourceRequirements, description="Requested storage (requests.storage)."
    )
    volume_mode: Literal["Filesystem", "Block"] | None = Field(
        None, alias="volumeMode", description="Filesystem (default) or Block."
    )
    volume_name: str | None = Field(
        None, alias="volumeName", description="Bind to this PersistentVolume."
    )


class VolumeClaimTemplate(_Model):
    """A PersistentVolumeClaim created for the Axon's shared store."""

    metadata: ClaimMetadata = Field(description="Claim metadata (name).")
    spec: ClaimSpec = Field(description="Claim spec.")


# ---------------------------------------------------------------------------------------------
# Tasks


class EnvVarSource(_Model):
    """Where an environment variable's value comes from."""

    secret_key_ref: SecretKeyRef | None = Field(
        None, alias="secretKeyRef", description="A key of a Secret."
    )
    config_map_key_ref: SecretKeyRef | None = Field(
        None, alias="configMapKeyRef", description="A key of a ConfigMap."
    )

    @model_validator(mode="after")
    def _one_source(self) -> EnvVarSource:
        _exactly_one(
            self,
            {"secret_key_ref": "secretKeyRef", "config_map_key_ref": "configMapKeyRef"},
            "valueFrom",
        )
        return self


class EnvVar(_Model):
    """An environment variable for a task or an action."""

    name: str = Field(description="Variable name.")
    value: ScalarStr | None = Field(None, description="Literal value.")
    value_from: EnvVarSource | None = Field(
        None, alias="valueFrom", description="Take the value from a Secret or ConfigMap."
    )


class Dockerfile(_Model):
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


class S2I(_Model):
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


class ImageBuild(_Model):
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
        _exactly_one(self, {"dockerfile": "dockerfile", "s2i": "s2i"}, "an imageBuild")
        return self


class TaskBody(_Model):
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


class MetricDecl(_Model):
    """A metric a training task reports."""

    name: str = Field(description="Metric name.")
    type: Literal["Gauge", "Counter", "Histogram", "Summary"] = Field(
        "Gauge", description="Prometheus metric type."
    )
    help: str | None = Field(None, description="What the metric measures.")


class CategoricalRange(_Model):
    """Values of a categorical hyper-parameter."""

    values: list[ScalarStr] = Field(min_length=1, description="The allowed values (at least one).")
    default_value: ScalarStr | None = Field(
        None, description="The value of the first trial; one of `values`."
    )

    @model_validator(mode="after")
    def _default_is_a_value(self) -> CategoricalRange:
        if self.default_value is not None and self.default_value not in self.values:
            raise ValueError(
                f"default_value {self.default_value!r} is not one of the values {self.values}"
            )
        return self


def _number(value: str, what: str) -> float:
    try:
        number = float(value)
    except ValueError:
        raise ValueError(f"{what} {value!r} is not a number") from None
    if not math.isfinite(number):
        raise ValueError(f"{what} {value!r} is not a finite number")
    return number


class NumericalRange(_Model):
    """Range of a numerical hyper-parameter (Myelin writes the bounds as strings)."""

    lower: ScalarStr = Field(description="Lower bound (inclusive).")
    upper: ScalarStr = Field(description="Upper bound (inclusive).")
    default_value: ScalarStr | None = Field(
        None, description="The value of the first trial; inside [lower, upper]."
    )
    log: bool = Field(False, description="Sample on a log scale (needs lower > 0).")

    @model_validator(mode="after")
    def _bounds(self) -> NumericalRange:
        low, high = _number(self.lower, "lower"), _number(self.upper, "upper")
        if low > high:
            raise ValueError(f"lower {self.lower} is greater than upper {self.upper}; swap them")
        if self.log and low <= 0:
            raise ValueError(f"log: true needs lower > 0 (it is {self.lower})")
        if self.default_value is not None:
            default = _number(self.default_value, "default_value")
            if not low <= default <= high:
                raise ValueError(
                    f"default_value {self.default_value} is outside [{self.lower}, {self.upper}]"
                )
        return self

    @property
    def bounds(self) -> tuple[float, float]:
        """(lower, upper) as numbers."""
        return float(self.lower), float(self.upper)


HpParamType = Literal["Categorical", "UniformFloat", "UniformInteger"]


class HpParam(_Model):
    """One hyper-parameter to tune."""

    name: str = Field(description="Parameter name; trials get it as `--NAME VALUE`.")
    type: HpParamType = Field(
        description="Categorical (one of categorical.values), UniformFloat or UniformInteger "
        "(numerical.lower..upper)."
    )
    categorical: CategoricalRange | None = Field(None, description="Values (Categorical).")
    numerical: NumericalRange | None = Field(None, description="Range (Uniform*).")

    @model_validator(mode="after")
    def _range_fits_type(self) -> HpParam:
        if self.type == "Categorical":
            if self.categorical is None:
                raise ValueError(f"parameter {self.name!r} is Categorical: give categorical.values")
            if self.numerical is not None:
                raise ValueError(f"parameter {self.name!r} is Categorical: remove numerical")
            return self
        if self.numerical is None:
            raise ValueError(
                f"parameter {self.name!r} is {self.type}: give numerical.lower and upper"
            )
        if self.categorical is not None:
            raise ValueError(f"parameter {self.name!r} is {self.type}: remove categorical")
        if self.type == "UniformInteger":
            for what, value in (
                ("lower", self.numerical.lower),
                ("upper", self.numerical.upper),
                ("default_value", self.numerical.default_value),
            ):
                if value is not None and not float(value).is_integer():
                    raise ValueError(
                        f"parameter {self.name!r} is UniformInteger: {what} {value} is not "
                        "a whole number"
                    )
        return self


Optimiser = Literal["RandomSearch", "HyperBand", "BOHB"]


class HpTuning(_Model):
    """A hyper-parameter search: each trial is one run of the train task with its own settings."""

    concurrency: int = Field(1, ge=1, description="Trials run at the same time.")
    min_budget: float | None = Field(
        None,
        gt=0,
        alias="minBudget",
        description="Smallest budget a trial gets (HyperBand, BOHB); trials read it as "
        "`--budget` and decide what it means (epochs, samples, trees).",
    )
    max_budget: float | None = Field(
        None, gt=0, alias="maxBudget", description="Largest budget (HyperBand, BOHB)."
    )
    num_iteration: int = Field(
        10,
        ge=1,
        alias="numIteration",
        description="RandomSearch: the number of trials; HyperBand and BOHB: the number of "
        "successive-halving brackets.",
    )
    optimiser: Optimiser = Field(
        "HyperBand",
        description="RandomSearch (random sampling at maxBudget), HyperBand (random sampling, "
        "successive halving over budgets minBudget..maxBudget) or BOHB (a model-based TPE "
        "sampler with HyperBand's budgets).",
    )
    params: list[HpParam] = Field(min_length=1, description="The search space.")

    @model_validator(mode="after")
    def _budgets(self) -> HpTuning:
        if self.optimiser != "RandomSearch" and (
            self.min_budget is None or self.max_budget is None
        ):
            raise ValueError(f"optimiser {self.optimiser} needs minBudget and maxBudget")
        if (
            self.min_budget is not None
            and self.max_budget is not None
            and self.min_budget > self.max_budget
        ):
            raise ValueError(
                f"minBudget {self.min_budget:g} is greater than maxBudget {self.max_budget:g}"
            )
        names = [p.name for p in self.params]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ValueError(f"parameter {twice[0]!r} is given twice; names must be unique")
        return self


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


class SparkSpec(_Model):
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


class Task(_Model):
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
        _exactly_one(self, _TASK_KINDS, f"task {self.name!r}")
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


# ---------------------------------------------------------------------------------------------
# Sensors: triggers and conditions

LifecyclePhase = Literal["Pending", "Running", "Succeeded", "Failed"]


class LifecycleTrigger(_Model):
    """Fires when a task run enters a phase (edge-triggered: once per run and phase)."""

    name: str = Field(description="Trigger name, unique in its sensor.")
    type: Literal["Lifecycle"] = Field(description="Trigger type.")
    task: str = Field(description="The task whose runs are watched.")
    condition: LifecyclePhase = Field(description="The phase that fires the trigger.")


class AlertTrigger(_Model):
    """Fires when a metric condition holds (inactive -> pending -> firing -> resolved)."""

    name: str = Field(description="Trigger name, unique in its sensor.")
    type: Literal["Alert"] = Field(description="Trigger type.")
    condition: str = Field(
        description='Condition, e.g. "{{shakespeare_gpt2_deploy_accuracy}} < 0.90" or '
        "\"avg_over_time({{acc}}{job='x'}[5m]) < 0.2\"."
    )
    for_: Duration = Field(
        0.0, alias="for", description="The condition must hold this long before firing."
    )
    resolve: str | None = Field(
        None,
        description="While firing, the alert resolves only when this condition holds "
        "(hysteresis); by default when `condition` stops holding.",
    )
    keep_firing_for: Duration = Field(
        0.0,
        alias="keepFiringFor",
        description="Keep firing this long after the condition stops holding.",
    )
    cooldown: Duration = Field(0.0, description="After a firing, do not fire again for this long.")


class RestTrigger(_Model):
    """Fires when called over HTTP or with `ranvier trigger AXON SENSOR`."""

    name: str = Field(description="Trigger name, unique in its sensor.")
    type: Literal["Rest"] = Field(description="Trigger type.")


class CalendarTrigger(_Model):
    """Fires on a cron schedule or at a fixed interval."""

    name: str = Field(description="Trigger name, unique in its sensor.")
    type: Literal["Calendar"] = Field(description="Trigger type.")
    schedule: str | None = Field(None, description='Cron expression, e.g. "0 3 * * *".')
    interval: Duration | None = Field(None, description="Fixed interval between firings.")
    timezone: str = Field("UTC", description="IANA time zone of the schedule.")

    @field_validator("schedule")
    @classmethod
    def _cron(cls, value: str | None) -> str | None:
        if value is not None and not croniter.is_valid(value):
            raise ValueError(f"invalid cron schedule {value!r}; use five fields like '0 3 * * *'")
        return value

    @field_validator("interval")
    @classmethod
    def _positive(cls, value: float | None) -> float | None:
        if value is not None and value <= 0:
            raise ValueError("interval must be greater than 0")
        return value

    @field_validator("timezone")
    @classmethod
    def _zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(
                f"unknown timezone {value!r}; use an IANA name like 'Europe/Paris'"
            ) from exc
        return value

    @model_validator(mode="after")
    def _one_kind(self) -> CalendarTrigger:
        _exactly_one(self, {"schedule": "schedule", "interval": "interval"}, "a Calendar trigger")
        return self


AnyTrigger = LifecycleTrigger | AlertTrigger | RestTrigger | CalendarTrigger
Trigger = Annotated[AnyTrigger, Field(discriminator="type")]
"""A trigger, chosen by its `type`: Lifecycle, Alert, Rest or Calendar."""

TRIGGER_TYPES = ("Lifecycle", "Alert", "Rest", "Calendar")


class MetricCondition(_Model):
    """A metric condition that must hold when the sensor fires (AND), or the firing is skipped."""

    name: str = Field(description="Condition name, unique in its sensor.")
    type: Literal["Metric"] = Field("Metric", description="Condition type.")
    condition: str = Field(description='Condition, e.g. "{{accuracy}} > 0.5".')
    task: str | None = Field(
        None,
        description="A train task: its `{{metric}}` templates read the metrics its latest "
        "Succeeded run reported (metrics.json or the SDK) instead of the metric watcher.",
    )


# ---------------------------------------------------------------------------------------------
# Sensors: actions


class Retry(_Model):
    """How often a failed action is attempted again, and how long to wait in between."""

    limit: int = Field(0, ge=0, description="Extra attempts after the first failure.")
    backoff: Duration = Field(0.0, description="Wait before each new attempt.")


class TaskRef(_Model):
    """Run a task (resourceExecutor: container or spark; trainer: train)."""

    task: str = Field(description="Name of the task to run.")
    env: list[EnvVar] = Field(default_factory=list, description="Extra environment variables.")
    retry: Retry | None = Field(None, description="Attempt again on failure.")


class RolloutDestination(_Model):
    """A share of traffic sent to a model version (0 is the newest deployed)."""

    destination_index: int = Field(
        ge=0, alias="destinationIndex", description="0 = newest deployed version, 1 = previous."
    )
    weight: int = Field(ge=0, le=100, description="Percentage of traffic.")


class ShadowDestination(_Model):
    """A version that receives a copy of the traffic; its answers are discarded."""

    destination_index: int = Field(
        ge=0, alias="destinationIndex", description="Version index to mirror traffic to."
    )


class RolloutMatch(_Model):
    """Which requests a rollout rule applies to."""

    headers: dict[str, str] = Field(
        default_factory=dict, description="Header name -> exact value a request must carry."
    )


class RolloutSpec(_Model):
    """Traffic split across model versions."""

    destinations: list[RolloutDestination] = Field(
        min_length=1, description="Versions and their weights (sum 100)."
    )
    shadow: ShadowDestination | None = Field(None, description="Mirror traffic to a version.")
    match: RolloutMatch | None = Field(None, description="Apply only to matching requests.")


class RoutingDestination(_Model):
    """A share of a model's traffic sent to a backend model."""

    destination_name: str = Field(
        alias="destinationName", description="Name of a backend model of this model."
    )
    weight: int = Field(ge=0, le=100, description="Percentage of traffic.")


class RoutingStrategy(_Model):
    """Traffic split across backend models."""

    destinations: list[RoutingDestination] = Field(
        min_length=1, description="Backend models and their weights (sum 100)."
    )


SelectionStrategy = Literal["best", "latest"]


class BackendModel(_Model):
    """A trained model served by a deploy task."""

    name: str = Field(description="Backend model name, unique in its model.")
    trainer: str = Field(description="The train task that produces its versions.")
    deployer: str = Field(description="The deploy task that serves it.")
    model_selection_strategy: SelectionStrategy = Field(
        "best",
        alias="modelSelectionStrategy",
        description="best: the version with the best lossMetric; latest: the newest.",
    )


class DeployerModel(_Model):
    """A logical model behind the deployer's routes."""

    name: str = Field(description="Model name, used by route DAGs.")
    model_selection_strategy: SelectionStrategy = Field(
        "best", alias="modelSelectionStrategy", description="How versions are chosen."
    )
    routing_strategy: list[RoutingStrategy] = Field(
        default_factory=list,
        alias="routingStrategy",
        description="Traffic split across backend models.",
    )
    backend_models: list[BackendModel] = Field(
        min_length=1, alias="backendModels", description="The trained models it serves."
    )


class DagNode(_Model):
    """One model call in a route's graph."""

    model: str = Field(description="A model of this deployer, or an external one with fullPath.")
    path: str | None = Field(None, description="Path on the model server, e.g. /predict.")
    dependencies: list[str] = Field(
        default_factory=list, description="Models of this DAG whose outputs feed this one."
    )
    include_input: bool = Field(
        False, alias="includeInput", description="Also pass the route's original input."
    )
    full_path: str | None = Field(
        None, alias="fullPath", description="Absolute URL of an external model."
    )
    health_path: str | None = Field(
        None, alias="healthPath", description="Absolute health URL of an external model."
    )
    endpoint_rest_type: str | None = Field(
        None, alias="endpointRestType", description="REST flavour of an external model."
    )
    dependency: str | None = Field(
        None, description="Myelin's older single-dependency path (accepted, ignored)."
    )


class Route(_Model):
    """A public path of the deployer and the graph of model calls behind it."""

    path: str = Field(description="Public path, e.g. /predict.")
    dag: list[DagNode] = Field(min_length=1, description="Model calls; dependencies form a DAG.")


class Deployer(_Model):
    """Deploy model versions behind stable routes with traffic splitting."""

    name: str = Field(description="Deployer name; the endpoint is named after it.")
    replicas: int = Field(1, ge=0, description="Router replicas.")
    rollout_spec: list[RolloutSpec] = Field(
        default_factory=list, alias="rolloutSpec", description="Traffic split across versions."
    )
    models: list[DeployerModel] = Field(min_length=1, description="Models behind the routes.")
    routes: list[Route] = Field(default_factory=list, description="Public paths.")
    env: list[EnvVar] = Field(default_factory=list, description="Extra environment variables.")
    retry: Retry | None = Field(None, description="Attempt again on failure.")


ActionKind = Literal["resourceExecutor", "trainer", "deployer"]


class ActionSpec(_Model):
    """One action of a sensor step: exactly one of resourceExecutor, trainer, deployer."""

    step_env: list[EnvVar] = Field(
        default_factory=list,
        alias="env",
        description="Extra environment variables of the action, written next to it as Myelin's "
        "docs do (merged with the ones inside it; these come first).",
    )

    resource_executor: TaskRef | None = Field(
        None, alias="resourceExecutor", description="Run a container or spark task."
    )
    trainer: TaskRef | None = Field(None, description="Run a train task.")
    deployer: Deployer | None = Field(None, description="Deploy trained models.")

    @model_validator(mode="after")
    def _one_action(self) -> ActionSpec:
        _exactly_one(
            self,
            {"resource_executor": "resourceExecutor", "trainer": "trainer", "deployer": "deployer"},
            "an action",
        )
        return self

    @property
    def kind(self) -> ActionKind:
        """Which action is set, by its YAML name."""
        if self.resource_executor is not None:
            return "resourceExecutor"
        if self.trainer is not None:
            return "trainer"
        return "deployer"

    @property
    def task_name(self) -> str:
        """The task to run, or the deployer's name."""
        ref = self.resource_executor or self.trainer
        if ref is not None:
            return ref.task
        assert self.deployer is not None  # guaranteed by _one_action
        return self.deployer.name

    @property
    def retry(self) -> Retry | None:
        """The action's retry policy, if any."""
        body = self.resource_executor or self.trainer or self.deployer
        return body.retry if body is not None else None

    @property
    def env(self) -> list[EnvVar]:
        """The action's extra environment variables (next to it, then inside it)."""
        body = self.resource_executor or self.trainer or self.deployer
        return [*self.step_env, *(body.env if body is not None else [])]


def _step_tag(value: Any) -> str:
    return "group" if isinstance(value, list | tuple) else "action"


Step = Annotated[
    Annotated[ActionSpec, Tag("action")] | Annotated[list[ActionSpec], Tag("group")],
    Discriminator(_step_tag),
]
"""A step: one action, or a list of actions that run in parallel (the step waits for all)."""

UNION_TAGS = frozenset({"action", "group", *TRIGGER_TYPES})
"""Tags pydantic inserts into error locations after a list index (see sensors.loader)."""


class MaxRuns(_Model):
    """At most `count` runs started per `per` window (guards retrain loops)."""

    count: int = Field(ge=1, description="Runs allowed in the window.")
    per: Duration = Field(description="Window length.")

    @field_validator("per")
    @classmethod
    def _positive(cls, value: float) -> float:
        if value <= 0:
            raise ValueError("per must be greater than 0")
        return value


class SensorParameter(_Model):
    """A parameter of a sensor, as Myelin's docs list it."""

    name: str = Field(description="Parameter name.")
    value: ScalarStr | None = Field(None, description="Its value.")


class Sensor(_Model):
    """When to run what: triggers (any), conditions (all), then steps in order."""

    name: str = Field(description="Sensor name, unique in the Axon.")
    triggers: list[Trigger] = Field(
        default_factory=list,
        description="Any one fires the sensor; none: run once when the Axon is submitted.",
    )
    conditions: list[MetricCondition] = Field(
        default_factory=list, description="All must hold when a trigger fires."
    )
    tasks: list[Step] = Field(
        min_length=1, description="Steps in order; a list inside runs in parallel."
    )
    concurrency: Literal["Forbid", "Allow", "Replace"] = Field(
        "Forbid",
        description="A firing while a run is active: Forbid skips it, Allow starts another, "
        "Replace cancels the active run.",
    )
    max_runs: MaxRuns | None = Field(
        None, alias="maxRuns", description="Bound on runs started in a time window."
    )
    parameters: list[SensorParameter] = Field(
        default_factory=list,
        description="Myelin's sensor parameters; accepted and not used (use spec.parameters "
        "and an action's env to pass values to tasks).",
    )

    @property
    def steps(self) -> tuple[tuple[ActionSpec, ...], ...]:
        """Every step as a tuple of actions (one action = a group of one)."""
        return tuple(tuple(s) if isinstance(s, list) else (s,) for s in self.tasks)

    def trigger(self, name: str) -> AnyTrigger | None:
        """The trigger called `name`, if any."""
        return next((t for t in self.triggers if t.name == name), None)


# ---------------------------------------------------------------------------------------------
# The Axon


class MetricsSettings(_Model):
    """Where Alert triggers and Metric conditions read their values."""

    source: Literal["scrape", "prometheus"] = Field(
        "scrape",
        description="scrape: read the model servers' /metrics and evaluate the query locally; "
        "prometheus: send the query to Prometheus.",
    )
    url: str | None = Field(
        None, description="Prometheus URL (source prometheus; else RANVIER_PROMETHEUS_URL)."
    )
    interval: Duration = Field(5.0, description="How often conditions are evaluated.")


class AxonSpec(_Model):
    """Tasks, the sensors that run them, and what they share."""

    service_account_name: str | None = Field(
        None, alias="serviceAccountName", description="Kubernetes service account of the tasks."
    )
    parameters: list[Parameter] = Field(
        default_factory=list, description="Values for {{workflow.parameters.NAME}}."
    )
    artifacts: list[Artifact] = Field(default_factory=list, description="Sources and data.")
    volume: Volume | None = Field(None, description="The shared store, as a volume.")
    volume_claim_template: VolumeClaimTemplate | None = Field(
        None, alias="volumeClaimTemplate", description="The shared store, as a new claim."
    )
    tasks: list[Task] = Field(min_length=1, description="The tasks sensors can run.")
    sensors: list[Sensor] = Field(default_factory=list, description="When to run which tasks.")
    metrics: MetricsSettings | None = Field(
        None, description="Where metric conditions read their values (default: scrape)."
    )

    def task(self, name: str) -> Task | None:
        """The task called `name`, if any."""
        return next((t for t in self.tasks if t.name == name), None)

    def sensor(self, name: str) -> Sensor | None:
        """The sensor called `name`, if any."""
        return next((s for s in self.sensors if s.name == name), None)

    def artifact(self, name: str) -> Artifact | None:
        """The artifact called `name`, if any."""
        return next((a for a in self.artifacts if a.name == name), None)


class Axon(_Model):
    """An Axon: one ML pipeline, its tasks and the sensors that decide when they run."""

    api_version: Literal["myelinproj.io/v1alpha1", "myelin.io/v1alpha1", "ranvier.dev/v1alpha1"] = (
        Field(alias="apiVersion", description="API version (Myelin's or ranvier's).")
    )
    kind: Literal["Axon"] = Field(description="Always Axon.")
    metadata: Metadata = Field(description="Name, namespace, labels.")
    spec: AxonSpec = Field(description="Tasks and sensors.")


def json_schema() -> dict[str, Any]:
    """The Axon JSON Schema (draft 2020-12), as `ranvier schema` prints it."""
    schema = Axon.model_json_schema(by_alias=True)
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": "https://ranvier.dev/schema/axon.schema.json",
        **schema,
    }
