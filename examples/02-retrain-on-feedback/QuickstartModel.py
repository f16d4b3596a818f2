"""The retrain example's model server class: y = w*x + b, and an accuracy gauge from feedback.

`ranvier serve QuickstartModel --model-path <version dir>` finds this class by its file name.
Every `POST /send-feedback` brings a reward (1 = the answer was right, 0 = wrong); the class
keeps the mean of the last WINDOW rewards and publishes it as the gauge `quickstart_accuracy`
through the serving SDK, so the model server's `/metrics` shows
`quickstart_accuracy{axon="quickstart-retrain",model="regressor",version="N"}`. That gauge is
what the Axon's Alert trigger reads. Before any feedback the gauge is absent: its value is
unknown, and nothing fires on unknown values.
"""

from __future__ import annotations

import json
from collections import deque
from pathlib import Path
from typing import Any

from ranvier.sdk import metrics

WINDOW = 20
"""How many recent rewards the accuracy is the mean of."""


class QuickstartModel:
    """Predicts w*x + b for every x of every row; accuracy = rolling mean of rewards."""

    def __init__(self, model_path: str) -> None:
        params = json.loads((Path(model_path) / "model.json").read_text(encoding="utf-8"))
        self.w = float(params["w"])
        self.b = float(params["b"])
        self.rewards: deque[float] = deque(maxlen=WINDOW)

    def predict(self, X: list[list[float]], feature_names: list[str]) -> list[list[float]]:
        return [[self.w * float(x) + self.b for x in row] for row in X]

    def send_feedback(self, features: Any, feature_names: Any, reward: float, truth: Any) -> None:
        self.rewards.append(float(reward))
        metrics.gauge("quickstart_accuracy", sum(self.rewards) / len(self.rewards))

    def tags(self) -> dict[str, Any]:
        return {"w": self.w, "b": self.b}
