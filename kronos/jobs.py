"""Jobs: the records, the input they are made from, and the row operations.

The row operations here are the building blocks both targets share; they run
on the caller's connection and never open or close a transaction. What makes a
target atomic or not is only how it orders these calls around its commits.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

import psycopg
from psycopg import sql
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from kronos.errors import EndpointNotFound, InvalidJob, JobNotActive, JobNotFound
from kronos.validation import (
    check_text,
    validate_cron_expression,
    validate_time_zone,
)
from kronos.workspace import require_workspace

__all__ = [
    "TRIGGERS",
    "Job",
    "JobChange",
    "JobSpec",
    "get_job",
    "list_versions",
]

TRIGGERS = ("IMMEDIATE", "DELAYED", "CRON")

_JOB_COLUMNS = (
    "id, endpoint_id, name, trigger, status, cron_expression, timezone, run_at,"
    " idempotency_key, payload, version, previous_version_id, replaced_by_id,"
    " created_at, retired_at"
)


@dataclass(frozen=True)
class JobSpec:
    """What a caller asks for when creating a job. Use the class methods."""

    endpoint_id: int
    name: str
    trigger: str
    cron_expression: str | None = None
    timezone: str | None = None
    run_at: datetime | None = None
    idempotency_key: str | None = None
    payload: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def immediate(
        cls, endpoint_id: int, name: str, payload: Mapping[str, Any] | None = None
    ) -> JobSpec:
        """A job run once, now: the job and a QUEUED execution."""
        return cls(endpoint_id, name, "IMMEDIATE", payload=dict(payload or {}))

    @classmethod
    def delayed(
        cls,
        endpoint_id: int,
        name: str,
        run_at: datetime | None,
        idempotency_key: str | None,
        payload: Mapping[str, Any] | None = None,
    ) -> JobSpec:
        """A job run once at ``run_at``; the key makes a repeated create safe."""
        return cls(
            endpoint_id,
            name,
            "DELAYED",
            run_at=run_at,
            idempotency_key=idempotency_key,
            payload=dict(payload or {}),
        )

    @classmethod
    def cron(
        cls,
        endpoint_id: int,
        name: str,
        cron_expression: str,
        timezone: str = "UTC",
        payload: Mapping[str, Any] | None = None,
    ) -> JobSpec:
        """A recurring job whose schedule pg_cron runs."""
        return cls(
            endpoint_id,
            name,
            "CRON",
            cron_expression=cron_expression,
            timezone=timezone,
            payload=dict(payload or {}),
        )

    def validate(self) -> JobSpec:
        """Return the spec if it is well formed; raise a usage error if not."""
        if self.trigger not in TRIGGERS:
            raise InvalidJob(
                f"unknown trigger {self.trigger!r}; use one of {', '.join(TRIGGERS)}"
            )
        if not isinstance(self.name, str) or not self.name.strip():
            raise InvalidJob("a job needs a non-empty name")
        check_text("job name", self.name, error=InvalidJob)
        if not isinstance(self.endpoint_id, int) or isinstance(self.endpoint_id, bool):
            raise InvalidJob(f"endpoint_id must be an integer: {self.endpoint_id!r}")
        _validate_payload(self.payload)

        if self.trigger == "CRON":
            validate_cron_expression(self.cron_expression)
            validate_time_zone(self.timezone)
        elif self.cron_expression is not None:
            raise InvalidJob(f"a {self.trigger} job takes no cron expression")

        if self.trigger == "DELAYED":
            if not isinstance(self.run_at, datetime) or self.run_at.tzinfo is None:
                raise InvalidJob(
                    "a DELAYED job needs run_at, a datetime with a time zone"
                )
            if not isinstance(self.idempotency_key, str) or not self.idempotency_key:
                raise InvalidJob("a DELAYED job needs an idempotency_key")
            check_text("idempotency_key", self.idempotency_key, error=InvalidJob)
        elif self.run_at is not None or self.idempotency_key is not None:
            raise InvalidJob(f"a {self.trigger} job takes no run_at or idempotency_key")
        return self


@dataclass(frozen=True)
class JobChange:
    """What an update of a CRON job changes; ``None`` keeps the current value."""

    cron_expression: str | None = None
    timezone: str | None = None
    payload: Mapping[str, Any] | None = None

    def validate(self) -> JobChange:
        """Return the change if it is well formed; raise a usage error if not."""
        if (
            self.cron_expression is None
            and self.timezone is None
            and (self.payload is None)
        ):
            raise InvalidJob("an update must change the schedule, time zone or payload")
        if self.cron_expression is not None:
            validate_cron_expression(self.cron_expression)
        if self.timezone is not None:
            validate_time_zone(self.timezone)
        if self.payload is not None:
            _validate_payload(self.payload)
        return self


def _validate_payload(payload: object) -> None:
    """Refuse what ``jsonb`` would refuse, before anything is written.

    jsonb stores no NUL character and no NaN or infinity; left to the server,
    they surface as internal errors instead of the caller's mistake.
    """
    if not isinstance(payload, Mapping):
        raise InvalidJob("payload must be a mapping (a JSON object)")
    try:
        json.dumps(payload, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise InvalidJob(f"payload is not JSON: {exc}") from exc
    if _has_bad_text(payload):
        raise InvalidJob(
            "payload cannot contain a NUL character (\\u0000) or a lone surrogate"
        )


def _has_bad_text(value: object) -> bool:
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return True
        return "\x00" in value
    if isinstance(value, Mapping):
        return any(_has_bad_text(k) or _has_bad_text(v) for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return any(_has_bad_text(item) for item in value)
    return False


@dataclass(frozen=True)
class Job:
    """One version of a job, as stored in its workspace's ``jobs`` table."""

    workspace: str
    id: int
    endpoint_id: int
    name: str
    trigger: str
    status: str
    cron_expression: str | None
    timezone: str | None
    run_at: datetime | None
    idempotency_key: str | None
    payload: dict[str, Any]
    version: int
    previous_version_id: int | None
    replaced_by_id: int | None
    created_at: datetime
    retired_at: datetime | None

    @property
    def is_active(self) -> bool:
        return self.status == "ACTIVE"


def _job(workspace: str, row: dict[str, Any]) -> Job:
    return Job(workspace=workspace, **row)


def _table(workspace: str, table: str) -> sql.Composed:
    return sql.SQL("{}.{}").format(sql.Identifier(workspace), sql.Identifier(table))


def get_job(conn: psycopg.Connection, workspace: str, job_id: int) -> Job:
    """The job version with this id; :class:`JobNotFound` if there is none."""
    require_workspace(conn, workspace)
    return _fetch(conn, workspace, job_id, lock=False)


def list_versions(conn: psycopg.Connection, workspace: str, job_id: int) -> list[Job]:
    """Every version in the chain that ``job_id`` belongs to, oldest first."""
    first = get_job(conn, workspace, job_id)
    query = sql.SQL(
        "WITH RECURSIVE back AS ("
        " SELECT id, previous_version_id FROM {jobs} WHERE id = %s"
        " UNION ALL"
        " SELECT j.id, j.previous_version_id FROM {jobs} j"
        " JOIN back b ON j.id = b.previous_version_id"
        "), root AS (SELECT id FROM back WHERE previous_version_id IS NULL),"
        " chain AS ("
        " SELECT j.* FROM {jobs} j JOIN root ON j.id = root.id"
        " UNION ALL"
        " SELECT j.* FROM {jobs} j JOIN chain c ON j.previous_version_id = c.id"
        ") SELECT {columns} FROM chain ORDER BY version, id"
    ).format(jobs=_table(workspace, "jobs"), columns=sql.SQL(_JOB_COLUMNS))

    with conn.cursor(row_factory=dict_row) as cur:
        rows = cur.execute(query, [first.id]).fetchall()
    return [_job(workspace, row) for row in rows]


def _fetch(conn: psycopg.Connection, workspace: str, job_id: int, *, lock: bool) -> Job:
    if not isinstance(job_id, int) or isinstance(job_id, bool):
        raise JobNotFound(f"job id must be an integer: {job_id!r}")
    query = sql.SQL("SELECT {columns} FROM {jobs} WHERE id = %s{lock}").format(
        columns=sql.SQL(_JOB_COLUMNS),
        jobs=_table(workspace, "jobs"),
        lock=sql.SQL(" FOR UPDATE" if lock else ""),
    )
    with conn.cursor(row_factory=dict_row) as cur:
        row = cur.execute(query, [job_id]).fetchone()
    if row is None:
        raise JobNotFound(f"no job {job_id} in workspace {workspace!r}")
    return _job(workspace, row)


# Row operations shared by the targets. They assume a transaction is open.


def lock_active_job(conn: psycopg.Connection, workspace: str, job_id: int) -> Job:
    """Lock the job's row and return it; raise unless it is ACTIVE.

    The row lock serialises concurrent updates and cancels of one job, so two
    requests cannot both retire it and leave two ACTIVE versions behind.
    """
    job = _fetch(conn, workspace, job_id, lock=True)
    if not job.is_active:
        hint = (
            f"; its current version is job {job.replaced_by_id}"
            if job.replaced_by_id
            else ""
        )
        raise JobNotActive(
            f"job {job_id} in workspace {workspace!r} is {job.status}{hint}"
        )
    return job


def require_endpoint(
    conn: psycopg.Connection, workspace: str, endpoint_id: int
) -> None:
    """Raise :class:`EndpointNotFound` unless the endpoint exists."""
    found = conn.execute(
        sql.SQL("SELECT 1 FROM {} WHERE id = %s").format(
            _table(workspace, "endpoints")
        ),
        [endpoint_id],
    ).fetchone()
    if found is None:
        raise EndpointNotFound(
            f"no endpoint {endpoint_id} in workspace {workspace!r}; add it first"
        )


def insert_job(
    conn: psycopg.Connection,
    workspace: str,
    spec: JobSpec,
    *,
    version: int = 1,
    previous_version_id: int | None = None,
) -> Job | None:
    """Insert one ACTIVE job version and return it.

    A DELAYED job whose idempotency key is taken is not inserted and ``None``
    is returned: ``ON CONFLICT`` waits for a concurrent creator to finish, so
    the caller can then read the job that won.
    """
    conflict = "ON CONFLICT (endpoint_id, idempotency_key) WHERE trigger = 'DELAYED'"
    query = sql.SQL(
        "INSERT INTO {jobs} (endpoint_id, name, trigger, cron_expression, timezone,"
        " run_at, idempotency_key, payload, version, previous_version_id)"
        " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s) {conflict}"
        " RETURNING {columns}"
    ).format(
        jobs=_table(workspace, "jobs"),
        conflict=sql.SQL(conflict + " DO NOTHING" if spec.trigger == "DELAYED" else ""),
        columns=sql.SQL(_JOB_COLUMNS),
    )
    params = [
        spec.endpoint_id,
        spec.name,
        spec.trigger,
        spec.cron_expression,
        spec.timezone,
        spec.run_at,
        spec.idempotency_key,
        Jsonb(dict(spec.payload)),
        version,
        previous_version_id,
    ]
    with conn.cursor(row_factory=dict_row) as cur:
        row = cur.execute(query, params).fetchone()
    return None if row is None else _job(workspace, row)


def find_delayed(
    conn: psycopg.Connection, workspace: str, endpoint_id: int, key: str
) -> Job | None:
    """The DELAYED job created earlier with this idempotency key, if any."""
    query = sql.SQL(
        "SELECT {columns} FROM {jobs} WHERE trigger = 'DELAYED'"
        " AND endpoint_id = %s AND idempotency_key = %s"
    ).format(columns=sql.SQL(_JOB_COLUMNS), jobs=_table(workspace, "jobs"))
    with conn.cursor(row_factory=dict_row) as cur:
        row = cur.execute(query, [endpoint_id, key]).fetchone()
    return None if row is None else _job(workspace, row)


def retire_job(
    conn: psycopg.Connection,
    workspace: str,
    job_id: int,
    *,
    replaced_by_id: int | None = None,
) -> None:
    """Mark a job version RETIRED, linking it to its successor if it has one."""
    conn.execute(
        sql.SQL(
            "UPDATE {} SET status = 'RETIRED', retired_at = now(),"
            " replaced_by_id = %s WHERE id = %s"
        ).format(_table(workspace, "jobs")),
        [replaced_by_id, job_id],
    )


def link_successor(
    conn: psycopg.Connection, workspace: str, job_id: int, successor_id: int
) -> None:
    """Point a retired version at the version that replaced it."""
    conn.execute(
        sql.SQL("UPDATE {} SET replaced_by_id = %s WHERE id = %s").format(
            _table(workspace, "jobs")
        ),
        [successor_id, job_id],
    )


def insert_execution(
    conn: psycopg.Connection,
    workspace: str,
    job_id: int,
    *,
    status: str,
    idempotency_key: str,
    run_at: datetime | None = None,
) -> None:
    """Queue (or hold until ``run_at``) one execution of a job."""
    conn.execute(
        sql.SQL(
            "INSERT INTO {} (job_id, status, idempotency_key, run_at)"
            " VALUES (%s, %s, %s, coalesce(%s, now()))"
        ).format(_table(workspace, "executions")),
        [job_id, status, idempotency_key, run_at],
    )


def cancel_pending_executions(
    conn: psycopg.Connection, workspace: str, job_id: int
) -> int:
    """Cancel the job's executions that have not started; return how many."""
    cur = conn.execute(
        sql.SQL(
            "UPDATE {} SET status = 'CANCELLED'"
            " WHERE job_id = %s AND status IN ('PENDING', 'QUEUED')"
        ).format(_table(workspace, "executions")),
        [job_id],
    )
    return cur.rowcount


def next_version_spec(job: Job, change: JobChange) -> JobSpec:
    """The spec of the version that replaces ``job`` after ``change``."""
    spec = JobSpec.cron(
        job.endpoint_id,
        job.name,
        job.cron_expression or "",
        job.timezone or "UTC",
        job.payload,
    )
    updates: dict[str, Any] = {}
    if change.cron_expression is not None:
        updates["cron_expression"] = change.cron_expression
    if change.timezone is not None:
        updates["timezone"] = change.timezone
    if change.payload is not None:
        updates["payload"] = dict(change.payload)
    return replace(spec, **updates)


# The row writes of each operation, without any pg_cron call. The targets
# differ only in where they put the pg_cron call: inside the same transaction
# (atomic) or after its commit (legacy).


def write_new_job(
    conn: psycopg.Connection, workspace: str, spec: JobSpec
) -> tuple[Job, bool]:
    """Insert a job and its first execution; say whether it is new.

    A DELAYED job whose idempotency key was used before is not inserted again:
    the earlier job is returned with ``False``.
    """
    require_endpoint(conn, workspace, spec.endpoint_id)
    job = insert_job(conn, workspace, spec)
    if job is None:
        existing = find_delayed(
            conn, workspace, spec.endpoint_id, spec.idempotency_key or ""
        )
        assert existing is not None, "ON CONFLICT skipped the insert: the row exists"
        return existing, False

    if job.trigger == "IMMEDIATE":
        insert_execution(
            conn, workspace, job.id, status="QUEUED", idempotency_key="immediate"
        )
    elif job.trigger == "DELAYED":
        insert_execution(
            conn,
            workspace,
            job.id,
            status="PENDING",
            idempotency_key=job.idempotency_key or "",
            run_at=job.run_at,
        )
    return job, True


def write_next_version(
    conn: psycopg.Connection, workspace: str, job_id: int, change: JobChange
) -> tuple[Job, Job]:
    """Retire a CRON job's ACTIVE version and insert its successor."""
    old = lock_active_job(conn, workspace, job_id)
    if old.trigger != "CRON":
        raise InvalidJob(
            f"job {job_id} is a {old.trigger} job; only CRON jobs can be updated"
        )

    retire_job(conn, workspace, old.id)
    new = insert_job(
        conn,
        workspace,
        next_version_spec(old, change),
        version=old.version + 1,
        previous_version_id=old.id,
    )
    assert new is not None, "only a DELAYED insert can be skipped"
    link_successor(conn, workspace, old.id, new.id)
    return old, new


def write_cancel(conn: psycopg.Connection, workspace: str, job_id: int) -> Job:
    """Retire an ACTIVE job and cancel what it has not run; return it retired."""
    job = lock_active_job(conn, workspace, job_id)
    retire_job(conn, workspace, job.id)
    if job.trigger != "CRON":
        cancel_pending_executions(conn, workspace, job.id)
    return _fetch(conn, workspace, job.id, lock=False)
