"""Arm a fault point, run something, and learn whether and where it fired."""

from __future__ import annotations

import logging
from types import TracebackType

import psycopg

from fault_injection.client import FaultyConnection
from fault_injection.pgcron import POINT_NAMES as PGCRON_POINTS
from fault_injection.pgcron import PgCronFaults
from fault_injection.points import FaultPoint, get_point
from kronos.errors import EnvironmentProblem, KronosUsageError

__all__ = ["ArmedFault", "FaultInjector"]

logger = logging.getLogger(__name__)


class ArmedFault:
    """A fault point armed until :meth:`disarm` or the end of a ``with`` block.

    ``hits`` counts how often the operation reached the point, ``fired`` says
    whether the armed occurrence was reached (and so the failure happened).
    """

    def __init__(
        self,
        injector: FaultInjector,
        point: FaultPoint,
        occurrence: int,
        connection: FaultyConnection | None,
    ) -> None:
        self.point = point
        self.occurrence = occurrence
        self._injector = injector
        self._connection = connection
        self._final_hits: int | None = None

    @property
    def hits(self) -> int:
        if self._final_hits is not None:
            return self._final_hits
        return self._injector._hits(self)

    @property
    def fired(self) -> bool:
        return self.hits >= self.occurrence

    @property
    def armed(self) -> bool:
        return self._final_hits is None

    def describe(self) -> str:
        """Where the fault fired, as a sentence."""
        if not self.fired:
            return f"{self.point.name} was armed but not reached ({self.hits} hits)"
        return f"{self.point.name} fired on hit {self.occurrence}"

    def disarm(self) -> None:
        if self._final_hits is None:
            self._final_hits = self._injector._disarm(self)

    def __enter__(self) -> ArmedFault:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            self.disarm()
        except Exception:
            if exc is None:
                raise
            logger.exception("could not disarm %s", self.point.name)


class FaultInjector:
    """Arms fault points on one database, through a superuser connection.

    The connection given is used for arming and disarming only; operations
    under test run on their own connections, which :meth:`connect` opens as
    :class:`FaultyConnection` so that client-side points can be armed on them.
    """

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn
        self._admin = psycopg.connect(dsn, autocommit=True)
        is_superuser = self._admin.execute(
            "SELECT rolsuper FROM pg_roles WHERE rolname = current_user"
        ).fetchone()[0]
        if not is_superuser:
            self._admin.close()
            raise EnvironmentProblem(
                "fault injection needs a superuser connection: it creates triggers "
                "on cron.job; connect as a superuser or use the embedded server"
            )
        self._pgcron = PgCronFaults(self._admin)

    def connect(self, dsn: str | None = None) -> FaultyConnection:
        """An autocommit connection on which client-side points can be armed."""
        return FaultyConnection.connect(dsn or self.dsn, autocommit=True)

    def arm(
        self,
        point: str,
        *,
        occurrence: int = 1,
        connection: FaultyConnection | None = None,
    ) -> ArmedFault:
        """Arm ``point`` to fire on its ``occurrence``-th hit."""
        fault_point = get_point(point)
        if not isinstance(occurrence, int) or occurrence < 1:
            raise KronosUsageError(f"occurrence must be 1 or more, got {occurrence!r}")

        if point in PGCRON_POINTS:
            self._pgcron.arm(point, occurrence)
        elif point == "commit.before":
            if not isinstance(connection, FaultyConnection):
                raise KronosUsageError(
                    "commit.before strikes one client connection: pass "
                    "connection=injector.connect() and run the operation on it"
                )
            connection.arm_client_fault(point, occurrence)
        else:  # pragma: no cover - every catalogued point has a branch above
            raise KronosUsageError(f"fault point {point!r} has no mechanism here")

        return ArmedFault(self, fault_point, occurrence, connection)

    def uninstall(self) -> None:
        """Remove everything fault injection created in the database."""
        self._pgcron.uninstall()

    def close(self) -> None:
        self._admin.close()

    def __enter__(self) -> FaultInjector:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _hits(self, fault: ArmedFault) -> int:
        if fault.point.name in PGCRON_POINTS:
            return self._pgcron.hits(fault.point.name)
        assert fault._connection is not None
        return fault._connection.client_fault_hits()

    def _disarm(self, fault: ArmedFault) -> int:
        hits = self._hits(fault)
        if fault.point.name in PGCRON_POINTS:
            self._pgcron.disarm(fault.point.name)
        else:
            assert fault._connection is not None
            fault._connection.disarm_client_fault()
        return hits
