"""Read an Axon file into `sensors.spec.Axon`, or explain every mistake with file:line:col.

Users write Axons by hand, so errors must point at the exact YAML node and say what to do.
PyYAML's node tree keeps positions that plain `yaml.safe_load` throws away; this module
composes the tree with a safe loader, turns it into plain data while remembering where each
value and key came from, and maps pydantic's error locations and the cross-reference
findings of `sensors.checks` back to those positions. It refuses what a safe loader alone
would accept but we should not: oversized files, duplicate keys, alias bombs, deep nesting,
several documents, non-UTF-8 bytes.
"""

from __future__ import annotations

import re
import types
import typing
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar, Union

import yaml
from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails

from events.errors import RanvierError
from sensors.checks import ConditionRef, Finding, Loc, check_axon, conditions, did_you_mean
from sensors.expr import ExprError, parse_condition, validate_for_scrape
from sensors.spec import (
    TRIGGER_TYPES,
    UNION_TAGS,
    Artifact,
    Axon,
    AxonSpec,
    ContainerTask,
    Metadata,
    Parameter,
    Sensor,
    Task,
)

MAX_BYTES = 1024 * 1024
MAX_NODES = 100_000  # after alias expansion; a real Axon has a few hundred
MAX_ALIASES = 1_000
MAX_DEPTH = 64

_M = TypeVar("_M", bound=BaseModel)
_PARAM = re.compile(r"\{\{\s*workflow\.parameters\.([^\s{}]*)\s*\}\}")


@dataclass(frozen=True)
class SpecIssue:
    """One mistake in an Axon file, with its 1-based position (0 when it has none)."""

    file: str
    line: int
    column: int
    path: str
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}:{self.column}" if self.line else self.file
        what = f"{self.path}: {self.message}" if self.path else self.message
        return f"{where}: error: {what}"


class SpecError(RanvierError, ValueError):
    """An Axon file is invalid; `issues` holds every mistake found, in file order."""

    def __init__(self, issues: list[SpecIssue]) -> None:
        self.issues = sorted(issues, key=lambda i: (i.file, i.line, i.column))
        first = str(self.issues[0]) if self.issues else "invalid Axon"
        more = len(self.issues) - 1
        super().__init__(
            first + (f" (and {more} more)" if more else ""),
            hint=None,
        )


class _Refused(Exception):
    """Internal: the document must not be read any further."""

    def __init__(self, message: str, mark: Any) -> None:
        super().__init__(message)
        self.message = message
        self.mark = mark


# ---------------------------------------------------------------------------------------------
# Reading


def load_axon(path: Path) -> Axon:
    """Read and validate the Axon file at `path`; raises SpecError with every issue."""
    name = str(path)
    try:
        size = path.stat().st_size
        if size > MAX_BYTES:
            raise SpecError([_issue(name, None, "", _too_big(size))])
        data = path.read_bytes()
    except FileNotFoundError:
        raise SpecError([_issue(name, None, "", "no such file")]) from None
    except IsADirectoryError:
        raise SpecError([_issue(name, None, "", "is a directory, not an Axon file")]) from None
    except PermissionError:
        raise SpecError([_issue(name, None, "", "permission denied")]) from None
    except OSError as exc:
        raise SpecError([_issue(name, None, "", f"cannot read: {exc.strerror}")]) from None
    return load_axon_bytes(data, name)


def load_axon_bytes(data: bytes, filename: str = "<bytes>") -> Axon:
    """Decode `data` as UTF-8 (a BOM is allowed) and validate it as an Axon."""
    if len(data) > MAX_BYTES:
        raise SpecError([_issue(filename, None, "", _too_big(len(data)))])
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        before = data[: exc.start]
        line = before.count(b"\n") + 1
        column = exc.start - (before.rfind(b"\n") + 1) + 1
        raise SpecError(
            [
                SpecIssue(
                    filename,
                    line,
                    column,
                    "",
                    f"not UTF-8 (byte 0x{data[exc.start]:02x}); save the file as UTF-8",
                )
            ]
        ) from None
    return load_axon_text(text, filename)


def load_axon_text(text: str, filename: str = "<string>") -> Axon:
    """Validate the YAML `text` as an Axon; raises SpecError with every issue."""
    if len(text) > MAX_BYTES or len(text.encode("utf-8", "surrogatepass")) > MAX_BYTES:
        raise SpecError(
            [_issue(filename, None, "", _too_big(len(text.encode("utf-8", "replace"))))]
        )
    doc = _Document(filename)
    root = doc.compose(text)
    data = doc.convert(root)
    doc.substitute(data)
    try:
        axon = Axon.model_validate(data)
    except ValidationError as exc:
        for error in exc.errors(include_url=False):
            doc.add_validation_error(error, data)
        salvaged = _salvage(data)
        if salvaged is not None:  # still report the cross-reference mistakes of the valid parts
            partial, dropped, unknown = salvaged
            for finding in check_axon(partial, unknown):
                if not any(finding.loc[: len(prefix)] == prefix for prefix in dropped):
                    doc.add_finding(finding)
            for ref in conditions(partial):
                doc.check_condition(ref, scrape=_raw_source(data) == "scrape")
        raise SpecError(doc.issues) from None
    for finding in check_axon(axon):
        doc.add_finding(finding)
    metrics = axon.spec.metrics
    scrape = metrics is None or metrics.source == "scrape"
    for ref in conditions(axon):
        doc.check_condition(ref, scrape=scrape)
    if doc.issues:
        raise SpecError(doc.issues)
    return axon


def _too_big(size: int) -> str:
    return f"file is {size} bytes; Axon files are limited to {MAX_BYTES} bytes (1 MiB)"


def _issue(
    file: str, mark: yaml.Mark | None, path: str, message: str, offset: int = 0
) -> SpecIssue:
    if mark is None:
        return SpecIssue(file, 0, 0, path, message)
    return SpecIssue(file, mark.line + 1, mark.column + 1 + offset, path, message)


# ---------------------------------------------------------------------------------------------
# Composing and converting


class _Loader(yaml.SafeLoader):
    """Safe loader that counts aliases and nesting while composing, to refuse bombs early."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self.aliases = 0
        self.depth = 0

    def compose_node(self, parent: yaml.Node | None, index: int) -> yaml.Node | None:
        event = self.peek_event()  # type: ignore[no-untyped-call]  # PyYAML is untyped here
        if isinstance(event, yaml.AliasEvent):
            self.aliases += 1
            if self.aliases > MAX_ALIASES:
                raise _Refused(
                    f"more than {MAX_ALIASES} aliases; refusing a possible alias bomb",
                    event.start_mark,
                )
        self.depth += 1
        try:
            if self.depth > MAX_DEPTH:
                raise _Refused(f"nested deeper than {MAX_DEPTH} levels", event.start_mark)
            return super().compose_node(parent, index)
        finally:
            self.depth -= 1


_MERGE_TAG = "tag:yaml.org,2002:merge"
_SEQ_TAG = "tag:yaml.org,2002:seq"
_MAP_TAG = "tag:yaml.org,2002:map"


def _tag_refused(tag: str) -> str:
    return f"YAML tag {tag!r} is not allowed; ranvier reads safe YAML only"


class _Document:
    """The YAML of one file: its data, where each value and key sits, and the issues found."""

    def __init__(self, filename: str) -> None:
        self.filename = filename
        self.values: dict[Loc, yaml.Node] = {}
        self.keys: dict[Loc, yaml.Node] = {}
        self.issues: list[SpecIssue] = []
        self.templated: list[tuple[Loc, yaml.ScalarNode]] = []
        self.root: yaml.Node | None = None
        self._loader: _Loader | None = None
        self._count = 0

    # -- composing ---------------------------------------------------------------------------

    def compose(self, text: str) -> yaml.MappingNode:
        try:
            loader = _Loader(text)
            self._loader = loader
            node = loader.get_single_node()
        except _Refused as exc:
            raise self._fatal(exc.mark, exc.message) from None
        except yaml.composer.ComposerError as exc:
            if exc.problem and "another document" in exc.problem:
                raise self._fatal(
                    exc.problem_mark,
                    "several YAML documents in one file; put one Axon per file",
                ) from None
            raise self._fatal(exc.problem_mark, _yaml_message(exc)) from None
        except yaml.MarkedYAMLError as exc:
            raise self._fatal(exc.problem_mark, _yaml_message(exc)) from None
        except yaml.reader.ReaderError as exc:
            line, column = _position(text, exc.position)
            raise SpecError(
                [
                    SpecIssue(
                        self.filename,
                        line,
                        column,
                        "",
                        f"character U+{exc.character:04X} is not allowed in YAML; remove it",
                    )
                ]
            ) from None
        except yaml.YAMLError as exc:  # pragma: no cover  # every PyYAML error is one of the above
            raise self._fatal(None, f"invalid YAML: {exc}") from None
        if node is None:
            raise self._fatal(None, "the file is empty; expected an Axon (apiVersion, kind, ...)")
        if not isinstance(node, yaml.MappingNode):
            raise self._fatal(
                node.start_mark,
                f"expected a mapping (apiVersion, kind, metadata, spec), found {_describe(node)}",
            )
        self.root = node
        return node

    def _fatal(self, mark: yaml.Mark | None, message: str) -> SpecError:
        return SpecError([_issue(self.filename, mark, "", message)])

    # -- converting --------------------------------------------------------------------------

    def convert(self, root: yaml.MappingNode) -> dict[str, Any]:
        """Plain data for `root`, recording positions; refuses bombs and recursive aliases."""
        try:
            data = self._value(root, (), frozenset())
        except _Refused as exc:
            raise self._fatal(exc.mark, exc.message) from None
        if not isinstance(data, dict):  # a tagged root (`!!str` on the mapping) was refused
            raise SpecError(self.issues)
        return data

    def _value(self, node: yaml.Node, loc: Loc, stack: frozenset[int]) -> Any:
        self._count += 1
        if self._count > MAX_NODES:
            raise _Refused(
                f"the document expands to more than {MAX_NODES} nodes; refusing a possible "
                "alias bomb",
                node.start_mark,
            )
        if id(node) in stack:
            raise _Refused("an alias refers to its own ancestor (recursive YAML)", node.start_mark)
        self.values[loc] = node
        if isinstance(node, yaml.ScalarNode):
            return self._scalar(node, loc)
        if node.tag not in (_SEQ_TAG, _MAP_TAG):
            self._add(node.start_mark, loc, _tag_refused(node.tag))
            return None
        inner = stack | {id(node)}
        if isinstance(node, yaml.SequenceNode):
            return [self._value(child, (*loc, i), inner) for i, child in enumerate(node.value)]
        assert isinstance(node, yaml.MappingNode)  # the three YAML node kinds
        return self._mapping(node, loc, inner)

    def _scalar(self, node: yaml.ScalarNode, loc: Loc) -> Any:
        assert self._loader is not None  # set by compose()
        try:
            value = self._loader.construct_object(node, deep=True)
        except yaml.constructor.ConstructorError as exc:
            message = _yaml_message(exc)
            if "could not determine a constructor" in message:
                message = _tag_refused(node.tag)
            self._add(node.start_mark, loc, message)
            return None
        if isinstance(value, str) and "{{" in value:
            self.templated.append((loc, node))
        return value

    def _mapping(self, node: yaml.MappingNode, loc: Loc, stack: frozenset[int]) -> dict[str, Any]:
        result: dict[str, Any] = {}
        seen: dict[str, yaml.Node] = {}
        merged: list[tuple[yaml.Node, yaml.Node]] = []
        for key_node, value_node in node.value:
            if key_node.tag == _MERGE_TAG:
                merged += self._merge_sources(value_node)
                continue
            if not isinstance(key_node, yaml.ScalarNode):
                self._add(key_node.start_mark, loc, "keys must be plain strings")
                continue
            key = str(key_node.value)
            if key in seen:
                first = seen[key].start_mark
                self._add(
                    key_node.start_mark,
                    (*loc, key),
                    f"duplicate key {key!r} (first at line {first.line + 1}); remove one of them",
                )
                continue
            seen[key] = key_node
            self.keys[(*loc, key)] = key_node
            result[key] = self._value(value_node, (*loc, key), stack)
        for key_node, value_node in merged:  # explicit keys win over merged ones
            key = str(key_node.value)
            if isinstance(key_node, yaml.ScalarNode) and key not in result:
                self.keys[(*loc, key)] = key_node
                result[key] = self._value(value_node, (*loc, key), stack)
        return result

    def _merge_sources(self, node: yaml.Node) -> list[tuple[yaml.Node, yaml.Node]]:
        sources = node.value if isinstance(node, yaml.SequenceNode) else [node]
        pairs: list[tuple[yaml.Node, yaml.Node]] = []
        for source in sources:
            if isinstance(source, yaml.MappingNode):
                pairs += [p for p in source.value if p[0].tag != _MERGE_TAG]
            else:
                self._add(
                    source.start_mark, (), "a merge key (<<) needs a mapping or a list of them"
                )
        return pairs

    # -- parameters --------------------------------------------------------------------------

    def substitute(self, data: dict[str, Any]) -> None:
        """Replace {{workflow.parameters.X}} in string values; unknown X is an issue there."""
        params = _parameters(data)
        for loc, node in self.templated:
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
                self._add(
                    node.start_mark,
                    loc,
                    f"unknown parameter {name!r}{did_you_mean(name, params)}; define it in "
                    "spec.parameters",
                    offset=_offset_in(node, match.start()),
                )
                return match.group(0)

            container[loc[-1]] = _PARAM.sub(replace, text)

    # -- issues ------------------------------------------------------------------------------

    def _add(self, mark: yaml.Mark | None, loc: Loc, message: str, offset: int = 0) -> None:
        self.issues.append(_issue(self.filename, mark, format_loc(loc), message, offset))

    def _node_for(self, loc: Loc, at: Literal["value", "key"]) -> yaml.Node | None:
        """The node at `loc` (its key when asked), else the nearest enclosing one."""
        if at == "key" and loc in self.keys:
            return self.keys[loc]
        for end in range(len(loc), -1, -1):
            node = self.values.get(loc[:end])
            if node is not None:
                return node
        return self.root

    def add_finding(self, finding: Finding) -> None:
        node = self._node_for(finding.loc, finding.at)
        offset = 0
        if finding.offset is not None and isinstance(node, yaml.ScalarNode):
            offset = _offset_in(node, finding.offset)
        self._add(node.start_mark if node else None, finding.loc, finding.message, offset)

    def check_condition(self, ref: ConditionRef, *, scrape: bool) -> None:
        """Parse a condition; with the scrape source, also refuse what it cannot evaluate."""
        try:
            condition = parse_condition(ref.text)
        except ExprError as exc:
            problems = [exc]
        else:
            problems = validate_for_scrape(condition) if scrape else []
        for problem in problems:
            offset = max(problem.column - 1, 0)
            self.add_finding(Finding(ref.loc, problem.message, offset=offset))

    def add_validation_error(self, error: ErrorDetails, data: dict[str, Any]) -> None:
        raw = error["loc"]
        loc = _strip_tags(raw)
        kind = error["type"]
        at: Literal["value", "key"] = "value"
        message = error["msg"]
        if kind == "missing":
            message = f"missing required field {loc[-1]!r}"
            loc_for_node = loc[:-1]
        elif kind == "extra_forbidden":
            at = "key"
            allowed = _allowed_keys(raw[:-1])
            key = str(loc[-1])
            hint = did_you_mean(key, allowed)
            message = f"unknown field {key!r}" + (
                hint if hint else f"; allowed here: {', '.join(allowed)}" if allowed else ""
            )
            loc_for_node = loc
        else:
            loc_for_node = loc
            message = _friendly(error, loc, data)
        node = self._node_for(loc_for_node, at)
        if kind == "union_tag_invalid":
            node = self.values.get((*loc, "type"), node)
        self._add(node.start_mark if node else None, loc, message)


# ---------------------------------------------------------------------------------------------
# Salvaging: the valid parts of an invalid file, so its cross-references are checked too


def _salvage(data: dict[str, Any]) -> tuple[Axon, list[Loc], frozenset[str]] | None:
    """An Axon of the parts of `data` that validate, with placeholders for the others.

    Returns the partial Axon, the locations of placeholders (findings under them are noise)
    and the names of tasks whose kind is unknown because their definition is invalid.
    """
    spec = data.get("spec")
    if not isinstance(spec, dict):
        return None
    dropped: list[Loc] = []
    unknown: set[str] = set()

    def items(key: str, model: type[_M], placeholder: Callable[[Any, int], _M]) -> list[_M]:
        raw = spec.get(key)
        if not isinstance(raw, list):
            if key in spec:
                dropped.append(("spec", key))
            return []
        out: list[_M] = []
        for i, item in enumerate(raw):
            try:
                out.append(model.model_validate(item))
            except ValidationError:
                dropped.append(("spec", key, i))
                name = item.get("name") if isinstance(item, dict) else None
                out.append(placeholder(name if isinstance(name, str) else None, i))
        return out

    def task(name: str | None, i: int) -> Task:
        if name is not None:
            unknown.add(name)
        return Task.model_construct(
            name=name if name is not None else f"#{i}", container=ContainerTask.model_construct()
        )

    try:
        metadata = Metadata.model_validate(data.get("metadata"))
    except ValidationError:
        metadata = Metadata.model_construct(name="placeholder", namespace="default")
        dropped.append(("metadata",))
    partial_spec = AxonSpec.model_construct(
        tasks=items("tasks", Task, task),
        sensors=items(
            "sensors",
            Sensor,
            lambda name, i: Sensor.model_construct(
                name=name or f"#{i}", triggers=[], conditions=[], tasks=[]
            ),
        ),
        artifacts=items(
            "artifacts", Artifact, lambda name, i: Artifact.model_construct(name=name or f"#{i}")
        ),
        parameters=items(
            "parameters",
            Parameter,
            lambda name, i: Parameter.model_construct(name=name or f"#{i}", value=""),
        ),
        volume=None,
        volume_claim_template=None,
        metrics=None,
    )
    dropped += [("spec", "volume"), ("spec", "volumeClaimTemplate")]
    axon = Axon.model_construct(
        api_version="ranvier.dev/v1alpha1", kind="Axon", metadata=metadata, spec=partial_spec
    )
    return axon, dropped, frozenset(unknown)


# ---------------------------------------------------------------------------------------------
# Helpers


def format_loc(loc: Loc) -> str:
    """`sensors[1].triggers[0].task` for ("spec", "sensors", 1, "triggers", 0, "task")."""
    if loc[:1] == ("spec",) and len(loc) > 1:
        loc = loc[1:]
    out = ""
    for segment in loc:
        if isinstance(segment, int):
            out += f"[{segment}]"
        else:
            out += f".{segment}" if out else str(segment)
    return out


def _strip_tags(loc: tuple[int | str, ...]) -> Loc:
    """Drop the union tags pydantic inserts after a list index ("Alert", "action", ...)."""
    out: list[int | str] = []
    for i, segment in enumerate(loc):
        if i and isinstance(loc[i - 1], int) and segment in UNION_TAGS:
            continue
        out.append(segment)
    return tuple(out)


def _raw_source(data: dict[str, Any]) -> object:
    spec = data.get("spec")
    metrics = spec.get("metrics") if isinstance(spec, dict) else None
    return metrics.get("source", "scrape") if isinstance(metrics, dict) else "scrape"


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


def _offset_in(node: yaml.ScalarNode, index: int) -> int:
    """Column offset of character `index` of a scalar's value from the node's start."""
    if node.start_mark.line != node.end_mark.line:
        return 0  # multi-line scalars: point at the scalar itself
    if node.style in ('"', "'"):
        return index + 1
    if node.style in ("|", ">"):
        return 0
    return index


def _position(text: str, index: int) -> tuple[int, int]:
    before = text[:index]
    return before.count("\n") + 1, index - (before.rfind("\n") + 1) + 1


def _describe(node: yaml.Node) -> str:
    if isinstance(node, yaml.SequenceNode):
        return "a list"
    if isinstance(node, yaml.ScalarNode):
        return f"the scalar {node.value!r}" if node.value else "an empty value"
    return "a mapping"  # pragma: no cover


def _yaml_message(exc: yaml.MarkedYAMLError) -> str:
    problem = exc.problem or str(exc)
    context = f" {exc.context}" if exc.context else ""
    hint = " (check the indentation)" if "expected <block end>" in problem else ""
    return f"invalid YAML: {problem}{context}{hint}".replace("\n", " ")


def _friendly(error: ErrorDetails, loc: Loc, data: dict[str, Any]) -> str:
    kind = error["type"]
    message = error["msg"]
    ctx = error.get("ctx") or {}
    if kind == "value_error":
        return re.sub(r"^Value error, ", "", message)
    if kind == "union_tag_invalid":
        tag = ctx.get("tag", "")
        if "triggers" in loc:
            hint = did_you_mean(str(tag), TRIGGER_TYPES)
            return f"unknown trigger type {tag!r}{hint}; use one of {', '.join(TRIGGER_TYPES)}"
        return message
    if kind == "union_tag_not_found":
        return f"missing required field 'type' (one of {', '.join(TRIGGER_TYPES)})"
    if kind == "literal_error":
        expected = re.findall(r"'([^']*)'", str(ctx.get("expected", "")))
        value = error.get("input")
        hint = did_you_mean(str(value), expected) if isinstance(value, str) else ""
        return f"{value!r} is not allowed{hint}; use one of {', '.join(expected)}"
    if kind in {"model_type", "model_attributes_type"}:
        return f"expected a mapping, found {_kind_of(error.get('input'))}"
    if kind == "list_type":
        return f"expected a list, found {_kind_of(error.get('input'))}"
    if kind == "dict_type":
        return f"expected a mapping, found {_kind_of(error.get('input'))}"
    if kind == "string_type":
        return f"expected a string, found {_kind_of(error.get('input'))}"
    if kind in {"greater_than_equal", "less_than_equal", "greater_than", "less_than"}:
        bound = {"greater_than_equal": ">=", "less_than_equal": "<=", "greater_than": ">"}
        op = bound.get(kind, "<")
        limit = next(iter(ctx.values()), "")
        return f"{error.get('input')!r} is out of range; it must be {op} {limit}"
    if kind == "too_short" and isinstance(error.get("input"), list):
        return f"needs at least {ctx.get('min_length', 1)} item(s)"
    return message


def _kind_of(value: object) -> str:
    if value is None:
        return "nothing (null)"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, bool):
        return f"the boolean {str(value).lower()}"
    if isinstance(value, int | float):
        return f"the number {value}"
    if isinstance(value, str):
        return f"the string {value!r}"
    return type(value).__name__


# Walking the model types along an error location, to list the keys allowed there.


def _members(tp: Any) -> Iterator[Any]:
    """The concrete types behind Annotated / Optional / unions."""
    origin = typing.get_origin(tp)
    if origin is typing.Annotated:
        yield from _members(typing.get_args(tp)[0])
    elif origin is Union or isinstance(tp, types.UnionType):
        for arg in typing.get_args(tp):
            yield from _members(arg)
    elif tp is not type(None):
        yield tp


def _model_at(loc: tuple[int | str, ...]) -> type[BaseModel] | None:
    """The model class at a pydantic error location (with its union tags), if one fits."""
    candidates: list[Any] = [Axon]
    for i, segment in enumerate(loc):
        members = [m for c in candidates for m in _members(c)]
        if i and isinstance(loc[i - 1], int) and segment in UNION_TAGS:
            candidates = [m for m in members if _has_tag(m, str(segment))]
            continue
        nxt: list[Any] = []
        for tp in members:
            origin = typing.get_origin(tp)
            if isinstance(segment, int) and origin in (list, tuple):
                nxt.append(typing.get_args(tp)[0])
            elif isinstance(segment, str) and isinstance(tp, type) and issubclass(tp, BaseModel):
                for name, field in tp.model_fields.items():
                    if segment in (name, field.alias):
                        nxt.append(field.annotation)
        candidates = nxt
    models = [
        m
        for c in candidates
        for m in _members(c)
        if isinstance(m, type) and issubclass(m, BaseModel)
    ]
    return models[0] if len(models) == 1 else None


def _has_tag(tp: Any, tag: str) -> bool:
    if tag == "group":
        return typing.get_origin(tp) in (list, tuple)
    if not (isinstance(tp, type) and issubclass(tp, BaseModel)):
        return False
    if tag == "action":
        return True
    field = tp.model_fields.get("type")
    return field is not None and tag in typing.get_args(field.annotation)


def _allowed_keys(loc: tuple[int | str, ...]) -> list[str]:
    model = _model_at(loc)
    if model is None:
        return []
    return [field.alias or name for name, field in model.model_fields.items()]
