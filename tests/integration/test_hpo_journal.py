"""optuna's journal on the bus: a study read back from `ranvier_runs` is the study written, and a
second executor resuming the same study cannot write over the first one's journal."""

from __future__ import annotations

import optuna
import pytest
from optuna.storages import JournalStorage

from events.bus import Bus
from executors.hpo import BusJournal, StudyError


async def test_a_study_survives_in_the_journal_and_only_one_writer_wins(bus: Bus) -> None:
    first = BusJournal(bus, "journal.test")
    await first.load()
    study = optuna.create_study(storage=JournalStorage(first), study_name="s")
    trial = study.ask({"x": optuna.distributions.FloatDistribution(0, 1)})
    study.tell(trial.number, 0.25)
    await first.flush()

    again = BusJournal(bus, "journal.test")
    await again.load()
    assert again.logs == first.logs
    resumed = optuna.load_study(storage=JournalStorage(again), study_name="s")
    [done] = resumed.trials
    assert (done.value, done.params) == (0.25, trial.params)

    resumed.ask()  # the second writer moves on ...
    await again.flush()
    study.ask()  # ... so the first one's next write is refused
    with pytest.raises(StudyError, match="changed under us"):
        await first.flush()
