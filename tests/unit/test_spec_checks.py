"""Cross-reference rules as plain functions: names, cycles, did-you-mean."""

from __future__ import annotations

import pytest

from sensors.checks import did_you_mean, find_cycle, name_problem


@pytest.mark.parametrize(
    "name", ["TrainGPT2", "ml-gpt2", "a", "x" * 63, "DataPrep-2", "shakespearegp2"]
)
def test_names_that_fit_nats_and_kubernetes(name: str) -> None:
    assert name_problem(name) is None


@pytest.mark.parametrize(
    ("name", "rule"),
    [
        ("", "empty"),
        ("a.b", "'.', which NATS subject tokens do not allow"),
        ("a*", "'*', which NATS"),
        ("a>b", "'>', which NATS"),
        ("a b", "whitespace, which NATS"),
        ("Data_Prep", "not a valid Kubernetes name"),
        ("-lead", "not a valid Kubernetes name"),
        ("trail-", "not a valid Kubernetes name"),
        ("x" * 64, "at most 63"),
    ],
)
def test_names_that_break_a_rule_say_which(name: str, rule: str) -> None:
    problem = name_problem(name)
    assert problem is not None
    assert rule in problem


@pytest.mark.parametrize(
    ("name", "candidates", "hint"),
    [
        ("TrainGTP2", ["TrainGPT2", "DeployGPT2"], " (did you mean 'TrainGPT2'?)"),
        ("prep", ["Prep", "Train"], " (did you mean 'Prep'?)"),
        ("zzz", ["Prep", "Train"], ""),
        ("x", [], ""),
    ],
)
def test_did_you_mean(name: str, candidates: list[str], hint: str) -> None:
    assert did_you_mean(name, candidates) == hint


@pytest.mark.parametrize(
    ("graph", "cycle"),
    [
        ({"a": ["b"], "b": []}, None),
        ({"a": ["b", "c"], "b": ["c"], "c": []}, None),
        ({"a": ["a"]}, ["a", "a"]),
        ({"a": ["b"], "b": ["a"]}, ["a", "b", "a"]),
        ({"x": [], "a": ["b"], "b": ["c"], "c": ["a"]}, ["a", "b", "c", "a"]),
    ],
)
def test_find_cycle(graph: dict[str, list[str]], cycle: list[str] | None) -> None:
    assert find_cycle(graph) == cycle
