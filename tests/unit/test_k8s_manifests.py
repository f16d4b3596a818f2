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
        if doc["kind"] in ("Kustomization", "Component"):
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
    for group in ("myelinproj.io", "myelin.io"):
        assert main(["k8s", "crd", "--group", group]) == 0
        path = MANIFESTS / "crd" / "myelin" / f"axon.{group}.yaml"
        assert capsys.readouterr().out == path.read_text(), f"regenerate {path}"
        (myelin,) = documents(path)
        assert myelin["spec"]["group"] == group
        assert myelin["spec"]["versions"] == crd["spec"]["versions"]
    (component,) = documents(MANIFESTS / "crd" / "myelin" / "kustomization.yaml")
    assert component["kind"] == "Component"
    assert component["resources"] == ["axon.myelinproj.io.yaml", "axon.myelin.io.yaml"]


def test_the_crd_prints_phase_endpoint_and_validity() -> None:
    (crd,) = documents(MANIFESTS / "crd" / "axon.yaml")
    (version,) = crd["spec"]["versions"]
    columns = {c["name"]: c["jsonPath"] for c in version["additionalPrinterColumns"]}
    assert columns["Phase"] == ".status.phase"
    assert columns["Endpoint"] == ".status.endpoint"
    assert "Valid" in columns["Valid"]
    assert version["subresources"] == {"status": {}}


def test_the_unknown_crd_group_is_a_clear_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["k8s", "crd", "--group", "example.com"]) == 1
    assert "no Axon CRD for group 'example.com'" in capsys.readouterr().err


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
        f"ranvier-{r}" for r in ("engine", "executor", "watcher", "router", "api")
    }
    for deployment in deployments:
        (container,) = deployment["spec"]["template"]["spec"]["containers"]
        assert container["readinessProbe"]
        assert container["livenessProbe"]
        assert container["resources"]["requests"]
        assert container["securityContext"]["runAsNonRoot"] is True


def _deployments() -> dict[str, dict[str, Any]]:
    return {
        d["metadata"]["name"]: d
        for d in documents(MANIFESTS / "base" / "control-plane.yaml")
        if d["kind"] == "Deployment"
    }


def test_every_role_keeps_three_copies_of_streams_and_buckets() -> None:
    for name, deployment in _deployments().items():
        (container,) = deployment["spec"]["template"]["spec"]["containers"]
        env = {e["name"]: e.get("value") for e in container["env"]}
        assert env.get("RANVIER_REPLICAS") == "3", name
    (sts,) = [d for d in documents(MANIFESTS / "base" / "nats.yaml") if d["kind"] == "StatefulSet"]
    assert sts["spec"]["replicas"] >= 3  # three replicas need three servers


def test_scaled_out_roles_have_replicas_and_disruption_budgets() -> None:
    replicas = {name: d["spec"]["replicas"] for name, d in _deployments().items()}
    assert replicas == {
        "ranvier-engine": 2,
        "ranvier-executor": 2,
        "ranvier-router": 2,
        "ranvier-watcher": 1,
        "ranvier-api": 1,
    }
    budgets = {
        d["metadata"]["name"]: d
        for d in documents(MANIFESTS / "base" / "disruption-budgets.yaml")
        if d["kind"] == "PodDisruptionBudget"
    }
    deployments = _deployments()
    for role in ("engine", "executor", "router"):
        budget = budgets[f"ranvier-{role}"]["spec"]
        assert budget["minAvailable"] == 1
        labels = deployments[f"ranvier-{role}"]["spec"]["template"]["metadata"]["labels"]
        assert budget["selector"]["matchLabels"].items() <= labels.items()
    assert budgets["nats"]["spec"]["maxUnavailable"] == 1
    base = yaml.safe_load((MANIFESTS / "base" / "kustomization.yaml").read_text())
    assert "disruption-budgets.yaml" in base["resources"]


def test_the_api_listens_for_its_service_with_a_token_from_a_secret() -> None:
    (api,) = _deployments()["ranvier-api"]["spec"]["template"]["spec"]["containers"]
    assert _arg(api, "--role") == "api"
    assert _arg(api, "--api-host") == "0.0.0.0"  # off loopback: the role refuses without a token
    (token,) = [e for e in api["env"] if e["name"] == "RANVIER_API_TOKEN"]
    assert token["valueFrom"]["secretKeyRef"] == {"name": "ranvier-api-token", "key": "token"}
    assert _arg(api, "--state-dir") == "/tmp/ranvier"  # writable: /tmp is an emptyDir
    assert {m["mountPath"] for m in api["volumeMounts"]} == {"/tmp"}
    (service,) = [
        d
        for d in documents(MANIFESTS / "base" / "control-plane.yaml")
        if d["kind"] == "Service" and d["metadata"]["name"] == "ranvier-api"
    ]
    ports = {p["name"]: p["containerPort"] for p in api["ports"]}
    assert str(ports[service["spec"]["ports"][0]["targetPort"]]) == _arg(api, "--api-port")


def _arg(container: dict[str, Any], flag: str) -> str | None:
    args = container["args"]
    return str(args[args.index(flag) + 1]) if flag in args else None


def test_probes_are_http_on_the_metrics_port_and_the_router_ports_agree() -> None:
    for name, deployment in _deployments().items():
        (container,) = deployment["spec"]["template"]["spec"]["containers"]
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        assert str(ports["metrics"]) == _arg(container, "--metrics-port"), name
        assert _arg(container, "--metrics-host") == "0.0.0.0", name
        annotations = deployment["spec"]["template"]["metadata"]["annotations"]
        assert annotations["prometheus.io/port"] == str(ports["metrics"]), name
        for probe, path in (("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")):
            assert container[probe]["httpGet"] == {"path": path, "port": "metrics"}, name
    (router,) = _deployments()["ranvier-router"]["spec"]["template"]["spec"]["containers"]
    (service,) = [
        d
        for d in documents(MANIFESTS / "base" / "control-plane.yaml")
        if d["kind"] == "Service" and d["metadata"]["name"] == "ranvier-router"
    ]
    (port,) = service["spec"]["ports"]
    ports = {p["name"]: p["containerPort"] for p in router["ports"]}
    assert str(ports[port["targetPort"]]) == _arg(router, "--port")
    assert _arg(router, "--host") == "0.0.0.0"
    meta = service["metadata"]
    host = f"{meta['name']}.{meta['namespace']}.svc"
    expected = f"http://{host}" if port["port"] == 80 else f"http://{host}:{port['port']}"
    assert _arg(router, "--public-url") == expected
