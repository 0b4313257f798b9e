"""The divergence checker: every way ``jobs`` and ``cron.job`` disagree.

It reads, never writes: all queries run in one READ ONLY, REPEATABLE READ
transaction, so the job tables and ``cron.job`` are seen at one instant, and
the transaction is rolled back at the end. The number of queries depends on
nothing but whether the schemas were given; the job rows of all workspaces
come back in one ``UNION ALL`` query and the pg_cron entries in another.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

import pandas as pd
import psycopg
from psycopg import sql
from psycopg.pq import TransactionStatus

from kronos.errors import (
    DivergenceError,
    EnvironmentProblem,
    InvalidWorkspace,
    KronosUsageError,
)
from kronos.registration import cron_command, cron_job_name, parse_cron_job_name
from kronos.workspace import list_workspaces

__all__ = [
    "COLUMNS",
    "KINDS",
    "assert_in_sync",
    "find_divergences",
    "format_report",
]

logger = logging.getLogger(__name__)

KINDS = (
    "missing schedule",
    "orphan schedule",
    "schedule mismatch",
    "command mismatch",
    "inactive entry",
)

COLUMNS = [
    "kind",
    "workspace",
    "job_id",
    "job_status",
    "jobname",
    "cron_jobid",
    "expected",
    "actual",
    "explanation",
]


def find_divergences(
    conn: psycopg.Connection, schemas: Iterable[str] | None = None
) -> pd.DataFrame:
    """Every difference between ACTIVE CRON jobs and their pg_cron entries.

    ``schemas`` limits the check to those workspaces; by default every
    registered workspace is checked, and a Kronos entry in ``cron.job`` whose
    workspace no longer exists is reported as an orphan. The result has one
    row per difference, with the columns in :data:`COLUMNS`; it is empty when
    the tables agree. A role that pg_cron's row security limits to its own
    entries gets a logged warning and ``attrs["partial_view"]`` saying so.
    """
    if conn.info.transaction_status != TransactionStatus.IDLE:
        raise KronosUsageError(
            "the checker needs a connection with no transaction open; commit or "
            "roll back first"
        )

    with conn.transaction(force_rollback=True):
        conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        scope = _scope(conn, schemas)
        jobs = _cron_jobs(conn, scope)
        entries = _cron_entries(conn, scope if schemas is not None else None)
        found = _compare(conn, jobs, entries)
        partial = _partial_view(conn)

    if partial:
        logger.warning("%s", partial)
        found.attrs["partial_view"] = partial
    logger.debug("checked %d workspaces: %d divergences", len(scope), len(found))
    return found


def assert_in_sync(
    conn: psycopg.Connection, schemas: Iterable[str] | None = None
) -> None:
    """Raise :class:`DivergenceError` with a readable report if anything differs."""
    found = find_divergences(conn, schemas)
    if not found.empty:
        raise DivergenceError(format_report(found))


def format_report(found: pd.DataFrame) -> str:
    """A divergence table as numbered sentences a person can follow."""
    if found.empty:
        return "jobs and cron.job agree"
    lines = [f"{len(found)} divergence(s) between jobs and cron.job:"]
    for number, row in enumerate(found.itertuples(index=False), start=1):
        lines.append(f"  {number}. {row.kind}: {row.explanation}")
    return "\n".join(lines)


def _partial_view(conn: psycopg.Connection) -> str | None:
    """Why this role may not see every ``cron.job`` entry, if it may not.

    pg_cron's row security shows a role only the entries it owns; a role that
    is neither superuser nor BYPASSRLS would report another role's entries as
    missing and never see their orphans.
    """
    row = conn.execute(
        "SELECT r.rolsuper OR r.rolbypassrls, c.relrowsecurity"
        " FROM pg_roles r, pg_class c"
        " WHERE r.rolname = current_user AND c.oid = 'cron.job'::regclass"
    ).fetchone()
    if row is None or row[0] or not row[1]:
        return None
    return (
        f"role {conn.info.user!r} sees only its own cron.job entries (pg_cron's "
        "row security): entries of other roles count as missing and their "
        "orphans stay hidden; audit as a superuser or a role with BYPASSRLS"
    )


def _scope(conn: psycopg.Connection, schemas: Iterable[str] | None) -> list[str]:
    if schemas is None:
        return list_workspaces(conn)

    wanted = sorted(set(schemas))
    rows = conn.execute(
        "SELECT n.nspname FROM pg_namespace n"
        " WHERE n.nspname = ANY(%s) AND to_regclass(format('%%I.jobs', n.nspname))"
        " IS NOT NULL",
        [wanted],
    ).fetchall()
    missing = sorted(set(wanted) - {row[0] for row in rows})
    if missing:
        raise InvalidWorkspace(
            f"no workspace schema with a jobs table: {', '.join(map(repr, missing))}"
        )
    return wanted


def _cron_jobs(conn: psycopg.Connection, scope: list[str]) -> pd.DataFrame:
    """All CRON job versions of the workspaces, in one query."""
    columns = ["workspace", "job_id", "job_status", "cron_expression"]
    if not scope:
        return pd.DataFrame(columns=columns)

    parts = [
        sql.SQL(
            "SELECT {name}::text, id, status, cron_expression FROM {jobs}"
            " WHERE trigger = 'CRON'"
        ).format(name=sql.Literal(schema), jobs=sql.Identifier(schema, "jobs"))
        for schema in scope
    ]
    rows = conn.execute(sql.SQL(" UNION ALL ").join(parts)).fetchall()
    return pd.DataFrame(rows, columns=columns)


def _cron_entries(conn: psycopg.Connection, scope: list[str] | None) -> pd.DataFrame:
    """The Kronos entries of ``cron.job`` for this database, in one query."""
    installed = conn.execute("SELECT to_regclass('cron.job') IS NOT NULL").fetchone()
    if not installed[0]:
        raise EnvironmentProblem(
            f"pg_cron is not installed in database {conn.info.dbname!r}: run "
            "CREATE EXTENSION pg_cron there (it must also be in "
            "shared_preload_libraries and cron.database_name)"
        )

    try:
        rows = conn.execute(
            "SELECT jobid, jobname, schedule, command, active FROM cron.job"
            " WHERE jobname LIKE 'kronos\\_%%' AND database = current_database()"
            " ORDER BY jobid",
            [],
        ).fetchall()
    except psycopg.errors.InsufficientPrivilege as exc:
        raise EnvironmentProblem(
            f"role {conn.info.user!r} cannot read cron.job ({exc}); grant it USAGE "
            "on schema cron, and BYPASSRLS to see other roles' entries"
        ) from exc

    records = []
    for jobid, jobname, schedule, command, active in rows:
        parsed = parse_cron_job_name(jobname)
        if parsed is None or (scope is not None and parsed[0] not in scope):
            continue
        records.append(
            (parsed[0], parsed[1], jobname, jobid, schedule, command, active)
        )
    return pd.DataFrame(
        records,
        columns=[
            "workspace",
            "job_id",
            "jobname",
            "cron_jobid",
            "schedule",
            "command",
            "active",
        ],
    )


def _compare(
    conn: psycopg.Connection, jobs: pd.DataFrame, entries: pd.DataFrame
) -> pd.DataFrame:
    status = {(row.workspace, row.job_id): row.job_status for row in jobs.itertuples()}
    active = jobs[jobs["job_status"] == "ACTIVE"]
    merged = active.merge(
        entries, how="outer", on=["workspace", "job_id"], indicator="side"
    )

    found: list[dict] = []
    for row in merged.itertuples(index=False):
        workspace, job_id = row.workspace, int(row.job_id)
        name = cron_job_name(workspace, job_id)
        where = f"job {job_id} in workspace {workspace!r}"
        base = {"workspace": workspace, "job_id": job_id, "jobname": name}

        if row.side == "left_only":
            found.append(
                {
                    **base,
                    "kind": "missing schedule",
                    "job_status": "ACTIVE",
                    "cron_jobid": None,
                    "expected": row.cron_expression,
                    "actual": None,
                    "explanation": (
                        f"{where} is ACTIVE on {row.cron_expression!r} but pg_cron has "
                        f"no entry {name}, so it never runs"
                    ),
                }
            )
            continue

        cron_jobid = int(row.cron_jobid)
        base["cron_jobid"] = cron_jobid
        if row.side == "right_only":
            job_status = status.get((workspace, job_id))
            why = (
                f"{where} is {job_status}"
                if job_status
                else f"there is no CRON job {job_id} in workspace {workspace!r}"
            )
            found.append(
                {
                    **base,
                    "kind": "orphan schedule",
                    "job_status": job_status,
                    "expected": None,
                    "actual": row.schedule,
                    "explanation": (
                        f"pg_cron entry {name} (jobid {cron_jobid}) fires on "
                        f"{row.schedule!r} but {why}"
                    ),
                }
            )
            continue

        base["job_status"] = "ACTIVE"
        if row.schedule != row.cron_expression:
            found.append(
                {
                    **base,
                    "kind": "schedule mismatch",
                    "expected": row.cron_expression,
                    "actual": row.schedule,
                    "explanation": (
                        f"{where} is on {row.cron_expression!r} but pg_cron entry "
                        f"{name} fires on {row.schedule!r}"
                    ),
                }
            )
        expected_command = cron_command(workspace, job_id).as_string(conn)
        if row.command != expected_command:
            found.append(
                {
                    **base,
                    "kind": "command mismatch",
                    "expected": expected_command,
                    "actual": row.command,
                    "explanation": (
                        f"pg_cron entry {name} runs {row.command!r} instead of the "
                        f"command that queues {where}"
                    ),
                }
            )
        if not bool(row.active):
            found.append(
                {
                    **base,
                    "kind": "inactive entry",
                    "expected": "active",
                    "actual": "inactive",
                    "explanation": (
                        f"pg_cron entry {name} for {where} is inactive, so the job "
                        "never runs"
                    ),
                }
            )

    frame = pd.DataFrame(found, columns=COLUMNS)
    if not frame.empty:
        frame = frame.sort_values(["workspace", "job_id", "kind"], ignore_index=True)
    return frame.astype({"job_id": "Int64", "cron_jobid": "Int64"})
