"""The local backend with real processes: env, logs, failures, process trees, restarts."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from events.model import ActionKind, ActionRequest
from executors.backends.local import (
    LocalBackend,
    RunStarted,
    env_name,
    group_members,
)
from sensors.spec import Axon

pytestmark = pytest.mark.integration

PY = sys.executable
REPO = Path(__file__).resolve().parents[2]


def alive(pid: int) -> bool:
    """True while `pid` exists and is not a zombie."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state not in ("Z", "X")


def make_axon(*tasks: dict[str, Any], artifacts: list[dict[str, Any]] | None = None) -> Axon:
    return Axon.model_validate(
        {
            "apiVersion": "ranvier.dev/v1alpha1",
            "kind": "Axon",
            "metadata": {"name": "demo", "namespace": "team"},
            "spec": {"tasks": list(tasks), "artifacts": artifacts or []},
        }
    )


def container(name: str, script: str, **extra: Any) -> dict[str, Any]:
    return {"name": name, "container": {"command": [PY, "-c", textwrap.dedent(script)], **extra}}


def trainer(name: str, script: str, **extra: Any) -> dict[str, Any]:
    return {"name": name, "train": {"command": [PY, "-c", textwrap.dedent(script)], **extra}}


def request(task: str, kind: ActionKind = "resourceExecutor", **params: Any) -> ActionRequest:
    return ActionRequest(
        axon="demo",
        namespace="team",
        sensor="s",
        sensor_run_id="sr1",
        step=0,
        kind=kind,
        task=task,
        params=params,
    )


@pytest.fixture
def backend(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> LocalBackend:
    monkeypatch.setenv("RANVIER_NATS_PASSWORD", "secret")  # must not reach tasks
    monkeypatch.setenv("RANVIER_NATS_URL", "nats://wrong:1")  # the backend's own url wins
    return LocalBackend(tmp_path / "state", nats_url="nats://127.0.0.1:4999", grace=0.5)


@pytest.fixture
def axon_dir(tmp_path: Path) -> Path:
    path = tmp_path / "project"
    path.mkdir()
    return path


def words(path: Path) -> list[str]:
    """The whitespace-separated words of a file, or none if it does not exist yet."""
    return path.read_text().split() if path.exists() else []


async def until(predicate: Callable[[], bool]) -> None:
    """Wait until `predicate()` holds (bounded by the test timeout, not by a sleep)."""
    while True:
        if predicate():
            return
        await asyncio.sleep(0.02)


async def wait_for_file(path: Path, lines: int = 1) -> list[str]:
    """Wait until `path` holds `lines` words (one pid per line)."""
    await until(lambda: len(words(path)) >= lines)
    return words(path)


ENV_DUMP = """
    import json, os, sys
    keys = ["DATA_PATH", "MODEL_PATH", "DATA_PATH_Prep", "DATA_PATH_Train", "TASK_ID",
            "TASK_NAME", "AXON_NAME", "NAMESPACE", "RANVIER_NATS_URL", "GREETING", "EXTRA",
            "RANVIER_NATS_PASSWORD"]
    print(json.dumps({"cwd": os.getcwd(), **{k: os.environ.get(k) for k in keys}}))
    print("to stderr", file=sys.stderr)
"""


async def test_success_with_env_and_log(
    backend: LocalBackend, axon_dir: Path, tmp_path: Path
) -> None:
    (axon_dir / "code" / "jobs").mkdir(parents=True)
    axon = make_axon(
        container("Prep", ENV_DUMP, workingDir="jobs", env=[{"name": "GREETING", "value": "hi"}]),
        trainer("Train", "pass"),
        artifacts=[{"name": "src", "local": {"path": "code"}}],
    )
    started: list[RunStarted] = []

    async def on_running(info: RunStarted) -> None:
        started.append(info)

    outcome = await backend.run(
        request("Prep", env=[{"name": "EXTRA", "value": "x"}]),
        axon,
        axon_dir,
        run_id="run-1",
        on_running=on_running,
    )
    assert outcome.phase == "Succeeded", outcome.message
    assert outcome.exit_code == 0
    assert outcome.version is None
    ws = tmp_path / "state" / "team" / "demo"
    assert outcome.log_path == ws / "logs" / "Prep" / "run-1.log"
    assert outcome.outputs["log"] == str(outcome.log_path)
    first, second = outcome.log_path.read_text().splitlines()
    assert second == "to stderr"
    env = json.loads(first)
    assert env == {
        "cwd": str(axon_dir / "code" / "jobs"),
        "DATA_PATH": str(ws / "data"),
        "MODEL_PATH": str(ws / "models"),
        "DATA_PATH_Prep": str(ws / "data" / "Prep"),
        "DATA_PATH_Train": str(ws / "data" / "Train"),
        "TASK_ID": "run-1",
        "TASK_NAME": "Prep",
        "AXON_NAME": "demo",
        "NAMESPACE": "team",
        "RANVIER_NATS_URL": "nats://127.0.0.1:4999",
        "GREETING": "hi",
        "EXTRA": "x",
        "RANVIER_NATS_PASSWORD": None,
    }
    assert [s.run_id for s in started] == ["run-1"]
    running = started[0].to_lifecycle(request("Prep"))
    assert (running.phase, running.run_id, running.outputs["pid"]) == (
        "Running",
        "run-1",
        started[0].pid,
    )
    done = outcome.to_lifecycle(request("Prep"))
    assert (done.phase, done.exit_code, done.sensor_run_id, done.step) == ("Succeeded", 0, "sr1", 0)
    assert done.action_key == request("Prep").idempotency_key
    assert not alive(started[0].pid)
    assert backend.live_runs() == []
    assert list(backend.runs_dir.glob("*.json")) == []


async def test_nonzero_exit(backend: LocalBackend, axon_dir: Path) -> None:
    axon = make_axon(
        container("Bad", "import sys; print('boom: bad input', file=sys.stderr); sys.exit(3)")
    )
    outcome = await backend.run(request("Bad"), axon, axon_dir)
    assert outcome.phase == "Failed"
    assert outcome.exit_code == 3
    assert outcome.message == "exited with code 3: boom: bad input"


async def test_timeout(backend: LocalBackend, axon_dir: Path) -> None:
    axon = make_axon(container("Slow", "import time; time.sleep(60)", timeout="1s"))
    started: list[RunStarted] = []

    async def on_running(info: RunStarted) -> None:
        started.append(info)

    outcome = await backend.run(request("Slow"), axon, axon_dir, on_running=on_running)
    assert outcome.phase == "Failed"
    assert outcome.message == "timed out after 1s"
    assert outcome.exit_code == -signal.SIGTERM
    assert not alive(started[0].pid)


async def test_missing_command(backend: LocalBackend, axon_dir: Path) -> None:
    axon = make_axon({"name": "Ghost", "container": {"command": ["no-such-command-ranvier"]}})
    outcome = await backend.run(request("Ghost"), axon, axon_dir)
    assert outcome.phase == "Failed"
    assert outcome.message == "command not found: no-such-command-ranvier"
    assert outcome.exit_code == 127


async def test_missing_working_dir(backend: LocalBackend, axon_dir: Path) -> None:
    axon = make_axon(container("Lost", "pass", workingDir="nowhere"))
    outcome = await backend.run(request("Lost"), axon, axon_dir)
    assert outcome.phase == "Failed"
    assert "working directory" in outcome.message
    assert "does not exist" in outcome.message


TREE = """
    import os, subprocess, sys, time
    pids = os.path.join(os.environ["DATA_PATH"], "pids")
    if len(sys.argv) > 1 and sys.argv[1] == "grandchild":
        import signal
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # only SIGKILL will do
        with open(pids, "a") as f:
            print(os.getpid(), file=f)
        time.sleep(60)
    elif len(sys.argv) > 1 and sys.argv[1] == "child":
        subprocess.Popen([sys.executable, "-c", sys.argv[2], "grandchild"])
        with open(pids, "a") as f:
            print(os.getpid(), file=f)
        time.sleep(60)
    else:
        subprocess.Popen([sys.executable, "-c", SCRIPT, "child", SCRIPT])
        time.sleep(60)
"""


def tree_task(name: str) -> dict[str, Any]:
    script = textwrap.dedent(TREE)
    program = f"SCRIPT = {script!r}\n{script}"
    return {"name": name, "container": {"command": [PY, "-c", program]}}


async def test_deleting_the_axon_stops_the_whole_tree(
    backend: LocalBackend, axon_dir: Path, tmp_path: Path
) -> None:
    axon = make_axon(tree_task("Tree"))
    started: list[RunStarted] = []

    async def on_running(info: RunStarted) -> None:
        started.append(info)

    run = asyncio.create_task(
        backend.run(request("Tree"), axon, axon_dir, run_id="tree-1", on_running=on_running)
    )
    pids_file = tmp_path / "state" / "team" / "demo" / "data" / "pids"
    child, grandchild = (int(p) for p in await wait_for_file(pids_file, 2))
    assert alive(child)
    assert alive(grandchild)
    assert set(group_members(started[0].pgid)) == {started[0].pid, child, grandchild}
    assert await backend.cancel_axon("demo", "team") == ["tree-1"]
    outcome = await run
    assert outcome.phase == "Failed"
    assert outcome.message == "cancelled: axon deleted"
    for pid in (started[0].pid, child, grandchild):
        assert not alive(pid)
    assert group_members(started[0].pgid) == []
    assert await backend.cancel("tree-1") is False  # already over


async def test_cancelling_the_caller_stops_the_tree(
    backend: LocalBackend, axon_dir: Path, tmp_path: Path
) -> None:
    axon = make_axon(tree_task("Tree"))
    run = asyncio.create_task(backend.run(request("Tree"), axon, axon_dir))
    pids_file = tmp_path / "state" / "team" / "demo" / "data" / "pids"
    pids = [int(p) for p in await wait_for_file(pids_file, 2)]
    run.cancel()
    with pytest.raises(asyncio.CancelledError):
        await run
    assert not any(alive(p) for p in pids)
    assert list(backend.runs_dir.glob("*.json")) == []


async def test_shutdown_stops_runs_and_refuses_new_ones(
    backend: LocalBackend, axon_dir: Path
) -> None:
    axon = make_axon(container("Sleep", "import time; time.sleep(60)"))
    started = asyncio.Event()

    async def on_running(_: RunStarted) -> None:
        started.set()

    run = asyncio.create_task(backend.run(request("Sleep"), axon, axon_dir, on_running=on_running))
    await started.wait()
    await backend.shutdown()
    outcome = await run
    assert (outcome.phase, outcome.message) == ("Failed", "cancelled: executor shut down")
    again = await backend.run(request("Sleep"), axon, axon_dir)
    assert (again.phase, again.message) == ("Failed", "cancelled: executor shut down")


async def test_background_leftovers_are_stopped_after_a_successful_exit(
    backend: LocalBackend, axon_dir: Path, tmp_path: Path
) -> None:
    script = """
        import os, subprocess, sys
        p = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
        with open(os.path.join(os.environ["DATA_PATH"], "bg"), "w") as f:
            print(p.pid, file=f)
    """
    outcome = await backend.run(request("Bg"), make_axon(container("Bg", script)), axon_dir)
    assert outcome.phase == "Succeeded"
    (pid,) = (tmp_path / "state" / "team" / "demo" / "data" / "bg").read_text().split()
    assert not alive(int(pid))


async def test_concurrent_trainer_runs_get_distinct_versions(
    backend: LocalBackend, axon_dir: Path
) -> None:
    script = """
        import json, os
        before = len(os.listdir(os.environ["MODEL_PATH"]))  # a fresh directory: 0
        with open(os.path.join(os.environ["MODEL_PATH"], "metrics.json"), "w") as f:
            json.dump({"loss": before}, f)
    """
    axon = make_axon(trainer("Train", script))
    outcomes = await asyncio.gather(
        *(backend.run(request("Train", "trainer"), axon, axon_dir) for _ in range(3))
    )
    assert all(o.phase == "Succeeded" for o in outcomes), [o.message for o in outcomes]
    assert sorted(o.version or 0 for o in outcomes) == [1, 2, 3]
    paths = {o.model_path for o in outcomes}
    assert len(paths) == 3
    for o in outcomes:
        assert o.model_path is not None
        assert o.model_path.name == str(o.version)
        assert o.outputs["version"] == o.version
        assert o.outputs["model_path"] == str(o.model_path)
        assert o.outputs["metrics"] == {"loss": 0.0}
    nxt = await backend.run(request("Train", "trainer"), axon, axon_dir)
    assert nxt.version == 4


def test_version_allocation_is_safe_across_threads(backend: LocalBackend) -> None:
    with ThreadPoolExecutor(max_workers=8) as pool:
        got = list(pool.map(lambda _: backend.allocate_version("demo", "T", "team"), range(40)))
    assert sorted(v for v, _ in got) == list(range(1, 41))
    assert len({p for _, p in got}) == 40


async def test_invalid_metrics_are_reported_not_raised(
    backend: LocalBackend, axon_dir: Path
) -> None:
    script = """
        import os
        open(os.path.join(os.environ["MODEL_PATH"], "metrics.json"), "w").write("[1]")
    """
    outcome = await backend.run(request("T", "trainer"), make_axon(trainer("T", script)), axon_dir)
    assert outcome.phase == "Succeeded"
    assert outcome.outputs["metrics"] == {}
    assert "not an object" in outcome.outputs["metrics_error"]


@pytest.mark.parametrize(
    ("task", "kind", "fragments"),
    [
        pytest.param(
            {"name": "S", "spark": {"image": "spark:3"}},
            "resourceExecutor",
            ["spark task 'S' names no application"],
            id="spark-without-application",
        ),
        pytest.param(
            {"name": "S", "spark": {"sparkSpec": {"applicationFile": "job.py"}}},
            "resourceExecutor",
            ["spark-submit, which is not on PATH", "pip install pyspark", "--backend kubernetes"],
            id="spark-without-spark-submit",
        ),
        pytest.param(
            {"name": "S", "tfJob": {"tfJobSpec": {"x": 1}}},
            "trainer",
            ["distributed TFJob", "training operator", "--backend kubernetes"],
            id="tfjob",
        ),
        pytest.param(
            {"name": "S", "container": {"image": "busybox"}},
            "resourceExecutor",
            ["image-only task without `command`", "--backend kubernetes"],
            id="image-only",
        ),
        pytest.param(
            {"name": "S", "deploy": {"image": "srv", "command": ["x"]}},
            "resourceExecutor",
            ["deploy task", "deployer action"],
            id="deploy-task",
        ),
        pytest.param(
            {"name": "S", "container": {"command": ["true"]}},
            "deployer",
            ["serving executor"],
            id="deployer-action",
        ),
        pytest.param(
            {"name": "Other", "container": {"command": ["true"]}},
            "resourceExecutor",
            ["no task named 'S'", "Other"],
            id="unknown-task",
        ),
    ],
)
async def test_unsupported_kinds_fail_at_once(  # noqa: PLR0917 - parameters and fixtures
    backend: LocalBackend,
    axon_dir: Path,
    task: dict[str, Any],
    kind: ActionKind,
    fragments: list[str],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path / "no-spark-here"))  # no spark-submit to find
    outcome = await backend.run(request("S", kind), make_axon(task), axon_dir)
    assert outcome.phase == "Failed"
    for fragment in fragments:
        assert fragment in outcome.message
    assert outcome.exit_code is None
    assert not backend.workspace("demo", "team").exists()  # nothing was started


async def test_a_spark_task_runs_with_spark_submit_in_local_mode(
    backend: LocalBackend, axon_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bin_dir = tmp_path / "spark" / "bin"
    bin_dir.mkdir(parents=True)
    fake = bin_dir / "spark-submit"  # records its argv, as a stand-in for Apache Spark's
    fake.write_text(
        f"#!{sys.executable}\nimport json, os, sys\n"
        "out = os.path.join(os.environ['DATA_PATH'], 'argv.json')\n"
        "open(out, 'w').write(json.dumps(sys.argv[1:]))\n"
    )
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    task = {
        "name": "S",
        "spark": {
            "sparkSpec": {
                "class": "org.example.Main",
                "jars": ["deps.jar", "app.jar"],
                "properties": "spark.executor.memory 1g\n",
                "args": ["--day", "1"],
            }
        },
    }
    outcome = await backend.run(request("S", "resourceExecutor"), make_axon(task), axon_dir)
    assert outcome.phase == "Succeeded", outcome.message
    argv = json.loads((backend.workspace("demo", "team") / "data" / "argv.json").read_text())
    assert argv == [
        *("--master", "local[*]", "--name", "demo-S", "--class", "org.example.Main"),
        *("--jars", "deps.jar", "--conf", "spark.executor.memory=1g", "app.jar", "--day", "1"),
    ]


def test_env_name() -> None:
    assert env_name("Prep") == "DATA_PATH_Prep"
    assert env_name("prep-data.v2") == "DATA_PATH_prep_data_v2"


def git(*args: str, cwd: Path) -> str:
    return subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@example.com", *args],
        cwd=cwd,
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()


async def test_git_artifact_is_cloned_once_per_revision(
    backend: LocalBackend, axon_dir: Path, tmp_path: Path
) -> None:
    repo = tmp_path / "repo"
    (repo / "jobs").mkdir(parents=True)
    git("init", "--quiet", cwd=repo)
    (repo / "jobs" / "version.txt").write_text("one\n")
    git("add", ".", cwd=repo)
    git("commit", "--quiet", "-m", "one", cwd=repo)
    first = git("rev-parse", "HEAD", cwd=repo)
    (repo / "jobs" / "version.txt").write_text("two\n")
    git("commit", "--quiet", "-am", "two", cwd=repo)
    script = "import os; print(open('version.txt').read().strip(), os.getcwd())"

    def axon_at(revision: str) -> Axon:
        return make_axon(
            container("Show", script, workingDir="jobs"),
            artifacts=[{"name": "code", "git": {"repo": f"file://{repo}", "revision": revision}}],
        )

    old = await backend.run(request("Show"), axon_at(first), axon_dir)
    assert old.phase == "Succeeded", old.message
    assert old.log_path is not None
    text, cwd = old.log_path.read_text().split()
    assert text == "one"
    clone = Path(cwd).parent
    assert clone.parent == backend.workspace("demo", "team") / "src" / "code"
    (clone / "jobs" / "marker").write_text("kept")  # a second run must reuse this checkout
    again = await backend.run(request("Show"), axon_at(first), axon_dir)
    assert again.phase == "Succeeded"
    assert (clone / "jobs" / "marker").exists()
    new = await backend.run(request("Show"), axon_at("HEAD"), axon_dir)
    assert new.log_path is not None
    assert new.log_path.read_text().split()[0] == "two"
    bad = await backend.run(request("Show"), axon_at("no-such-rev"), axon_dir)
    assert bad.phase == "Failed"
    assert "git checkout" in bad.message
    assert "failed" in bad.message


# ---------------------------------------------------------------------------------------------
# Restart recovery: an executor process is killed -9 while it runs tasks.

EXECUTOR = """
import asyncio, sys
from pathlib import Path
from events.model import ActionRequest
from executors.backends.local import LocalBackend
from sensors.spec import Axon

state, axon_json, axon_dir, task = sys.argv[1:5]
axon = Axon.model_validate_json(axon_json)
req = ActionRequest(axon="demo", namespace="team", sensor="s", sensor_run_id="r", step=0,
                    kind="resourceExecutor", task=task)
asyncio.run(LocalBackend(Path(state)).run(req, axon, Path(axon_dir), run_id=task + "-run"))
"""


@pytest.fixture
async def executor_procs() -> AsyncIterator[list[asyncio.subprocess.Process]]:
    procs: list[asyncio.subprocess.Process] = []
    yield procs
    for proc in procs:
        if proc.returncode is None:
            proc.kill()
        await proc.wait()


async def test_recover_after_an_executor_crash(
    tmp_path: Path, axon_dir: Path, executor_procs: list[asyncio.subprocess.Process]
) -> None:
    state = tmp_path / "state"
    flag = tmp_path / "finish"
    axon = make_axon(
        container("Leftover", "import time; time.sleep(60)"),
        container(
            "Ends",
            f"""
            import os, time
            while not os.path.exists({str(flag)!r}):
                time.sleep(0.02)
            """,
        ),
    )
    for task in ("Leftover", "Ends"):
        executor_procs.append(
            await asyncio.create_subprocess_exec(
                PY,
                "-c",
                EXECUTOR,
                str(state),
                axon.model_dump_json(by_alias=True),
                str(axon_dir),
                task,
                cwd=REPO,
            )
        )
    records = state / "local-runs"
    await until(lambda: len(list(records.glob("*.json"))) == 2)
    pids = {
        r["task"]: int(r["pid"])
        for r in (json.loads(p.read_text()) for p in records.glob("*.json"))
    }
    for proc in executor_procs:
        proc.kill()
        await proc.wait()
    assert alive(pids["Leftover"])  # its own session: it outlived the executor
    flag.touch()
    await until(lambda: not alive(pids["Ends"]))

    lost = {r.record.task: r for r in await LocalBackend(state, grace=0.5).recover()}
    assert set(lost) == {"Leftover", "Ends"}
    assert lost["Leftover"].killed
    assert "its processes were stopped" in lost["Leftover"].message
    assert not alive(pids["Leftover"])
    assert not lost["Ends"].killed
    assert "process gone" in lost["Ends"].message
    assert lost["Ends"].record.run_id == "Ends-run"
    action = lost["Ends"].record.action()
    assert action is not None
    assert (action.task, action.sensor_run_id, action.kind) == ("Ends", "r", "resourceExecutor")
    failed = lost["Ends"].to_lifecycle()
    assert failed is not None
    assert (failed.phase, failed.task, failed.run_id) == ("Failed", "Ends", "Ends-run")
    assert failed.message == lost["Ends"].message
    assert list(records.glob("*.json")) == []
    assert await LocalBackend(state).recover() == []


def current_boot_id() -> str:
    return Path("/proc/sys/kernel/random/boot_id").read_text().strip()


async def test_recover_never_signals_a_reused_pid(tmp_path: Path) -> None:
    """A record whose pid now belongs to another process (different start time) is just gone."""
    bystander = await asyncio.create_subprocess_exec(PY, "-c", "import time; time.sleep(60)")
    boot_id = current_boot_id()
    try:
        backend = LocalBackend(tmp_path / "state", grace=0.5)
        backend.runs_dir.mkdir(parents=True)
        record = {
            "run_id": "old",
            "namespace": "team",
            "axon": "demo",
            "task": "T",
            "kind": "resourceExecutor",
            "pid": bystander.pid,
            "pgid": bystander.pid,
            "proc_start": 1,
            "boot_id": boot_id,
            "started": "2026-01-01T00:00:00Z",
            "log_path": "/dev/null",
        }
        (backend.runs_dir / "old.json").write_text(json.dumps(record))
        (lost,) = await backend.recover()
        assert not lost.killed
        assert alive(bystander.pid)
    finally:
        bystander.kill()
        await bystander.wait()


async def test_env_from_secrets_is_refused_before_a_version_is_allocated(
    backend: LocalBackend, axon_dir: Path
) -> None:
    secret = {"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}}
    axon = make_axon(trainer("T", "pass", env=[secret]))
    outcome = await backend.run(request("T", "trainer"), axon, axon_dir)
    assert outcome.phase == "Failed"
    assert "TOKEN" in outcome.message
    assert "kubernetes backend" in outcome.message
    assert not (backend.workspace("demo", "team") / "models").exists()


def start_time(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19])


async def test_recover_leaves_runs_of_a_live_executor_alone(tmp_path: Path) -> None:
    """Two executors share a state dir: one restarting must not stop the other's runs."""
    other_executor = await asyncio.create_subprocess_exec(PY, "-c", "import time; time.sleep(60)")
    task = await asyncio.create_subprocess_exec(
        PY, "-c", "import time; time.sleep(60)", start_new_session=True
    )
    try:
        backend = LocalBackend(tmp_path / "state", grace=0.5)
        backend.runs_dir.mkdir(parents=True)
        record = {
            "run_id": "theirs",
            "namespace": "team",
            "axon": "demo",
            "task": "T",
            "kind": "resourceExecutor",
            "pid": task.pid,
            "pgid": task.pid,
            "proc_start": start_time(task.pid),
            "boot_id": current_boot_id(),
            "started": "2026-01-01T00:00:00Z",
            "log_path": "/dev/null",
            "owner_pid": other_executor.pid,
            "owner_start": start_time(other_executor.pid),
        }
        (backend.runs_dir / "theirs.json").write_text(json.dumps(record))
        assert await backend.recover() == []
        assert alive(task.pid)
        other_executor.kill()
        await other_executor.wait()
        (lost,) = await backend.recover()  # now its owner is gone: stop it
        assert lost.killed
        assert not alive(task.pid)
    finally:
        for proc in (other_executor, task):
            if proc.returncode is None:
                proc.kill()
            await proc.wait()
