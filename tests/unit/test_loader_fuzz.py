"""Random and mutated YAML never crashes the loader: it loads, or it raises SpecError."""

from __future__ import annotations

from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sensors.loader import SpecError, load_axon_bytes, load_axon_text

DATA = Path(__file__).resolve().parents[1] / "data" / "axons"
SEEDS = [p.read_text() for p in sorted((DATA / "valid").glob("*.yaml"))]
YAML_BITS = [
    ":", "- ", "  ", "\n", "{", "}", "[", "]", "&a ", "*a", "<<: *a", "!!str ",
    "!!python/name:os.system", "'", '"', "#", "---\n", "...\n", "? ", "|\n", ">-\n", "\t",
    "%YAML 1.2\n", "~", "null", "1e9", "{{workflow.parameters.x}}", "{{", "type: Alert",
    "type: Calendar", "weight: 101", "condition: \"{{x}} <\"", "for: 5x", "- name: Train\n",
    "dependencies: [a]",
]  # fmt: skip
_SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _load(text: str) -> None:
    try:
        load_axon_text(text, "fuzz.yaml")
    except SpecError as exc:
        assert exc.issues  # noqa: PT017  # the error must carry at least one located issue
        for issue in exc.issues:
            assert "\n" not in str(issue)


@st.composite
def mutated(draw: st.DrawFn) -> str:
    text = draw(st.sampled_from(SEEDS))
    for _ in range(draw(st.integers(1, 4))):
        pos = draw(st.integers(0, len(text)))
        op = draw(st.sampled_from(["insert", "delete", "swap-lines", "duplicate-line", "bit"]))
        if op == "insert":
            bit = draw(st.sampled_from(YAML_BITS) | st.text(max_size=5))
            text = text[:pos] + bit + text[pos:]
        elif op == "delete":
            text = text[:pos] + text[pos + draw(st.integers(1, 30)) :]
        elif op == "bit" and text:
            i = min(pos, len(text) - 1)
            text = text[:i] + chr(ord(text[i]) ^ draw(st.integers(1, 127))) + text[i + 1 :]
        else:
            lines = text.split("\n")
            i = draw(st.integers(0, len(lines) - 1))
            j = draw(st.integers(0, len(lines) - 1))
            if op == "swap-lines":
                lines[i], lines[j] = lines[j], lines[i]
            else:
                lines.insert(j, lines[i])
            text = "\n".join(lines)
    return text


@_SETTINGS
@given(mutated())
def test_mutated_axons_load_or_raise_spec_error(text: str) -> None:
    _load(text)


@_SETTINGS
@given(st.lists(st.sampled_from(YAML_BITS) | st.text(max_size=3), max_size=80))
def test_random_yaml_loads_or_raises_spec_error(bits: list[str]) -> None:
    _load("".join(bits))


@_SETTINGS
@given(st.binary(max_size=300))
def test_random_bytes_load_or_raise_spec_error(data: bytes) -> None:
    try:
        load_axon_bytes(data, "fuzz.yaml")
    except SpecError as exc:
        assert exc.issues  # noqa: PT017  # the error must carry at least one located issue
