"""Arm a fault point, run something, and learn whether and where it fired.

Every point is armed through :meth:`FaultInjector.arm`, which returns an
:class:`ArmedFault`. Some points change nothing on the server and strike only
the connections made for them (a proxy, a restricted role, a database without
pg_cron, a short timeout), so an operation must run on a connection from
:meth:`ArmedFault.connect` (or on :attr:`ArmedFault.dsn`) to be struck; that
works for every point, so it is the one way to write a harness.
"""

from __future__ import annotations

import itertools
import logging
import os
import random
from types import TracebackType

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from fault_injection import blocker as _blocker
from fault_injection.blocker import Blocker
from fault_injection.client import FaultyConnection
from fault_injection.locks import CronJobLock
from fault_injection.pgcron import PLACE_DESCRIPTIONS, PgCronFaults
from fault_injection.points import FaultPoint, get_point
from fault_injection.proxy import WireProxy
from fault_injection.roles import RestrictedRole
from kronos.errors import EnvironmentProblem, KronosUsageError

__all__ = ["ArmedFault", "FaultInjector"]

logger = logging.getLogger(__name__)

LOCK_TIMEOUT = "300ms"
STATEMENT_TIMEOUT = "500ms"
# The statement.timeout hook sleeps this long; the timeout cancels it much
# sooner, and a connection without the timeout is still released in the end.
_SLEEP_SECONDS = 10.0

_RAISING_POINTS = {
    "schedule.before": "schedule.before",
    "schedule.after": "schedule.after",
    "unschedule.before": "unschedule.before",
    "unschedule.after": "unschedule.after",
}
# A point with steps strikes the first statement of its step, before it writes.
_STEP_PLACES = {"schedule": "schedule.before", "unschedule": "unschedule.before"}

# Server errors that show a point fired: SQLSTATEs, and a word the message has.
_ERRORS_SEEN = {
    "lock.timeout": ({"55P03"}, ""),
    "permission.denied": ({"42501"}, "cron"),
    "extension.missing": ({"3F000", "42P01", "42883"}, "cron"),
}

_keys = itertools.count((os.getpid() % 10_000) * 100_000 + 1)


class ArmedFault:
    """A fault point armed until :meth:`disarm` or the end of a ``with`` block.

    ``hits`` counts how often the operation reached the point, ``fired`` says
    whether the armed occurrence was reached and the failure happened, and
    ``where`` says at which statement. ``dsn`` is the connection string an
    operation must use to be struck; :meth:`connect` opens it.
    """

    def __init__(
        self,
        injector: FaultInjector,
        point: FaultPoint,
        occurrence: int,
        *,
        at: str | None,
        dsn: str,
        connection: FaultyConnection | None = None,
    ) -> None:
        self.point = point
        self.occurrence = occurrence
        self.at = at
        self.dsn = dsn
        self._injector = injector
        self._connection = connection
        self._final_hits: int | None = None
        self._final_fired: bool | None = None
        self._final_where: str | None = None
        # Filled in by FaultInjector.arm for the mechanism the point uses.
        self._place: str | None = None
        self._blocker: Blocker | None = None
        self._proxy: WireProxy | None = None
        self._lock: CronJobLock | None = None
        self._role: RestrictedRole | None = None

    @property
    def hits(self) -> int:
        if self._final_hits is not None:
            return self._final_hits
        return self._injector._hits(self)

    @property
    def fired(self) -> bool:
        if self._final_fired is not None:
            return self._final_fired
        return self._injector._fired(self)

    @property
    def armed(self) -> bool:
        return self._final_hits is None

    @property
    def where(self) -> str | None:
        """Where the fault struck, as a phrase; ``None`` if it did not fire."""
        if self._final_where is not None or not self.armed:
            return self._final_where
        return self._injector._where(self) if self.fired else None

    def describe(self) -> str:
        """Whether and where the fault fired, as a sentence."""
        if not self.fired:
            return f"{self.point.name} was armed but not reached ({self.hits} hits)"
        return f"{self.point.name} fired on hit {self.occurrence}: {self.where}"

    def connect(self) -> FaultyConnection:
        """An autocommit connection the fault strikes (xids tracked for outcomes).

        For ``commit.before`` the point is armed on this connection.
        """
        conn = self._injector.connect(self.dsn)
        if self.point.name == "commit.before" and self._connection is None:
            self._connection = conn
            conn.arm_client_fault("commit.before", self.occurrence)
        return conn

    def disarm(self) -> None:
        """Undo the mechanism; the server is left as it was before arming."""
        if self._final_hits is None:
            self._injector._disarm(self)

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
    under test run on their own connections (:meth:`ArmedFault.connect`).
    ``server`` is the :class:`~kronos.server.EmbeddedServer` behind ``dsn``,
    needed by ``server.crash`` and used to find the database without pg_cron;
    ``seed`` makes the proxy's random choices repeatable.
    """

    def __init__(
        self, dsn: str, *, server: object | None = None, seed: int | None = None
    ) -> None:
        self.dsn = dsn
        self.server = server
        self._rng = random.Random(seed)
        self._admin_conn: psycopg.Connection | None = None
        is_superuser = (
            self._admin()
            .execute("SELECT rolsuper FROM pg_roles WHERE rolname = current_user")
            .fetchone()[0]
        )
        if not is_superuser:
            self.close()
            raise EnvironmentProblem(
                "fault injection needs a superuser connection: it creates triggers "
                "on cron.job; connect as a superuser or use the embedded server"
            )
        self._pgcron = PgCronFaults(self._admin)
        self._nocron_dsn: str | None = None
        # Points armed through this injector and not yet disarmed. A second
        # arming of the same point would share its hook and hit counter with
        # the first, so it is refused.
        self._live: set[str] = set()

    def reseed(self, seed: int) -> None:
        """Restart the random choices (``commit.ack_lost``'s cut) from ``seed``.

        A search that replays a sequence, as Hypothesis does when it shrinks,
        needs the same faults to end the same way each time.
        """
        self._rng.seed(seed)

    def connect(self, dsn: str | None = None) -> FaultyConnection:
        """An autocommit connection on which client-side points can be armed."""
        conn = FaultyConnection.connect(dsn or self.dsn, autocommit=True)
        conn.track_xids = True
        return conn

    def database_for(self, point: str) -> str:
        """The superuser DSN of the database a workspace struck by ``point`` needs.

        ``extension.missing`` strikes only a database without pg_cron: create
        the workspace there. Every other point uses :attr:`dsn`.
        """
        if point != "extension.missing":
            return self.dsn
        if self._nocron_dsn is None:
            self._nocron_dsn = self._find_nocron()
        return self._nocron_dsn

    def arm(
        self,
        point: str,
        *,
        occurrence: int = 1,
        connection: FaultyConnection | None = None,
        at: str | None = None,
        workspace: str | None = None,
    ) -> ArmedFault:
        """Arm ``point`` to fire on its ``occurrence``-th hit.

        ``at`` places a point that has steps (``schedule`` or ``unschedule``;
        the first by default). ``workspace`` is needed by ``permission.denied``,
        whose role gets rights on that workspace only. ``connection`` is the
        connection ``commit.before`` strikes, if not one from ``connect()``.
        """
        fault_point = get_point(point)
        self._check_arguments(fault_point, occurrence, at, connection)
        if point in self._live and point != "commit.before":
            raise KronosUsageError(
                f"{point} is already armed; disarm it before arming it again"
            )
        if fault_point.steps and at is None:
            at = fault_point.steps[0]

        fault = ArmedFault(
            self, fault_point, occurrence, at=at, dsn=self.dsn, connection=connection
        )
        try:
            self._arm(fault, workspace)
        except BaseException:
            try:
                self._undo(fault)
            except Exception:
                logger.warning("could not undo a half-armed %s", point, exc_info=True)
            raise
        if point != "commit.before":
            self._live.add(point)
        logger.debug("armed %s (hit %d, at %s)", point, occurrence, at)
        return fault

    def uninstall(self) -> None:
        """Remove everything fault injection created in the database."""
        self._pgcron.uninstall()

    def close(self) -> None:
        if self._admin_conn is not None:
            self._admin_conn.close()

    def __enter__(self) -> FaultInjector:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- arming ---------------------------------------------------------------

    def _check_arguments(
        self,
        point: FaultPoint,
        occurrence: int,
        at: str | None,
        connection: FaultyConnection | None,
    ) -> None:
        if not isinstance(occurrence, int) or occurrence < 1:
            raise KronosUsageError(f"occurrence must be 1 or more, got {occurrence!r}")
        if occurrence != 1 and not point.takes_occurrence:
            raise KronosUsageError(
                f"{point.name} strikes the first statement that meets it and every "
                "one after; only occurrence=1 can be armed"
            )
        if at is not None and at not in point.steps:
            choices = ", ".join(point.steps) or "none: it has one fixed place"
            raise KronosUsageError(
                f"{point.name} cannot be placed at {at!r}; steps: {choices}"
            )
        if connection is not None and not isinstance(connection, FaultyConnection):
            raise KronosUsageError(
                "connection= must be a FaultyConnection: use injector.connect()"
            )
        if point.needs_server:
            self.require_server(point.name)

    def require_server(self, point: str) -> None:
        """Refuse, with what to do, unless this injector can crash its server."""
        from kronos.server import EmbeddedServer

        server = self.server
        if not isinstance(server, EmbeddedServer) or not server.is_running():
            raise EnvironmentProblem(
                f"{point} stops the server and restarts it, which only a running "
                "EmbeddedServer started by the toolkit allows; this injector has "
                f"server={server!r}. Use the embedded backend (the default) and "
                "pass it as FaultInjector(dsn, server=...) / run_matrix(server=...)"
            )
        port = conninfo_to_dict(self.dsn).get("port")
        if str(port) != str(server.port):
            raise EnvironmentProblem(
                f"{point}: the injector's DSN (port {port}) is not the embedded "
                f"server on port {server.port}; arm it on that server's DSN"
            )

    def _arm(self, fault: ArmedFault, workspace: str | None) -> None:
        name = fault.point.name

        if name in _RAISING_POINTS:
            fault._place = _RAISING_POINTS[name]
            self._pgcron.arm(name, fault._place, fault.occurrence)
        elif name == "commit.before":
            if fault._connection is not None:
                fault._connection.arm_client_fault(name, fault.occurrence)
        elif name == "statement.timeout":
            fault._place = _STEP_PLACES[fault.at or "schedule"]
            fault.dsn = _with_option(self.dsn, "statement_timeout", STATEMENT_TIMEOUT)
            self._pgcron.arm(
                name,
                fault._place,
                fault.occurrence,
                action="sleep",
                sleep_seconds=_SLEEP_SECONDS,
            )
        elif name in ("connection.drop", "server.crash"):
            self._arm_blocking(fault)
        elif name == "commit.ack_lost":
            fault._proxy = self._proxy()
            fault._proxy.cut_commit(fault.occurrence)
            fault.dsn = fault._proxy.dsn_for(self.dsn)
        elif name == "lock.timeout":
            fault._proxy = self._proxy()
            fault._lock = CronJobLock(self.dsn)
            fault.dsn = fault._proxy.dsn_for(
                _with_option(self.dsn, "lock_timeout", LOCK_TIMEOUT)
            )
        elif name == "permission.denied":
            fault._proxy = self._proxy()
            fault._role = RestrictedRole(self.dsn, workspace)
            fault.dsn = fault._proxy.dsn_for(fault._role.dsn(self.dsn))
        elif name == "extension.missing":
            fault._proxy = self._proxy()
            fault.dsn = fault._proxy.dsn_for(self.database_for(name))
        else:  # pragma: no cover - every catalogued point has a branch above
            raise KronosUsageError(f"fault point {name!r} has no mechanism here")

    def _arm_blocking(self, fault: ArmedFault) -> None:
        name = fault.point.name
        key = next(_keys)
        fault._place = _STEP_PLACES[fault.at or "schedule"]
        self._pgcron.arm(
            name, fault._place, fault.occurrence, action="block", lock_key=key
        )
        action = (
            _blocker.terminate
            if name == "connection.drop"
            else _blocker.crash_and_restart(self.server, self._forget_admin)
        )
        fault._blocker = Blocker(
            self.dsn, key, action, lambda conn: _sequence_hits(conn, name)
        )

    def _proxy(self) -> WireProxy:
        params = conninfo_to_dict(self.dsn)
        host = str(params.get("hostaddr") or params.get("host") or "127.0.0.1")
        if host.startswith("/"):
            raise EnvironmentProblem(
                "the fault proxy speaks TCP, but the injector's DSN uses a Unix "
                f"socket ({host}); give a DSN with host=127.0.0.1 and a port"
            )
        port = int(params.get("port") or 5432)
        return WireProxy(host, port, seed=self._rng.randrange(2**32)).start()

    def _find_nocron(self) -> str:
        from kronos.server import NOCRON_DB_NAME, EmbeddedServer

        if isinstance(self.server, EmbeddedServer):
            dsn = self.server.dsn_for(NOCRON_DB_NAME)
        else:
            params = conninfo_to_dict(self.dsn)
            params["dbname"] = NOCRON_DB_NAME
            dsn = make_conninfo(**params)
        how = (
            f"create a database {NOCRON_DB_NAME!r} without pg_cron on this server "
            f"(CREATE DATABASE {NOCRON_DB_NAME}) or use the embedded server"
        )
        try:
            with psycopg.connect(dsn, autocommit=True, connect_timeout=10) as conn:
                has_cron = conn.execute(
                    "SELECT 1 FROM pg_extension WHERE extname = 'pg_cron'"
                ).fetchone()
        except psycopg.OperationalError as exc:
            raise EnvironmentProblem(
                f"extension.missing needs a database without pg_cron and could not "
                f"use {NOCRON_DB_NAME!r} ({exc}); {how}"
            ) from exc
        if has_cron:
            raise EnvironmentProblem(
                f"extension.missing: database {NOCRON_DB_NAME!r} has pg_cron; {how}"
            )
        return dsn

    # -- asking and disarming -------------------------------------------------

    def _admin(self) -> psycopg.Connection:
        """The superuser connection, opened again if a crash closed it."""
        conn = self._admin_conn
        if conn is not None and not conn.closed and not conn.broken:
            try:
                conn.execute("SELECT 1")  # a restart since the last use ended it
            except psycopg.OperationalError:
                logger.debug("the admin connection was lost; connecting again")
            else:
                return conn
        self._admin_conn = conn = psycopg.connect(self.dsn, autocommit=True)
        return conn

    def _forget_admin(self) -> None:
        """After a crash: the next use of the admin connection opens a new one."""
        conn, self._admin_conn = self._admin_conn, None
        if conn is not None:
            try:
                conn.close()
            except Exception:
                logger.debug("closing the crashed admin connection", exc_info=True)

    def _hits(self, fault: ArmedFault) -> int:
        name = fault.point.name
        if fault._blocker is not None and fault._blocker.hits_at_fire is not None:
            return fault._blocker.hits_at_fire
        if fault._place is not None:
            return self._pgcron.hits(name)
        if name == "commit.before":
            conn = fault._connection
            return 0 if conn is None else conn.client_fault_hits()
        assert fault._proxy is not None
        if name == "commit.ack_lost":
            return fault._proxy.commits
        return len(_matching_errors(fault))

    def _fired(self, fault: ArmedFault) -> bool:
        if fault._blocker is not None:
            return fault._blocker.acted
        if fault.point.name == "commit.ack_lost":
            assert fault._proxy is not None
            return bool(fault._proxy.cuts)
        return self._hits(fault) >= fault.occurrence

    def _where(self, fault: ArmedFault) -> str:
        name = fault.point.name
        if fault._blocker is not None:
            assert fault._place is not None
            return f"{PLACE_DESCRIPTIONS[fault._place]}: {fault._blocker.done}"
        if fault._place is not None:
            return PLACE_DESCRIPTIONS[fault._place]
        if name == "commit.before":
            return f"in the client, before COMMIT {fault.occurrence}"
        assert fault._proxy is not None
        if name == "commit.ack_lost":
            cut = fault._proxy.cuts[0]
            return (
                f"on the wire at COMMIT {cut.commit_number}: {cut.forwarded} COMMIT "
                f"forwarded ({cut.sent} of {cut.length} bytes), then both sides cut"
            )
        error = _matching_errors(fault)[0]
        return (
            f"the server refused `{_short(error.statement)}` with {error.sqlstate}: "
            f"{error.message}"
        )

    def _disarm(self, fault: ArmedFault) -> None:
        try:
            if fault._blocker is not None:
                fault._blocker.stop()  # first, so that the final counts are known
            fault._final_hits = self._hits(fault)
            fault._final_fired = self._fired(fault)
            fault._final_where = self._where(fault) if fault._final_fired else None
        finally:
            self._live.discard(fault.point.name)
            self._undo(fault)

    def _undo(self, fault: ArmedFault) -> None:
        """Remove whatever the fault's mechanism created; log, then raise, failures."""
        if fault._final_hits is None:
            fault._final_hits = 0
            fault._final_fired = False
        steps = []
        if fault._blocker is not None and not fault._blocker.stopped:
            steps.append(("stop the watcher", fault._blocker.stop))
        if fault._place is not None:
            steps.append(
                ("remove the hook", lambda: self._pgcron.disarm(fault.point.name))
            )
        if fault._connection is not None and fault.point.name == "commit.before":
            steps.append(("disarm the client", fault._connection.disarm_client_fault))
        if fault._lock is not None:
            steps.append(("release the cron.job lock", fault._lock.release))
        if fault._proxy is not None:
            steps.append(("close the proxy", fault._proxy.close))
        if fault._role is not None:
            steps.append(("drop the role", fault._role.drop))

        first: BaseException | None = None
        for what, step in steps:
            try:
                step()
            except BaseException as exc:
                logger.warning(
                    "disarming %s: could not %s: %s", fault.point.name, what, exc
                )
                first = first or exc
        if first is not None:
            raise first


def _sequence_hits(conn: psycopg.Connection, point: str) -> int:
    from fault_injection.pgcron import _sequence

    row = conn.execute(
        f"SELECT CASE WHEN is_called THEN last_value ELSE 0 END FROM {_sequence(point)}"
    ).fetchone()
    return int(row[0])


def _matching_errors(fault: ArmedFault) -> list:
    assert fault._proxy is not None
    states, word = _ERRORS_SEEN[fault.point.name]
    return [
        error
        for error in fault._proxy.errors
        if error.sqlstate in states and word in error.message
    ]


def _with_option(dsn: str, setting: str, value: str) -> str:
    """``dsn`` with ``-c setting=value`` added to its ``options``."""
    params = conninfo_to_dict(dsn)
    options = str(params.get("options") or "")
    params["options"] = f"{options} -c {setting}={value}".strip()
    return make_conninfo(**params)


def _short(text: str | None, width: int = 60) -> str:
    text = " ".join((text or "").split())
    return text if len(text) <= width else text[: width - 3] + "..."
