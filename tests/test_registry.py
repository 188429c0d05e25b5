"""Unique names: a connected client or a scheduler the core still keeps holds its name."""

from __future__ import annotations

from typing import Any, cast

from scheduler.bus.connection import Connection
from scheduler.bus.registry import Registry
from scheduler.policy.dispatch.dispatcher import Dispatcher
from scheduler.protocol_types import Role


def connection(name: str, role: Role) -> Connection:
    """A registered connection with no socket: the registry only reads who it is."""
    client = Connection(cast(Any, None), cast(Any, None), cast(Any, None), peer=name)
    client.name, client.role = name, role
    return client


def test_names_are_unique_among_clients_and_kept_schedulers() -> None:
    core = Dispatcher()
    registry = Registry(core)
    registry.add(connection("alpha", "producer"))
    core.attach("kept", size=1, tasks=None, reports=True, now=0.0, wall=0.0)
    registry.add(connection("scheduler-1", "scheduler"))
    assert registry.unique_name("beta", "producer") == "beta"
    assert registry.unique_name("alpha", "producer") == "alpha-2"
    assert registry.unique_name("kept", "scheduler") == "kept-2"
    assert registry.unique_name(None, "scheduler") == "scheduler-2"
    assert registry.unique_name(None, "scheduler") == "scheduler-3"
    assert registry.unique_name(None, "monitor") == "monitor-1"


def test_a_scheduler_is_live_while_connected_or_kept() -> None:
    core = Dispatcher()
    registry = Registry(core)
    producer, scheduler = connection("p", "producer"), connection("s", "scheduler")
    registry.add(producer)
    registry.add(scheduler)
    core.attach("away", size=1, tasks=None, reports=True, now=0.0, wall=0.0)
    assert registry.scheduler_live("s") and registry.scheduler_live("away")
    assert not registry.scheduler_live("p") and not registry.scheduler_live("nobody")
    assert registry.current(scheduler) and [c.name for c in registry] == ["p", "s"]
    newer = connection("s", "scheduler")
    registry.add(newer)
    assert not registry.current(scheduler) and registry.current(newer)
    assert registry.pop("s") is newer and registry.get("s") is None
    assert not registry.proves("s", None) and not registry.proves("s", "guess")
