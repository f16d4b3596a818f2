"""The CLI on a three-node NATS cluster: several URLs, `--replicas` and `RANVIER_REPLICAS`.

- `ranvier up --nats-url A,B,C --replicas 3` runs a pipeline on the cluster (roles and topology
  on all three URLs, every stream and bucket at three replicas);
- `ranvier events publish` with a dead URL first in the list connects through the others, and
  creates the topology at the count `RANVIER_REPLICAS` gives; started right after a node is
  killed, the same command waits until the cluster's leaders are elected again, then works;
- asking for more replicas than the cluster has servers is one line on stderr, exit code 1;
  an impossible count is a usage error;
- `ranvier server --replicas 3` runs a three-server cluster in the foreground, with the
  topology at three replicas and every URL in the state dir's `nats.url`.
"""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from events import subjects
from events.bus import Bus, ConnectOptions
from events.server import NatsCluster, free_ports
from tests.e2e.kit import clean_env, ranvier, state_token
from tests.integration.cluster_kit import cluster_options

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

AXON = """\
apiVersion: ranvier.dev/v1alpha1
kind: Axon
metadata: {name: clustered}
spec:
  tasks:
    - name: Hello
      container: {command: [%s, -c, "print('hello from the cluster')"]}
  sensors:
    - name: OnStart
      tasks: [{resourceExecutor: {task: Hello}}]
"""


def cluster_options_for(urls: list[str], token: str | None = None) -> ConnectOptions:
    return ConnectOptions(servers=urls, request_timeout=5.0, token=token)


def replicas(cluster: NatsCluster) -> dict[str, int]:
    async def read() -> dict[str, int]:
        async with Bus.connect(cluster_options(cluster), ensure=False) as bus:
            return {
                (info.config.name or ""): int(info.config.num_replicas or 1)
                for info in await bus.js.streams_info()
            }

    return asyncio.run(read())


def test_up_runs_a_pipeline_on_every_url_with_three_replicas(
    nats_cluster: NatsCluster, tmp_path: Path
) -> None:
    axon = tmp_path / "axon.yaml"
    axon.write_text(AXON % json.dumps(sys.executable), encoding="utf-8")
    state = tmp_path / "state"
    up = ranvier(
        *("up", str(axon), "--until", "succeeded", "--timeout", "60"),
        *("--nats-url", nats_cluster.url, "--replicas", "3"),
        state=state,
    )
    assert up.returncode == 0, up.stdout + up.stderr
    assert "--until succeeded reached" in up.stdout
    assert not (state / "nats").exists()  # no embedded server: the cluster was used
    counts = replicas(nats_cluster)
    assert set(counts) >= {subjects.EVENTS_STREAM, f"KV_{subjects.RUNS_BUCKET}"}
    assert set(counts.values()) == {3}
    shown = ranvier("get", "axon", "clustered", "-o", "json", "--nats-url", nats_cluster.url,
                    state=state)  # fmt: skip
    assert shown.returncode == 0, shown.stderr
    [task] = json.loads(shown.stdout)["tasks"]
    assert [run["phase"] for run in task["runs"]] == ["Succeeded"]


def test_a_dead_url_is_skipped_and_replicas_come_from_the_environment(
    nats_cluster: NatsCluster, tmp_path: Path
) -> None:
    [dead] = free_ports(1)
    urls = f"nats://127.0.0.1:{dead},{nats_cluster.url}"
    env = clean_env() | {"RANVIER_REPLICAS": "3", "RANVIER_NATS_URL": urls}
    publish = ("events", "publish", "--type", "metric", "--axon", "ml")
    data = ("--data", '{"name": "acc", "value": 0.5}', "-o", "json")
    first = ranvier(*publish, *data, state=tmp_path / "state", env=env)
    assert first.returncode == 0, first.stderr
    assert set(replicas(nats_cluster).values()) == {3}
    nats_cluster.kill(0)  # right away: the command waits out the leader elections
    again = ranvier(*publish, *data, state=tmp_path / "state", env=env)
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["seq"] == json.loads(first.stdout)["seq"] + 1


def test_too_many_replicas_is_one_clear_line(nats_cluster: NatsCluster, tmp_path: Path) -> None:
    run = ranvier(
        *("run", "--role", "engine", "--nats-url", nats_cluster.url, "--replicas", "5"),
        state=tmp_path / "state",
        timeout=60,
    )
    assert run.returncode == 1
    assert "Traceback" not in run.stderr
    [line] = [ln for ln in run.stderr.splitlines() if ln.startswith("error:")]
    assert "with 5 replicas" in line
    assert "has 3 server(s) up" in line
    assert "lower --replicas (RANVIER_REPLICAS) to at most 3" in line
    usage = ranvier("run", "--role", "engine", "--replicas", "0", state=tmp_path / "state")
    assert usage.returncode == 2
    assert "--replicas" in usage.stderr
    env = clean_env() | {"RANVIER_REPLICAS": "seven"}
    bad = ranvier("events", "publish", "--type", "metric", "--axon", "ml", "--data",
                  '{"name": "acc", "value": 1}', state=tmp_path / "state", env=env)  # fmt: skip
    assert bad.returncode == 1
    assert bad.stderr.startswith("error: invalid setting")
    assert "Traceback" not in bad.stderr


def test_server_with_replicas_runs_a_local_cluster(tmp_path: Path) -> None:
    state = tmp_path / "state"
    proc = subprocess.Popen(
        [
            *(sys.executable, "-m", "ranvier", "server", "--replicas", "3", "--port", "0"),
            *("--state-dir", str(state)),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=clean_env(),
    )
    try:
        assert proc.stdout is not None
        url = proc.stdout.readline().strip()
        urls = url.split(",")
        assert len(urls) == 3, url
        assert all(u.startswith("nats://127.0.0.1:") for u in urls)
        assert (state / "nats.url").read_text().strip() == url
        for node in ("n0", "n1", "n2"):
            assert (state / "nats" / node / "jetstream").is_dir()
        published = ranvier(
            "events", "publish", "--type", "metric", "--axon", "ml",
            "--data", '{"name": "acc", "value": 0.5}', state=state,
        )  # fmt: skip
        assert published.returncode == 0, published.stderr
        assert "to RANVIER_EVENTS seq 1" in published.stdout

        async def counts() -> set[int]:
            options = cluster_options_for(urls, state_token(state))
            async with Bus.connect(options, ensure=False) as bus:
                return {int(i.config.num_replicas or 1) for i in await bus.js.streams_info()}

        assert asyncio.run(counts()) == {3}
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for pipe in (proc.stdout, proc.stderr):
            if pipe is not None:
                pipe.close()
    assert not (state / "nats.url").exists()
    left = subprocess.run(
        ["pgrep", "-f", f"nats-server.*{state}"], capture_output=True, text=True, check=False
    )
    assert left.stdout == ""
