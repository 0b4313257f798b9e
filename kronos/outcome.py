"""Outcomes that tell the truth: ok, failed, or unknown until the server says.

An operation run under a fault ends in one of three ways. ``ok``: it returned,
so it committed. ``failed``: it raised before its COMMIT was sent, or the
server answered the COMMIT with an error, so the server rolled it back for
sure. ``unknown``: the connection died while the COMMIT was in flight, and the
client cannot tell whether the server committed. Guessing would make the
atomicity check either blind or wrong, so an unknown outcome is resolved from
the server afterwards: the client recorded its transaction id before COMMIT
(:class:`~fault_injection.client.FaultyConnection` with ``track_xids``), and
``pg_xact_status`` on a new connection says ``committed`` or ``aborted``
(https://www.postgresql.org/docs/15/functions-info.html).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import psycopg
from psycopg.pq import TransactionStatus

from fault_injection.client import FaultyConnection

__all__ = ["Outcome", "resolve_outcome", "run_operation"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Outcome:
    """How one operation ended, and for an unknown one, what the server says.

    ``resolved`` is ``committed`` or ``aborted`` once an unknown outcome has
    been resolved, ``None`` otherwise. ``xid`` is the id of the transaction
    whose COMMIT was in flight. ``value`` is what the operation returned.
    """

    status: str
    resolved: str | None = None
    error: str | None = None
    sqlstate: str | None = None
    xid: int | None = None
    exception: BaseException | None = field(default=None, repr=False, compare=False)
    value: Any = field(default=None, repr=False, compare=False)

    @property
    def applied(self) -> bool | None:
        """Whether the operation's writes are in the database; ``None``: unknown."""
        if self.status == "ok":
            return True
        if self.status == "failed":
            return False
        if self.resolved is None:
            return None
        return self.resolved == "committed"

    def describe(self) -> str:
        """``ok``, ``failed (XX000)`` or ``unknown -> committed``, for tables."""
        text = self.status
        if self.sqlstate:
            text += f" ({self.sqlstate})"
        if self.status == "unknown":
            text += f" -> {self.resolved or 'unresolved'}"
        return text


def run_operation(conn: psycopg.Connection, call: Callable[[], Any]) -> Outcome:
    """Run ``call`` (an operation on ``conn``) and say how it ended.

    Any exception becomes data: ``failed`` unless the connection broke while
    a COMMIT was in flight, which makes it ``unknown``. Only a
    :class:`FaultyConnection` knows when its COMMIT is in flight; on another
    connection a broken connection is ``unknown`` with no xid to resolve it.
    """
    tracking = isinstance(conn, FaultyConnection)
    if tracking:
        previous, conn.track_xids = conn.track_xids, True

    try:
        value = call()
    except Exception as exc:  # the outcome is data here, not a failure
        outcome = _from_error(conn, exc)
    else:
        outcome = Outcome("ok", value=value)
    finally:
        if tracking:
            conn.track_xids = previous

    if not conn.closed and conn.info.transaction_status in (
        TransactionStatus.INTRANS,
        TransactionStatus.INERROR,
    ):
        conn.rollback()
    logger.debug("operation ended %s", outcome.describe())
    return outcome


def resolve_outcome(outcome: Outcome, dsn: str, *, timeout: float = 30.0) -> Outcome:
    """An unknown outcome with ``resolved`` filled in from ``pg_xact_status``.

    The backend that lost its client may still be finishing (PostgreSQL
    notices a closed socket only when it next reads from it), so an ``in
    progress`` status is asked again until ``timeout`` seconds have passed.
    Outcomes that are not unknown, or have no xid, are returned unchanged.
    """
    if outcome.status != "unknown" or outcome.xid is None:
        return outcome

    deadline = time.monotonic() + timeout
    with psycopg.connect(dsn, autocommit=True, connect_timeout=30) as conn:
        while True:
            row = conn.execute(
                "SELECT pg_xact_status(%s::text::xid8)", [str(outcome.xid)]
            ).fetchone()
            status = None if row is None else row[0]
            if status != "in progress" or time.monotonic() > deadline:
                break
            time.sleep(0.02)

    if status not in ("committed", "aborted"):
        logger.warning(
            "transaction %s is %r after %.0f s; its outcome stays unknown",
            outcome.xid,
            status,
            timeout,
        )
        return outcome
    return replace(outcome, resolved=status)


def _from_error(conn: psycopg.Connection, exc: Exception) -> Outcome:
    error = f"{type(exc).__name__}: {exc}".strip()
    sqlstate = getattr(exc, "sqlstate", None)
    lost = conn.closed or conn.broken

    if isinstance(conn, FaultyConnection):
        if conn.commit_in_flight and lost:
            return Outcome(
                "unknown",
                error=error,
                sqlstate=sqlstate,
                xid=conn.commit_xid,
                exception=exc,
            )
        return Outcome("failed", error=error, sqlstate=sqlstate, exception=exc)

    if lost and isinstance(exc, psycopg.OperationalError):
        return Outcome("unknown", error=error, sqlstate=sqlstate, exception=exc)
    return Outcome("failed", error=error, sqlstate=sqlstate, exception=exc)
