"""The quickstart's model server class: y = w*x + b, with w and b from TrainModel's version.

`ranvier serve LinearRegressor --model-path <version dir>` finds this class by its file name
(Myelin's MODEL_NAME convention), passes the version directory as `model_path`, and calls
`predict` for every POST /predict. Standard library only.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


class LinearRegressor:
    """Predicts w*x + b for every x of every row; counts the feedback it gets."""

    def __init__(self, model_path: str) -> None:
        params = json.loads((Path(model_path) / "model.json").read_text(encoding="utf-8"))
        self.w = float(params["w"])
        self.b = float(params["b"])
        self.rewards: list[float] = []

    def predict(self, X: list[list[float]], feature_names: list[str]) -> list[list[float]]:
        return [[self.w * float(x) + self.b for x in row] for row in X]

    def send_feedback(self, features: Any, feature_names: Any, reward: float, truth: Any) -> None:
        self.rewards.append(float(reward))

    def tags(self) -> dict[str, Any]:
        return {"w": self.w, "b": self.b}
