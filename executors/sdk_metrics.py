"""How a training run reports its metrics: a flat JSON object in `MODEL_PATH/metrics.json`.

A file is the whole protocol between a user's trainer and ranvier, so a trainer needs no client,
no connection and no credentials: it writes the file (by hand or with `report_metrics`), exits,
and the executor reads it into the model registry. The file is replaced atomically (write a
temporary file in the same directory, fsync, rename), so a reader, or a trainer killed halfway,
never leaves half a file behind. `ranvier.sdk` re-exports `report_metrics` for users.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Final

from events.errors import RanvierError

METRICS_FILE: Final = "metrics.json"
MAX_METRICS_BYTES: Final = 1024 * 1024


class MetricsError(RanvierError, ValueError):
    """Metrics that cannot be reported or read (not a flat object of finite numbers)."""


def check_metric(name: str, value: object) -> float:
    """`value` as a float, or `MetricsError` saying why it is not a metric value."""
    if not isinstance(name, str) or not name:
        raise MetricsError(f"invalid metric name {name!r}", hint="use a non-empty string")
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise MetricsError(
            f"metric {name!r} is {type(value).__name__} {value!r}, not a number",
            hint="report plain numbers, e.g. report_metrics(loss=0.12)",
        )
    number = float(value)
    if not math.isfinite(number):
        raise MetricsError(f"metric {name!r} is {number}", hint="report finite numbers only")
    return number


def _model_path(model_path: str | os.PathLike[str] | None) -> Path:
    if model_path is not None:
        return Path(model_path)
    env = os.environ.get("MODEL_PATH")
    if not env:
        raise MetricsError(
            "MODEL_PATH is not set",
            hint="call report_metrics inside a ranvier trainer run, or pass model_path=",
        )
    return Path(env)


def write_metrics(model_dir: Path, metrics: Mapping[str, float]) -> Path:
    """Atomically replace `model_dir/metrics.json` with `metrics` (checked); return its path."""
    checked = {name: check_metric(name, value) for name, value in metrics.items()}
    model_dir.mkdir(parents=True, exist_ok=True)
    target = model_dir / METRICS_FILE
    fd, tmp = tempfile.mkstemp(prefix=".metrics.", suffix=".tmp", dir=model_dir)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            json.dump(checked, out, indent=2, sort_keys=True)
            out.write("\n")
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target


def report_metrics(model_path: str | os.PathLike[str] | None = None, /, **metrics: float) -> Path:
    """Record metrics of this training run, merged into `MODEL_PATH/metrics.json`.

    Call it as often as you like (`report_metrics(loss=0.3)`, later `report_metrics(acc=0.9)`);
    later values of the same name win. The directory is `MODEL_PATH` unless given. When
    `RANVIER_TERMINATION_LOG` is set (Kubernetes trainer pods), the file is copied there too,
    so the executor reads the metrics from the pod's termination message.
    """
    model_dir = _model_path(model_path)
    if not metrics:
        raise MetricsError("no metrics given", hint="call e.g. report_metrics(loss=0.12)")
    for name, value in metrics.items():
        check_metric(name, value)
    existing: dict[str, float] = {}
    target = model_dir / METRICS_FILE
    if target.exists():
        try:
            raw = json.loads(target.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            raw = None  # an unreadable earlier file is replaced rather than merged
        if isinstance(raw, dict):
            for name, value in raw.items():
                try:
                    existing[name] = check_metric(name, value)
                except MetricsError:
                    continue  # drop what could never have been a valid metric
    written = write_metrics(model_dir, {**existing, **metrics})
    mirror = os.environ.get("RANVIER_TERMINATION_LOG")
    if mirror:  # on Kubernetes the executor reads the pod's termination message, not the volume
        with contextlib.suppress(OSError):
            Path(mirror).write_bytes(written.read_bytes())
    return written
