"""Workspaces: one PostgreSQL schema per tenant, as Kronos lays them out.

A workspace schema holds ``endpoints``, ``jobs`` and ``executions``; the
registry ``public.workspaces`` lists them, so that the checker knows which
schemas to read without guessing from the catalog.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import psycopg
from psycopg import sql

from kronos.errors import InvalidWorkspace
from kronos.validation import validate_workspace_name

__all__ = [
    "Endpoint",
    "add_endpoint",
    "create_workspace",
    "drop_workspace",
    "ensure_registry",
    "list_workspaces",
]

logger = logging.getLogger(__name__)

_REGISTRY = """
CREATE TABLE IF NOT EXISTS public.workspaces (
    schema_name text PRIMARY KEY,
    created_at timestamptz NOT NULL DEFAULT now()
)
"""

# The layout of one workspace. {s} is the quoted schema name.
_SCHEMA = """
CREATE SCHEMA {s};

CREATE TABLE {s}.endpoints (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name text NOT NULL UNIQUE,
    url text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE {s}.jobs (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    endpoint_id bigint NOT NULL REFERENCES {s}.endpoints (id),
    name text NOT NULL,
    trigger text NOT NULL CHECK (trigger IN ('IMMEDIATE', 'DELAYED', 'CRON')),
    status text NOT NULL DEFAULT 'ACTIVE' CHECK (status IN ('ACTIVE', 'RETIRED')),
    cron_expression text,
    timezone text,
    run_at timestamptz,
    idempotency_key text,
    payload jsonb NOT NULL DEFAULT '{{}}'::jsonb,
    version integer NOT NULL DEFAULT 1 CHECK (version >= 1),
    previous_version_id bigint UNIQUE REFERENCES {s}.jobs (id),
    replaced_by_id bigint UNIQUE REFERENCES {s}.jobs (id),
    created_at timestamptz NOT NULL DEFAULT now(),
    retired_at timestamptz,
    CHECK ((trigger = 'CRON') = (cron_expression IS NOT NULL)),
    CHECK (trigger <> 'CRON' OR timezone IS NOT NULL),
    CHECK (trigger <> 'DELAYED' OR (run_at IS NOT NULL
                                    AND idempotency_key IS NOT NULL)),
    CHECK ((status = 'RETIRED') = (retired_at IS NOT NULL)),
    CHECK (replaced_by_id IS NULL OR status = 'RETIRED'),
    CHECK ((version = 1) = (previous_version_id IS NULL))
);

CREATE INDEX jobs_status_trigger ON {s}.jobs (status, trigger);

CREATE UNIQUE INDEX jobs_delayed_idempotency
    ON {s}.jobs (endpoint_id, idempotency_key) WHERE trigger = 'DELAYED';

CREATE TABLE {s}.executions (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    job_id bigint NOT NULL REFERENCES {s}.jobs (id),
    status text NOT NULL CHECK (status IN ('PENDING', 'QUEUED', 'RUNNING',
                                           'SUCCEEDED', 'FAILED', 'CANCELLED')),
    idempotency_key text NOT NULL,
    run_at timestamptz NOT NULL DEFAULT now(),
    created_at timestamptz NOT NULL DEFAULT now()
);

CREATE UNIQUE INDEX executions_dedup ON {s}.executions (job_id, idempotency_key);

CREATE INDEX executions_status_run_at ON {s}.executions (status, run_at);
"""


@dataclass(frozen=True)
class Endpoint:
    """Where a job's executions are delivered."""

    workspace: str
    id: int
    name: str
    url: str


def ensure_registry(conn: psycopg.Connection) -> None:
    """Create ``public.workspaces`` if it is not there yet."""
    with conn.transaction():
        conn.execute(_REGISTRY)


def create_workspace(conn: psycopg.Connection, name: str) -> str:
    """Create the schema of a new workspace and register it; return its name.

    Raises :class:`InvalidWorkspace` if the name is unusable or already taken.
    """
    validate_workspace_name(name)
    ensure_registry(conn)

    with conn.transaction():
        taken = conn.execute(
            "SELECT 1 FROM pg_namespace WHERE nspname = %s", [name]
        ).fetchone()
        if taken:
            raise InvalidWorkspace(
                f"schema {name!r} already exists; pick another workspace name"
            )
        conn.execute(sql.SQL(_SCHEMA).format(s=sql.Identifier(name)))
        conn.execute("INSERT INTO public.workspaces (schema_name) VALUES (%s)", [name])

    logger.debug("created workspace %r", name)
    return name


def drop_workspace(conn: psycopg.Connection, name: str) -> None:
    """Drop a workspace's schema, its registry row and its pg_cron entries.

    Only entries named ``kronos_<name>_<digits>`` are removed, so nothing that
    belongs to another workspace or to another application is touched.
    """
    from kronos.registration import cron_entries_of

    with conn.transaction():
        for jobid in cron_entries_of(conn, name):
            conn.execute("SELECT cron.unschedule(%s::bigint)", [jobid])
        conn.execute(
            sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(name))
        )
        conn.execute("DELETE FROM public.workspaces WHERE schema_name = %s", [name])

    logger.debug("dropped workspace %r", name)


def list_workspaces(conn: psycopg.Connection) -> list[str]:
    """Names of the registered workspaces whose schema exists, sorted."""
    exists = conn.execute(
        "SELECT to_regclass('public.workspaces') IS NOT NULL"
    ).fetchone()[0]
    if not exists:
        return []
    rows = conn.execute(
        "SELECT w.schema_name FROM public.workspaces w"
        " JOIN pg_namespace n ON n.nspname = w.schema_name"
        " ORDER BY 1"
    ).fetchall()
    return [row[0] for row in rows]


def add_endpoint(
    conn: psycopg.Connection, workspace: str, name: str, url: str
) -> Endpoint:
    """Add an endpoint to a workspace and return it."""
    if not name or not url:
        raise InvalidWorkspace("an endpoint needs a non-empty name and url")
    require_workspace(conn, workspace)

    with conn.transaction():
        row = conn.execute(
            sql.SQL(
                "INSERT INTO {}.endpoints (name, url) VALUES (%s, %s) RETURNING id"
            ).format(sql.Identifier(workspace)),
            [name, url],
        ).fetchone()

    return Endpoint(workspace=workspace, id=row[0], name=name, url=url)


def require_workspace(conn: psycopg.Connection, workspace: str) -> None:
    """Raise :class:`InvalidWorkspace` unless ``workspace`` has a jobs table."""
    if not isinstance(workspace, str) or not workspace:
        raise InvalidWorkspace(f"workspace must be a non-empty string: {workspace!r}")
    found = conn.execute(
        "SELECT to_regclass(format('%%I.jobs', %s::text)) IS NOT NULL", [workspace]
    ).fetchone()[0]
    if not found:
        raise InvalidWorkspace(
            f"workspace {workspace!r} does not exist; create it with "
            "create_workspace() first"
        )
