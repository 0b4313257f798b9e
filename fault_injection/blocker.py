"""Hold a statement still inside pg_cron, then kill its session or the server.

A ``block`` hook (see :mod:`fault_injection.pgcron`) makes the operation's
backend wait on an advisory lock that a :class:`Blocker` holds. A watcher
thread, on its own connection, polls ``pg_locks`` until a backend waits on
that lock: the operation is then exactly at the chosen statement, with its
transaction open. The watcher acts from outside, as a real failure would:
``pg_terminate_backend`` for ``connection.drop``, an immediate stop and a
restart of the embedded server for ``server.crash``.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

import psycopg

from fault_injection.pgcron import LOCK_CLASS
from kronos.errors import EnvironmentProblem

__all__ = ["Blocker"]

logger = logging.getLogger(__name__)

_POLL_SECONDS = 0.01

# What the watcher does to the waiting backend: gets the watcher's connection
# and the backend's pid, and returns a sentence saying what it did.
Action = Callable[[psycopg.Connection, int], str]


class Blocker:
    """Holds advisory lock (LOCK_CLASS, ``key``) and acts on its first waiter.

    ``count_hits`` reads the point's hit counter just before the action (a
    crash would make the counter skip ahead afterwards).
    """

    def __init__(
        self,
        dsn: str,
        key: int,
        action: Action,
        count_hits: Callable[[psycopg.Connection], int],
    ) -> None:
        self._dsn = dsn
        self._key = key
        self._action = action
        self._count_hits = count_hits
        self._stop = threading.Event()
        self.pid: int | None = None
        self.hits_at_fire: int | None = None
        self.done: str | None = None
        self.error: BaseException | None = None
        self.stopped = False

        self._holder = psycopg.connect(dsn, autocommit=True)
        self._holder.execute("SELECT pg_advisory_lock(%s, %s)", [LOCK_CLASS, key])
        self._watch_conn = psycopg.connect(dsn, autocommit=True)
        self._thread = threading.Thread(
            target=self._watch, name=f"fault-blocker-{key}", daemon=True
        )
        self._thread.start()

    @property
    def acted(self) -> bool:
        """Whether the action was carried out (waits for one in progress).

        The operation sees its error while the action is still running (the
        backend dies before pg_terminate_backend returns), so a caller that
        asks right after the error waits here for the watcher to finish.
        """
        if self.pid is not None and self.done is None:
            self._thread.join(timeout=120)
        return self.done is not None

    def stop(self) -> None:
        """Stop watching and let go of the lock; raise if the action failed."""
        self.stopped = True
        self._stop.set()
        self._thread.join(timeout=120)
        for conn in (self._holder, self._watch_conn):
            try:
                conn.close()  # closing the holder releases the lock
            except Exception:
                logger.debug("closing a blocker connection failed", exc_info=True)

        if self._thread.is_alive():
            raise EnvironmentProblem(
                "the fault watcher did not finish within 120 s; check the server "
                "log, the server may not have restarted"
            )
        if self.error is not None:
            raise EnvironmentProblem(
                f"the fault could not be carried out: {self.error}"
            ) from self.error

    def _watch(self) -> None:
        try:
            while not self._stop.wait(_POLL_SECONDS):
                row = self._watch_conn.execute(
                    "SELECT pid FROM pg_locks WHERE locktype = 'advisory'"
                    " AND classid = %s AND objid = %s AND objsubid = 2"
                    " AND NOT granted LIMIT 1",
                    [LOCK_CLASS, self._key],
                ).fetchone()
                if row is None:
                    continue
                self.pid = int(row[0])
                self.hits_at_fire = self._count_hits(self._watch_conn)
                self.done = self._action(self._watch_conn, self.pid)
                logger.debug("blocker %d: %s", self._key, self.done)
                return
        except BaseException as exc:  # reported by stop(), in the caller's thread
            self.error = exc
            logger.debug("blocker %d failed", self._key, exc_info=True)


def terminate(conn: psycopg.Connection, pid: int) -> str:
    """``connection.drop``: terminate the backend and wait until it is gone."""
    row = conn.execute("SELECT pg_terminate_backend(%s, 10000)", [pid]).fetchone()
    if not row or not row[0]:
        raise EnvironmentProblem(f"pg_terminate_backend({pid}) did not end it")
    return f"backend {pid} terminated by pg_terminate_backend"


def crash_and_restart(server: object, after: Callable[[], None]) -> Action:
    """``server.crash``: an immediate stop, then a restart with crash recovery.

    ``after`` runs once the server is back, to let go of dead connections.
    """

    def act(conn: psycopg.Connection, pid: int) -> str:
        server.crash()  # type: ignore[attr-defined]
        server.restart()  # type: ignore[attr-defined]
        after()
        return f"server crashed while backend {pid} was in the call, then recovered"

    return act
