"""Hostile load against real `ranvier serve` and router processes: huge bodies, floods, hangs.

Each server is a subprocess on a free port; memory is read from the server's own
`/proc/<pid>/status`, so what is measured is the process that would have grown.
"""

from __future__ import annotations

import asyncio
import json
import socket
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from bench.serving import (
    ServerProcess,
    one_model,
    router_argv,
    running,
    serve_argv,
)
from executors.serving.routing import Backend

pytestmark = pytest.mark.integration

MB = 1024 * 1024

SLOW = textwrap.dedent(
    '''
    """Answers its input; "slow" takes seconds, "hang" never answers in a test's lifetime."""

    import asyncio
    import os
    import time


    class Slow:
        def predict(self, X, feature_names):
            if X == "slow":
                time.sleep(float(os.environ.get("SLOW_S", "3")))
            if X == "hang":
                time.sleep(120)
            return X


    class AsyncHang:
        async def predict(self, X, feature_names):
            if X == "hang":
                await asyncio.sleep(120)
            return X
    '''
)


def rss_bytes(server: ServerProcess) -> int:
    """The server process's resident set size now."""
    status = Path(f"/proc/{server.process.pid}/status").read_text()
    line = next(ln for ln in status.splitlines() if ln.startswith("VmRSS:"))
    return int(line.split()[1]) * 1024


def in_flight(url: str) -> float:
    text = httpx.get(f"{url}/metrics").text
    line = next(ln for ln in text.splitlines() if ln.startswith("ranvier_model_in_flight{"))
    return float(line.rsplit(" ", 1)[1])


def wait_for_free_slots(url: str) -> None:
    deadline = time.monotonic() + 10
    while in_flight(url) > 0 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert in_flight(url) == 0


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("limits")
    (path / "Slow.py").write_text(SLOW)
    return path


@pytest.fixture(scope="module")
def server(workdir: Path) -> Iterator[ServerProcess]:
    """Default limits (10 MB bodies), except a short timeout and 4 slots."""
    argv = serve_argv("Slow", "--max-in-flight", "4", "--timeout", "1.5")
    with running(argv, cwd=workdir, env={"SLOW_S": "3"}) as process:
        yield process


@pytest.fixture(scope="module")
def router(workdir: Path, server: ServerProcess) -> Iterator[ServerProcess]:
    table = workdir / "table.json"
    backend = Backend(name="m", version="1", url=server.url, weight=100)
    table.write_text(one_model(1, backend).model_dump_json(by_alias=True))
    with running(router_argv(table, "--port", "0"), cwd=workdir) as process:
        yield process


def _huge(size: int) -> bytes:
    return b'{"strData": "' + b"a" * size + b'"}'


@pytest.mark.parametrize("through", ["server", "router"])
def test_a_50mb_body_gets_413_within_a_second_and_memory_stays_put(
    through: str, server: ServerProcess, router: ServerProcess
) -> None:
    target = server if through == "server" else router
    url = f"{target.url}/predict" if through == "server" else f"{router.url}/quickstart/predict"
    assert httpx.post(url, json={"strData": "warm"}).status_code == 200
    before = rss_bytes(target)
    body = _huge(50 * MB)
    started = time.perf_counter()
    response = httpx.post(url, content=body, headers={"content-type": "application/json"})
    elapsed = time.perf_counter() - started
    assert response.status_code == 413, response.text
    assert "10485760 bytes" in response.json()["status"]["reason"]
    assert elapsed < 1.0
    assert rss_bytes(target) < before + 8 * MB
    # the server is unharmed
    assert httpx.post(url, json={"strData": "after"}).json()["strData"] == "after"


@pytest.mark.parametrize("through", ["server", "router"])
def test_a_streamed_body_is_cut_off_at_the_limit(
    through: str, server: ServerProcess, router: ServerProcess
) -> None:
    """Without Content-Length (chunked), the body is counted and reading stops at 10 MB."""
    target = server if through == "server" else router
    url = f"{target.url}/predict" if through == "server" else f"{router.url}/quickstart/predict"
    before = rss_bytes(target)

    def chunks() -> Iterator[bytes]:
        yield b'{"strData": "'
        for _ in range(50):
            yield b"a" * MB
        yield b'"}'

    try:
        response = httpx.post(
            url, content=chunks(), headers={"content-type": "application/json"}, timeout=10
        )
    except httpx.WriteError:
        pass  # the server answered and closed while we were still sending: also a refusal
    else:
        assert response.status_code == 413, response.text
        assert "larger than this server accepts" in response.json()["status"]["reason"]
    assert rss_bytes(target) < before + 10 * MB + 16 * MB
    assert httpx.post(url, json={"strData": "ok"}).status_code == 200


async def flood(url: str, count: int = 100) -> list[tuple[int, float, str | None]]:
    """`count` concurrent "slow" predictions: (status, seconds, Retry-After) of each."""

    async def one(client: httpx.AsyncClient) -> tuple[int, float, str | None]:
        started = time.perf_counter()
        response = await client.post(f"{url}/predict", json={"strData": "slow"})
        return (
            response.status_code,
            time.perf_counter() - started,
            response.headers.get("retry-after"),
        )

    limits = httpx.Limits(max_connections=200, max_keepalive_connections=200)
    async with httpx.AsyncClient(limits=limits, timeout=30) as client:
        async with asyncio.timeout(30):  # nothing hangs
            return await asyncio.gather(*(one(client) for _ in range(count)))


def assert_excess_refused_first(
    results: list[tuple[int, float, str | None]], worked_status: int
) -> None:
    worked = [r for r in results if r[0] == worked_status]
    refused = [r for r in results if r[0] == 503]
    assert len(worked) + len(refused) == len(results), sorted({r[0] for r in results})
    assert len(worked) >= 4
    assert len(refused) >= 50
    assert all(r[2] == "1" for r in refused)
    # every refusal came back before any of the slow requests was done
    assert max(r[1] for r in refused) < min(r[1] for r in worked)


async def test_100_concurrent_slow_requests_against_4_slots(workdir: Path) -> None:
    """4 succeed, the rest get 503 + Retry-After before any of the 4 is done; nothing hangs."""
    argv = serve_argv("Slow", "--max-in-flight", "4", "--timeout", "20")
    with running(argv, cwd=workdir, env={"SLOW_S": "2"}) as server:
        results = await flood(server.url)
        assert_excess_refused_first(results, 200)
        assert all(r[1] >= 2 for r in results if r[0] == 200)
        await asyncio.to_thread(wait_for_free_slots, server.url)
        # the same through the router: the server's refusals reach the caller, Retry-After too
        table = workdir / "slots.json"
        backend = Backend(name="m", version="1", url=server.url, weight=100)
        table.write_text(one_model(1, backend).model_dump_json(by_alias=True))
        with running(router_argv(table, "--port", "0"), cwd=workdir) as router:
            assert_excess_refused_first(await flood(f"{router.url}/quickstart"), 200)


async def test_slow_requests_past_their_timeout_keep_their_slots(server: ServerProcess) -> None:
    """The timeout (1.5 s) is shorter than "slow" (3 s): the 4 get 504 and keep their slots
    until their threads return; then every slot is free again."""
    assert_excess_refused_first(await flood(server.url), 504)
    await asyncio.to_thread(wait_for_free_slots, server.url)
    async with httpx.AsyncClient() as client:
        after = await client.post(f"{server.url}/predict", json={"strData": "x"})
    assert after.status_code == 200


def test_a_model_that_never_answers_gets_504_while_others_answer(
    server: ServerProcess, router: ServerProcess
) -> None:
    with httpx.Client(timeout=30) as client:
        started = time.perf_counter()
        hung = client.post(f"{router.url}/quickstart/predict", json={"strData": "hang"})
        elapsed = time.perf_counter() - started
        assert hung.status_code == 504, hung.text
        assert "did not answer within 1.5 s" in hung.json()["status"]["reason"]
        assert 1.5 <= elapsed < 10
        # the stuck call keeps its slot (its thread cannot be stopped); the others answer
        assert in_flight(server.url) == 1
        for i in range(10):
            answer = client.post(f"{router.url}/quickstart/predict", json={"strData": str(i)})
            assert answer.json()["strData"] == str(i)


def test_a_server_that_never_answers_gets_504_from_the_router_after_its_timeout(
    workdir: Path, server: ServerProcess
) -> None:
    """A backend that accepts connections and never says a word: the router gives up after
    that backend's timeout, and keeps answering for the others meanwhile."""
    silent = socket.create_server(("127.0.0.1", 0))  # listens; nothing ever answers
    with silent:
        port = silent.getsockname()[1]
        stuck = (
            one_model(
                1,
                Backend(
                    name="m", version="1", url=f"http://127.0.0.1:{port}", weight=100, timeout=2
                ),
            )
            .deployers[0]
            .model_copy(update={"axon": "stuck"})
        )
        table = one_model(1, Backend(name="m", version="1", url=server.url, weight=100))
        table = table.model_copy(update={"deployers": [*table.deployers, stuck]})
        path = workdir / "stuck.json"
        path.write_text(table.model_dump_json(by_alias=True))
        with running(router_argv(path, "--port", "0"), cwd=workdir) as router:

            async def both() -> tuple[httpx.Response, float, list[int]]:
                async with httpx.AsyncClient(timeout=30) as client:
                    started = time.perf_counter()
                    waiting = asyncio.ensure_future(
                        client.post(f"{router.url}/stuck/predict", json={"strData": "x"})
                    )
                    others = []
                    while not waiting.done():
                        answer = await client.post(
                            f"{router.url}/quickstart/predict", json={"strData": "y"}
                        )
                        others.append(answer.status_code)
                        await asyncio.sleep(0.1)
                    return waiting.result(), time.perf_counter() - started, others

            stuck_answer, elapsed, others = asyncio.run(both())
    assert stuck_answer.status_code == 504, stuck_answer.text
    assert "timed out" in stuck_answer.json()["status"]["reason"]
    assert 2 <= elapsed < 10
    assert len(others) >= 5
    assert set(others) == {200}


def test_an_async_model_that_never_answers_frees_its_slot(workdir: Path) -> None:
    with running(serve_argv("Slow:AsyncHang", "--timeout", "0.5"), cwd=workdir) as server:
        hung = httpx.post(f"{server.url}/predict", json={"strData": "hang"}, timeout=10)
        assert hung.status_code == 504
        assert in_flight(server.url) == 0  # an awaited predict is cancelled at its timeout
        assert httpx.post(f"{server.url}/predict", json={"strData": "x"}).status_code == 200


@pytest.mark.parametrize(
    ("flag", "value", "message"),
    [
        ("--max-in-flight", "0", "maximum requests in flight 0 is not positive"),
        ("--timeout", "-1", "timeout -1.0 s is not positive"),
    ],
)
def test_bad_limits_are_one_line_errors(workdir: Path, flag: str, value: str, message: str) -> None:
    import subprocess

    done = subprocess.run(
        serve_argv("Slow", flag, value),
        cwd=workdir,
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode != 0
    assert message in done.stderr + done.stdout
    assert "Traceback" not in done.stderr


def test_a_bad_limit_in_the_environment_says_which_variable(workdir: Path) -> None:
    import os
    import subprocess

    env = {**os.environ, "RANVIER_MAX_BODY_BYTES": "ten megabytes"}
    done = subprocess.run(
        serve_argv("Slow"),
        cwd=workdir,
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert done.returncode != 0
    assert "RANVIER_MAX_BODY_BYTES='ten megabytes' is not a whole number" in done.stderr
    assert "Traceback" not in done.stderr


@pytest.fixture(scope="module")
def guarded_router(workdir: Path, server: ServerProcess) -> Iterator[ServerProcess]:
    table = workdir / "guarded.json"
    backend = Backend(name="m", version="1", url=server.url, weight=100)
    table.write_text(one_model(1, backend).model_dump_json(by_alias=True))
    env = {"RANVIER_ROUTER_TOKEN": "s3cret"}
    with running(router_argv(table, "--port", "0"), cwd=workdir, env=env) as process:
        yield process


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/quickstart/predict", {"strData": "x"}),
        ("/quickstart/api/v1.0/predictions", {"strData": "x"}),
        ("/quickstart/send-feedback", {"request": {"strData": "x"}, "reward": 1}),
        ("/quickstart/api/v1.0/feedback", {"request": {"strData": "x"}, "reward": 1}),
    ],
)
def test_the_router_token_guards_predictions_and_feedback(
    guarded_router: ServerProcess, path: str, body: dict[str, object]
) -> None:
    url = guarded_router.url + path
    missing = httpx.post(url, json=body)
    assert missing.status_code == 401
    assert "RANVIER_ROUTER_TOKEN" in missing.json()["status"]["reason"]
    assert missing.headers["www-authenticate"].startswith("Bearer")
    wrong = httpx.post(url, json=body, headers={"authorization": "Bearer s3cre"})
    assert wrong.status_code == 401
    right = httpx.post(url, json=body, headers={"authorization": "Bearer s3cret"})
    assert right.status_code == 200, right.text
    assert httpx.get(f"{guarded_router.url}/health").status_code == 200  # reading stays open


def test_a_slow_shadow_never_delays_the_answer(workdir: Path, server: ServerProcess) -> None:
    """The shadow takes 3 s for every request; the primary's answers come at once."""
    (workdir / "Sleepy.py").write_text(
        "import time\n\nclass Sleepy:\n    def predict(self, X, feature_names):\n"
        "        time.sleep(3)\n        return X\n"
    )
    with running(serve_argv("Sleepy", "--max-in-flight", "64"), cwd=workdir) as shadow:
        table = workdir / "shadowed.json"
        backends = [
            Backend(name="m", version="1", url=server.url, weight=100),
            Backend(name="m", version="2", url=shadow.url, shadow=True),
        ]
        table.write_text(one_model(1, *backends).model_dump_json(by_alias=True))
        with running(router_argv(table, "--port", "0"), cwd=workdir) as router:
            with httpx.Client(timeout=30) as client:
                for i in range(5):
                    started = time.perf_counter()
                    answer = client.post(
                        f"{router.url}/quickstart/predict", json={"strData": str(i)}
                    )
                    assert answer.status_code == 200
                    assert time.perf_counter() - started < 1.0
            deadline = time.monotonic() + 15
            mirrored = 0.0
            while time.monotonic() < deadline and mirrored < 5:
                metrics = httpx.get(f"{router.url}/metrics").text
                mirrored = sum(
                    float(line.rsplit(" ", 1)[1])
                    for line in metrics.splitlines()
                    if line.startswith("ranvier_router_shadow_requests_total{")
                    and 'outcome="ok"' in line
                )
                time.sleep(0.2)
            assert mirrored == 5  # the copies did arrive, later


def test_seldon_v1_paths_are_aliases(server: ServerProcess, router: ServerProcess) -> None:
    direct = httpx.post(f"{server.url}/api/v1.0/predictions", json={"data": {"ndarray": [1, 2]}})
    assert direct.json()["data"]["ndarray"] == [1, 2]
    routed = httpx.post(
        f"{router.url}/quickstart/api/v1.0/predictions", json={"data": {"ndarray": [3]}}
    )
    assert routed.json()["data"]["ndarray"] == [3]
    assert routed.json()["meta"]["requestPath"]["m"] == "m:1"
    feedback = {"request": {"data": {"ndarray": [3]}}, "reward": 1.0}
    assert httpx.post(f"{server.url}/api/v1.0/feedback", json=feedback).status_code == 200
    routed_feedback = httpx.post(f"{router.url}/quickstart/api/v1.0/feedback", json=feedback)
    assert routed_feedback.status_code == 200, routed_feedback.text
    assert json.loads(routed_feedback.content)["data"]["ndarray"] == []
