"""A train task's hyper-parameter search: the search space and the optimiser's settings."""

from __future__ import annotations

import math
from typing import Literal

from pydantic import Field, model_validator

from sensors.spec.base import ScalarStr, SpecModel


class CategoricalRange(SpecModel):
    """Values of a categorical hyper-parameter."""

    values: list[ScalarStr] = Field(min_length=1, description="The allowed values (at least one).")
    default_value: ScalarStr | None = Field(
        None, description="The value of the first trial; one of `values`."
    )

    @model_validator(mode="after")
    def _default_is_a_value(self) -> CategoricalRange:
        if self.default_value is not None and self.default_value not in self.values:
            raise ValueError(
                f"default_value {self.default_value!r} is not one of the values {self.values}"
            )
        return self


def _number(value: str, what: str) -> float:
    try:
        number = float(value)
    except ValueError:
        raise ValueError(f"{what} {value!r} is not a number") from None
    if not math.isfinite(number):
        raise ValueError(f"{what} {value!r} is not a finite number")
    return number


class NumericalRange(SpecModel):
    """Range of a numerical hyper-parameter (Myelin writes the bounds as strings)."""

    lower: ScalarStr = Field(description="Lower bound (inclusive).")
    upper: ScalarStr = Field(description="Upper bound (inclusive).")
    default_value: ScalarStr | None = Field(
        None, description="The value of the first trial; inside [lower, upper]."
    )
    log: bool = Field(False, description="Sample on a log scale (needs lower > 0).")

    @model_validator(mode="after")
    def _bounds(self) -> NumericalRange:
        low, high = _number(self.lower, "lower"), _number(self.upper, "upper")
        if low > high:
            raise ValueError(f"lower {self.lower} is greater than upper {self.upper}; swap them")
        if self.log and low <= 0:
            raise ValueError(f"log: true needs lower > 0 (it is {self.lower})")
        if self.default_value is not None:
            default = _number(self.default_value, "default_value")
            if not low <= default <= high:
                raise ValueError(
                    f"default_value {self.default_value} is outside [{self.lower}, {self.upper}]"
                )
        return self

    @property
    def bounds(self) -> tuple[float, float]:
        """(lower, upper) as numbers."""
        return float(self.lower), float(self.upper)


HpParamType = Literal["Categorical", "UniformFloat", "UniformInteger"]


class HpParam(SpecModel):
    """One hyper-parameter to tune."""

    name: str = Field(description="Parameter name; trials get it as `--NAME VALUE`.")
    type: HpParamType = Field(
        description="Categorical (one of categorical.values), UniformFloat or UniformInteger "
        "(numerical.lower..upper)."
    )
    categorical: CategoricalRange | None = Field(None, description="Values (Categorical).")
    numerical: NumericalRange | None = Field(None, description="Range (Uniform*).")

    @model_validator(mode="after")
    def _range_fits_type(self) -> HpParam:
        if self.type == "Categorical":
            if self.categorical is None:
                raise ValueError(f"parameter {self.name!r} is Categorical: give categorical.values")
            if self.numerical is not None:
                raise ValueError(f"parameter {self.name!r} is Categorical: remove numerical")
            return self
        if self.numerical is None:
            raise ValueError(
                f"parameter {self.name!r} is {self.type}: give numerical.lower and upper"
            )
        if self.categorical is not None:
            raise ValueError(f"parameter {self.name!r} is {self.type}: remove categorical")
        if self.type == "UniformInteger":
            for what, value in (
                ("lower", self.numerical.lower),
                ("upper", self.numerical.upper),
                ("default_value", self.numerical.default_value),
            ):
                if value is not None and not float(value).is_integer():
                    raise ValueError(
                        f"parameter {self.name!r} is UniformInteger: {what} {value} is not "
                        "a whole number"
                    )
        return self


Optimiser = Literal["RandomSearch", "HyperBand", "BOHB"]


class HpTuning(SpecModel):
    """A hyper-parameter search: each trial is one run of the train task with its own settings."""

    concurrency: int = Field(1, ge=1, description="Trials run at the same time.")
    min_budget: float | None = Field(
        None,
        gt=0,
        alias="minBudget",
        description="Smallest budget a trial gets (HyperBand, BOHB); trials read it as "
        "`--budget` and decide what it means (epochs, samples, trees).",
    )
    max_budget: float | None = Field(
        None, gt=0, alias="maxBudget", description="Largest budget (HyperBand, BOHB)."
    )
    num_iteration: int = Field(
        10,
        ge=1,
        alias="numIteration",
        description="RandomSearch: the number of trials; HyperBand and BOHB: the number of "
        "successive-halving brackets.",
    )
    optimiser: Optimiser = Field(
        "HyperBand",
        description="RandomSearch (random sampling at maxBudget), HyperBand (random sampling, "
        "successive halving over budgets minBudget..maxBudget) or BOHB (a model-based TPE "
        "sampler with HyperBand's budgets).",
    )
    params: list[HpParam] = Field(min_length=1, description="The search space.")

    @model_validator(mode="after")
    def _budgets(self) -> HpTuning:
        if self.optimiser != "RandomSearch" and (
            self.min_budget is None or self.max_budget is None
        ):
            raise ValueError(f"optimiser {self.optimiser} needs minBudget and maxBudget")
        if (
            self.min_budget is not None
            and self.max_budget is not None
            and self.min_budget > self.max_budget
        ):
            raise ValueError(
                f"minBudget {self.min_budget:g} is greater than maxBudget {self.max_budget:g}"
            )
        names = [p.name for p in self.params]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ValueError(f"parameter {twice[0]!r} is given twice; names must be unique")
        return self
