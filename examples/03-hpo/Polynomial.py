"""The search's model server class: the polynomial of the best trial's version."""

from __future__ import annotations

import json
from pathlib import Path


class Polynomial:
    """Predicts sum(w[d] * x**d) for every x of every row."""

    def __init__(self, model_path: str) -> None:
        model = json.loads((Path(model_path) / "model.json").read_text(encoding="utf-8"))
        self.w = [float(v) for v in model["w"]]

    def predict(self, X: list[list[float]], feature_names: list[str]) -> list[list[float]]:
        return [[sum(w * float(x) ** d for d, w in enumerate(self.w)) for x in row] for row in X]
