"""The catalogue of fault points: where a failure strikes and what fires it."""

from __future__ import annotations

from dataclasses import dataclass

from kronos.errors import KronosUsageError

__all__ = ["OPERATIONS", "POINTS", "FaultPoint", "get_point"]

# The operations that touch pg_cron, in the order the matrix shows them.
OPERATIONS = ("create_cron", "update", "cancel")


@dataclass(frozen=True)
class FaultPoint:
    """One named place where the harness can make the job lifecycle fail.

    ``strikes`` lists the operations that pass through this point; arming it
    around any other operation is allowed but it will not fire. ``sqlstate``
    is what the client sees when it fires (``None`` for a client-side fault
    that never reaches the server).
    """

    name: str
    description: str
    mechanism: str
    strikes: tuple[str, ...]
    sqlstate: str | None


POINTS: dict[str, FaultPoint] = {
    point.name: point
    for point in (
        FaultPoint(
            "schedule.before",
            "cron.schedule fails before it writes its cron.job row",
            "trigger on cron.job (BEFORE INSERT)",
            ("create_cron", "update"),
            "XX000",
        ),
        FaultPoint(
            "schedule.after",
            "cron.schedule writes its row, then the statement fails",
            "trigger on cron.job (AFTER INSERT OR UPDATE)",
            ("create_cron", "update"),
            "XX000",
        ),
        FaultPoint(
            "unschedule.before",
            "cron.unschedule fails before it deletes the entry",
            "wrapper around cron.unschedule(text)",
            ("update", "cancel"),
            "XX000",
        ),
        FaultPoint(
            "unschedule.after",
            "cron.unschedule deletes the entry, then the statement fails",
            "wrapper around cron.unschedule(text)",
            ("update", "cancel"),
            "XX000",
        ),
        FaultPoint(
            "commit.before",
            "the client fails after its last statement, before COMMIT",
            "wrapped connection",
            OPERATIONS,
            None,
        ),
    )
}


def get_point(name: str) -> FaultPoint:
    """The fault point called ``name``; a usage error listing them if unknown."""
    try:
        return POINTS[name]
    except KeyError:
        raise KronosUsageError(
            f"unknown fault point {name!r}; known points: {', '.join(POINTS)}"
        ) from None
