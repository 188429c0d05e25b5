"""The bus's configuration holds the dispatch rules, and every default is defined once."""

from __future__ import annotations

import dataclasses

import click
import pytest

from scheduler.bus import cli as bus_cli
from scheduler.bus.config import (
    BUS_RULES,
    DEFAULT_HOST,
    DEFAULT_PORT,
    DEFAULT_VACUUM_EVERY_S,
    BusConfig,
    bus_rules,
)
from scheduler.policy.commit_window import DEFAULT_COMMIT_WINDOW_S
from scheduler.policy.dispatch.config import (
    DEFAULT_LEASE_S,
    DEFAULT_MAX_DELIVERIES,
    DEFAULT_MAX_EVICTIONS,
    DEFAULT_RESTART_GRACE_S,
    DEFAULT_START_DEADLINE_S,
    DEFAULT_STEAL,
    DispatchConfig,
)


def test_a_bus_runs_the_cores_defaults_with_the_start_deadline_on() -> None:
    config = BusConfig()
    assert config.rules == BUS_RULES == bus_rules()
    assert config.rules == DispatchConfig(start_deadline=DEFAULT_START_DEADLINE_S)
    assert DispatchConfig().start_deadline is None
    assert (config.host, config.port, config.restart_grace) == (
        DEFAULT_HOST,
        DEFAULT_PORT,
        DEFAULT_RESTART_GRACE_S,
    )


def test_bus_rules_changes_only_what_it_is_told() -> None:
    rules = bus_rules(lease=2.0, steal="off")
    assert (rules.lease, rules.steal) == (2.0, "off")
    assert dataclasses.replace(rules, lease=DEFAULT_LEASE_S, steal=DEFAULT_STEAL) == BUS_RULES
    with pytest.raises(ValueError, match="max_evictions"):
        bus_rules(max_evictions=-1)


def test_the_command_takes_its_defaults_from_the_constants() -> None:
    defaults = {p.name: p.default for p in bus_cli.cli.params if isinstance(p, click.Option)}
    assert defaults["host"] == DEFAULT_HOST and defaults["port"] == DEFAULT_PORT
    assert (defaults["lease"], defaults["max_evictions"], defaults["max_deliveries"]) == (
        DEFAULT_LEASE_S,
        DEFAULT_MAX_EVICTIONS,
        DEFAULT_MAX_DELIVERIES,
    )
    assert (defaults["steal"], defaults["start_deadline"]) == (
        DEFAULT_STEAL,
        DEFAULT_START_DEADLINE_S,
    )
    assert (defaults["restart_grace"], defaults["vacuum_every"]) == (
        DEFAULT_RESTART_GRACE_S,
        DEFAULT_VACUUM_EVERY_S,
    )
    assert defaults["commit_window"] == DEFAULT_COMMIT_WINDOW_S == BusConfig().commit_window
