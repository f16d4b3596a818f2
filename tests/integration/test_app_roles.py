"""The composition root builds every role from direct imports, and knows when they are ready.

`ranvier up --until deployed` after a restart must not report a deployment that the executor's
recovery has not served again yet, nor a router URL left by a crashed router: the goal is only
checked once `roles_ready` says the executor recovered and the router listens.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from events.bus import Bus
from executors.deployer import LocalDeployer
from executors.runner import ExecutorRunner
from executors.serving.kv_table import RouterRole
from ranvier.app import ROLES, RoleOptions, available_roles, build_roles, roles_ready
from sensors.runtime import EngineRuntime

pytestmark = pytest.mark.integration


async def test_every_role_is_built_and_ready_only_once_recovered_and_listening(
    bus: Bus, tmp_path: Path
) -> None:
    assert available_roles() == list(ROLES)
    roles = build_roles(bus, available_roles(), RoleOptions(tmp_path / "state"))
    assert isinstance(roles["engine"], EngineRuntime)
    runner, router = roles["executor"], roles["router"]
    assert isinstance(runner, ExecutorRunner)
    assert isinstance(runner.deployer, LocalDeployer)
    assert isinstance(router, RouterRole)

    assert not roles_ready(roles)
    runner.ready.set()
    assert not roles_ready(roles)  # the router has not recorded its URL yet
    router.listening.set()
    assert roles_ready(roles)
    assert roles_ready({"watcher": roles["watcher"]})  # nothing to wait for
