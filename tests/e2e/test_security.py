"""Secure by default, as a user on a shared machine meets it: `ranvier up` and `ranvier server`.

- the embedded server of `ranvier up` refuses a client without credentials and accepts one with
  the state dir's token; the state dir is 0700, its credential file and the server's config
  0600; no process's argv (what `ps` shows every user) holds the token, nor do `nats.url`,
  `up.json` or `up.log`; every command finds the token through the state dir with no flag;
- a task gets one variable carrying what it needs to reach the bus (`RANVIER_NATS_URL`) and
  reaches it with that alone;
- a state dir from an older ranvier (0755, a store, no credentials) is tightened, given a token
  and reported in one log line;
- `ranvier server` beyond loopback refuses to start without credentials, unless `--insecure`;
- `ranvier up -d --nats-url nats://TOKEN@...` hands the URL to its background process through
  the environment, not its argv.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from events.bus import AuthError, Bus, ConnectOptions
from events.server import EmbeddedServer
from tests.conftest import MakeServer
from tests.e2e.kit import clean_env, ranvier, state_token

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

# The task dumps its RANVIER_* variables, then publishes an event through the CLI from a
# directory without a state dir: only the environment it was given can get it to the bus.
PROBE = """
import json, os, subprocess, sys
seen = {k: v for k, v in os.environ.items() if k.startswith("RANVIER_")}
os.makedirs(os.environ["DATA_PATH"], exist_ok=True)
with open(os.path.join(os.environ["DATA_PATH"], "env.json"), "w") as out:
    json.dump(seen, out)
subprocess.run(
    [sys.executable, "-m", "ranvier", "events", "publish", "--type", "metric",
     "--axon", "probe", "--data", '{"name": "from_task", "value": 1}'],
    check=True, cwd=os.environ["DATA_PATH"],
)
"""

AXON = f"""
apiVersion: ranvier.dev/v1alpha1
kind: Axon
metadata: {{name: probe}}
spec:
  tasks:
    - name: Probe
      container: {{command: [python, -c, {json.dumps(PROBE)}]}}
  sensors:
    - name: OnStart
      tasks: [{{resourceExecutor: {{task: Probe}}}}]
"""


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


async def connects(url: str, token: str | None = None) -> bool:
    """Whether a client gets in (True) or is refused for its credentials (False). `Bus.connect`
    closes the socket of a refused attempt, which a bare nats-py client leaves open."""
    options = ConnectOptions(servers=[url], token=token, connect_timeout=2.0)
    try:
        async with Bus.connect(options, ensure=False):
            return True
    except AuthError:
        return False


def every_argv() -> str:
    """What `ps` shows of every process's command line on this machine."""
    done = subprocess.run(
        ["ps", "-e", "-ww", "-o", "args="], capture_output=True, text=True, check=True
    )
    return done.stdout


def test_up_is_reachable_only_with_the_state_dirs_token(tmp_path: Path) -> None:
    axon = tmp_path / "axon.yaml"
    axon.write_text(AXON)
    state = tmp_path / "state"
    up = ranvier("up", str(axon), "-d", "--until", "succeeded", "--timeout", "120", state=state)
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        url = (state / "nats.url").read_text().strip()
        token = state_token(state)
        assert len(token) >= 40
        assert asyncio.run(connects(url)) is False
        assert asyncio.run(connects(url, token="not-the-token")) is False
        assert asyncio.run(connects(url, token=token)) is True

        assert mode(state) == 0o700
        assert mode(state / "credentials.json") == 0o600
        assert mode(state / "nats" / "ranvier-nats.conf") == 0o600
        argv = every_argv()
        assert str(state / "nats") in argv  # the nats-server is there to be seen...
        assert token not in argv  # ...without its token
        for name in ("nats.url", "up.json", "up.log"):
            assert token not in (state / name).read_text(), name

        # every command finds the server and its token through the state dir, with no flag
        shown = ranvier("get", "axon", "probe", "-o", "json", state=state)
        assert shown.returncode == 0, shown.stderr
        [task] = json.loads(shown.stdout)["tasks"]
        assert [r["phase"] for r in task["runs"]] == ["Succeeded"], task
        seen = json.loads((state / "default" / "probe" / "data" / "env.json").read_text())
        assert [k for k, v in seen.items() if token in v] == ["RANVIER_NATS_URL"]
        assert seen["RANVIER_NATS_URL"] == url.replace("nats://", f"nats://{token}@")
        exported = ranvier("events", "export", state=state)
        assert exported.returncode == 0, exported.stderr
        assert '"from_task"' in exported.stdout  # the task's own publish reached the bus
        assert token not in exported.stdout + exported.stderr
    finally:
        down = ranvier("down", state=state)
        assert down.returncode == 0, down.stderr


def test_a_state_dir_from_an_older_version_is_tightened_and_said_so(tmp_path: Path) -> None:
    axon = tmp_path / "axon.yaml"
    axon.write_text(AXON)
    state = tmp_path / "state"
    # what an older ranvier left: a world-readable state dir with a store, no credentials
    with EmbeddedServer(store_dir=state / "nats"):
        pass
    (state / "nats.url").write_text("nats://127.0.0.1:1\n")
    os.chmod(state, 0o755)
    up = ranvier("up", str(axon), "--until", "succeeded", "--timeout", "120", state=state)
    assert up.returncode == 0, up.stdout + up.stderr
    said = [line for line in up.stderr.splitlines() if "state_dir.secured" in line]
    assert len(said) == 1, up.stderr
    assert "755 -> 700" in said[0]
    assert "credentials=generated" in said[0]
    assert mode(state) == 0o700
    assert mode(state / "credentials.json") == 0o600
    again = ranvier("get", "axon", "probe", "-o", "json", state=state)
    assert again.returncode == 0, again.stderr
    assert "state_dir.secured" not in again.stderr


def test_server_beyond_loopback_needs_credentials_or_insecure(tmp_path: Path) -> None:
    state = tmp_path / "state"
    refused = ranvier("server", "--host", "0.0.0.0", "--port", "0", state=state)
    assert refused.returncode == 1
    assert refused.stderr.startswith("error: refusing to listen on 0.0.0.0 without credentials"), (
        refused.stderr
    )
    assert len(refused.stderr.strip().splitlines()) == 1
    assert "--insecure" in refused.stderr
    assert not (state / "nats.url").exists()

    argv = [sys.executable, "-m", "ranvier", "server", "--host", "0.0.0.0", "--port", "0"]
    proc = subprocess.Popen(
        [*argv, "--insecure", "--state-dir", str(state)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=clean_env(),
    )
    try:
        assert proc.stdout is not None
        url = proc.stdout.readline().strip()
        assert url.startswith("nats://0.0.0.0:"), url
        local = url.replace("0.0.0.0", "127.0.0.1")
        assert asyncio.run(connects(local)) is True  # asked for: anyone gets in
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) == 0
        assert proc.stderr is not None
        assert "nats.insecure" in proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for pipe in (proc.stdout, proc.stderr):
            if pipe is not None:
                pipe.close()


def test_up_detached_on_a_server_of_its_own_keeps_the_token_out_of_argv(
    make_nats_server: MakeServer, tmp_path: Path
) -> None:
    token = "flag-given-token-0123456789"  # a test server's token, not a credential
    server = make_nats_server(token=token)
    given = server.url.replace("nats://", f"nats://{token}@")
    axon = tmp_path / "axon.yaml"
    axon.write_text(AXON)
    state = tmp_path / "state"
    up = ranvier("up", str(axon), "-d", "--until", "succeeded", "--nats-url", given, state=state)
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        assert token not in every_argv()
        assert not (state / "credentials.json").exists()  # nothing embedded, nothing kept
        seen = json.loads((state / "default" / "probe" / "data" / "env.json").read_text())
        assert seen["RANVIER_NATS_URL"] == given  # what the task published with
        for name in ("up.json", "up.log"):
            assert token not in (state / name).read_text(), name
    finally:
        down = ranvier("down", state=state)
        assert down.returncode == 0, down.stderr
