"""One trial: fit a polynomial by gradient descent with this trial's settings; report its loss.

The study hands the settings over as Myelin does, on the command line
(`--config_id ID --budget B --lr X --degree N --init NAME`) and in `HPO_PARAMS`
(`ranvier.sdk.hpo_params()`). The budget is the number of passes over the data, in hundreds.
The validation error is published as the trial's result (`lossMetric: val_mse`).
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import numpy as np

from ranvier.sdk import hpo_params, publish_result, report_metrics


def features(x: np.ndarray, degree: int) -> np.ndarray:
    return np.stack([x**d for d in range(degree + 1)], axis=1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--config_id", default="none")
    parser.add_argument("--budget", type=float, default=3.0)
    parser.add_argument("--lr", type=float, default=0.1)
    parser.add_argument("--degree", type=int, default=3)
    parser.add_argument("--init", choices=["zeros", "normal"], default="zeros")
    args = parser.parse_args()
    conf = hpo_params()  # the same settings, as Myelin's HPO_PARAMS
    assert conf.get("config-id", args.config_id) == args.config_id

    data = np.load(Path(os.environ["DATA_PATH_PrepareData"]) / "data.npz")  # noqa: SIM112
    x, y = data["x"], data["y"]
    train, valid = slice(0, 300), slice(300, None)
    phi = features(x, args.degree)
    rng = np.random.default_rng(0)
    w = rng.normal(0.0, 0.5, phi.shape[1]) if args.init == "normal" else np.zeros(phi.shape[1])
    for _ in range(int(args.budget * 100)):
        error = phi[train] @ w - y[train]
        w -= args.lr * 2.0 * phi[train].T @ error / error.size
    val_mse = float(np.mean((phi[valid] @ w - y[valid]) ** 2))
    if not np.isfinite(val_mse):
        raise SystemExit(f"diverged with lr={args.lr}")  # a failed trial, with its reason

    model = Path(os.environ["MODEL_PATH"])
    (model / "model.json").write_text(json.dumps({"w": w.tolist()}), encoding="utf-8")
    report_metrics(train_mse=float(np.mean((phi[train] @ w - y[train]) ** 2)))
    publish_result(val_mse)  # under LOSS_METRIC, the task's lossMetric
    print(f"trial {args.config_id}: budget={args.budget:g} {vars(args)} val_mse={val_mse:.5f}")


if __name__ == "__main__":
    main()
