"""What task and model code imports from ranvier: report a run's metrics, publish a trial's
result, read the hyper-parameters of a study trial, and set a served model's gauges.

A trainer needs no connection to ranvier: everything goes through files and environment
variables the executor sets up (`MODEL_PATH/metrics.json`, `HPO_PARAMS`, `LOSS_METRIC`), so this
module only reads and writes those, and works the same on the local and Kubernetes backends.

    from ranvier.sdk import hpo_params, metrics, publish_result, report_metrics

    conf = hpo_params()            # {} outside a study; else {"config-id", "budget", "hpo-conf"}
    lr = float(conf.get("hpo-conf", {}).get("lr", 0.1))
    ...
    report_metrics(accuracy=0.93)  # any metrics, stored with the model version
    publish_result(0.12)           # the trial's loss, under the task's lossMetric

A served model class sets gauges and counters that its server's `/metrics` exposes (labelled
with the Axon, model and version), which is what Alert triggers read:

    metrics.gauge("shakespeare_gpt2_deploy_accuracy", 0.87)   # e.g. in send_feedback
    metrics.counter("tokens_generated", 64)
"""

from __future__ import annotations

import base64
import binascii
import json
import os
from pathlib import Path
from typing import Any

from executors.sdk_metrics import MetricsError, report_metrics
from executors.serving.sdk import metrics

DEFAULT_RESULT = "loss"


def publish_result(value: float, name: str | None = None) -> Path:
    """Report a trial's result: `name` (default: the task's lossMetric, from `LOSS_METRIC`,
    else "loss") = `value`, merged into `MODEL_PATH/metrics.json`; returns that file's path.

    A study ranks its trials by this value; a trial that reports none fails with that reason.
    """
    metric = name or os.environ.get("LOSS_METRIC") or DEFAULT_RESULT
    return report_metrics(**{metric: value})


def hpo_params() -> dict[str, Any]:
    """This trial's settings, `{"config-id", "budget", "hpo-conf": {param: value}}`, decoded
    from `HPO_PARAMS`; `{}` when the run is not a study trial. The same values arrive on the
    command line as `--config_id ID --budget B --NAME VALUE`."""
    raw = os.environ.get("HPO_PARAMS")
    if not raw:
        return {}
    try:
        data = json.loads(base64.b64decode(raw, validate=True))
    except (binascii.Error, ValueError) as exc:
        raise MetricsError(
            f"HPO_PARAMS is not base64 JSON: {exc}",
            hint="leave HPO_PARAMS to the executor; it sets it for study trials",
        ) from None
    return data if isinstance(data, dict) else {}


__all__ = ["MetricsError", "hpo_params", "metrics", "publish_result", "report_metrics"]
