"""Fuzzing the API role's OpenAPI document with schemathesis: no request gets a 5xx.

The API runs as `ranvier up` runs it (the quickstart deployed, so reads have something to
read), with `RANVIER_API_TOKEN` set so that generated writes pass the token check and reach
the handlers. Valid and invalid requests are generated for every operation except the two
server-sent-event streams, which never end by design.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode

from tests.e2e import kit

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.timeout(600)]

AXON = kit.REPO / "examples" / "01-quickstart" / "axon.yaml"
TOKEN = "fuzz-token-0123456789abcdef"
MAX_EXAMPLES = 25
ENDLESS = ("/api/v1/events/stream", "/api/v1/axons/{namespace}/{axon}/stream")


def test_api_answers_no_5xx(tmp_path: Path) -> None:
    state = tmp_path / "state"
    env = {**kit.clean_env(), "RANVIER_API_TOKEN": TOKEN}
    up = kit.ranvier("up", str(AXON), "-d", "--until", "deployed", state=state, env=env)
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        base = (state / "api.url").read_text().strip().rstrip("/")
        headers = {"Authorization": f"Bearer {TOKEN}"}
        api = schemathesis.openapi.from_url(f"{base}/openapi.json")
        paths = set(api.raw_schema["paths"])
        assert "/api/v1/axons/{namespace}/{axon}/sensors/{sensor}/trigger" in paths
        sent, statuses = _fuzz(api, base, headers)
        assert sent > MAX_EXAMPLES * 10
        assert {200, 404, 422} <= statuses  # reads answered, unknown names and bad input refused
        with httpx.Client(base_url=base, headers=headers) as http:
            assert http.get("/api/v1/axons/default/quickstart").status_code == 200
    finally:
        down = kit.ranvier("down", state=state, env=env)
        assert down.returncode == 0, down.stdout + down.stderr


def _fuzz(api: Any, base_url: str, headers: dict[str, str]) -> tuple[int, set[int]]:
    """Send generated valid and invalid requests to every finite operation."""
    sent = 0
    statuses: set[int] = set()
    for result in api.get_all_operations():
        operation = result.ok()
        if operation.path in ENDLESS:
            continue
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            strategy = operation.as_strategy(generation_mode=mode)

            # schemathesis's own pytest plugin does not run on pytest 9 yet: drive its
            # strategies with hypothesis directly
            @settings(
                max_examples=MAX_EXAMPLES,
                deadline=None,
                database=None,
                derandomize=True,
                suppress_health_check=list(HealthCheck),
            )
            @given(case=strategy)
            def check(case: Any) -> None:
                nonlocal sent
                response = case.call(base_url=base_url, headers=headers, timeout=30)
                assert response.status_code < 500, (
                    f"{case.method} {case.formatted_path}: {response.status_code} "
                    f"{response.text[:500]}"
                )
                statuses.add(response.status_code)
                sent += 1

            try:
                check()
            except Unsatisfiable:
                assert mode is GenerationMode.NEGATIVE  # nothing to make invalid
    return sent, statuses
