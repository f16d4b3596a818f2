"""A real Prometheus (Debian's `prometheus` binary) for tests, on a free port, with tmp storage.

Its scrape targets come from a `file_sd_configs` file the test rewrites (`set_targets`), so a
test points Prometheus at model servers whose ports it learns only after they started (from a
deployment record or `ranvier endpoint -o json`). Scrape and refresh intervals are 1 s.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Final

import httpx
import pytest

from events.watchers.metrics import instance_of

BINARY: Final = shutil.which("prometheus") or "/usr/bin/prometheus"
JOB: Final = "ranvier-model-servers"
START_TIMEOUT: Final = 60.0


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class PrometheusServer:
    """One Prometheus process scraping the targets of its file_sd file every second."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.targets_file = workdir / "targets.json"
        self.config = workdir / "prometheus.yml"
        self.log_path = workdir / "prometheus.log"
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        """Write the config, start Prometheus, and wait until it is ready."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.set_targets([])
        self.config.write_text(
            json.dumps(  # JSON is YAML; no YAML writer needed
                {
                    "global": {
                        "scrape_interval": "1s",
                        "scrape_timeout": "1s",
                        "evaluation_interval": "1s",
                    },
                    "scrape_configs": [
                        {
                            "job_name": JOB,
                            "file_sd_configs": [
                                {"files": [str(self.targets_file)], "refresh_interval": "1s"}
                            ],
                        }
                    ],
                }
            ),
            encoding="utf-8",
        )
        with self.log_path.open("wb") as log:
            self._proc = subprocess.Popen(
                [
                    BINARY,
                    f"--config.file={self.config}",
                    f"--storage.tsdb.path={self.workdir / 'data'}",
                    f"--web.listen-address=127.0.0.1:{self.port}",
                    "--log.level=warn",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(f"prometheus exited: {self.log_path.read_text()[-2000:]}")
            try:
                if httpx.get(f"{self.url}/-/ready", timeout=1.0).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"prometheus not ready in {START_TIMEOUT}s")

    def set_targets(self, urls: Iterable[str]) -> None:
        """Scrape exactly these model servers (base URLs) from the next file_sd refresh on."""
        targets = sorted({instance_of(u) for u in urls})
        tmp = self.targets_file.with_suffix(".tmp")
        tmp.write_text(json.dumps([{"targets": targets, "labels": {}}]), encoding="utf-8")
        tmp.replace(self.targets_file)  # atomic: Prometheus never reads half a file

    def query(self, promql: str) -> list[dict[str, object]]:
        """The result of an instant query (for checks in tests)."""
        answer = httpx.get(f"{self.url}/api/v1/query", params={"query": promql}, timeout=5.0)
        answer.raise_for_status()
        result: list[dict[str, object]] = answer.json()["data"]["result"]
        return result

    def stop(self) -> None:
        """Stop Prometheus (SIGTERM, then SIGKILL)."""
        if self._proc is None:
            return
        self._proc.terminate()
        try:
            self._proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()
        self._proc = None


@pytest.fixture
def prometheus(tmp_path: Path) -> Iterator[PrometheusServer]:
    """A running Prometheus for this test (skipped with the reason when it is not installed)."""
    if not Path(BINARY).exists():
        pytest.skip("prometheus is not installed (apt-get install prometheus; .ci/run does)")
    server = PrometheusServer(tmp_path / "prometheus")
    server.start()
    try:
        yield server
    finally:
        server.stop()
