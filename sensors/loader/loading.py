"""Reading an Axon: from a path, bytes or text to a validated `Axon`, or every mistake at once.

The steps: refuse oversized or non-UTF-8 input, compose the YAML with positions, substitute
workflow parameters, validate the models, run the cross-reference checks and parse every
condition. A file that fails validation is still salvaged so its cross-reference mistakes are
reported in the same run.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import ValidationError

from sensors.checks import check_axon, conditions
from sensors.loader.documents import Document
from sensors.loader.issues import SpecError, SpecIssue, issue_at
from sensors.loader.parameters import substitute
from sensors.loader.reporting import report_condition, report_finding, report_validation_error
from sensors.loader.salvaging import salvage
from sensors.spec import Axon

MAX_BYTES = 1024 * 1024


def load_axon(path: Path) -> Axon:
    """Read and validate the Axon file at `path`; raises SpecError with every issue."""
    name = str(path)
    try:
        size = path.stat().st_size
        if size > MAX_BYTES:
            raise SpecError([issue_at(name, None, "", _too_big(size))])
        data = path.read_bytes()
    except FileNotFoundError:
        raise SpecError([issue_at(name, None, "", "no such file")]) from None
    except IsADirectoryError:
        raise SpecError([issue_at(name, None, "", "is a directory, not an Axon file")]) from None
    except PermissionError:
        raise SpecError([issue_at(name, None, "", "permission denied")]) from None
    except OSError as exc:
        raise SpecError([issue_at(name, None, "", f"cannot read: {exc.strerror}")]) from None
    return load_axon_bytes(data, name)


def load_axon_bytes(data: bytes, filename: str = "<bytes>") -> Axon:
    """Decode `data` as UTF-8 (a BOM is allowed) and validate it as an Axon."""
    if len(data) > MAX_BYTES:
        raise SpecError([issue_at(filename, None, "", _too_big(len(data)))])
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
            [issue_at(filename, None, "", _too_big(len(text.encode("utf-8", "replace"))))]
        )
    doc = Document(filename)
    data = doc.convert(doc.compose(text))
    substitute(doc, data)
    try:
        axon = Axon.model_validate(data)
    except ValidationError as exc:
        for error in exc.errors(include_url=False):
            report_validation_error(doc, error)
        _report_salvaged(doc, data)
        raise SpecError(doc.issues) from None
    _report_checks(doc, axon)
    if doc.issues:
        raise SpecError(doc.issues)
    return axon


def _report_salvaged(doc: Document, data: dict[str, Any]) -> None:
    """Report the cross-reference mistakes of the valid parts of an invalid file."""
    salvaged = salvage(data)
    if salvaged is None:
        return
    for finding in check_axon(salvaged.axon, salvaged.unknown_kinds):
        if not any(finding.loc[: len(prefix)] == prefix for prefix in salvaged.dropped):
            report_finding(doc, finding)
    for ref in conditions(salvaged.axon):
        report_condition(doc, ref, scrape=_raw_source(data) == "scrape")


def _report_checks(doc: Document, axon: Axon) -> None:
    """Report the cross-reference mistakes and bad conditions of a valid Axon."""
    for finding in check_axon(axon):
        report_finding(doc, finding)
    metrics = axon.spec.metrics
    scrape = metrics is None or metrics.source == "scrape"
    for ref in conditions(axon):
        report_condition(doc, ref, scrape=scrape)


def _too_big(size: int) -> str:
    return f"file is {size} bytes; Axon files are limited to {MAX_BYTES} bytes (1 MiB)"


def _raw_source(data: dict[str, Any]) -> object:
    spec = data.get("spec")
    metrics = spec.get("metrics") if isinstance(spec, dict) else None
    return metrics.get("source", "scrape") if isinstance(metrics, dict) else "scrape"
