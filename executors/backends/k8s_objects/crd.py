"""The Axon CustomResourceDefinition (manifests/crd/axon.yaml is generated from this)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

from executors.backends.k8s_objects.names import GROUP, KIND, MANAGED_BY, MANAGER, PLURAL, VERSION


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
        return _union(variants, defs, out)
    kind = node.get("type")
    if isinstance(kind, list):
        real = [t for t in kind if t != "null"]
        if len(real) != 1:
            return {**out, "x-kubernetes-preserve-unknown-fields": True}
        kind = real[0]
    if kind == "object" or "properties" in node:
        return _object(node, defs, out)
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


def _union(variants: list[Any], defs: Mapping[str, Any], out: dict[str, Any]) -> dict[str, Any]:
    """An `anyOf`/`oneOf`: its one non-null variant, one object with every variant's
    properties, or an unchecked value when the variants' types differ."""
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


def _object(
    node: Mapping[str, Any], defs: Mapping[str, Any], out: dict[str, Any]
) -> dict[str, Any]:
    """An object node: its properties, else its additionalProperties, else unchecked."""
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
