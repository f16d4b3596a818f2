"""Workflow parameters: `{{workflow.parameters.X}}` in an Axon's strings, replaced by value.

Substitution runs on the plain data before validation, so a parameter may stand wherever a
string may; an unknown X is an issue at the template's own column.
"""

from __future__ import annotations

import re
from typing import Any

import yaml

from sensors.checks import Loc, did_you_mean
from sensors.loader.documents import Document, offset_in

_PARAM = re.compile(r"\{\{\s*workflow\.parameters\.([^\s{}]*)\s*\}\}")


def substitute(doc: Document, data: dict[str, Any]) -> None:
    """Replace {{workflow.parameters.X}} in string values; unknown X is an issue there."""
    params = _parameters(data)
    for loc, node in doc.templated:
        if loc[:2] == ("spec", "parameters"):
            continue
        container: Any = data
        for segment in loc[:-1]:
            container = container[segment]
        text = container[loc[-1]]

        def replace(match: re.Match[str], loc: Loc = loc, node: yaml.ScalarNode = node) -> str:
            name = match.group(1)
            if name in params:
                return params[name]
            doc.add(
                node.start_mark,
                loc,
                f"unknown parameter {name!r}{did_you_mean(name, params)}; define it in "
                "spec.parameters",
                offset=offset_in(node, match.start()),
            )
            return match.group(0)

        container[loc[-1]] = _PARAM.sub(replace, text)


def _parameters(data: dict[str, Any]) -> dict[str, str]:
    spec = data.get("spec")
    params = spec.get("parameters") if isinstance(spec, dict) else None
    result: dict[str, str] = {}
    if isinstance(params, list):
        for param in params:
            if isinstance(param, dict) and isinstance(param.get("name"), str):
                value = param.get("value")
                if isinstance(value, bool):
                    value = "true" if value else "false"
                result[param["name"]] = "" if value is None else str(value)
    return result
