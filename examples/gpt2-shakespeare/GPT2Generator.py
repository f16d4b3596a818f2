"""DeployGPT2: the model class `ranvier serve GPT2Generator --model-path DIR` serves.

The file is named like its class, as Myelin's `MODEL_NAME` convention asks. The model and its
tokenizer are loaded once, when the server constructs the class with the version directory
train.py wrote (`model_path`, else `$MODEL_PATH`).

- `predict(["To be, or not to be: that is the question"])` answers, for each prompt, the prompt
  followed by a sampled continuation: `max_new_tokens` tokens (temperature, top-k), and more
  tokens until at least `min_new_chars` characters were added, so even a tiny model says
  something. Text longer than the model's context is generated with a sliding window.
- `send_feedback(..., reward, ...)` keeps the last `feedback_window` rewards and sets the gauge
  `shakespeare_gpt2_deploy_accuracy` to their mean through the serving SDK, which is what the
  Axon's `PostDeploymentDecisionMaker` sensor watches (retrain when it drops below 0.90).
- `tags()` names the model version (the version directory's number) and where it started from.

Parameters: constructor arguments, else the environment: GPT2_MAX_NEW_TOKENS (64),
GPT2_TEMPERATURE (0.8), GPT2_TOP_K (40), GPT2_MIN_NEW_CHARS (50), GPT2_FEEDBACK_WINDOW (20),
GPT2_SEED (unset: a different sample each time).
"""

from __future__ import annotations

import collections
import json
import os
import threading
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import AutoTokenizer, GPT2LMHeadModel
from transformers.utils import logging as hf_logging

from ranvier.sdk import metrics

ACCURACY_GAUGE = "shakespeare_gpt2_deploy_accuracy"
MAX_ROUNDS = 8  # bound on extra generation rounds when the text is still too short


def _env(name: str, default: Any) -> Any:
    raw = os.environ.get(name, "").strip()
    return type(default)(raw) if raw else default


class GPT2Generator:
    """A GPT-2 that continues prompts and turns user rewards into an accuracy gauge."""

    def __init__(
        self,
        model_path: str | None = None,
        *,
        max_new_tokens: int | None = None,
        temperature: float | None = None,
        top_k: int | None = None,
        min_new_chars: int | None = None,
        feedback_window: int | None = None,
        seed: int | None = None,
    ) -> None:
        path = model_path or os.environ.get("MODEL_PATH")
        if not path:
            raise ValueError("no model directory: pass model_path or set MODEL_PATH")
        self.path = Path(path)
        self.max_new_tokens = max_new_tokens or _env("GPT2_MAX_NEW_TOKENS", 64)
        self.temperature = temperature if temperature is not None else _env("GPT2_TEMPERATURE", 0.8)
        self.top_k = top_k if top_k is not None else _env("GPT2_TOP_K", 40)
        self.min_new_chars = (
            min_new_chars if min_new_chars is not None else _env("GPT2_MIN_NEW_CHARS", 50)
        )
        window = feedback_window or _env("GPT2_FEEDBACK_WINDOW", 20)
        if self.max_new_tokens < 1 or self.temperature <= 0 or self.top_k < 0 or window < 1:
            raise ValueError(
                "need max_new_tokens >= 1, temperature > 0, top_k >= 0, feedback_window >= 1"
            )
        seed_value = seed if seed is not None else _env("GPT2_SEED", -1)
        self.generator = torch.Generator()
        if seed_value >= 0:
            self.generator.manual_seed(seed_value)
        else:
            self.generator.seed()

        hf_logging.disable_progress_bar()  # server logs are files: no progress bars in them
        self.tokenizer = AutoTokenizer.from_pretrained(str(self.path), local_files_only=True)
        self.model = GPT2LMHeadModel.from_pretrained(str(self.path), local_files_only=True)
        self.model.eval()
        self.context = int(self.model.config.n_positions)
        self.eos_id = self.tokenizer.eos_token_id
        self.rewards: collections.deque[float] = collections.deque(maxlen=window)
        self.lock = threading.Lock()
        self.version = self.path.name
        self.initialised_from = ""
        training = self.path / "training.json"
        if training.is_file():
            self.initialised_from = str(
                json.loads(training.read_text(encoding="utf-8")).get("initialised_from", "")
            )

    # -- generation ---------------------------------------------------------------------------

    def _sample(self, ids: list[int], count: int) -> list[int]:
        """`count` new token ids after `ids` (top-k, temperature; never end-of-text)."""
        out: list[int] = []
        with torch.no_grad():
            for _ in range(count):
                window = torch.tensor([(ids + out)[-self.context :]], dtype=torch.long)
                logits = self.model(input_ids=window).logits[0, -1, :].float()
                if self.eos_id is not None:
                    logits[self.eos_id] = float("-inf")  # a continuation, not an ending
                logits = logits / self.temperature
                if 0 < self.top_k < logits.numel():
                    kth = torch.topk(logits, self.top_k).values[-1]
                    logits = logits.masked_fill(logits < kth, float("-inf"))
                probs = torch.softmax(logits, dim=-1)
                out.append(int(torch.multinomial(probs, 1, generator=self.generator)))
        return out

    def continue_text(self, prompt: str) -> str:
        """`prompt` followed by a sampled continuation of at least `min_new_chars` characters."""
        ids = self.tokenizer(prompt, add_special_tokens=False)["input_ids"]
        if not ids:
            ids = [self.eos_id if self.eos_id is not None else 0]
        new: list[int] = []
        text = ""
        for _ in range(MAX_ROUNDS):
            new += self._sample(ids + new, self.max_new_tokens)
            text = self.tokenizer.decode(new, skip_special_tokens=True)
            if len(text) >= self.min_new_chars:
                break
        return prompt + text

    def predict(self, X: Any, feature_names: list[str]) -> list[str]:
        """Each prompt of `X` (an array of strings) with its continuation."""
        prompts = np.asarray(X, dtype=object).ravel().tolist()
        return [self.continue_text(str(prompt)) for prompt in prompts]

    # -- feedback -----------------------------------------------------------------------------

    def send_feedback(
        self,
        features: Any,
        feature_names: list[str],
        reward: float | None,
        truth: Any,
    ) -> list[Any]:
        """Record a reward; the gauge is the mean of the last `feedback_window` rewards."""
        if reward is None:
            return []
        with self.lock:
            self.rewards.append(float(reward))
            accuracy = sum(self.rewards) / len(self.rewards)
        metrics.gauge(ACCURACY_GAUGE, accuracy)
        return []

    def tags(self) -> dict[str, str]:
        """The model version (its directory's name) and where its training started."""
        return {"model_version": self.version, "initialised_from": self.initialised_from}
