"""The catalogue of fault points: where a failure strikes and what fires it."""

from __future__ import annotations

from dataclasses import dataclass

from kronos.errors import KronosUsageError

__all__ = ["OPERATIONS", "POINTS", "STEPS", "FaultPoint", "get_point"]

# The operations that touch pg_cron, in the order the matrix shows them.
OPERATIONS = ("create_cron", "update", "cancel")

# The statements a point with a choice of step can strike: the cron.schedule
# or the cron.unschedule of an operation.
STEPS = ("schedule", "unschedule")


@dataclass(frozen=True)
class FaultPoint:
    """One named place where the harness can make the job lifecycle fail.

    ``strikes`` lists the operations that pass through this point; arming it
    around any other operation is allowed but it will not fire. ``sqlstate``
    is what the client sees when it fires (``None`` when the client sees no
    server error: a client-side fault, or a connection that is simply gone).
    ``steps`` lists the statements the point can be placed at (``at=``); an
    empty tuple means the point has one fixed place.
    ``needs_server`` is true when the point must stop and restart the server,
    which only the embedded server the toolkit started allows.
    """

    name: str
    description: str
    mechanism: str
    strikes: tuple[str, ...]
    sqlstate: str | None
    steps: tuple[str, ...] = ()
    needs_server: bool = False

    @property
    def takes_occurrence(self) -> bool:
        """Whether a later hit than the first can be chosen (``occurrence``).

        The points made by the environment (a lock, a revoked right, a missing
        extension) strike the first statement that meets it, and every later
        one too, so only the first hit can be chosen.
        """
        return self.name not in _FIRST_HIT_ONLY


_FIRST_HIT_ONLY = {"lock.timeout", "permission.denied", "extension.missing"}

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
        FaultPoint(
            "commit.ack_lost",
            "COMMIT is sent, the connection dies before the reply: outcome unknown",
            "TCP proxy that cuts both sides at COMMIT",
            OPERATIONS,
            None,
        ),
        FaultPoint(
            "connection.drop",
            "the session is killed in the middle of a pg_cron call",
            "pg_terminate_backend from another session while the call waits",
            OPERATIONS,
            "57P01",
            steps=STEPS,
        ),
        FaultPoint(
            "lock.timeout",
            "another session locks cron.job; the operation's lock_timeout fires",
            "second session holding LOCK TABLE cron.job (lock_timeout 300ms)",
            OPERATIONS,
            "55P03",
        ),
        FaultPoint(
            "statement.timeout",
            "pg_cron is slow; the operation's statement_timeout fires",
            "hook that sleeps in the pg_cron call (statement_timeout 500ms)",
            OPERATIONS,
            "57014",
            steps=STEPS,
        ),
        FaultPoint(
            "permission.denied",
            "the application role has lost USAGE on schema cron",
            "non-superuser role, USAGE on cron revoked, connection as that role",
            OPERATIONS,
            "42501",
        ),
        FaultPoint(
            "extension.missing",
            "pg_cron is not installed in the operation's database",
            "workspace in a database without the extension (kronos_nocron)",
            ("create_cron",),
            "3F000",
        ),
        FaultPoint(
            "server.crash",
            "the server dies in the middle of a pg_cron call and recovers",
            "immediate stop of the embedded server, restart on the same data",
            OPERATIONS,
            None,
            steps=STEPS,
            needs_server=True,
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
