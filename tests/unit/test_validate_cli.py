"""`ranvier validate` and `ranvier schema` as a user runs them."""

from __future__ import annotations

import json
import re
from pathlib import Path

import jsonschema  # type: ignore[import-untyped]  # no stubs installed; used only here
import pytest
import yaml

from ranvier.cli import main

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "gpt2-shakespeare" / "axon.yaml"
INVALID = ROOT / "tests" / "data" / "axons" / "invalid"
SCHEMA = ROOT / "manifests" / "schema" / "axon.schema.json"
LINE = re.compile(
    r"^(?P<file>[^:]+):(?P<line>\d+):(?P<col>\d+): error: (?P<path>[^:]+): (?P<msg>.+)$"
)


def test_a_good_file_prints_ok_and_exits_0(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["validate", str(EXAMPLE)]) == 0
    out = capsys.readouterr().out
    assert out == f"ok {EXAMPLE}: axon ml-gpt2 (3 tasks, 3 sensors)\n"


def test_a_bad_file_prints_every_error_on_its_own_line(
    capsys: pytest.CaptureFixture[str],
) -> None:
    bad = INVALID / "several-mistakes.yaml"
    assert main(["validate", str(bad)]) == 1
    captured = capsys.readouterr()
    lines = captured.out.splitlines()
    assert len(lines) == 3
    parsed = [LINE.match(line) for line in lines]
    assert all(parsed), lines
    assert [(m["line"], m["col"], m["path"]) for m in parsed if m] == [
        ("6", "7", "kind"),
        ("16", "9", "tasks[1].train.imag"),
        ("22", "20", "sensors[0].concurrency"),
    ]
    assert "did you mean 'image'?" in lines[1]
    assert "Traceback" not in captured.out + captured.err


def test_good_and_bad_files_together_exit_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "missing.yaml"
    assert main(["validate", str(EXAMPLE), str(missing)]) == 1
    lines = capsys.readouterr().out.splitlines()
    assert lines == [
        f"ok {EXAMPLE}: axon ml-gpt2 (3 tasks, 3 sensors)",
        f"{missing}: error: no such file",
    ]


def test_json_output(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = INVALID / "lifecycle-unknown-task.yaml"
    assert main(["validate", "-o", "json", str(EXAMPLE), str(bad)]) == 1
    result = json.loads(capsys.readouterr().out)
    assert result == [
        {"file": str(EXAMPLE), "ok": True, "axon": "ml-gpt2", "errors": []},
        {
            "file": str(bad),
            "ok": False,
            "axon": None,
            "errors": [
                {
                    "line": 30,
                    "column": 17,
                    "path": "sensors[1].triggers[0].task",
                    "message": "no task named 'Trian' (did you mean 'Train'?)",
                }
            ],
        },
    ]


def test_validate_needs_a_file(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["validate"]) == 2
    assert "Traceback" not in capsys.readouterr().err


def test_schema_prints_the_checked_in_schema(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["schema"]) == 0
    printed = capsys.readouterr().out
    schema = json.loads(printed)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert printed == SCHEMA.read_text(), (
        "manifests/schema/axon.schema.json is stale: run `make schema` and commit it"
    )


def test_the_schema_accepts_the_example_and_rejects_a_typo() -> None:
    schema = json.loads(SCHEMA.read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    validator = jsonschema.Draft202012Validator(schema)
    document = yaml.safe_load(EXAMPLE.read_text())
    assert list(validator.iter_errors(document)) == []
    document["spec"]["tasks"][0]["container"]["imag"] = "x"
    assert list(validator.iter_errors(document))


@pytest.mark.parametrize(
    "path",
    sorted((ROOT / "tests" / "data" / "axons" / "valid").glob("*.yaml")),
    ids=lambda p: p.name,
)
def test_the_schema_accepts_every_valid_axon(path: Path) -> None:
    validator = jsonschema.Draft202012Validator(json.loads(SCHEMA.read_text()))
    errors = [e.message for e in validator.iter_errors(yaml.safe_load(path.read_text()))]
    assert errors == []
