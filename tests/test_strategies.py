"""The strategies draw what they promise: legal input that Kronos and pg_cron accept,
illegal input that Kronos refuses, and fault points from the catalogue.

The state machine trusts these promises when it decides whether an operation
should succeed, so they are checked here against the validator and, for cron
expressions and payloads, against the real server.
"""

from __future__ import annotations

import psycopg
import pytest
from hypothesis import given, settings
from psycopg.types.json import Jsonb

from fault_injection import POINTS
from kronos import strategies
from kronos.errors import InvalidSchedule, InvalidTimeZone, InvalidWorkspace
from kronos.validation import (
    MAX_WORKSPACE_BYTES,
    validate_cron_expression,
    validate_time_zone,
    validate_workspace_name,
)


@given(name=strategies.workspace_names())
def test_workspace_names_are_legal(name: str) -> None:
    assert validate_workspace_name(name) == name
    assert len(name.encode("utf-8")) <= MAX_WORKSPACE_BYTES


@given(name=strategies.invalid_workspace_names())
def test_invalid_workspace_names_are_refused(name: str) -> None:
    with pytest.raises(InvalidWorkspace):
        validate_workspace_name(name)


@settings(max_examples=60)
@given(expression=strategies.cron_expressions())
def test_cron_expressions_pass_kronos_and_pg_cron(
    kronos_dsn: str, expression: str
) -> None:
    """A legal expression the machine draws must not fail inside cron.schedule."""
    assert validate_cron_expression(expression) == expression

    with psycopg.connect(kronos_dsn) as conn:
        conn.execute(
            "SELECT cron.schedule('kronos_strategy_probe', %s, 'SELECT 1')",
            [expression],
        )
        conn.rollback()


@given(expression=strategies.invalid_cron_expressions())
def test_invalid_cron_expressions_are_refused(expression: str) -> None:
    with pytest.raises(InvalidSchedule):
        validate_cron_expression(expression)


@given(zone=strategies.time_zones())
def test_time_zones_are_iana_names(zone: str) -> None:
    assert validate_time_zone(zone) == zone


@given(zone=strategies.unknown_time_zones())
def test_unknown_time_zones_are_refused(zone: str) -> None:
    with pytest.raises(InvalidTimeZone):
        validate_time_zone(zone)


@settings(max_examples=40)
@given(payload=strategies.payloads())
def test_payloads_come_back_from_jsonb_unchanged(
    kronos_dsn: str, payload: dict
) -> None:
    """The model compares payloads with ==, so jsonb must give back what it got."""
    with psycopg.connect(kronos_dsn, autocommit=True) as conn:
        row = conn.execute("SELECT %s::jsonb", [Jsonb(payload)]).fetchone()

    assert row is not None and row[0] == payload


def test_in_process_fault_points_come_from_the_catalogue() -> None:
    names = strategies.in_process_fault_points()

    assert names and set(names) <= set(POINTS)
    assert not [name for name in names if POINTS[name].needs_server]
    assert not set(names) & strategies.IN_PROCESS_EXCLUDED
    assert {"schedule.before", "unschedule.before", "commit.before"} <= set(names)
