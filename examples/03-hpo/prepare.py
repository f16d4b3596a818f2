"""Write a small regression dataset (y = sin(3x) + noise) for the search to fit.

DATA_PATH_PrepareData is this task's own data directory; the trials read it from there.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np


def main() -> None:
    rng = np.random.default_rng(7)
    x = rng.uniform(-1.0, 1.0, size=400)
    y = np.sin(3.0 * x) + rng.normal(0.0, 0.1, size=x.size)
    out = Path(os.environ["DATA_PATH_PrepareData"])  # noqa: SIM112  # named after the task
    np.savez(out / "data.npz", x=x, y=y)
    print(f"wrote {x.size} rows to {out / 'data.npz'}")


if __name__ == "__main__":
    main()
