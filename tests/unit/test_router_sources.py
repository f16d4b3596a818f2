"""Table sources: the first table, then every change; a bad file is skipped, never half-used."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from executors.serving.router import (
    FileTableSource,
    InMemoryTableSource,
    TableFileError,
    read_table_file,
)
from executors.serving.routing import RoutingTable


def _write(path: Path, text: str) -> None:
    partial = path.with_suffix(".tmp")
    partial.write_text(text)
    os.replace(partial, path)


async def test_in_memory_source_notifies_every_change() -> None:
    source = InMemoryTableSource(RoutingTable(revision=1))
    assert (await source.get()).revision == 1
    changes = source.changes()
    waiting = asyncio.ensure_future(anext(changes))
    await asyncio.sleep(0)
    source.set(RoutingTable(revision=2))
    assert (await waiting).revision == 2
    waiting = asyncio.ensure_future(anext(changes))
    await asyncio.sleep(0)
    source.set(RoutingTable(revision=3))
    assert (await waiting).revision == 3
    assert (await source.get()).revision == 3
    await changes.aclose()


async def test_file_source_follows_valid_edits_and_skips_bad_ones(tmp_path: Path) -> None:
    path = tmp_path / "table.json"
    _write(path, RoutingTable(revision=1).model_dump_json())
    source = FileTableSource(path, interval=0.01)
    assert (await source.get()).revision == 1
    changes = source.changes()
    waiting = asyncio.ensure_future(anext(changes))
    await asyncio.sleep(0.05)
    _write(path, '{"revision": "not a number"}')
    await asyncio.sleep(0.05)
    _write(path, RoutingTable(revision=2).model_dump_json())
    async with asyncio.timeout(30):
        assert (await waiting).revision == 2
    await changes.aclose()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (None, "does not exist"),
        ('{"revision": "x"}', "invalid: revision"),
        ('{"deployers": [{"axon": "a"}]}', "invalid: deployers.0.name"),
        ("{", "invalid"),
    ],
)
def test_read_table_file_errors_are_one_line(
    tmp_path: Path, text: str | None, message: str
) -> None:
    path = tmp_path / "table.json"
    if text is not None:
        path.write_text(text)
    with pytest.raises(TableFileError, match=None) as info:
        read_table_file(path)
    assert message in str(info.value)
    assert "\n" not in str(info.value)
