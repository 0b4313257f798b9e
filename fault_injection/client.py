"""Client-side failures, and what the client knew when its COMMIT went out.

A request handler can die after its last statement and before COMMIT (an
exception in the handler, a killed worker). The server then rolls the
transaction back. :class:`FaultyConnection` reproduces that: when its
``commit.before`` point is armed, the end of the outermost transaction block,
or an explicit :meth:`commit`, rolls back and raises
:class:`InjectedClientFault` instead of committing. Unarmed, it is an ordinary
``psycopg.Connection``.

It also keeps the one fact a client needs when its connection dies during
COMMIT: the id of the transaction it was committing. With
``track_xids`` on, the last statement of every outermost transaction is
``SELECT pg_current_xact_id_if_assigned()``; the id is kept in
:attr:`FaultyConnection.commit_xid` while the COMMIT is in flight, so
:mod:`kronos.outcome` can later ask the server, through ``pg_xact_status``,
whether that transaction committed.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import psycopg
from psycopg.pq import TransactionStatus

__all__ = ["FaultyConnection", "InjectedClientFault"]

logger = logging.getLogger(__name__)


class InjectedClientFault(psycopg.OperationalError):
    """The client failed on purpose at an armed fault point."""


@dataclass
class _ClientArming:
    point: str
    occurrence: int
    hits: int = 0


class FaultyConnection(psycopg.Connection):
    """A connection whose commit can be made to fail at an armed point.

    ``track_xids``: record each transaction's id before COMMIT (one more
    statement per transaction). ``commit_in_flight`` is true from the moment
    COMMIT is sent until its reply arrives, so after an error it tells whether
    the error struck the COMMIT itself.
    """

    _kronos_arming: _ClientArming | None = None
    track_xids: bool = False
    commit_xid: int | None = None
    commit_in_flight: bool = False

    def arm_client_fault(self, point: str, occurrence: int = 1) -> None:
        """Fail the ``occurrence``-th commit from now on (once)."""
        self._kronos_arming = _ClientArming(point, occurrence)

    def disarm_client_fault(self) -> int:
        """Stop failing; return how many commits were attempted while armed."""
        arming, self._kronos_arming = self._kronos_arming, None
        return 0 if arming is None else arming.hits

    def client_fault_hits(self) -> int:
        """Commits attempted since the point was armed."""
        return 0 if self._kronos_arming is None else self._kronos_arming.hits

    @contextmanager
    def transaction(  # type: ignore[override]
        self, savepoint_name: str | None = None, force_rollback: bool = False
    ) -> Iterator[psycopg.Transaction]:
        outermost = self.info.transaction_status == TransactionStatus.IDLE
        committing = outermost and not force_rollback
        if committing:
            self.commit_in_flight = False
            self.commit_xid = None

        with super().transaction(savepoint_name, force_rollback) as tx:
            yield tx
            if committing:
                self._before_commit()
                self.commit_in_flight = True

        if committing:
            self.commit_in_flight = False

    def commit(self) -> None:
        try:
            self._before_commit()
        except InjectedClientFault:
            self.rollback()
            raise

        self.commit_in_flight = True
        super().commit()
        self.commit_in_flight = False

    def _before_commit(self) -> None:
        arming = self._kronos_arming
        if arming is not None and arming.point == "commit.before":
            arming.hits += 1
            if arming.hits == arming.occurrence:
                logger.debug("commit.before fired on commit %d", arming.hits)
                raise InjectedClientFault(
                    "fault injected at commit.before: the client failed after its "
                    "last statement, before COMMIT"
                )

        in_transaction = self.info.transaction_status == TransactionStatus.INTRANS
        if self.track_xids and in_transaction:
            row = self.execute(
                "SELECT pg_current_xact_id_if_assigned()::text::bigint"
            ).fetchone()
            self.commit_xid = None if row is None or row[0] is None else int(row[0])
