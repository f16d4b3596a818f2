"""Spark and TFJob tasks render as the operators' objects, in Myelin's field names or theirs,
and every object an Axon of every task kind renders validates strictly (core objects with
kubernetes-validate, SparkApplication and TFJob with the operators' CRD schemas)."""

from __future__ import annotations

import copy
from typing import Any

import jsonschema  # type: ignore[import-untyped]  # no stubs installed
import pytest

from executors.backends import k8s_objects as k8s
from sensors.loader import load_axon_text
from tests.unit.k8s_validation import validate

SETTINGS = k8s.RenderSettings(registry="registry.example/ml", nats_url="nats://nats:4222")

EVERY_KIND = """
apiVersion: myelinproj.io/v1alpha1
kind: Axon
metadata: {name: every-kind}
spec:
  serviceAccountName: ml-runner
  volumeClaimTemplate:
    metadata: {name: store}
    spec:
      accessModes: [ReadWriteMany]
      resources: {requests: {storage: 1Gi}}
  tasks:
    - name: Prep
      container: {image: busybox:1.36.1, command: [sh, -c, "echo prep"]}
    - name: Aggregate            # Myelin's sparkSpec names
      spark:
        image: spark:3.5.1
        sparkSpec:
          properties: |
            spark.executor.instances 3
            spark.executor.memory=2g
          class: org.example.Aggregate
          jars: [local:///opt/deps/avro.jar]
          applicationFile: local:///opt/app/aggregate.jar
          args: [--day, "2024-01-01"]
    - name: Score                # the Spark operator's names
      spark:
        image: spark-py:3.5.1
        env: [{name: MODE, value: fast}]
        sparkSpec:
          mainApplicationFile: local:///opt/app/score.py
          arguments: [--top, "10"]
          sparkConf: {spark.sql.shuffle.partitions: 8}
          sparkVersion: 3.5.1
    - name: Train
      train:
        image: trainer:1
        lossMetric: loss
        command: [python, train.py]
    - name: DistTrain            # Myelin's tfJobSpec: cleanPodPolicy at the top
      train:
        image: tf-dist:1
        command: [python, dist.py]
        lossMetric: loss
        tfJobSpec:
          cleanPodPolicy: Running
          tfReplicaSpecs:
            PS:
              replicas: 1
              restartPolicy: Never
              template: {spec: {containers: [{name: tensorflow}]}}
            Worker:
              replicas: 2
              restartPolicy: OnFailure
              template:
                spec:
                  containers:
                    - name: tensorflow
                      env: [{name: TF_CPP_MIN_LOG_LEVEL, value: "2"}]
                      resources: {limits: {memory: 4Gi}}
    - name: Eval                 # a tfJob task, in the operator's names
      tfJob:
        image: tf-eval:1
        tfJobSpec:
          runPolicy: {cleanPodPolicy: All, ttlSecondsAfterFinished: 600}
          tfReplicaSpecs:
            Chief: {replicas: 1}
    - name: Serve
      deploy: {image: server:1, model: Model}
  sensors:
    - name: Pipeline
      tasks:
        - resourceExecutor: {task: Prep}
        - [{resourceExecutor: {task: Aggregate}}, {resourceExecutor: {task: Score}}]
        - [{trainer: {task: Train}}, {trainer: {task: DistTrain}}, {trainer: {task: Eval}}]
    - name: Deploy
      triggers: [{name: trained, type: Lifecycle, condition: Succeeded, task: Train}]
      tasks:
        - deployer:
            name: d
            models:
              - name: m
                backendModels: [{name: b, trainer: Train, deployer: Serve}]
"""


def every_object() -> list[dict[str, Any]]:
    objects, notes = k8s.render_axon(load_axon_text(EVERY_KIND, "every-kind.yaml"), SETTINGS)
    assert notes == []
    return objects


def rendered() -> dict[str, dict[str, Any]]:
    """The task objects by task (a deploy task's Service and Deployment share one key)."""
    objects = every_object()
    return {
        (o["metadata"].get("annotations") or {}).get(k8s.A_TASK, o["metadata"]["name"]): o
        for o in objects
    }


def test_every_object_of_every_task_kind_validates_strictly() -> None:
    objects = rendered()
    kinds = {name: o["kind"] for name, o in objects.items()}
    assert {k: kinds[k] for k in ("Prep", "Aggregate", "Score", "Train", "DistTrain", "Eval")} == {
        "Prep": "Job",
        "Aggregate": "SparkApplication",
        "Score": "SparkApplication",
        "Train": "Job",
        "DistTrain": "TFJob",
        "Eval": "TFJob",
    }
    everything = every_object()
    assert {"Deployment", "Service", "PersistentVolumeClaim", "ConfigMap"} <= {
        o["kind"] for o in everything
    }
    for obj in everything:
        validate(obj)


def test_myelin_spark_names_become_the_operators_fields() -> None:
    spec = rendered()["Aggregate"]["spec"]
    assert spec["type"] == "Scala"
    assert spec["mainClass"] == "org.example.Aggregate"
    assert spec["mainApplicationFile"] == "local:///opt/app/aggregate.jar"
    assert spec["deps"] == {"jars": ["local:///opt/deps/avro.jar"]}
    assert spec["arguments"] == ["--day", "2024-01-01"]
    assert spec["sparkConf"] == {"spark.executor.instances": "3", "spark.executor.memory": "2g"}
    assert spec["executor"]["instances"] == 3
    assert spec["driver"]["serviceAccount"] == "ml-runner"
    env = {e["name"] for e in spec["driver"]["env"]}
    assert {"DATA_PATH", "TASK_NAME", "RANVIER_NATS_URL"} <= env


def test_operator_spark_names_and_python_applications() -> None:
    spec = rendered()["Score"]["spec"]
    assert (spec["type"], spec["pythonVersion"]) == ("Python", "3")
    assert "mainClass" not in spec
    assert spec["arguments"] == ["--top", "10"]
    assert spec["sparkConf"] == {"spark.sql.shuffle.partitions": "8"}
    assert {"name": "MODE", "value": "fast"} in spec["executor"]["env"]


def test_myelin_tfjob_spec_gets_the_task_image_env_and_run_policy() -> None:
    obj = rendered()["DistTrain"]
    spec = obj["spec"]
    assert spec["runPolicy"] == {"cleanPodPolicy": "Running", "backoffLimit": 0}
    assert "cleanPodPolicy" not in spec
    assert set(spec["tfReplicaSpecs"]) == {"PS", "Worker"}
    worker = spec["tfReplicaSpecs"]["Worker"]
    assert (worker["replicas"], worker["restartPolicy"]) == (2, "OnFailure")
    (container,) = worker["template"]["spec"]["containers"]
    assert (container["name"], container["image"]) == ("tensorflow", "tf-dist:1")
    assert container["command"] == ["python", "dist.py"]
    assert container["resources"] == {"limits": {"memory": "4Gi"}}  # the user's, kept
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["TF_CPP_MIN_LOG_LEVEL"] == "2"
    assert env["MODEL_PATH"] == "/ranvier/models/DistTrain/1"
    labels = worker["template"]["metadata"]["labels"]
    assert labels[k8s.L_TASK] == "DistTrain"
    assert rendered()["Eval"]["spec"]["runPolicy"]["cleanPodPolicy"] == "All"


def test_the_crd_fixtures_refuse_unknown_and_mistyped_fields() -> None:
    objects = rendered()
    spark = copy.deepcopy(objects["Aggregate"])
    spark["spec"]["driver"]["cors"] = 1
    with pytest.raises(jsonschema.ValidationError, match="cors"):
        validate(spark)
    tf = copy.deepcopy(objects["DistTrain"])
    tf["spec"]["tfReplicaSpecs"]["Worker"]["replicas"] = "two"
    with pytest.raises(jsonschema.ValidationError, match="two"):
        validate(tf)
    bad_mode = copy.deepcopy(objects["Score"])
    bad_mode["spec"]["mode"] = "local"
    with pytest.raises(jsonschema.ValidationError, match="local"):
        validate(bad_mode)


@pytest.mark.parametrize(
    ("task", "message"),
    [
        (
            "{name: S, spark: {image: s:1, sparkSpec: {class: a.B}}}",
            "spark task 'S' names no application",
        ),
        (
            "{name: S, spark: {image: s:1, sparkSpec: {applicationFile: app.jar}}}",
            "names no main class",
        ),
        ("{name: T, tfJob: {image: t:1, tfJobSpec: {cleanPodPolicy: All}}}", "no tfReplicaSpecs"),
    ],
)
def test_what_an_operator_cannot_run_is_a_clear_error(task: str, message: str) -> None:
    kind = "resourceExecutor" if "spark" in task else "trainer"
    name = "S" if "spark" in task else "T"
    text = f"""
apiVersion: ranvier.dev/v1alpha1
kind: Axon
metadata: {{name: x}}
spec:
  tasks: [{task}]
  sensors: [{{name: go, tasks: [{{{kind}: {{task: {name}}}}}]}}]
"""
    with pytest.raises(k8s.RenderError, match=message):
        k8s.render_axon(load_axon_text(text, "x.yaml"), SETTINGS)


def test_myelin_image_build_extras_reach_the_build_job() -> None:
    text = """
apiVersion: myelinproj.io/v1alpha1
kind: Axon
metadata: {name: build}
spec:
  artifacts:
    - {name: src, path: /src, git: {repo: "https://example.com/r.git", revision: main}}
  tasks:
    - name: Agg
      spark:
        imageBuild:
          checkImageExists: false
          repositoryName: agg
          artifact: src
          buildLocation: /src/agg
          dockerfile: {path: Dockerfile}
          volumeMounts: [{name: key, mountPath: /src/agg/secrets}]
          volumes: [{name: key, secret: {secretName: gcs-key}}]
        sparkSpec: {class: a.B, jars: [local:///opt/app.jar]}
  sensors:
    - {name: go, tasks: [{resourceExecutor: {task: Agg}}]}
"""
    axon = load_axon_text(text, "build.yaml")
    task = axon.spec.task("Agg")
    assert task is not None
    assert task.body.image_build is not None
    assert task.body.image_build.check_image_exists is False
    (build,) = [
        o for o in k8s.render_axon(axon, SETTINGS)[0] if o["metadata"]["name"].find("-build-") > 0
    ]
    validate(build)
    pod = build["spec"]["template"]["spec"]
    assert {"name": "key", "secret": {"secretName": "gcs-key"}} in pod["volumes"]
    assert {"name": "key", "mountPath": "/src/agg/secrets"} in pod["containers"][0]["volumeMounts"]
