"""Input is checked before anything is written, and the checks agree with pg_cron."""

from __future__ import annotations

import psycopg
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kronos.errors import InvalidSchedule, InvalidTimeZone, InvalidWorkspace
from kronos.validation import (
    MAX_WORKSPACE_BYTES,
    validate_cron_expression,
    validate_time_zone,
    validate_workspace_name,
)


@pytest.mark.parametrize(
    "expression",
    [
        "* * * * *",
        "0 3 * * *",
        "*/5 9-17 * * mon-fri",
        "0 0 1,15 * *",
        "30 4 * jan-mar 0",
        "0 12 * * 7",
        "1-59/2 * * * *",
        "@daily",
        "@hourly",
    ],
)
def test_valid_cron_expressions_are_accepted(expression: str) -> None:
    assert validate_cron_expression(expression) == expression


@pytest.mark.parametrize(
    ("expression", "complaint"),
    [
        ("* * * * * *", "has 6 fields"),
        ("* * * *", "has 4 fields"),
        ("", "empty"),
        (" * * * * *", "surrounding spaces"),
        ("60 * * * *", "minute value 60 is outside 0-59"),
        ("* 24 * * *", "hour value 24"),
        ("* * 0 * *", "day of month value 0"),
        ("* * * 13 *", "month value 13"),
        ("* * * * 8", "day of week value 8"),
        ("5-1 * * * *", "runs backwards"),
        ("*/0 * * * *", "step 0"),
        ("5/10 * * * *", "step after a single value"),
        ("@reboot", "unknown macro"),
        ("10 seconds", "has 2 fields"),
        ("* * * * foo", "day of week value 'foo'"),
        (None, "must be a string"),
        ("0\u00a03 * * *", "contains '.xa0'"),
        ("0 3\u2003* * *", "contains '.u2003'"),
        ("0 3 * *\n*", "contains '.n'"),
    ],
)
def test_invalid_cron_expressions_name_the_problem(
    expression: object, complaint: str
) -> None:
    with pytest.raises(InvalidSchedule, match=complaint.replace("*", r"\*")):
        validate_cron_expression(expression)


def test_time_zones_come_from_the_iana_database() -> None:
    assert validate_time_zone("Europe/Paris") == "Europe/Paris"
    for bad in ("Mars/Olympus", "", "../etc/passwd", None, "localtime", "Factory"):
        with pytest.raises(InvalidTimeZone, match="unknown time zone"):
            validate_time_zone(bad)


def test_workspace_names_must_fit_a_pg_cron_job_name() -> None:
    longest = "w" * MAX_WORKSPACE_BYTES
    assert validate_workspace_name(longest) == longest
    assert validate_workspace_name('odd "name" with spaces') == 'odd "name" with spaces'
    for bad, complaint in [
        ("w" * (MAX_WORKSPACE_BYTES + 1), "bytes"),
        ("é" * 19, "bytes"),
        ("", "non-empty"),
        ("pg_temp", "reserved"),
        ("cron", "reserved"),
        ("tab\there", "control character"),
        ("zero\u200bwidth", "U\\+200B"),
        ("next\x85line", "U\\+0085"),
        (" ", "starts or ends with a space"),
        ("lone\ud800", "not valid Unicode"),
    ]:
        with pytest.raises(InvalidWorkspace, match=complaint):
            validate_workspace_name(bad)


_field_values = {
    0: st.integers(0, 59),
    1: st.integers(0, 23),
    2: st.integers(1, 31),
    3: st.integers(1, 12),
    4: st.integers(0, 7),
}


@st.composite
def cron_expressions(draw: st.DrawFn) -> str:
    """Expressions of every shape the validator has an opinion about."""
    fields = []
    for index in range(5):
        values = _field_values[index]
        kind = draw(
            st.sampled_from(["star", "number", "range", "step", "list", "junk"])
        )
        if kind == "star":
            fields.append("*")
        elif kind == "number":
            fields.append(str(draw(st.integers(-1, 61))))
        elif kind == "range":
            fields.append(f"{draw(values)}-{draw(values)}")
        elif kind == "step":
            fields.append(f"*/{draw(st.integers(0, 61))}")
        elif kind == "list":
            fields.append(
                ",".join(str(draw(values)) for _ in range(draw(st.integers(1, 3))))
            )
        else:
            fields.append(draw(st.sampled_from(["?", "L", "#", "$", "x", "1/2"])))
    extra = draw(st.sampled_from(["", "", "", " *"]))
    return " ".join(fields) + extra


@settings(max_examples=150, deadline=None)
@given(expression=cron_expressions())
def test_whatever_the_validator_accepts_pg_cron_accepts_too(
    kronos_dsn: str, expression: str
) -> None:
    """A differential check: no expression passes here and fails in pg_cron."""
    try:
        validate_cron_expression(expression)
    except InvalidSchedule:
        return

    with psycopg.connect(kronos_dsn) as conn:
        conn.execute(
            "SELECT cron.schedule('kronos_validation_probe', %s, 'SELECT 1')",
            [expression],
        )
        conn.rollback()
