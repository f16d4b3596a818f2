"""The valid parts of an invalid Axon file, so its cross-references are checked too.

A file with one bad task still deserves to hear that a sensor names a task that does not
exist. `salvage` validates the spec's lists item by item and stands a placeholder in for
each item that does not validate; findings under a placeholder are noise and are dropped.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from sensors.checks import Loc
from sensors.spec import Artifact, Axon, AxonSpec, ContainerTask, Metadata, Parameter, Sensor, Task

_M = TypeVar("_M", bound=BaseModel)

Placeholder = Callable[[str | None, int], _M]
"""Stands in for item `i` of a list, given its name when the invalid item had one."""


@dataclass(frozen=True)
class Salvaged:
    """A partial Axon and what in it is made up."""

    axon: Axon
    dropped: list[Loc]
    """Locations of placeholders: findings under them are noise."""
    unknown_kinds: frozenset[str]
    """Names of tasks whose kind is unknown because their definition is invalid."""


def salvage(data: dict[str, Any]) -> Salvaged | None:
    """An Axon of the parts of `data` that validate, with placeholders for the others."""
    spec = data.get("spec")
    if not isinstance(spec, dict):
        return None
    parts = _Parts(spec)
    metadata = parts.metadata(data.get("metadata"))
    partial_spec = AxonSpec.model_construct(
        tasks=parts.items("tasks", Task, parts.task),
        sensors=parts.items("sensors", Sensor, _sensor),
        artifacts=parts.items("artifacts", Artifact, _artifact),
        parameters=parts.items("parameters", Parameter, _parameter),
        volume=None,
        volume_claim_template=None,
        metrics=None,
    )
    parts.dropped += [("spec", "volume"), ("spec", "volumeClaimTemplate")]
    axon = Axon.model_construct(
        api_version="ranvier.dev/v1alpha1", kind="Axon", metadata=metadata, spec=partial_spec
    )
    return Salvaged(axon, parts.dropped, frozenset(parts.unknown_kinds))


class _Parts:
    """Validates the spec's parts one by one, noting where it had to make something up."""

    def __init__(self, spec: dict[str, Any]) -> None:
        self.spec = spec
        self.dropped: list[Loc] = []
        self.unknown_kinds: set[str] = set()

    def metadata(self, raw: object) -> Metadata:
        """The metadata, or a placeholder name when it does not validate."""
        try:
            return Metadata.model_validate(raw)
        except ValidationError:
            self.dropped.append(("metadata",))
            return Metadata.model_construct(name="placeholder", namespace="default")

    def items(self, key: str, model: type[_M], placeholder: Placeholder[_M]) -> list[_M]:
        """The items of the list `spec.<key>`, each validated or replaced by a placeholder."""
        raw = self.spec.get(key)
        if not isinstance(raw, list):
            if key in self.spec:
                self.dropped.append(("spec", key))
            return []
        out: list[_M] = []
        for i, item in enumerate(raw):
            try:
                out.append(model.model_validate(item))
            except ValidationError:
                self.dropped.append(("spec", key, i))
                name = item.get("name") if isinstance(item, dict) else None
                out.append(placeholder(name if isinstance(name, str) else None, i))
        return out

    def task(self, name: str | None, i: int) -> Task:
        """A task of unknown kind: actions naming it are not checked against its kind."""
        if name is not None:
            self.unknown_kinds.add(name)
        return Task.model_construct(
            name=name if name is not None else f"#{i}", container=ContainerTask.model_construct()
        )


def _sensor(name: str | None, i: int) -> Sensor:
    return Sensor.model_construct(name=name or f"#{i}", triggers=[], conditions=[], tasks=[])


def _artifact(name: str | None, i: int) -> Artifact:
    return Artifact.model_construct(name=name or f"#{i}")


def _parameter(name: str | None, i: int) -> Parameter:
    return Parameter.model_construct(name=name or f"#{i}", value="")
