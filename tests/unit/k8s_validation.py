"""Strict validation of every object ranvier renders for Kubernetes.

Core objects against the official schemas (kubernetes-validate, strict: unknown fields fail);
SparkApplication and TFJob against the operators' CRD schemas, reduced to fixtures in
`tests/data/crd-schemas/` (unknown fields fail there too), with the Kubernetes types nested in
them (pod templates, env, volumes) checked with kubernetes-validate.
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema  # type: ignore[import-untyped]  # no stubs installed
import kubernetes_validate

SCHEMAS = Path(__file__).resolve().parents[1] / "data" / "crd-schemas"
K8S_VERSION = "1.30"


@cache
def crd_schema(kind: str) -> dict[str, Any]:
    name = {"SparkApplication": "sparkapplication-v1beta2", "TFJob": "tfjob-v1"}[kind]
    loaded = json.loads((SCHEMAS / f"{name}.json").read_text(encoding="utf-8"))
    assert isinstance(loaded, dict)
    return loaded


def _core(obj: dict[str, Any]) -> None:
    kubernetes_validate.validate(obj, K8S_VERSION, strict=True)


def _pod(name: str, containers: list[Any], init: list[Any], volumes: list[Any]) -> None:
    _core(
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": name},
            "spec": {"containers": containers, "initContainers": init, "volumes": volumes},
        }
    )


def validate(obj: dict[str, Any]) -> None:
    """Raise if `obj` is not valid for its kind (strictly)."""
    kind = obj["kind"]
    if kind not in ("SparkApplication", "TFJob"):
        _core(obj)
        return
    jsonschema.validate(obj, crd_schema(kind), cls=jsonschema.Draft7Validator)
    _core({"apiVersion": "v1", "kind": "ConfigMap", "metadata": obj["metadata"]})
    spec = obj["spec"]
    if kind == "TFJob":
        for replica in spec["tfReplicaSpecs"].values():
            _core(
                {
                    "apiVersion": "v1",
                    "kind": "PodTemplate",
                    "metadata": {"name": "replica"},
                    "template": replica["template"],
                }
            )
        return
    for role in ("driver", "executor"):
        part = spec[role]
        container = {
            "name": role,
            "image": spec["image"],
            "env": part.get("env", []),
            "volumeMounts": part.get("volumeMounts", []),
        }
        _pod(role, [container], part.get("initContainers", []), spec.get("volumes", []))
