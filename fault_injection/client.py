"""Client-side failures: a psycopg connection that can fail before COMMIT.

A request handler can die after its last statement and before COMMIT (an
exception in the handler, a killed worker). The server then rolls the
transaction back. :class:`FaultyConnection` reproduces that: when its
``commit.before`` point is armed, the end of the outermost transaction block,
or an explicit :meth:`commit`, rolls back and raises
:class:`InjectedClientFault` instead of committing. Unarmed, it is an ordinary
``psycopg.Connection``.
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
    """A connection whose commit can be made to fail at an armed point."""

    _kronos_arming: _ClientArming | None = None

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
        with super().transaction(savepoint_name, force_rollback) as tx:
            yield tx
            if outermost and not force_rollback:
                self._before_commit()

    def commit(self) -> None:
        try:
            self._before_commit()
        except InjectedClientFault:
            self.rollback()
            raise
        super().commit()

    def _before_commit(self) -> None:
        arming = self._kronos_arming
        if arming is None or arming.point != "commit.before":
            return
        arming.hits += 1
        if arming.hits == arming.occurrence:
            logger.debug("commit.before fired on commit %d", arming.hits)
            raise InjectedClientFault(
                "fault injected at commit.before: the client failed after its "
                "last statement, before COMMIT"
            )
