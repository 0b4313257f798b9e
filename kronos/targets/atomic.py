"""The fix: the row write and the pg_cron call in one transaction.

A pg_cron error aborts the transaction, so the caller sees the error and the
database is exactly as it was; unscheduling a job whose entry is already gone
is not an error. The row lock taken by update and cancel serialises concurrent
requests on one job, so the loser of a race gets :class:`JobNotActive`.
"""

from __future__ import annotations

import logging

import psycopg

from kronos import jobs, registration
from kronos.jobs import Job, JobChange, JobSpec
from kronos.workspace import require_workspace

__all__ = ["AtomicTarget"]

logger = logging.getLogger(__name__)


class AtomicTarget:
    """Job lifecycle with pg_cron registration on the caller's transaction."""

    name = "atomic"
    positive_control = False

    def create_job(
        self, conn: psycopg.Connection, workspace: str, spec: JobSpec
    ) -> Job:
        spec.validate()
        require_workspace(conn, workspace)

        with conn.transaction():
            job, created = jobs.write_new_job(conn, workspace, spec)
            if created and job.trigger == "CRON":
                registration.schedule(
                    conn, workspace, job.id, job.cron_expression or ""
                )

        logger.debug("created %s job %s in %r", job.trigger, job.id, workspace)
        return job

    def update_job(
        self, conn: psycopg.Connection, workspace: str, job_id: int, change: JobChange
    ) -> Job:
        change.validate()
        require_workspace(conn, workspace)

        with conn.transaction():
            old, new = jobs.write_next_version(conn, workspace, job_id, change)
            registration.unschedule(conn, workspace, old.id)
            registration.schedule(conn, workspace, new.id, new.cron_expression or "")

        logger.debug("updated job %s to version %s in %r", old.id, new.id, workspace)
        return new

    def cancel_job(self, conn: psycopg.Connection, workspace: str, job_id: int) -> Job:
        require_workspace(conn, workspace)

        with conn.transaction():
            job = jobs.write_cancel(conn, workspace, job_id)
            if job.trigger == "CRON":
                registration.unschedule(conn, workspace, job.id)

        logger.debug("cancelled job %s in %r", job.id, workspace)
        return job
