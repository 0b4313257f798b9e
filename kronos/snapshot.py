"""Snapshots of one workspace, to hold an operation to all or nothing.

An operation that raised must leave the workspace's rows and its pg_cron
entries exactly as they were; comparing a snapshot from before with one from
after is how the harness proves it.
"""

from __future__ import annotations

from dataclasses import dataclass

import psycopg
from psycopg import sql

from kronos.registration import parse_cron_job_name

__all__ = ["Snapshot", "take_snapshot"]


@dataclass(frozen=True)
class Snapshot:
    """The jobs, executions and pg_cron entries of one workspace."""

    workspace: str
    jobs: tuple[tuple, ...]
    executions: tuple[tuple, ...]
    cron_entries: tuple[tuple, ...]

    def differences(self, other: Snapshot) -> list[str]:
        """Sentences naming what changed from ``self`` to ``other``."""
        changes = []
        for label in ("jobs", "executions", "cron_entries"):
            before, after = set(getattr(self, label)), set(getattr(other, label))
            for row in sorted(before - after, key=repr):
                changes.append(f"{label}: row removed or changed: {row}")
            for row in sorted(after - before, key=repr):
                changes.append(f"{label}: row added or changed: {row}")
        return changes


def take_snapshot(conn: psycopg.Connection, workspace: str) -> Snapshot:
    """Read one workspace's rows and entries in a single consistent snapshot."""
    schema = sql.Identifier(workspace)
    with conn.transaction(force_rollback=True):
        conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        jobs = conn.execute(
            sql.SQL(
                "SELECT id, endpoint_id, name, trigger, status, cron_expression,"
                " timezone, run_at, idempotency_key, payload::text, version,"
                " previous_version_id, replaced_by_id FROM {}.jobs ORDER BY id"
            ).format(schema)
        ).fetchall()
        executions = conn.execute(
            sql.SQL(
                "SELECT id, job_id, status, idempotency_key, run_at"
                " FROM {}.executions ORDER BY id"
            ).format(schema)
        ).fetchall()
        # A database without pg_cron (fault point extension.missing) has no
        # entries at all, which is what the snapshot must then say.
        entries = []
        if conn.execute("SELECT to_regclass('cron.job') IS NOT NULL").fetchone()[0]:
            entries = conn.execute(
                "SELECT jobid, jobname, schedule, command, active FROM cron.job"
                " WHERE jobname LIKE 'kronos\\_%' ORDER BY jobid"
            ).fetchall()

    mine = tuple(
        entry
        for entry in entries
        if (parsed := parse_cron_job_name(entry[1])) and parsed[0] == workspace
    )
    return Snapshot(workspace, tuple(jobs), tuple(executions), mine)
