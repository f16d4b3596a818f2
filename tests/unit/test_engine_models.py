"""The engine's fast paths produce exactly what the slow, validated paths would.

The engine builds its DecisionData and ActionRequest instances without validation and inlines
uuid5; these tests pin both to the library behaviour they replace.
"""

from __future__ import annotations

import uuid

from hypothesis import given
from hypothesis import strategies as st

from events.model import ActionRequest, DecisionData, Event
from sensors import engine
from tests.unit.engine_kit import Rig, make_axon

PIPE = """
- name: Pipe
  triggers:
    - {name: poke, type: Rest}
  tasks:
    - - resourceExecutor:
          task: Prep
          env: [{name: A, value: "1"}]
          retry: {limit: 1, backoff: 5s}
      - resourceExecutor: {task: Eval}
"""


def test_engine_models_equal_validated_models_and_serialise_alike() -> None:
    rig = Rig(make_axon(PIPE))
    result = rig.rest("Pipe", 0)
    retry = rig.action_done(result.actions[0], "Failed", 1)
    for action in (*result.actions, *retry.actions):
        validated = ActionRequest.model_validate(action.model_dump())
        assert validated.model_dump() == action.model_dump()
        assert validated.to_event(source="s").data == action.to_event(source="s").data
        assert validated.idempotency_key == action.idempotency_key
        assert validated.model_fields_set == action.model_fields_set
    assert result.actions[0].params == {"env": [{"name": "A", "value": "1"}]}
    assert retry.actions[0].not_before is not None
    for decision in (*result.decisions, *retry.decisions):
        validated_d = DecisionData.model_validate(decision.model_dump())
        assert validated_d.model_dump_json() == decision.model_dump_json()
        event = decision.to_event(source="s")
        assert Event.from_json(event.to_json()).payload() == validated_d


@given(st.text(max_size=40), st.text(min_size=1, max_size=20), st.none() | st.text(max_size=10))
def test_sensor_run_id_is_uuid5_of_event_and_sensor(
    event_id: str, sensor: str, trigger: str | None
) -> None:
    namespace = uuid.uuid5(uuid.NAMESPACE_URL, "https://ranvier.dev/sensor-run")
    name = f"{event_id}\n{sensor}" + ("" if trigger is None else f"\n{trigger}")
    assert engine.sensor_run_id(event_id, sensor, trigger) == str(uuid.uuid5(namespace, name))
