"""A linear model served by the deployer tests: prediction = X . weights + bias.

Its parameters come from `weights.json` in the model path (what train.py wrote), so each
trained version answers differently and a test can tell which version answered.
"""

import json
import os
from typing import Any


class LinearModel:
    """Predicts X . weights + bias; counts feedback."""

    def __init__(self, model_path: str) -> None:
        with open(os.path.join(model_path, "weights.json"), encoding="utf-8") as f:
            params = json.load(f)
        self.weights: list[float] = params["weights"]
        self.bias: float = params["bias"]
        self.feedback = 0

    def predict(self, X: list[list[float]], feature_names: list[str]) -> list[list[float]]:
        return [
            [sum(w * x for w, x in zip(self.weights, row, strict=False)) + self.bias] for row in X
        ]

    def send_feedback(self, features: Any, feature_names: Any, reward: float, truth: Any) -> None:
        self.feedback += 1
