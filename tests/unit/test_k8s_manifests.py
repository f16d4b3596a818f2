"""manifests/: every object validates strictly, kustomizations are complete, the CRD generated."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from executors.backends.k8s_objects import axon_crd
from ranvier.cli import main
from sensors.spec import json_schema

MANIFESTS = Path(__file__).resolve().parents[2] / "manifests"
FILES = sorted(MANIFESTS.rglob("*.yaml"))


def documents(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


@pytest.mark.parametrize("path", FILES, ids=lambda p: str(p.relative_to(MANIFESTS)))
def test_manifests_validate_strictly(path: Path) -> None:
    for doc in documents(path):
        if doc["kind"] == "Kustomization":
            for resource in doc.get("resources", []):
                assert (path.parent / resource).exists(), f"{path}: {resource} does not exist"
            continue
        kubernetes_validate.validate(doc, "1.30", strict=True)


def test_the_crd_is_generated_from_the_checked_in_schema(
    capsys: pytest.CaptureFixture[str],
) -> None:
    checked_in = json.loads((MANIFESTS / "schema" / "axon.schema.json").read_text())
    assert checked_in == json_schema(), "manifests/schema is stale: run `ranvier schema`"
    (crd,) = documents(MANIFESTS / "crd" / "axon.yaml")
    assert crd == axon_crd(checked_in), "regenerate: ranvier k8s crd > manifests/crd/axon.yaml"
    assert main(["k8s", "crd"]) == 0
    assert capsys.readouterr().out == (MANIFESTS / "crd" / "axon.yaml").read_text()


def _nodes(node: Any) -> list[dict[str, Any]]:
    if not isinstance(node, dict):
        return []
    found = [node]
    for key in ("properties", "additionalProperties", "items"):
        child = node.get(key)
        if key == "properties" and isinstance(child, dict):
            for value in child.values():
                found.extend(_nodes(value))
        elif isinstance(child, dict):
            found.extend(_nodes(child))
    return found


def test_the_crd_schema_is_structural() -> None:
    (crd,) = documents(MANIFESTS / "crd" / "axon.yaml")
    schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    for node in _nodes(schema):
        assert "$ref" not in node
        assert "type" in node or node.get("x-kubernetes-preserve-unknown-fields"), node
        assert not ("properties" in node and "additionalProperties" in node), node
    spec = schema["properties"]["spec"]["properties"]
    assert spec["tasks"]["items"]["properties"]["train"]["properties"]["lossMetric"]["type"] == (
        "string"
    )


def test_nats_is_a_three_replica_jetstream_statefulset() -> None:
    (sts,) = [d for d in documents(MANIFESTS / "base" / "nats.yaml") if d["kind"] == "StatefulSet"]
    assert sts["spec"]["replicas"] == 3
    assert sts["spec"]["volumeClaimTemplates"][0]["metadata"]["name"] == "data"
    (config,) = [d for d in documents(MANIFESTS / "base" / "nats.yaml") if d["kind"] == "ConfigMap"]
    assert "store_dir: /data/jetstream" in config["data"]["nats.conf"]


def test_control_plane_has_probes_resources_and_security() -> None:
    deployments = [
        d for d in documents(MANIFESTS / "base" / "control-plane.yaml") if d["kind"] == "Deployment"
    ]
    assert {d["metadata"]["name"] for d in deployments} == {
        f"ranvier-{r}" for r in ("engine", "executor", "watcher", "router")
    }
    for deployment in deployments:
        (container,) = deployment["spec"]["template"]["spec"]["containers"]
        assert container["readinessProbe"]
        assert container["livenessProbe"]
        assert container["resources"]["requests"]
        assert container["securityContext"]["runAsNonRoot"] is True
