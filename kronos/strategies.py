"""Hypothesis strategies for the corners of the job lifecycle that users hit.

Each strategy comes in a legal and, where it matters, an illegal flavour, so a
state machine can mix bad input into a run and hold the target to its promise:
a usage error, and nothing written. The legal flavours stay inside what both
Kronos's validation and pg_cron 1.4 accept; ``tests/test_strategies.py`` holds
them to that, so a strategy that drifts is caught there and not mistaken for a
bug in a target.
"""

from __future__ import annotations

import unicodedata
import zoneinfo
from datetime import datetime, timedelta, timezone
from typing import Any

from hypothesis import strategies as st

from fault_injection import POINTS
from kronos.validation import DAYS, MACROS, MAX_WORKSPACE_BYTES, MONTHS

__all__ = [
    "IN_PROCESS_EXCLUDED",
    "cron_expressions",
    "fault_points",
    "idempotency_keys",
    "in_process_fault_points",
    "invalid_cron_expressions",
    "invalid_workspace_names",
    "job_names",
    "payloads",
    "run_at_times",
    "schedules",
    "time_zones",
    "unknown_time_zones",
    "workspace_names",
    "zones",
]

# Fault points a state machine cannot arm around one call on one connection:
# a crash kills every connection (the crash runs use it on their own), a
# missing extension needs another database.
IN_PROCESS_EXCLUDED = frozenset({"server.crash", "extension.missing"})

_RESERVED = frozenset(
    {"public", "cron", "information_schema", "fault_injection", "kronos"}
)

# Characters that have broken identifier quoting, LIKE patterns, format()
# strings or byte counting somewhere: quotes, backslash, _, braces, spaces,
# and letters of two, three and four UTF-8 bytes. ``%`` is refused by the
# validator (psycopg takes it for a placeholder) and drawn as an illegal name.
_TRICKY = "\"'\\_ .-$;{}éß日本😀\u200b"


def _fits(name: str) -> bool:
    return 0 < len(name.encode("utf-8")) <= MAX_WORKSPACE_BYTES


# Control, invisible format and line-separator characters, which Kronos refuses
# in names and keys (kronos.validation.check_text); surrogates cannot be UTF-8.
_HIDDEN = ("Cc", "Cf", "Cs", "Zl", "Zp")


def _legal(name: str) -> bool:
    return (
        _fits(name)
        and name not in _RESERVED
        and not name.lower().startswith("pg_")
        and "%" not in name
        and name == name.strip()
        and not any(unicodedata.category(char) in _HIDDEN for char in name)
    )


def workspace_names() -> st.SearchStrategy[str]:
    """Workspace names of every legal shape, up to ``MAX_WORKSPACE_BYTES``.

    Quotes, spaces, backslashes, ``%`` and ``_``, and letters of up to four
    UTF-8 bytes; names exactly at the byte limit are drawn on purpose.
    """
    alphabet = st.one_of(
        st.sampled_from(_TRICKY),
        st.characters(
            codec="utf-8", exclude_categories=_HIDDEN, exclude_characters="\x7f"
        ),
    )
    at_limit = st.sampled_from(
        [
            "x" * MAX_WORKSPACE_BYTES,
            "日" * (MAX_WORKSPACE_BYTES // 3),
            "😀" * (MAX_WORKSPACE_BYTES // 4),
            '"' * MAX_WORKSPACE_BYTES,
            "a b" + " " * (MAX_WORKSPACE_BYTES - 3),
        ]
    )
    drawn = st.text(alphabet, min_size=1, max_size=MAX_WORKSPACE_BYTES)
    return st.one_of(drawn, at_limit).filter(_legal)


def invalid_workspace_names() -> st.SearchStrategy[str]:
    """Names ``create_workspace`` must refuse before it writes anything."""
    too_long = st.text(
        st.sampled_from("ab日😀"), min_size=MAX_WORKSPACE_BYTES // 4 + 1, max_size=50
    ).filter(lambda name: len(name.encode("utf-8")) > MAX_WORKSPACE_BYTES)
    with_control = st.builds(
        lambda head, char: head + char,
        st.text("abc", max_size=5),
        st.sampled_from(["\x00", "\n", "\t", "\x1b", "\x7f"]),
    )
    reserved = st.sampled_from(
        sorted(_RESERVED) + ["pg_x", "PG_toast", "", "a%6", "%s", "100%"]
    )
    return st.one_of(too_long, with_control, reserved)


_MACROS = tuple(sorted(MACROS))
# (lowest, highest, names) of minute, hour, day of month, month, day of week
_FIELDS = ((0, 59, ()), (0, 23, ()), (1, 31, ()), (1, 12, MONTHS), (0, 7, DAYS))


@st.composite
def _cron_item(draw: st.DrawFn, low: int, high: int, names: tuple[str, ...]) -> str:
    value = st.integers(low, high)
    shape = draw(st.sampled_from(["*", "n", "n-m", "*/s", "n-m/s", "name"]))
    if shape == "*":
        return "*"
    if shape == "*/s":
        return f"*/{draw(st.integers(1, high))}"
    if shape == "name" and names:
        name = draw(st.sampled_from(names))
        return draw(st.sampled_from([name, name.upper(), name.title()]))
    if shape in ("n-m", "n-m/s"):
        first, second = sorted((draw(value), draw(value)))
        step = f"/{draw(st.integers(1, high))}" if shape == "n-m/s" else ""
        return f"{first}-{second}{step}"
    return str(draw(value))


@st.composite
def _five_fields(draw: st.DrawFn) -> str:
    fields = []
    for low, high, names in _FIELDS:
        items = draw(st.lists(_cron_item(low, high, names), min_size=1, max_size=3))
        fields.append(",".join(items))
    return " ".join(fields)


def cron_expressions() -> st.SearchStrategy[str]:
    """Five-field expressions and macros that Kronos and pg_cron both accept."""
    return st.one_of(st.sampled_from(_MACROS), _five_fields())


def invalid_cron_expressions() -> st.SearchStrategy[str]:
    """Expressions a create or update must refuse with ``InvalidSchedule``.

    Among them the ones pg_cron reads differently from Kronos: a sixth field,
    pg_cron's ``N seconds`` interval, ``@reboot``, and upper-case macros, which
    pg_cron 1.4 rejects although they look harmless.
    """
    fixed = st.sampled_from(
        [
            "",
            " ",
            "* * * *",
            "* * * * * *",
            "0 0 * * * 2030",
            "60 * * * *",
            "* 24 * * *",
            "* * 0 * *",
            "* * 32 * *",
            "* * * 13 *",
            "* * * * 8",
            "5-1 * * * *",
            "*/0 * * * *",
            "5/10 * * * *",
            "@reboot",
            "@every 5m",
            "5 seconds",
            " * * * * *",
            "* * * * * ",
            "a b c d e",
            "? * * * *",
            "L * * * *",
            "@DAILY",
            "@Hourly",
            "-1 * * * *",
            "1-2-3 * * * *",
        ]
    )
    sixth = st.builds(lambda five: five + " *", _five_fields())
    return st.one_of(fixed, sixth)


def schedules() -> st.SearchStrategy[str]:
    """Mostly valid expressions, now and then an invalid one."""
    return st.one_of(
        cron_expressions(),
        cron_expressions(),
        cron_expressions(),
        invalid_cron_expressions(),
    )


_ZONES = tuple(
    sorted(zoneinfo.available_timezones() - {"localtime", "Factory", "posixrules"})
)


def time_zones() -> st.SearchStrategy[str]:
    """IANA time zone names, ``UTC`` and a few well known ones first."""
    common = st.sampled_from(
        ["UTC", "Europe/Paris", "America/New_York", "Asia/Kolkata", "Pacific/Chatham"]
    )
    return st.one_of(common, st.sampled_from(_ZONES))


def unknown_time_zones() -> st.SearchStrategy[str]:
    """Names that look like time zones but are not IANA names."""
    return st.sampled_from(
        [
            "",
            "utc",
            "Mars/Olympus",
            "Europe/Pari",
            "+05:00",
            "UTC ",
            "GMT+25",
            "Europe/../etc",
            "America/New York",
        ]
    )


def zones() -> st.SearchStrategy[str]:
    """Mostly known time zones, now and then an unknown one."""
    return st.one_of(time_zones(), time_zones(), time_zones(), unknown_time_zones())


def job_names() -> st.SearchStrategy[str]:
    """Non-blank job names without NUL, any length and alphabet."""
    return st.text(
        st.characters(codec="utf-8", exclude_categories=_HIDDEN),
        min_size=1,
        max_size=40,
    ).filter(lambda name: name.strip() != "")


_JSON_TEXT = st.text(
    st.characters(codec="utf-8", exclude_characters="\x00"), max_size=12
)


def payloads() -> st.SearchStrategy[dict[str, Any]]:
    """JSON objects that ``jsonb`` stores: nested, unicode, big numbers.

    ``jsonb`` cannot hold ``\\u0000`` in a string or a non-finite number, so
    those are left out here. Floats stay within 1e15: ``jsonb`` prints a larger
    one without an exponent, and it comes back as an int that is not the float.
    """
    scalars = st.one_of(
        st.none(),
        st.booleans(),
        st.integers(-(2**70), 2**70),
        st.floats(-1e15, 1e15, allow_nan=False),
        _JSON_TEXT,
    )
    values = st.recursive(
        scalars,
        lambda inner: st.one_of(
            st.lists(inner, max_size=3),
            st.dictionaries(_JSON_TEXT, inner, max_size=3),
        ),
        max_leaves=6,
    )
    return st.dictionaries(_JSON_TEXT, values, max_size=3)


def idempotency_keys() -> st.SearchStrategy[str]:
    """Keys that repeat often, so a second create with the same key happens."""
    return st.one_of(
        st.sampled_from(["order-1", "order-2"]),
        st.text(
            st.characters(codec="utf-8", exclude_categories=_HIDDEN),
            min_size=1,
            max_size=20,
        ),
    )


def run_at_times() -> st.SearchStrategy[datetime]:
    """Aware datetimes from the past to far ahead, to the microsecond."""
    return st.datetimes(
        min_value=datetime(1970, 1, 1),
        max_value=datetime(2200, 1, 1),
        timezones=st.sampled_from(
            [
                timezone.utc,
                timezone(timedelta(hours=5, minutes=45)),
                zoneinfo.ZoneInfo("America/Los_Angeles"),
            ]
        ),
    )


def in_process_fault_points() -> list[str]:
    """Catalogued fault points armable around one call on one connection.

    Read from ``fault_injection.POINTS`` each time, so points added to the
    catalogue are drawn without a change here; a point can opt out with an
    ``in_process`` attribute set to false.
    """
    return [
        name
        for name, point in POINTS.items()
        if name not in IN_PROCESS_EXCLUDED
        and not getattr(point, "needs_server", False)
        and getattr(point, "in_process", True)
    ]


def fault_points(
    points: list[str] | None = None, *, none_weight: int = 1
) -> st.SearchStrategy[str | None]:
    """No fault, or one of ``points`` (by default every in-process point)."""
    names = in_process_fault_points() if points is None else list(points)
    if not names:
        return st.none()
    return st.one_of(*([st.none()] * none_weight), st.sampled_from(names))
