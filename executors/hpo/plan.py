"""The plan of a study (pure): its budget schedule, its search space, and who goes on.

- RandomSearch: one stage of `numIteration` configurations, each at `maxBudget` (or with no
  budget when none is given);
- HyperBand and BOHB: HpBandSter's schedule: `numIteration` successive-halving brackets over
  budgets minBudget..maxBudget (factor `ETA`); each bracket samples its configurations at its
  smallest budget and promotes the best third to the next budget, up to maxBudget.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Final

from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)

from sensors.spec import HpParam, HpTuning

ETA: Final = 3
"""HyperBand's reduction factor: each rung keeps the best third at three times the budget."""


@dataclass(frozen=True)
class Stage:
    """A rung of the schedule: `count` trials at `budget`; stage 0 of a bracket samples new
    configurations, a later stage runs the best `count` of the stage before at a larger budget."""

    bracket: int
    rung: int
    count: int
    budget: float | None


def schedule(hp: HpTuning) -> list[list[Stage]]:
    """The brackets of a study, each a list of stages in order (see the module docstring)."""
    if hp.optimiser == "RandomSearch":
        return [[Stage(0, 0, hp.num_iteration, hp.max_budget)]]
    low, high = float(hp.min_budget or 1.0), float(hp.max_budget or 1.0)
    s_max = math.floor(math.log(high / low) / math.log(ETA) + 1e-9)
    brackets = []
    for i in range(hp.num_iteration):
        s = s_max - (i % (s_max + 1))
        n = math.ceil((s_max + 1) / (s + 1) * ETA**s)
        stages = []
        for k in range(s + 1):
            count = max(math.floor(n * ETA ** (-k)), 1)
            budget = high * ETA ** (k - s)
            stages.append(Stage(i, k, count, round(budget, 6)))
        brackets.append(stages)
    return brackets


def planned_trials(hp: HpTuning) -> int:
    """How many trial runs the study makes in all."""
    return sum(stage.count for bracket in schedule(hp) for stage in bracket)


def distributions(params: Sequence[HpParam]) -> dict[str, BaseDistribution]:
    """optuna's distribution for each parameter of the search space."""
    out: dict[str, BaseDistribution] = {}
    for p in params:
        if p.type == "Categorical":
            assert p.categorical is not None  # HpParam checks it
            out[p.name] = CategoricalDistribution(list(p.categorical.values))
            continue
        assert p.numerical is not None
        low, high = p.numerical.bounds
        if p.type == "UniformInteger":
            out[p.name] = IntDistribution(int(low), int(high), log=p.numerical.log)
        else:
            out[p.name] = FloatDistribution(low, high, log=p.numerical.log)
    return out


def defaults(params: Sequence[HpParam]) -> dict[str, Any]:
    """The `default_value`s of the search space: the configuration of the first trial."""
    out: dict[str, Any] = {}
    for p in params:
        if p.categorical is not None and p.categorical.default_value is not None:
            out[p.name] = p.categorical.default_value
        elif p.numerical is not None and p.numerical.default_value is not None:
            value = float(p.numerical.default_value)
            out[p.name] = int(value) if p.type == "UniformInteger" else value
    return out


def pick(results: Iterable[tuple[int, float | None]], count: int, greater: bool) -> list[int]:
    """The `count` best trial numbers by loss (trials without a loss never go on)."""
    scored = [(loss, number) for number, loss in results if loss is not None]
    scored.sort(key=lambda item: ((-item[0] if greater else item[0]), item[1]))
    return [number for _, number in scored[:count]]
