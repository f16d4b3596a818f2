"""The replicas setting: flag over `RANVIER_REPLICAS`, unset by default, bounded like JetStream."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from events.bus import StreamLimits
from events.errors import RanvierError
from ranvier.settings import Settings


def test_unset_means_keep_what_exists_and_create_with_one(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RANVIER_REPLICAS", raising=False)
    limits = Settings.from_flags().stream_limits()
    assert limits.replicas is None
    assert limits.num_replicas == 1


def test_the_flag_wins_over_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RANVIER_REPLICAS", "3")
    assert Settings.from_flags().stream_limits().replicas == 3
    assert Settings.from_flags(replicas=1).stream_limits().num_replicas == 1


@pytest.mark.parametrize("value", ["0", "6", "three"])
def test_a_bad_count_is_a_clear_error(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv("RANVIER_REPLICAS", value)
    with pytest.raises(RanvierError, match=r"invalid setting: (?s:.*)replicas"):
        Settings.from_flags()


def test_stream_limits_refuse_what_jetstream_cannot_hold() -> None:
    with pytest.raises(ValidationError):
        StreamLimits(replicas=6)
    assert StreamLimits(replicas=5).num_replicas == 5
