"""The Axon root: metadata, parameters, the spec that holds tasks and sensors, its JSON Schema."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from sensors.spec.base import Duration, ScalarStr, SpecModel
from sensors.spec.sensors import Sensor
from sensors.spec.storage import Artifact, Volume, VolumeClaimTemplate
from sensors.spec.tasks import Task

API_VERSIONS = ("myelinproj.io/v1alpha1", "myelin.io/v1alpha1", "ranvier.dev/v1alpha1")


class Metadata(SpecModel):
    """Kubernetes-style object metadata of an Axon."""

    name: str = Field(description="The Axon's name: unique in its namespace, used in subjects.")
    namespace: str = Field("default", description="Namespace the Axon belongs to.")
    labels: dict[str, ScalarStr] = Field(
        default_factory=dict, description="Labels (key/value pairs) attached to the Axon."
    )
    annotations: dict[str, ScalarStr] = Field(
        default_factory=dict, description="Free-form annotations attached to the Axon."
    )


class Parameter(SpecModel):
    """A workflow parameter, substituted wherever `{{workflow.parameters.NAME}}` appears."""

    name: str = Field(description="Parameter name, as used in `{{workflow.parameters.NAME}}`.")
    value: ScalarStr = Field(description="Value substituted for the parameter (as a string).")


class MetricsSettings(SpecModel):
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


class AxonSpec(SpecModel):
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


class Axon(SpecModel):
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
