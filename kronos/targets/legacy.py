"""The pre-fix behaviour, kept as the positive control.

The original handlers committed the job row first and then called pg_cron on
another pooled connection, logging and swallowing any error. A failure there
leaves the two tables apart: an ACTIVE job with no schedule, a retired job
whose schedule still fires, an updated job still on its old schedule. A
harness that cannot catch this target is broken.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import psycopg

from kronos import jobs, registration
from kronos.jobs import Job, JobChange, JobSpec
from kronos.registration import cron_job_name
from kronos.workspace import require_workspace

__all__ = ["LegacyTarget"]

logger = logging.getLogger(__name__)


class LegacyTarget:
    """Commit the row, then schedule on a separate connection, errors swallowed."""

    name = "legacy"
    positive_control = True

    def create_job(
        self, conn: psycopg.Connection, workspace: str, spec: JobSpec
    ) -> Job:
        spec.validate()
        require_workspace(conn, workspace)

        with conn.transaction():
            job, created = jobs.write_new_job(conn, workspace, spec)

        if created and job.trigger == "CRON":
            expression = job.cron_expression or ""
            _after_commit(
                conn,
                f"schedule {cron_job_name(workspace, job.id)}",
                lambda side: registration.schedule(side, workspace, job.id, expression),
            )
        return job

    def update_job(
        self, conn: psycopg.Connection, workspace: str, job_id: int, change: JobChange
    ) -> Job:
        change.validate()
        require_workspace(conn, workspace)

        with conn.transaction():
            old, new = jobs.write_next_version(conn, workspace, job_id, change)

        old_name = cron_job_name(workspace, old.id)
        _after_commit(
            conn,
            f"unschedule {old_name}",
            lambda side: side.execute("SELECT cron.unschedule(%s)", [old_name]),
        )
        expression = new.cron_expression or ""
        _after_commit(
            conn,
            f"schedule {cron_job_name(workspace, new.id)}",
            lambda side: registration.schedule(side, workspace, new.id, expression),
        )
        return new

    def cancel_job(self, conn: psycopg.Connection, workspace: str, job_id: int) -> Job:
        require_workspace(conn, workspace)

        with conn.transaction():
            job = jobs.write_cancel(conn, workspace, job_id)

        if job.trigger == "CRON":
            name = cron_job_name(workspace, job.id)
            _after_commit(
                conn,
                f"unschedule {name}",
                lambda side: side.execute("SELECT cron.unschedule(%s)", [name]),
            )
        return job


def _after_commit(
    conn: psycopg.Connection, what: str, call: Callable[[psycopg.Connection], object]
) -> None:
    """Run ``call`` on a fresh autocommit connection; log and swallow any error.

    This is the defect being reproduced, on purpose.
    """
    try:
        with psycopg.connect(
            conn.info.dsn, password=conn.info.password, autocommit=True
        ) as side:
            call(side)
    except Exception as exc:  # the pre-fix code swallowed everything
        logger.warning("legacy: %s failed after commit, ignored: %s", what, exc)
