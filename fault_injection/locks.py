"""A second session that holds a lock on ``cron.job`` (``lock.timeout``).

``SHARE ROW EXCLUSIVE`` conflicts with the ``ROW EXCLUSIVE`` lock that
``cron.schedule`` and ``cron.unschedule`` take to write the table, and not
with the ``ACCESS SHARE`` that readers take
(https://www.postgresql.org/docs/15/explicit-locking.html), so reads of
``cron.job`` and pg_cron's own scheduler go on while every write waits, and
the writer's ``lock_timeout`` ends it with SQLSTATE 55P03.
"""

from __future__ import annotations

import logging

import psycopg

__all__ = ["CronJobLock"]

logger = logging.getLogger(__name__)


class CronJobLock:
    """Holds ``LOCK TABLE cron.job IN SHARE ROW EXCLUSIVE MODE`` until released."""

    def __init__(self, dsn: str) -> None:
        self._conn = psycopg.connect(dsn)  # not autocommit: the lock needs a tx
        self._conn.execute("LOCK TABLE cron.job IN SHARE ROW EXCLUSIVE MODE")
        self.pid = self._conn.info.backend_pid
        logger.debug("backend %d holds a lock on cron.job", self.pid)

    def release(self) -> None:
        """Roll back, which releases the lock, and close the session."""
        try:
            self._conn.rollback()
        finally:
            self._conn.close()
