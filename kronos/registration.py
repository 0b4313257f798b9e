"""pg_cron registration of CRON jobs, on the caller's connection.

Every function here runs its statements on the connection it is given and
never commits: the caller decides the transaction, which is the whole point of
the fix this toolkit verifies. See https://github.com/citusdata/pg_cron for the
functions used (``cron.schedule`` upserts by name, ``cron.unschedule`` raises
when the name is unknown).
"""

from __future__ import annotations

import logging
import re

import psycopg
from psycopg import sql

__all__ = [
    "JOB_NAME_PREFIX",
    "cron_command",
    "cron_entries_of",
    "cron_job_name",
    "parse_cron_job_name",
    "schedule",
    "unschedule",
]

logger = logging.getLogger(__name__)

JOB_NAME_PREFIX = "kronos_"

_NAME = re.compile(r"^kronos_(?P<schema>.+)_(?P<job_id>[0-9]{1,19})$", re.DOTALL)

# What pg_cron runs on every tick: queue one execution of this job while it is
# ACTIVE. The idempotency key is the tick's minute (in UTC), so a tick that is
# retried, or two schedulers racing, queue it once.
_COMMAND = (
    "INSERT INTO {schema}.executions (job_id, status, idempotency_key)"
    " SELECT j.id, 'QUEUED', 'cron:' || to_char(date_trunc('minute',"
    " now() AT TIME ZONE 'UTC'), 'YYYY-MM-DD\"T\"HH24:MI\"Z\"')"
    " FROM {schema}.jobs j WHERE j.id = {job_id} AND j.status = 'ACTIVE'"
    " ON CONFLICT (job_id, idempotency_key) DO NOTHING"
)


def cron_job_name(schema: str, job_id: int) -> str:
    """The ``cron.job.jobname`` of a job: ``kronos_<schema>_<job id>``."""
    return f"{JOB_NAME_PREFIX}{schema}_{int(job_id)}"


def parse_cron_job_name(jobname: str | None) -> tuple[str, int] | None:
    """``(schema, job id)`` from a Kronos job name, ``None`` for other names."""
    if not jobname:
        return None
    match = _NAME.match(jobname)
    if match is None:
        return None
    return match.group("schema"), int(match.group("job_id"))


def cron_command(schema: str, job_id: int) -> sql.Composed:
    """The SQL pg_cron runs for a job, with every identifier quoted by psycopg."""
    return sql.SQL(_COMMAND).format(
        schema=sql.Identifier(schema), job_id=sql.Literal(int(job_id))
    )


def schedule(
    conn: psycopg.Connection, schema: str, job_id: int, cron_expression: str
) -> int:
    """Register (or replace) the job's pg_cron entry; return its ``jobid``."""
    name = cron_job_name(schema, job_id)
    command = cron_command(schema, job_id).as_string(conn)

    row = conn.execute(
        "SELECT cron.schedule(%s, %s, %s)", [name, cron_expression, command]
    ).fetchone()

    logger.debug("scheduled %s (%s) as cron job %s", name, cron_expression, row[0])
    return int(row[0])


def unschedule(conn: psycopg.Connection, schema: str, job_id: int) -> bool:
    """Remove the job's pg_cron entry if there is one; say whether there was.

    ``cron.unschedule(name)`` raises when the entry does not exist, and a job
    whose entry is already gone must still be cancellable, so the entry is
    looked up first and a missing one is not an error. Any error from pg_cron
    itself propagates. The caller holds the job row's lock, so no other Kronos
    operation can remove the entry between the two statements.

    The entry may belong to another role than the caller's (a job created by
    the application, cancelled by an operator): ``cron.unschedule(name)`` only
    finds the caller's own entries, so such an entry is removed by its job id,
    which pg_cron allows a superuser and refuses anyone else with an error.
    Skipping it instead would retire the job and leave its schedule firing.
    """
    name = cron_job_name(schema, job_id)

    rows = conn.execute(
        "SELECT jobid, username = current_user FROM cron.job WHERE jobname = %s",
        [name],
    ).fetchall()
    if not rows:
        logger.debug("no cron entry %s to unschedule", name)
        return False

    for jobid, own in rows:
        if own:
            conn.execute("SELECT cron.unschedule(%s)", [name])
        else:
            conn.execute("SELECT cron.unschedule(%s::bigint)", [jobid])
    logger.debug("unscheduled %s (%d entries)", name, len(rows))
    return True


def cron_entries_of(conn: psycopg.Connection, schema: str) -> list[int]:
    """``jobid`` of every pg_cron entry that belongs to ``schema``'s jobs."""
    rows = conn.execute(
        "SELECT jobid, jobname FROM cron.job WHERE jobname LIKE 'kronos\\_%'"
    ).fetchall()
    return [
        jobid
        for jobid, jobname in rows
        if (parsed := parse_cron_job_name(jobname)) and parsed[0] == schema
    ]
