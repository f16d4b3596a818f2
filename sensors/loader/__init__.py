"""Read an Axon file into `sensors.spec.Axon`, or explain every mistake with file:line:col.

Users write Axons by hand, so errors must point at the exact YAML node and say what to do.
`documents` composes the YAML with a safe loader and turns it into plain data while
remembering where each value and key came from, refusing what a safe loader alone would
accept but we should not (duplicate keys, alias bombs, deep nesting, several documents);
`parameters` substitutes workflow parameters; `reporting` maps pydantic's error locations
and the findings of `sensors.checks` back to those positions; `salvaging` keeps the valid
parts of an invalid file so their cross-references are checked too; `loading` is the public
entry point and refuses oversized and non-UTF-8 input.
"""

from sensors.loader.documents import MAX_ALIASES, MAX_DEPTH, MAX_NODES
from sensors.loader.issues import SpecError, SpecIssue, format_loc
from sensors.loader.loading import MAX_BYTES, load_axon, load_axon_bytes, load_axon_text

__all__ = [
    "MAX_ALIASES",
    "MAX_BYTES",
    "MAX_DEPTH",
    "MAX_NODES",
    "SpecError",
    "SpecIssue",
    "format_loc",
    "load_axon",
    "load_axon_bytes",
    "load_axon_text",
]
