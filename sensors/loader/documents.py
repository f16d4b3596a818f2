"""An Axon file's YAML as plain data that remembers where each value and key came from.

PyYAML's node tree keeps the positions that plain `yaml.safe_load` throws away: `Document`
composes the tree with a safe loader and converts it to plain data, recording the node of
every location so later issues can point at file:line:col. It refuses what a safe loader
alone would accept but we should not: duplicate keys, alias bombs, deep nesting, unsafe tags,
several documents.
"""

from __future__ import annotations

from typing import Any, Literal

import yaml

from sensors.checks import Loc
from sensors.loader.issues import SpecError, SpecIssue, format_loc, issue_at

MAX_NODES = 100_000  # after alias expansion; a real Axon has a few hundred
MAX_ALIASES = 1_000
MAX_DEPTH = 64


class _Refused(Exception):
    """Internal: the document must not be read any further."""

    def __init__(self, message: str, mark: Any) -> None:
        super().__init__(message)
        self.message = message
        self.mark = mark


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


class Document:
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
        return SpecError([issue_at(self.filename, mark, "", message)])

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
            self.add(node.start_mark, loc, _tag_refused(node.tag))
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
            self.add(node.start_mark, loc, message)
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
                self.add(key_node.start_mark, loc, "keys must be plain strings")
                continue
            key = str(key_node.value)
            if key in seen:
                first = seen[key].start_mark
                self.add(
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
                self.add(
                    source.start_mark, (), "a merge key (<<) needs a mapping or a list of them"
                )
        return pairs

    # -- issues ------------------------------------------------------------------------------

    def add(self, mark: yaml.Mark | None, loc: Loc, message: str, offset: int = 0) -> None:
        """Record an issue at `mark`, `offset` columns right, under the path of `loc`."""
        self.issues.append(issue_at(self.filename, mark, format_loc(loc), message, offset))

    def node_for(self, loc: Loc, at: Literal["value", "key"]) -> yaml.Node | None:
        """The node at `loc` (its key when asked), else the nearest enclosing one."""
        if at == "key" and loc in self.keys:
            return self.keys[loc]
        for end in range(len(loc), -1, -1):
            node = self.values.get(loc[:end])
            if node is not None:
                return node
        return self.root


def offset_in(node: yaml.ScalarNode, index: int) -> int:
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
