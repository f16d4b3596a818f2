"""The loader: valid Axons load, every invalid one fails at the expected line, column, message.

Each file in tests/data/axons/invalid/ says what it expects in header comments,
`# expect: LINE:COL: PATH: MESSAGE FRAGMENT` (one line per issue, in file order; `0:0` for a
file-level error without a position).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from sensors.loader import (
    MAX_ALIASES,
    MAX_BYTES,
    SpecError,
    SpecIssue,
    load_axon,
    load_axon_bytes,
    load_axon_text,
)
from sensors.spec import AlertTrigger, Axon

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT / "tests" / "data" / "axons"
VALID = sorted((DATA / "valid").glob("*.yaml"))
INVALID = sorted((DATA / "invalid").glob("*.yaml"))
EXAMPLE = ROOT / "examples" / "gpt2-shakespeare" / "axon.yaml"
_EXPECT = re.compile(r"^# expect: (\d+):(\d+): (.+)$", re.MULTILINE)

MINIMAL = """\
apiVersion: myelinproj.io/v1alpha1
kind: Axon
metadata:
  name: demo
spec:
  tasks:
    - name: Train
      train:
        image: trainer:1
"""


def _expectations(path: Path) -> list[tuple[int, int, str]]:
    text = path.read_bytes().decode("utf-8", "replace")
    return [(int(line), int(col), what) for line, col, what in _EXPECT.findall(text)]


def test_the_corpus_is_big_enough() -> None:
    assert len(VALID) >= 10
    assert len(INVALID) >= 30
    assert all(_expectations(path) for path in INVALID)


@pytest.mark.parametrize("path", VALID, ids=lambda p: p.name)
def test_valid_axons_load(path: Path) -> None:
    axon = load_axon(path)
    assert axon.kind == "Axon"
    assert axon.spec.tasks


@pytest.mark.parametrize("path", INVALID, ids=lambda p: p.name)
def test_invalid_axons_fail_where_expected(path: Path) -> None:
    with pytest.raises(SpecError) as info:
        load_axon(path)
    got = [
        (i.line, i.column, f"{i.path}: {i.message}" if i.path else i.message)
        for i in info.value.issues
    ]
    expected = _expectations(path)
    assert len(got) == len(expected), got
    for (line, col, what), (exp_line, exp_col, fragment) in zip(got, expected, strict=True):
        assert (line, col) == (exp_line, exp_col), what
        assert fragment in what
    assert all(i.file == str(path) for i in info.value.issues)


def test_gpt2_example_is_myelins_demo() -> None:
    axon = load_axon(EXAMPLE)
    spec = axon.spec
    assert axon.metadata.name == "ml-gpt2"
    assert [(t.name, t.kind) for t in spec.tasks] == [
        ("DataPrepGPT2", "container"),
        ("TrainGPT2", "train"),
        ("DeployGPT2", "deploy"),
    ]
    assert [s.name for s in spec.sensors] == [
        "TrainOnStart",
        "DeploymentDecisionMaker",
        "PostDeploymentDecisionMaker",
    ]
    on_start, decide, post = spec.sensors
    assert on_start.triggers == []
    assert [[(a.kind, a.task_name) for a in step] for step in on_start.steps] == [
        [("resourceExecutor", "DataPrepGPT2")],
        [("trainer", "TrainGPT2")],
    ]
    deployer = decide.steps[0][0].deployer
    assert deployer is not None
    assert [d.weight for d in deployer.rollout_spec[0].destinations] == [50, 50]
    assert [r.path for r in deployer.routes] == ["/predict", "/send-feedback"]
    alert = post.triggers[0]
    assert isinstance(alert, AlertTrigger)
    assert alert.condition == "{{shakespeare_gpt2_deploy_accuracy}} < 0.90"
    # the artifact's repo comes from a parameter
    git = spec.artifacts[0].git
    assert git is not None
    assert git.repo == "https://github.com/myelinio/myelin-examples.git"


def test_parameters_are_substituted_in_strings() -> None:
    axon = load_axon(DATA / "valid" / "03-parameters.yaml")
    train = axon.spec.tasks[0].train
    assert train is not None
    assert train.image == "python:3.11-slim"
    assert train.command == ["python", "train.py", "--epochs=3"]


def test_merge_keys_and_aliases_expand() -> None:
    axon = load_axon(DATA / "valid" / "15-yaml-anchors.yaml")
    prep_a, prep_b, train = (t.body for t in axon.spec.tasks)
    assert prep_b.image == prep_a.image == "busybox:1.36"
    assert prep_b.command == ["echo", "b"]
    assert train.env == prep_a.env


def test_text_and_bytes_entry_points_agree() -> None:
    from_text = load_axon_text(MINIMAL)
    assert load_axon_bytes(MINIMAL.encode()) == from_text
    assert load_axon_bytes(b"\xef\xbb\xbf" + MINIMAL.encode()) == from_text  # BOM
    assert isinstance(from_text, Axon)


def _issues(text: str) -> list[SpecIssue]:
    with pytest.raises(SpecError) as info:
        load_axon_text(text, "t.yaml")
    return info.value.issues


def test_billion_laughs_is_refused() -> None:
    lines = ['a0: &a0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    lines += [f"a{i}: &a{i} [{','.join([f'*a{i - 1}'] * 9)}]" for i in range(1, 10)]
    (issue,) = _issues("\n".join(lines) + "\n")
    assert "alias bomb" in issue.message


def test_too_many_aliases_are_refused_while_composing() -> None:
    text = "x: &x 1\ny: [" + ", ".join(["*x"] * (MAX_ALIASES + 1)) + "]\n"
    (issue,) = _issues(text)
    assert f"more than {MAX_ALIASES} aliases" in issue.message
    assert issue.line == 2


def test_recursive_alias_is_refused() -> None:
    (issue,) = _issues("a: &a [*a]\n")
    assert "recursive" in issue.message


def test_deep_nesting_is_refused() -> None:
    (issue,) = _issues("a: " + "[" * 200 + "]" * 200 + "\n")
    assert "nested deeper than" in issue.message


def test_oversized_text_and_files_are_refused(tmp_path: Path) -> None:
    big = MINIMAL + "#" * MAX_BYTES + "\n"
    (issue,) = _issues(big)
    assert "limited to 1048576 bytes" in issue.message
    path = tmp_path / "big.yaml"
    path.write_text(big)
    with pytest.raises(SpecError, match="1 MiB"):
        load_axon(path)


def test_non_utf8_is_refused_with_its_position() -> None:
    data = MINIMAL.replace("trainer:1", "tr\xe9iner").encode("latin-1")
    with pytest.raises(SpecError) as info:
        load_axon_bytes(data, "latin.yaml")
    (issue,) = info.value.issues
    assert (issue.line, issue.column) == (9, 18)
    assert "not UTF-8 (byte 0xe9)" in issue.message


@pytest.mark.parametrize(
    ("setup", "message"),
    [("missing", "no such file"), ("directory", "is a directory")],
)
def test_unreadable_paths_are_spec_errors(tmp_path: Path, setup: str, message: str) -> None:
    path = tmp_path / "axon.yaml"
    if setup == "directory":
        path.mkdir()
    with pytest.raises(SpecError, match=message) as info:
        load_axon(path)
    (issue,) = info.value.issues
    assert (issue.line, issue.column) == (0, 0)
    assert str(issue).startswith(f"{path}: error: {message}")


def test_error_message_is_one_line_and_counts_the_rest() -> None:
    text = MINIMAL.replace("kind: Axon", "kind: Axn").replace("image:", "imag:")
    with pytest.raises(SpecError) as info:
        load_axon_text(text, "t.yaml")
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith("t.yaml:2:7: error: kind: 'Axn' is not allowed")
    assert message.endswith("(and 1 more)")


def test_a_duplicate_key_reports_the_first_occurrence() -> None:
    (issue,) = _issues(MINIMAL + "kind: Axon\n")
    assert (issue.line, issue.column, issue.path) == (10, 1, "kind")
    assert "first at line 2" in issue.message


def test_yaml_never_constructs_python_objects() -> None:
    text = MINIMAL.replace("trainer:1", "!!python/object/apply:os.system ['true']")
    (issue,) = _issues(text)
    assert "safe YAML only" in issue.message


def test_round_trip_through_yaml_dump_is_stable() -> None:
    axon = load_axon(EXAMPLE)
    dumped = yaml.safe_dump(axon.model_dump(by_alias=True, exclude_none=True), sort_keys=False)
    assert load_axon_text(dumped) == axon
