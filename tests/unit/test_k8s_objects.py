"""Rendering an Axon's Kubernetes objects: names, labels, env, volumes, builds, validation."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from events.model import ActionRequest
from events.watchers.lifecycle import deployment_phase, job_phase, observe, transitions
from executors.backends import k8s_objects as k8s
from executors.backends.k8s_objects.volumes import git_init
from executors.hpo import HPO_PARAM
from ranvier.cli import main
from sensors.loader import load_axon, load_axon_text
from tests.unit.k8s_validation import validate as strictly_valid

ROOT = Path(__file__).resolve().parents[2]
GPT2 = ROOT / "examples" / "gpt2-shakespeare" / "axon.yaml"
SETTINGS = k8s.RenderSettings(registry="registry.example.com/ml", nats_url="nats://nats:4222")
VALID = sorted((ROOT / "tests" / "data" / "axons" / "valid").glob("*.yaml"))

AXON = """
apiVersion: ranvier.dev/v1alpha1
kind: Axon
metadata: {name: My-Axon-v2, namespace: ml}
spec:
  serviceAccountName: trainer
  artifacts:
    - name: code
      path: /src
      git:
        repo: git@github.com:example/private.git
        revision: v1.2
        sshPrivateKeySecret: {name: git-key, key: id_rsa}
  volume:
    name: shared
    nfs: {server: nfs.local, path: /exports/ml}
  tasks:
    - name: Train
      train:
        image: pytorch/pytorch:2.3.0
        command: [python, train.py]
        workingDir: gpt2
        env:
          - {name: EPOCHS, value: 3}
          - name: TOKEN
            valueFrom: {secretKeyRef: {name: hf, key: token}}
        resources:
          requests: {cpu: "2", nvidia.com/gpu: 1}
          limits: {memory: 8Gi}
        nodeSelector: {accelerator: a100}
        timeout: 1h
  sensors:
    - name: Go
      tasks:
        - trainer: {task: Train, env: [{name: EPOCHS, value: "5"}]}
"""


def validate(obj: dict[str, Any]) -> None:
    strictly_valid(obj)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("TrainGPT2", "TrainGPT2"),
        ("a" * 63, "a" * 63),
        ("My Task!", None),
        ("-x-", None),
        ("a" * 64, None),
    ],
)
def test_label_values_follow_kubernetes_rules(text: str, expected: str | None) -> None:
    value = k8s.label_value(text)
    assert len(value) <= 63
    assert value[0].isalnum()
    assert value[-1].isalnum()
    if expected is not None:
        assert value == expected
    else:
        assert value != text


def test_names_are_dns_labels_and_distinct() -> None:
    names = {k8s.job_name("ml-gpt2", t, "01J0000000000000000000000") for t in ("A_b", "a-b", "AB")}
    assert len(names) == 3
    long = k8s.job_name("x" * 60, "y" * 60, "z" * 26)
    assert len(long) <= 63
    for name in [*names, long, k8s.server_name("9lives", "Deploy", "3")]:
        assert name[0].isalpha()
        assert set(name) <= set("abcdefghijklmnopqrstuvwxyz0123456789-")


@pytest.mark.parametrize("path", VALID, ids=lambda p: p.name)
def test_every_rendered_object_validates_strictly(path: Path) -> None:
    axon = load_axon(path)
    try:
        objects, _ = k8s.render_axon(axon, SETTINGS)
    except k8s.RenderError as exc:  # tasks without image: refused with a hint, not a crash
        refusal = str(exc)
    else:
        refusal = ""
        for obj in objects:
            validate(obj)
    assert not refusal or any(w in refusal for w in ("image", "operator", "git"))


def test_gpt2_renders_builds_jobs_and_a_server() -> None:
    objects, notes = k8s.render_axon(load_axon(GPT2), SETTINGS)
    kinds = [(o["kind"], o["metadata"]["labels"][k8s.L_ROLE]) for o in objects]
    assert kinds == [
        ("ConfigMap", "anchor"),
        ("PersistentVolumeClaim", "store"),
        ("Job", "build"),
        ("Job", "build"),
        ("Job", "task"),
        ("Job", "task"),
        ("Deployment", "server"),
        ("Service", "server"),
    ]
    assert "s2i" in notes[0]
    for obj in objects:
        validate(obj)
        if obj["kind"] != "ConfigMap":
            assert obj["metadata"]["ownerReferences"][0]["name"] == "ranvier-axon-ml-gpt2"
    build = objects[2]["spec"]["template"]["spec"]
    assert build["containers"][0]["args"][:2] == [
        "--context=dir:///src/gpt2-demo",
        "--dockerfile=/src/gpt2-demo/Dockerfile.preprocess",
    ]
    assert build["initContainers"][0]["env"][0]["value"].endswith("myelin-examples.git")


def test_task_fields_carry_over() -> None:
    axon = load_axon_text(AXON)
    task = axon.spec.task("Train")
    assert task is not None
    request = k8s.render_request(axon, task)
    run = k8s.Run(request, "01J9", model_version="7")
    job = k8s.task_job(axon, task, run, "img:1", settings=SETTINGS, owner=None)
    validate(job)
    meta, pod = job["metadata"], job["spec"]["template"]["spec"]
    assert meta["namespace"] == "ml"
    assert meta["labels"][k8s.L_AXON] == "My-Axon-v2"
    assert meta["name"] == k8s.job_name("My-Axon-v2", "Train", "01J9")
    assert meta["name"].startswith("my-axon-v2-train-01j9-")
    assert meta["annotations"][k8s.A_AXON] == "My-Axon-v2"
    assert ActionRequest.model_validate_json(meta["annotations"][k8s.A_ACTION]) == request
    assert job["spec"]["activeDeadlineSeconds"] == 3600
    main_c = pod["containers"][0]
    env = {e["name"]: e for e in main_c["env"]}
    assert env["EPOCHS"]["value"] == "5"  # the action's env wins over the task's
    assert env["TOKEN"]["valueFrom"] == {"secretKeyRef": {"name": "hf", "key": "token"}}
    assert env["MODEL_PATH"]["value"] == "/ranvier/models/Train/7"
    assert env["DATA_PATH_Train"]["value"] == "/ranvier/data/Train"
    assert env["RANVIER_NATS_URL"]["value"] == "nats://nats:4222"
    assert main_c["resources"]["limits"]["nvidia.com/gpu"] == "1"  # GPUs are limits
    assert main_c["workingDir"] == "/src/gpt2"
    assert pod["nodeSelector"] == {"accelerator": "a100"}
    assert pod["serviceAccountName"] == "trainer"
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["store"]["nfs"]["server"] == "nfs.local"
    assert volumes["git-ssh-code"]["secret"]["secretName"] == "git-key"
    clone = pod["initContainers"][1]
    assert any(e["name"] == "GIT_SSH_COMMAND" for e in clone["env"])


def test_a_trial_job_gets_its_configuration_on_the_command_line_too() -> None:
    """As locally: `--config_id --budget --NAME VALUE` after the task's args, HPO_PARAMS in env."""
    axon = load_axon_text(AXON)
    task = axon.spec.task("Train")
    assert task is not None
    request = k8s.render_request(axon, task)
    trial = request.model_copy(
        update={
            "params": {
                **request.params,
                HPO_PARAM: {"config_id": "0_0_3", "budget": 3.0, "params": {"lr": 0.01}},
                "env": [{"name": "HPO_PARAMS", "value": "e30="}],
            }
        }
    )
    job = k8s.task_job(axon, task, k8s.Run(trial, "01T1"), "img:1", settings=SETTINGS, owner=None)
    validate(job)
    main_c = job["spec"]["template"]["spec"]["containers"][0]
    assert main_c["command"] == ["python", "train.py"]
    assert main_c["args"] == ["--config_id", "0_0_3", "--budget", "3", "--lr", "0.01"]
    assert {"name": "HPO_PARAMS", "value": "e30="} in main_c["env"]
    plain = k8s.task_job(
        axon, task, k8s.Run(request, "01T2"), "img:1", settings=SETTINGS, owner=None
    )
    assert "args" not in plain["spec"]["template"]["spec"]["containers"][0]


def test_s2i_build_and_missing_registry_fail_clearly() -> None:
    axon = load_axon(GPT2)
    task = axon.spec.task("DeployGPT2")
    assert task is not None
    with pytest.raises(k8s.RenderError, match="s2i, which the kubernetes backend"):
        k8s.build_job(axon, task, SETTINGS, None)
    with pytest.raises(k8s.RenderError, match="RANVIER_REGISTRY"):
        k8s.image_ref(axon, task, k8s.RenderSettings())


def test_content_tag_changes_with_the_source() -> None:
    one = load_axon(GPT2)
    two = load_axon_text(GPT2.read_text().replace("revision: master", "revision: v2"))
    for name in ("DataPrepGPT2", "TrainGPT2"):
        a, b = one.spec.task(name), two.spec.task(name)
        assert a is not None
        assert b is not None
        assert k8s.image_ref(one, a, SETTINGS) != k8s.image_ref(two, b, SETTINGS)
        assert k8s.image_ref(one, a, SETTINGS) == k8s.image_ref(one, a, SETTINGS)


@pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")
def test_the_clone_script_checks_out_the_revision(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    git = ["git", "-C", str(repo), "-c", "user.email=t@t", "-c", "user.name=t"]
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    (repo / "f.txt").write_text("one")
    subprocess.run([*git, "add", "."], check=True)
    subprocess.run([*git, "commit", "-qm", "one"], check=True)
    subprocess.run([*git, "tag", "v1"], check=True)
    (repo / "f.txt").write_text("two")
    subprocess.run([*git, "commit", "-qam", "two"], check=True)
    axon = load_axon_text(
        AXON.replace("git@github.com:example/private.git", str(repo))
        .replace("revision: v1.2", "revision: v1")
        .replace("sshPrivateKeySecret: {name: git-key, key: id_rsa}", "")
        .replace("path: /src", f"path: {tmp_path / 'src'}")
    )
    artifact = axon.spec.artifacts[0]
    container, _ = git_init(artifact, SETTINGS)
    env = {e["name"]: e["value"] for e in container["env"]}
    subprocess.run(container["command"], env={**os.environ, **env}, check=True)
    assert (tmp_path / "src" / "f.txt").read_text() == "one"


def test_phases_and_transitions() -> None:
    assert job_phase({}) == ("Pending", "")
    assert job_phase({"status": {"active": 1}}) == ("Running", "")
    assert job_phase({"status": {"active": 1, "ready": 0}}) == ("Pending", "")
    failed = {"conditions": [{"type": "Failed", "status": "True", "reason": "BackoffLimit"}]}
    assert job_phase({"status": failed}) == ("Failed", "BackoffLimit")
    assert job_phase({"status": {"succeeded": 1}}) == ("Succeeded", "")
    assert deployment_phase({"spec": {"replicas": 2}, "status": {"readyReplicas": 1}})[0] == (
        "Running"
    )
    done = {"availableReplicas": 2, "updatedReplicas": 2}
    assert deployment_phase({"spec": {"replicas": 2}, "status": done})[0] == "Succeeded"
    axon = load_axon(GPT2)
    task = axon.spec.task("TrainGPT2")
    assert task is not None
    job = k8s.task_job(
        axon,
        task,
        k8s.Run(k8s.render_request(axon, task), "r1"),
        "img",
        settings=SETTINGS,
        owner=None,
    )
    seen = observe("Job", {**job, "status": {"succeeded": 1}})
    assert seen is not None
    assert transitions(seen, None) == ["Running", "Succeeded"]
    assert transitions(seen, "Running") == ["Succeeded"]
    assert transitions(seen, "Succeeded") == []


def test_cli_render_prints_valid_yaml(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["k8s", "render", str(GPT2), "--registry", "reg.example.com/x", "-n", "prod"]) == 0
    out, err = capsys.readouterr()
    objects = list(yaml.safe_load_all(out))
    assert {o["metadata"]["namespace"] for o in objects} == {"prod"}
    for obj in objects:
        validate(obj)
    assert "note: task 'DeployGPT2' builds with s2i" in err
