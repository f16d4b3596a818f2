"""Write a small, deterministic regression dataset (y = 3x + 2 + noise) to DATA_PATH_PrepareData.

The local backend gives every task DATA_PATH (shared by the Axon's tasks) and one
DATA_PATH_<Task> directory per task, so the trainer finds this task's output without any
configuration.
"""

from __future__ import annotations

import argparse
import csv
import os
import random
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=200)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    out = Path(os.environ["DATA_PATH_PrepareData"])  # noqa: SIM112  # DATA_PATH_<Task> keeps the task name
    out.mkdir(parents=True, exist_ok=True)
    rng = random.Random(args.seed)
    path = out / "data.csv"
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["x", "y"])
        for _ in range(args.rows):
            x = rng.uniform(-1.0, 1.0)
            writer.writerow([f"{x:.6f}", f"{3.0 * x + 2.0 + rng.gauss(0.0, 0.1):.6f}"])
    print(f"wrote {args.rows} rows to {path}")


if __name__ == "__main__":
    main()
