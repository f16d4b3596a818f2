"""optuna's journal on the bus: a study's optuna state in one `ranvier_runs` key.

optuna keeps a study in a `JournalStorage`; this backend holds the journal in memory and
writes it with compare-and-set after every change, before the controller acts on it, so an
executor that restarts mid-study reads back every configuration asked for and every result
told, and a second executor resuming the same study cannot write over the first one's.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from optuna.storages.journal import BaseJournalBackend

from events import subjects
from events.bus import Bus, RevisionMismatch
from executors.hpo.errors import StudyError


class BusJournal(BaseJournalBackend):
    """optuna's journal held in memory and written to one `ranvier_runs` key by `flush()`.

    optuna calls `append_logs` synchronously; the controller awaits `flush()` right after each
    optuna call, before it acts on the result, so nothing is done that the bus does not know.
    The write is a compare-and-set: a second executor resuming the same study loses it.
    """

    def __init__(self, bus: Bus, key: str) -> None:
        self.bus = bus
        self.key = key
        self.logs: list[dict[str, Any]] = []
        self.pending = False
        self.revision: int | None = None

    async def load(self) -> None:
        """Read the journal written so far (none for a new study)."""
        found = await self.bus.kv_get(subjects.RUNS_BUCKET, self.key)
        if found is not None:
            try:
                self.logs = list(json.loads(found[0]))
            except ValueError as exc:
                raise StudyError(f"corrupt study journal {self.key}: {exc}") from None
            self.revision = found[1]

    def read_logs(self, log_number_from: int) -> Iterable[dict[str, Any]]:
        """optuna: the logs from `log_number_from` on."""
        return self.logs[log_number_from:]

    def append_logs(self, logs: list[dict[str, Any]]) -> None:
        """optuna: new logs (written by the next `flush()`)."""
        self.logs.extend(logs)
        self.pending = True

    async def flush(self) -> None:
        """Write the journal if it changed (compare-and-set on the revision read or written)."""
        if not self.pending:
            return
        raw = json.dumps(self.logs, separators=(",", ":")).encode("utf-8")
        if self.revision is None:
            revision = await self.bus.kv_create(subjects.RUNS_BUCKET, self.key, raw)
            if revision is None:
                raise StudyError(f"study journal {self.key} was created by another executor")
        else:
            try:
                revision = await self.bus.kv_update(
                    subjects.RUNS_BUCKET, self.key, raw, self.revision
                )
            except RevisionMismatch as exc:  # another executor resumed the study
                raise StudyError(f"study journal {self.key} changed under us: {exc}") from None
        self.revision = revision
        self.pending = False
