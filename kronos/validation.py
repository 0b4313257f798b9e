"""Check user input before anything is written.

pg_cron validates a schedule only when ``cron.schedule`` runs, and pg_cron 1.4
accepts strings that are not five-field cron expressions (a sixth field is
silently read as something else). Kronos stores the expression on the job row
too, so the expression, the time zone and the workspace name are checked here,
in Python, before the first statement of an operation.
"""

from __future__ import annotations

import re
import unicodedata
import zoneinfo
from functools import lru_cache

from kronos.errors import (
    InvalidSchedule,
    InvalidTimeZone,
    InvalidWorkspace,
    KronosUsageError,
)

__all__ = [
    "DAYS",
    "MACROS",
    "MAX_WORKSPACE_BYTES",
    "MONTHS",
    "check_text",
    "validate_cron_expression",
    "validate_time_zone",
    "validate_workspace_name",
]

# A pg_cron job name is of type ``name`` (at most 63 bytes) and Kronos names it
# ``kronos_<schema>_<job id>``. A job id has at most 19 digits, so a schema of
# more than 63 - len("kronos_") - len("_") - 19 = 36 bytes could be truncated
# into another job's name. Longer workspace names are refused for that reason.
MAX_WORKSPACE_BYTES = 36

_RESERVED_SCHEMAS = frozenset(
    {"public", "cron", "information_schema", "fault_injection", "kronos"}
)

MACROS = frozenset(
    {"@yearly", "@annually", "@monthly", "@weekly", "@daily", "@midnight", "@hourly"}
)

MONTHS = (
    "jan",
    "feb",
    "mar",
    "apr",
    "may",
    "jun",
    "jul",
    "aug",
    "sep",
    "oct",
    "nov",
    "dec",
)
DAYS = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")

# (field name, lowest, highest, names that stand for numbers)
_FIELDS = (
    ("minute", 0, 59, {}),
    ("hour", 0, 23, {}),
    ("day of month", 1, 31, {}),
    ("month", 1, 12, {name: i + 1 for i, name in enumerate(MONTHS)}),
    ("day of week", 0, 7, {name: i for i, name in enumerate(DAYS)}),
)

# pg_cron splits fields on any whitespace its C library knows, but not on
# Unicode spaces, so anything beyond these characters is refused up front.
_CRON_TEXT = re.compile(r"[0-9A-Za-z*,/\- ]+")

# Names in the zoneinfo database that are not places.
_NOT_ZONES = frozenset({"localtime", "Factory", "posixrules"})

_ITEM = re.compile(r"^(?P<range>\*|[0-9a-z]+(?:-[0-9a-z]+)?)(?:/(?P<step>[0-9]+))?$")


def validate_cron_expression(expression: object) -> str:
    """Return the expression unchanged if it is a five-field cron expression.

    Accepted: five fields separated by spaces, each a comma-separated list of
    ``*``, ``n`` or ``n-m`` with an optional ``/step``; month and weekday
    names; and the macros ``@hourly``, ``@daily``, ``@weekly``, ``@monthly``,
    ``@yearly``. Refused with :class:`InvalidSchedule`: anything else,
    including six-field expressions, pg_cron's ``N seconds`` intervals and
    ``@reboot``, which Kronos jobs do not use.
    """
    if not isinstance(expression, str):
        raise InvalidSchedule(
            f"cron expression must be a string, got {type(expression).__name__}"
        )
    text = expression.strip()
    if text != expression or not text:
        raise InvalidSchedule(
            f"cron expression {expression!r} is empty or has surrounding spaces"
        )
    if text.startswith("@"):
        # pg_cron 1.4 matches macros case-sensitively: "@DAILY" is refused by
        # cron.schedule, so it is refused here too.
        if text not in MACROS:
            raise InvalidSchedule(
                f"cron expression {expression!r}: unknown macro; "
                f"use one of {', '.join(sorted(MACROS))}"
            )
        return expression

    odd = next((char for char in text if not _CRON_TEXT.fullmatch(char)), None)
    if odd is not None:
        raise InvalidSchedule(
            f"cron expression {expression!r} contains {odd!r}; use ASCII digits, "
            "month and weekday names, '*', ',', '-', '/' and spaces only"
        )

    fields = text.split()
    if len(fields) != 5:
        raise InvalidSchedule(
            f"cron expression {expression!r} has {len(fields)} fields; "
            "Kronos needs exactly five: minute hour day-of-month month day-of-week"
        )
    for value, (field, low, high, names) in zip(fields, _FIELDS, strict=True):
        _check_field(expression, value.lower(), field, low, high, names)
    return expression


def _check_field(
    expression: str, value: str, field: str, low: int, high: int, names: dict
) -> None:
    for item in value.split(","):
        match = _ITEM.match(item)
        if match is None:
            raise InvalidSchedule(
                f"cron expression {expression!r}: {field} item {item!r} is not "
                "'*', 'n', 'n-m', optionally followed by '/step'"
            )

        step = match.group("step")
        if step is not None and not 1 <= int(step) <= high:
            raise InvalidSchedule(
                f"cron expression {expression!r}: {field} step {step} is "
                f"outside 1-{high}"
            )

        bounds = match.group("range")
        if bounds == "*":
            continue
        if step is not None and "-" not in bounds:
            raise InvalidSchedule(
                f"cron expression {expression!r}: {field} item {item!r} puts a "
                "step after a single value; write '*/step' or 'n-m/step'"
            )
        numbers = [
            _number(expression, part, field, low, high, names)
            for part in bounds.split("-")
        ]
        if len(numbers) == 2 and numbers[0] > numbers[1]:
            raise InvalidSchedule(
                f"cron expression {expression!r}: {field} range {bounds} runs backwards"
            )


def _number(
    expression: str, part: str, field: str, low: int, high: int, names: dict
) -> int:
    if part in names:
        return names[part]
    if not part.isdigit() or len(part) > 2:
        raise InvalidSchedule(
            f"cron expression {expression!r}: {field} value {part!r} is not a "
            f"number in {low}-{high}"
        )
    number = int(part)
    if not low <= number <= high:
        raise InvalidSchedule(
            f"cron expression {expression!r}: {field} value {number} is outside "
            f"{low}-{high}"
        )
    return number


def check_text(
    label: str, value: str, *, error: type[KronosUsageError] = KronosUsageError
) -> str:
    """Refuse text PostgreSQL cannot store or a reader cannot see.

    Lone surrogates cannot be encoded as UTF-8, NUL cannot be stored in
    ``text``, and control or invisible format characters (a zero-width space)
    make two names look the same.
    """
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise error(f"{label} {value!r} is not valid Unicode text") from None
    hidden = next(
        (c for c in value if unicodedata.category(c) in ("Cc", "Cf", "Zl", "Zp")),
        None,
    )
    if hidden is not None:
        raise error(
            f"{label} {value!r} contains the invisible or control character "
            f"U+{ord(hidden):04X}"
        )
    return value


@lru_cache(maxsize=1)
def _time_zones() -> frozenset[str]:
    return frozenset(zoneinfo.available_timezones()) - _NOT_ZONES


def validate_time_zone(name: object) -> str:
    """Return ``name`` if it is an IANA time zone such as ``Europe/Paris``."""
    if not isinstance(name, str) or name not in _time_zones():
        raise InvalidTimeZone(
            f"unknown time zone {name!r}; use an IANA name such as 'UTC' or "
            "'Europe/Paris'"
        )
    return name


def validate_workspace_name(name: object) -> str:
    """Return ``name`` if it can be a workspace schema.

    Any printable text works, quotes and spaces included, because every
    identifier is quoted by psycopg; what is refused is what PostgreSQL or the
    pg_cron job name cannot hold (see :data:`MAX_WORKSPACE_BYTES`), and ``%``,
    which psycopg would take for a placeholder.
    """
    if not isinstance(name, str) or not name:
        raise InvalidWorkspace("workspace name must be a non-empty string")
    check_text("workspace name", name, error=InvalidWorkspace)
    if name != name.strip():
        raise InvalidWorkspace(
            f"workspace name {name!r} starts or ends with a space; trim it"
        )
    size = len(name.encode("utf-8"))
    if size > MAX_WORKSPACE_BYTES:
        raise InvalidWorkspace(
            f"workspace name {name!r} is {size} bytes; the limit is "
            f"{MAX_WORKSPACE_BYTES} so that its pg_cron job names fit in 63 bytes"
        )
    if "%" in name:
        # psycopg reads every % of a composed query as a placeholder, quoted
        # identifiers included, so a schema name with % breaks each statement
        # that passes parameters.
        raise InvalidWorkspace(
            f"workspace name {name!r} contains '%', which Kronos cannot quote "
            "safely; pick a name without it"
        )
    if name.lower().startswith("pg_") or name in _RESERVED_SCHEMAS:
        raise InvalidWorkspace(
            f"workspace name {name!r} is reserved; pick another schema name"
        )
    return name
