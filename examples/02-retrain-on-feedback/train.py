"""Fit y = w*x + b by gradient descent on PrepareData's CSV; save the model and its metrics.

MODEL_PATH is a fresh version directory for this run; `metrics.json` in it is what ranvier
stores with the version (`loss` is the Axon's lossMetric, lower is better).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--epochs", type=int, default=200)
    parser.add_argument("--lr", type=float, default=0.1)
    args = parser.parse_args()
    data = Path(os.environ["DATA_PATH_PrepareData"]) / "data.csv"  # noqa: SIM112  # see prepare.py
    with data.open(encoding="utf-8") as handle:
        rows = [(float(r["x"]), float(r["y"])) for r in csv.DictReader(handle)]
    w, b, n = 0.0, 0.0, len(rows)
    for _ in range(args.epochs):
        grad_w = sum(2 * (w * x + b - y) * x for x, y in rows) / n
        grad_b = sum(2 * (w * x + b - y) for x, y in rows) / n
        w, b = w - args.lr * grad_w, b - args.lr * grad_b
    loss = sum((w * x + b - y) ** 2 for x, y in rows) / n
    model = Path(os.environ["MODEL_PATH"])
    (model / "model.json").write_text(json.dumps({"w": w, "b": b}), encoding="utf-8")
    metrics = {"loss": loss, "w": w, "b": b, "rows": n}
    tmp = model / "metrics.json.tmp"
    tmp.write_text(json.dumps(metrics), encoding="utf-8")
    tmp.replace(model / "metrics.json")
    print(f"trained on {n} rows: w={w:.3f} b={b:.3f} loss={loss:.5f}")


if __name__ == "__main__":
    main()
