"""TrainGPT2: a GPT-2 language model trained on what preprocess.py left in DATA_PATH.

Run by ranvier's local backend as the Axon's `TrainGPT2` trainer: `MODEL_PATH` is a fresh
version directory (`<workspace>/models/TrainGPT2/<n>/`), and what this writes there is the
version: the model (`transformers` format), the tokenizer, `training.json` (configuration and
where the weights came from) and, last, `metrics.json`, which ranvier's registry reads:

    val_loss            mean cross-entropy of the validation tokens, in nats per token
    perplexity          exp(val_loss)
    tokens_seen         training tokens this run consumed (steps x batch x context)
    steps               optimiser steps done (fewer than asked when the time budget ran out)
    initialised_from    the earlier version fine-tuned (0: fresh or PRETRAINED weights)
    initial_val_loss    val_loss of the starting weights, when not fresh (a fine-tune's gain)
    unigram_val_loss    the same measure for a unigram model of the training tokens: the
                        baseline any useful model must clearly beat

Retraining fine-tunes: the earlier versions are the sibling directories of MODEL_PATH holding a
model and a metrics.json; the one with the lowest val_loss (and the same tokenizer as the data)
is the starting point. With none, `PRETRAINED` (a local checkpoint directory, or a model name
already in the local Hugging Face cache: nothing is downloaded) is, else fresh weights.

Knobs (argument, or environment variable in the Axon's `env`): --layers GPT2_LAYERS, --width
GPT2_WIDTH, --heads GPT2_HEADS, --context GPT2_CONTEXT, --steps GPT2_STEPS, --batch GPT2_BATCH,
--lr GPT2_LR, --seed GPT2_SEED, --threads GPT2_THREADS, --max-minutes GPT2_MAX_MINUTES (a
training time budget: the learning-rate decay follows it, and training stops when it runs out;
default 8, so a slow or busy machine still has a model within ten minutes). The defaults train
in a few minutes on two CPU cores; `RANVIER_DEMO_TINY=1` selects a tiny configuration that
trains in seconds and has no time budget.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import shutil
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

DEFAULTS = {"layers": 4, "width": 192, "heads": 4, "context": 128, "steps": 600, "batch": 16}
DEFAULT_LR = 2e-3
TINY = {"layers": 1, "width": 32, "heads": 2, "context": 32, "steps": 40, "batch": 8}
TINY_LR = 1e-2
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


class TrainError(Exception):
    """A problem the user can fix (missing data, a bad checkpoint); one line, exit status 2."""


def log(event: str, **fields: Any) -> None:
    """One progress line, `event key=value ...` (the task's log file keeps it)."""
    parts = " ".join(
        f"{key}={value:.4g}" if isinstance(value, float) else f"{key}={value}"
        for key, value in fields.items()
    )
    print(f"train: {event} {parts}".rstrip(), flush=True)


def tiny() -> bool:
    """True when RANVIER_DEMO_TINY asks for the test-sized configuration."""
    return os.environ.get("RANVIER_DEMO_TINY", "").strip().lower() in {"1", "true", "yes", "on"}


@dataclass(frozen=True)
class Config:
    """What one training run does."""

    layers: int
    width: int
    heads: int
    context: int
    steps: int
    batch: int
    lr: float
    warmup: int
    weight_decay: float
    dropout: float
    eval_tokens: int
    max_minutes: float
    seed: int
    threads: int
    log_every: int


def write_atomic(path: Path, text: str) -> None:
    """Replace `path` with `text` (temporary file in the same directory, fsync, rename)."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(text)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def sha256_file(path: Path) -> str:
    """Hex SHA-256 of a file ("" when it does not exist)."""
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else ""


# ---------------------------------------------------------------------------------------------
# Data


@dataclass(frozen=True)
class Corpus:
    """preprocess.py's output: token streams, tokenizer directory, its hash."""

    train: Any  # torch.LongTensor
    val: Any  # torch.LongTensor
    vocab_size: int
    tokenizer_dir: Path
    tokenizer_sha256: str


def load_corpus(data: Path) -> Corpus:
    """Read DATA_PATH as preprocess.py wrote it."""
    import numpy as np
    import torch

    meta_file = data / "corpus.json"
    if not meta_file.is_file():
        raise TrainError(f"no {meta_file}: run preprocess.py (DataPrepGPT2) first")
    meta = json.loads(meta_file.read_text(encoding="utf-8"))
    dtype = np.dtype(meta["dtype"])
    streams = []
    for name in ("train", "val"):
        ids = np.fromfile(data / f"{name}.bin", dtype=dtype).astype(np.int64)
        if ids.size < 2:
            raise TrainError(f"{data / name}.bin holds {ids.size} tokens: too few to train on")
        streams.append(torch.from_numpy(ids))
    tok_dir = data / meta.get("tokenizer", "tokenizer")
    return Corpus(
        streams[0],
        streams[1],
        int(meta["vocab_size"]),
        tok_dir,
        sha256_file(tok_dir / "tokenizer.json"),
    )


def unigram_loss(train: Any, val: Any, vocab_size: int) -> float:
    """Cross-entropy (nats/token) of `val` under add-one-smoothed training token frequencies."""
    import torch

    counts = torch.bincount(train, minlength=vocab_size).double() + 1.0
    log_probs = counts.log() - counts.sum().log()
    return float(-log_probs[val].mean())


def val_windows(val: Any, context: int, max_tokens: int) -> Any:
    """Non-overlapping windows of context+1 tokens over the start of `val` (deterministic)."""
    import torch

    usable = min(int(val.numel()), max_tokens + 1)
    span = min(context, usable - 1)
    count = max(1, (usable - 1) // span)
    return torch.stack([val[i * span : i * span + span + 1] for i in range(count)])


def evaluate(model: Any, windows: Any, batch: int) -> float:
    """Mean next-token cross-entropy over `windows`, in nats."""
    import torch
    import torch.nn.functional as F

    model.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for start in range(0, windows.shape[0], batch):
            rows = windows[start : start + batch]
            logits = model(input_ids=rows[:, :-1]).logits
            loss = F.cross_entropy(
                logits.reshape(-1, logits.shape[-1]), rows[:, 1:].reshape(-1), reduction="sum"
            )
            total += float(loss)
            count += rows[:, 1:].numel()
    model.train()
    return total / count


# ---------------------------------------------------------------------------------------------
# Where the weights come from


@dataclass(frozen=True)
class Start:
    """The starting weights: an earlier version, a pretrained checkpoint, or none."""

    path: Path | None
    version: int
    description: str
    tokens_seen_total: float


def earlier_versions(
    model_path: Path, tokenizer_sha: str
) -> list[tuple[float, int, Path, dict[str, Any]]]:
    """(val_loss, version, dir, metrics) of finished sibling versions with the same tokenizer."""
    found = []
    parent = model_path.resolve().parent
    if not parent.is_dir():
        return []
    for sibling in parent.iterdir():
        if not sibling.name.isdigit() or sibling.resolve() == model_path.resolve():
            continue
        metrics_file = sibling / "metrics.json"
        if not metrics_file.is_file() or not (sibling / "config.json").is_file():
            continue
        if not any((sibling / name).is_file() for name in WEIGHT_FILES):
            continue
        try:
            metrics = json.loads(metrics_file.read_text(encoding="utf-8"))
            loss = float(metrics["val_loss"])
        except (OSError, ValueError, KeyError, TypeError):
            log("version.skipped", version=sibling.name, reason="unreadable metrics.json")
            continue
        if not math.isfinite(loss):
            continue
        if tokenizer_sha and sha256_file(sibling / "tokenizer.json") != tokenizer_sha:
            log("version.skipped", version=sibling.name, reason="different tokenizer")
            continue
        found.append((loss, int(sibling.name), sibling, metrics))
    return found


def choose_start(model_path: Path, corpus: Corpus, pretrained: str | None, fresh: bool) -> Start:
    """The best earlier version (lowest val_loss, newest on a tie), else PRETRAINED, else none."""
    if not fresh:
        versions = earlier_versions(model_path, corpus.tokenizer_sha256)
        if versions:
            loss, version, path, metrics = min(versions, key=lambda v: (v[0], -v[1]))
            log("start.version", version=version, val_loss=loss, candidates=len(versions))
            total = float(metrics.get("tokens_seen_total", metrics.get("tokens_seen", 0.0)))
            return Start(path, version, f"version {version} ({path})", total)
    if pretrained:
        log("start.pretrained", checkpoint=pretrained)
        return Start(Path(pretrained), 0, f"pretrained {pretrained}", 0.0)
    log("start.fresh")
    return Start(None, 0, "fresh weights", 0.0)


def build_model(start: Start, cfg: Config, vocab_size: int) -> Any:
    """The model to train: loaded from `start`, or new of the configured shape."""
    from transformers import GPT2Config, GPT2LMHeadModel

    if start.path is not None:
        source = str(start.path)  # a directory, or a model name in the local cache
        try:
            model = GPT2LMHeadModel.from_pretrained(source, local_files_only=True)
        except (OSError, ValueError) as exc:
            raise TrainError(
                f"cannot load GPT-2 weights from {source}: {str(exc).splitlines()[0]}"
            ) from exc
        if model.config.vocab_size < vocab_size:
            raise TrainError(
                f"{source} has a {model.config.vocab_size}-token vocabulary but the data uses "
                f"{vocab_size}: preprocess with that model's tokenizer (--tokenizer)"
            )
        return model
    config = GPT2Config(
        vocab_size=vocab_size,
        n_positions=cfg.context,
        n_embd=cfg.width,
        n_layer=cfg.layers,
        n_head=cfg.heads,
        resid_pdrop=cfg.dropout,
        embd_pdrop=cfg.dropout,
        attn_pdrop=cfg.dropout,
        bos_token_id=0,
        eos_token_id=0,
    )
    return GPT2LMHeadModel(config)


# ---------------------------------------------------------------------------------------------
# Training


def learning_rate(step: int, cfg: Config, time_fraction: float = 0.0) -> float:
    """Linear warm-up, then cosine decay to a tenth of the peak.

    The decay follows the steps, or the time budget when that is further along, so a run cut
    short by the budget still ends on a small learning rate.
    """
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    progress = max((step - cfg.warmup) / max(1, cfg.steps - cfg.warmup), time_fraction)
    return cfg.lr * (0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress))))


def train(model: Any, corpus: Corpus, cfg: Config, context: int) -> tuple[float, int, float]:
    """Run the steps (or until the time budget); return (last interval's loss, steps, seconds)."""
    import torch
    import torch.nn.functional as F

    generator = torch.Generator().manual_seed(cfg.seed)
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    optimizer = torch.optim.AdamW(
        [
            {"params": decay, "weight_decay": cfg.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ],
        lr=cfg.lr,
        betas=(0.9, 0.95),
    )
    span = min(context, int(corpus.train.numel()) - 1)
    offsets = torch.arange(span + 1)
    model.train()
    started = time.perf_counter()
    budget_s = cfg.max_minutes * 60.0
    interval_loss, interval_steps, last_loss = 0.0, 0, float("nan")
    steps_done = 0
    for step in range(cfg.steps):
        elapsed = time.perf_counter() - started
        time_fraction = elapsed / budget_s if budget_s > 0 else 0.0
        if step > 0 and time_fraction >= 1.0:  # at least one step: a model, a train_loss
            log("budget.reached", step=step, of=cfg.steps, max_minutes=cfg.max_minutes)
            break
        lr = learning_rate(step, cfg, time_fraction)
        for group in optimizer.param_groups:
            group["lr"] = lr
        starts = torch.randint(
            0, int(corpus.train.numel()) - span, (cfg.batch,), generator=generator
        )
        rows = corpus.train[starts[:, None] + offsets]
        logits = model(input_ids=rows[:, :-1]).logits
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), rows[:, 1:].reshape(-1))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        interval_loss += loss.item()
        interval_steps += 1
        steps_done = step + 1
        if (step + 1) % cfg.log_every == 0 or step + 1 == cfg.steps:
            elapsed = time.perf_counter() - started
            last_loss = interval_loss / interval_steps
            log(
                "progress",
                step=step + 1,
                of=cfg.steps,
                loss=last_loss,
                lr=lr,
                tokens_per_s=round((step + 1) * cfg.batch * span / elapsed),
                elapsed_s=round(elapsed, 1),
            )
            interval_loss, interval_steps = 0.0, 0
    if interval_steps:
        last_loss = interval_loss / interval_steps
    return last_loss, steps_done, time.perf_counter() - started


def run(cfg: Config, data: Path, out: Path, pretrained: str | None, fresh: bool) -> dict[str, Any]:
    """Train one version into `out`; return its metrics."""
    import torch
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # the task log is a file: no progress bars in it
    torch.manual_seed(cfg.seed)
    torch.set_num_threads(cfg.threads)
    corpus = load_corpus(data)
    start = choose_start(out, corpus, pretrained, fresh)
    model = build_model(start, cfg, corpus.vocab_size)
    context = min(cfg.context, int(model.config.n_positions))
    params = sum(p.numel() for p in model.parameters())
    log(
        "model",
        layers=model.config.n_layer,
        width=model.config.n_embd,
        heads=model.config.n_head,
        context=context,
        vocab=model.config.vocab_size,
        params=params,
        threads=torch.get_num_threads(),
    )
    windows = val_windows(corpus.val, context, cfg.eval_tokens)
    baseline = unigram_loss(corpus.train, corpus.val, corpus.vocab_size)
    initial: float | None = None
    if start.path is not None:  # fresh weights score about ln(vocabulary): not worth the time
        initial = evaluate(model, windows, cfg.batch)
        log("eval.initial", val_loss=initial, unigram_val_loss=baseline)
    train_loss, steps_done, seconds = train(model, corpus, cfg, context)
    val_loss = evaluate(model, windows, cfg.batch)
    log("eval.final", val_loss=val_loss, unigram_val_loss=baseline, train_seconds=round(seconds, 1))

    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out))
    for item in corpus.tokenizer_dir.iterdir():
        if item.is_file():
            shutil.copy2(item, out / item.name)
    tokens_seen = steps_done * cfg.batch * context
    metrics: dict[str, float] = {
        "val_loss": val_loss,
        "perplexity": math.exp(val_loss),
        "tokens_seen": float(tokens_seen),
        "tokens_seen_total": start.tokens_seen_total + tokens_seen,
        "initialised_from": float(start.version),
        "unigram_val_loss": baseline,
        "train_loss": train_loss,
        "train_seconds": seconds,
        "params": float(params),
        "steps": float(steps_done),
    }
    if initial is not None:
        metrics["initial_val_loss"] = initial
    training = {
        "config": {**asdict(cfg), "context": context},
        "initialised_from": start.description,
        "data": str(data),
        "tokenizer_sha256": corpus.tokenizer_sha256,
        "eval_tokens": int(windows[:, 1:].numel()),
    }
    write_atomic(out / "training.json", json.dumps(training, indent=2) + "\n")
    # metrics.json last: a version with metrics is a complete version
    write_atomic(out / "metrics.json", json.dumps(metrics, indent=2, sort_keys=True) + "\n")
    log("done", out=out, **{k: metrics[k] for k in ("val_loss", "perplexity", "tokens_seen")})
    return metrics


def _env_default(name: str, fallback: Any) -> Any:
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return fallback
    return type(fallback)(raw)


def parse_args(argv: list[str] | None) -> tuple[Config, argparse.Namespace]:
    """Options: arguments win over environment variables, which win over the defaults."""
    base = TINY if tiny() else DEFAULTS
    base_lr = TINY_LR if tiny() else DEFAULT_LR
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=os.environ.get("DATA_PATH"), help="default $DATA_PATH")
    parser.add_argument("--out", default=os.environ.get("MODEL_PATH"), help="default $MODEL_PATH")
    parser.add_argument(
        "--pretrained",
        default=os.environ.get("PRETRAINED") or None,
        help="checkpoint directory (or locally cached name) to start from without earlier versions",
    )
    parser.add_argument(
        "--fresh",
        action="store_true",
        default=os.environ.get("GPT2_FRESH", "") in {"1", "true", "yes"},
        help="ignore earlier versions (GPT2_FRESH=1)",
    )
    knobs: list[tuple[str, str, Any, str]] = [
        ("layers", "GPT2_LAYERS", base["layers"], "transformer blocks"),
        ("width", "GPT2_WIDTH", base["width"], "embedding width"),
        ("heads", "GPT2_HEADS", base["heads"], "attention heads"),
        ("context", "GPT2_CONTEXT", base["context"], "context length in tokens"),
        ("steps", "GPT2_STEPS", base["steps"], "optimiser steps"),
        ("batch", "GPT2_BATCH", base["batch"], "sequences per step"),
        ("lr", "GPT2_LR", base_lr, "peak learning rate"),
        ("seed", "GPT2_SEED", 1234, "random seed"),
        ("threads", "GPT2_THREADS", os.cpu_count() or 1, "torch threads"),
        ("warmup", "GPT2_WARMUP", 0, "warm-up steps (0: 5% of the steps, at most 30)"),
        ("eval_tokens", "GPT2_EVAL_TOKENS", 32768, "validation tokens evaluated (at most)"),
        (
            "max_minutes",
            "GPT2_MAX_MINUTES",
            0.0 if tiny() else 8.0,
            "training time budget, 0: none",
        ),
        ("dropout", "GPT2_DROPOUT", 0.0, "dropout probability"),
        ("weight_decay", "GPT2_WEIGHT_DECAY", 0.1, "AdamW weight decay"),
    ]
    for name, env, fallback, text in knobs:
        parser.add_argument(
            f"--{name.replace('_', '-')}",
            type=type(fallback),
            default=_env_default(env, fallback),
            help=f"{text} (${env}, default {fallback})",
        )
    args = parser.parse_args(argv)
    if not args.data or not args.out:
        parser.error("set DATA_PATH and MODEL_PATH (or give --data and --out)")
    if args.width % args.heads:
        parser.error(f"--width {args.width} is not a multiple of --heads {args.heads}")
    for name in ("layers", "width", "heads", "context", "steps", "batch", "threads"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1")
    cfg = Config(
        layers=args.layers,
        width=args.width,
        heads=args.heads,
        context=args.context,
        steps=args.steps,
        batch=args.batch,
        lr=args.lr,
        warmup=args.warmup if args.warmup > 0 else max(1, min(args.steps // 20, 30)),
        weight_decay=args.weight_decay,
        dropout=args.dropout,
        eval_tokens=args.eval_tokens,
        max_minutes=args.max_minutes,
        seed=args.seed,
        threads=args.threads,
        log_every=max(1, min(args.steps // 20, 25)),
    )
    return cfg, args


def main(argv: list[str] | None = None) -> int:
    """Entry point: 0 on success, 2 with one line on stderr for a problem the user can fix."""
    cfg, args = parse_args(argv)
    try:
        run(cfg, Path(args.data), Path(args.out), args.pretrained, args.fresh)
    except TrainError as exc:
        print(f"train.py: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
