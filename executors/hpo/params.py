"""How a trial gets its configuration: the two ways Myelin hands it over (pure).

A trial is one run of the task's command with `--config_id ID --budget B --NAME VALUE` appended
to its argv and `HPO_PARAMS` (base64 JSON `{"config-id", "budget", "hpo-conf"}`) and
`LOSS_METRIC` in its env. The study controller puts the configuration in the trial's action
request under `HPO_PARAM`; every backend reads it back with `handover`.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping
from typing import Any, Final

from events.model import ActionRequest
from sensors.spec import Axon

HPO_PARAM: Final = "hpo"
"""The key of an action request's params that makes it a trial (its configuration)."""


def format_value(value: Any) -> str:
    """A parameter or budget as a trial reads it on its command line: 3.0 -> "3", 0.1 -> "0.1"."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def trial_argv(config_id: str, budget: float | None, params: Mapping[str, Any]) -> list[str]:
    """`--config_id ID [--budget B] --NAME VALUE...`: appended to the task's command."""
    argv = ["--config_id", config_id]
    if budget is not None:
        argv += ["--budget", format_value(budget)]
    for name, value in params.items():
        argv += [f"--{name}", format_value(value)]
    return argv


def trial_env(
    config_id: str, budget: float | None, params: Mapping[str, Any], loss_metric: str | None
) -> dict[str, str]:
    """`HPO_PARAMS` (base64 JSON `{"config-id", "budget", "hpo-conf"}`) and `LOSS_METRIC`."""
    conf = {"config-id": config_id, "budget": budget, "hpo-conf": dict(params)}
    env = {"HPO_PARAMS": base64.b64encode(json.dumps(conf).encode("utf-8")).decode("ascii")}
    if loss_metric:
        env["LOSS_METRIC"] = loss_metric
    return env


def handover(request: ActionRequest) -> tuple[list[str], dict[str, str]] | None:
    """The extra argv and env of a trial request (None for any other request)."""
    hpo = request.params.get(HPO_PARAM)
    if not isinstance(hpo, dict):
        return None
    config_id = str(hpo.get("config_id", ""))
    budget = hpo.get("budget")
    budget = float(budget) if isinstance(budget, int | float) else None
    given = hpo.get("params")
    params: dict[str, Any] = given if isinstance(given, dict) else {}
    loss = hpo.get("loss_metric")
    return (
        trial_argv(config_id, budget, params),
        trial_env(config_id, budget, params, loss if isinstance(loss, str) else None),
    )


def is_study(axon: Axon, request: ActionRequest) -> bool:
    """Whether a request is a whole study (a trainer action on a task with hpTuning)."""
    if request.kind != "trainer" or HPO_PARAM in request.params:
        return False
    task = axon.spec.task(request.task)
    return task is not None and task.train is not None and task.train.hp_tuning is not None
