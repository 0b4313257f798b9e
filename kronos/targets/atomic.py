"""The fix: the row write and the pg_cron call in one transaction.

A pg_cron error aborts the transaction, so the caller sees the error and the
database is exactly as it was; unscheduling a job whose entry is already gone
is not an error.
"""

from __future__ import annotations

import logging

import psycopg

from kronos import jobs, registration
from kronos.errors import InvalidJob
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
            jobs.require_endpoint(conn, workspace, spec.endpoint_id)
            job = jobs.insert_job(conn, workspace, spec)
            if job is None:
                return _existing_delayed(conn, workspace, spec)

            if job.trigger == "IMMEDIATE":
                jobs.insert_execution(
                    conn,
                    workspace,
                    job.id,
                    status="QUEUED",
                    idempotency_key="immediate",
                )
            elif job.trigger == "DELAYED":
                jobs.insert_execution(
                    conn,
                    workspace,
                    job.id,
                    status="PENDING",
                    idempotency_key=job.idempotency_key or "",
                    run_at=job.run_at,
                )
            else:
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
            old = jobs.lock_active_job(conn, workspace, job_id)
            if old.trigger != "CRON":
                raise InvalidJob(
                    f"job {job_id} is a {old.trigger} job; only CRON jobs can be "
                    "updated"
                )

            jobs.retire_job(conn, workspace, old.id)
            new = jobs.insert_job(
                conn,
                workspace,
                jobs.next_version_spec(old, change),
                version=old.version + 1,
                previous_version_id=old.id,
            )
            assert new is not None  # only DELAYED inserts can be skipped
            jobs.link_successor(conn, workspace, old.id, new.id)

            registration.unschedule(conn, workspace, old.id)
            registration.schedule(conn, workspace, new.id, new.cron_expression or "")

        logger.debug("updated job %s to version %s in %r", old.id, new.id, workspace)
        return new

    def cancel_job(self, conn: psycopg.Connection, workspace: str, job_id: int) -> Job:
        require_workspace(conn, workspace)

        with conn.transaction():
            job = jobs.lock_active_job(conn, workspace, job_id)
            jobs.retire_job(conn, workspace, job.id)
            if job.trigger == "CRON":
                registration.unschedule(conn, workspace, job.id)
            else:
                jobs.cancel_pending_executions(conn, workspace, job.id)
            retired = jobs.get_job(conn, workspace, job.id)

        logger.debug("cancelled job %s in %r", job.id, workspace)
        return retired


def _existing_delayed(conn: psycopg.Connection, workspace: str, spec: JobSpec) -> Job:
    existing = jobs.find_delayed(
        conn, workspace, spec.endpoint_id, spec.idempotency_key or ""
    )
    assert existing is not None, "ON CONFLICT skipped the insert, so the row exists"
    return existing
