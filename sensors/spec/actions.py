"""What a sensor step runs: a task (resourceExecutor, trainer) or a deployer, alone or grouped."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Discriminator, Field, Tag, model_validator

from sensors.spec.base import Duration, SpecModel, exactly_one
from sensors.spec.tasks import EnvVar


class Retry(SpecModel):
    """How often a failed action is attempted again, and how long to wait in between."""

    limit: int = Field(0, ge=0, description="Extra attempts after the first failure.")
    backoff: Duration = Field(0.0, description="Wait before each new attempt.")


class TaskRef(SpecModel):
    """Run a task (resourceExecutor: container or spark; trainer: train)."""

    task: str = Field(description="Name of the task to run.")
    env: list[EnvVar] = Field(default_factory=list, description="Extra environment variables.")
    retry: Retry | None = Field(None, description="Attempt again on failure.")


class RolloutDestination(SpecModel):
    """A share of traffic sent to a model version (0 is the newest deployed)."""

    destination_index: int = Field(
        ge=0, alias="destinationIndex", description="0 = newest deployed version, 1 = previous."
    )
    weight: int = Field(ge=0, le=100, description="Percentage of traffic.")


class ShadowDestination(SpecModel):
    """A version that receives a copy of the traffic; its answers are discarded."""

    destination_index: int = Field(
        ge=0, alias="destinationIndex", description="Version index to mirror traffic to."
    )


class RolloutMatch(SpecModel):
    """Which requests a rollout rule applies to."""

    headers: dict[str, str] = Field(
        default_factory=dict, description="Header name -> exact value a request must carry."
    )


class RolloutSpec(SpecModel):
    """Traffic split across model versions."""

    destinations: list[RolloutDestination] = Field(
        min_length=1, description="Versions and their weights (sum 100)."
    )
    shadow: ShadowDestination | None = Field(None, description="Mirror traffic to a version.")
    match: RolloutMatch | None = Field(None, description="Apply only to matching requests.")


class RoutingDestination(SpecModel):
    """A share of a model's traffic sent to a backend model."""

    destination_name: str = Field(
        alias="destinationName", description="Name of a backend model of this model."
    )
    weight: int = Field(ge=0, le=100, description="Percentage of traffic.")


class RoutingStrategy(SpecModel):
    """Traffic split across backend models."""

    destinations: list[RoutingDestination] = Field(
        min_length=1, description="Backend models and their weights (sum 100)."
    )


SelectionStrategy = Literal["best", "latest"]


class BackendModel(SpecModel):
    """A trained model served by a deploy task."""

    name: str = Field(description="Backend model name, unique in its model.")
    trainer: str = Field(description="The train task that produces its versions.")
    deployer: str = Field(description="The deploy task that serves it.")
    model_selection_strategy: SelectionStrategy = Field(
        "best",
        alias="modelSelectionStrategy",
        description="best: the version with the best lossMetric; latest: the newest.",
    )


class DeployerModel(SpecModel):
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


class DagNode(SpecModel):
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


class Route(SpecModel):
    """A public path of the deployer and the graph of model calls behind it."""

    path: str = Field(description="Public path, e.g. /predict.")
    dag: list[DagNode] = Field(min_length=1, description="Model calls; dependencies form a DAG.")


class Deployer(SpecModel):
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


class ActionSpec(SpecModel):
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
        exactly_one(
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
