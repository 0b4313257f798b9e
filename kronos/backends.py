"""Where the database comes from: a DSN you give, an embedded server, or a container.

One function, :func:`resolve_backend`, picks the backend and starts or checks
it, so the pytest plugin, the command line and notebooks agree on the order:

1. the backend the caller names (``--kronos-backend`` / ``KRONOS_BACKEND``);
2. otherwise ``dsn`` when a DSN is given (``--kronos-dsn`` / ``KRONOS_DSN``);
3. otherwise ``embedded``, the local server that can be crashed and restarted.

A DSN backend is someone's own database, so it is checked before use (pg_cron
installed, the role able to schedule and unschedule its own jobs) and the
toolkit only ever removes what it created there: workspaces with unique names
and their ``cron.job`` entries.
"""

from __future__ import annotations

import logging
import os
import uuid
from collections.abc import Callable, Mapping
from types import TracebackType

import psycopg
from psycopg.conninfo import conninfo_to_dict

from kronos.errors import EnvironmentProblem, KronosUsageError

__all__ = ["BACKENDS", "Backend", "choose_backend", "resolve_backend", "verify_dsn"]

logger = logging.getLogger(__name__)

BACKENDS = ("dsn", "embedded", "testcontainers")

_GRANTS_HINT = (
    "As a superuser, run in that database: GRANT USAGE ON SCHEMA cron TO {role}; "
    "GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA cron TO {role}; or use a role that "
    "already manages pg_cron jobs."
)


class Backend:
    """A running PostgreSQL with pg_cron that the toolkit may use, and how to let go.

    ``server`` is the :class:`~kronos.server.EmbeddedServer` for the embedded
    backend (crash tests need it) and ``None`` otherwise.
    """

    def __init__(
        self,
        kind: str,
        dsn: str,
        *,
        server_version: str,
        pg_cron_version: str,
        location: str,
        server: object | None = None,
        closer: Callable[[], None] | None = None,
    ) -> None:
        self.kind = kind
        self.dsn = dsn
        self.server_version = server_version
        self.pg_cron_version = pg_cron_version
        self.location = location
        self.server = server
        self._closer = closer

    def describe(self) -> str:
        """One line for headers and logs: kind, versions, where."""
        return (
            f"{self.kind}: PostgreSQL {self.server_version}, "
            f"pg_cron {self.pg_cron_version} ({self.location})"
        )

    def close(self) -> None:
        """Stop what this backend started (nothing for a DSN); safe to repeat."""
        closer, self._closer = self._closer, None
        if closer is not None:
            closer()

    def __enter__(self) -> Backend:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<Backend {self.describe()}>"


def choose_backend(
    kind: str | None = None,
    dsn: str | None = None,
    environ: Mapping[str, str] | None = None,
) -> tuple[str, str | None]:
    """Which backend and DSN the arguments and environment ask for, without starting.

    Explicit arguments win over ``KRONOS_BACKEND`` and ``KRONOS_DSN``.
    """
    env = os.environ if environ is None else environ
    dsn = dsn or env.get("KRONOS_DSN") or None
    kind = kind or env.get("KRONOS_BACKEND") or ("dsn" if dsn else "embedded")

    kind = kind.strip().lower()
    if kind not in BACKENDS:
        raise KronosUsageError(
            f"unknown backend {kind!r}; choose one of {', '.join(BACKENDS)} "
            "(--kronos-backend, --backend or KRONOS_BACKEND)"
        )
    if kind == "dsn" and not dsn:
        raise KronosUsageError(
            "the dsn backend needs a connection string: pass --kronos-dsn / --dsn "
            "or set KRONOS_DSN, for example "
            "'host=127.0.0.1 port=5432 dbname=app user=app'"
        )
    if kind != "dsn" and dsn:
        logger.warning("backend %s was chosen; ignoring the DSN given", kind)
        dsn = None
    return kind, dsn


def resolve_backend(
    kind: str | None = None,
    dsn: str | None = None,
    *,
    manage: bool = True,
    environ: Mapping[str, str] | None = None,
) -> Backend:
    """Choose the backend (see :func:`choose_backend`), start or check it, return it.

    ``manage=False`` skips, for a DSN, the check that the role can schedule
    jobs, for read-only use such as ``kronos-atomicity check``. The caller
    closes the result (it is a context manager).
    """
    kind, dsn = choose_backend(kind, dsn, environ)

    if kind == "dsn":
        assert dsn is not None
        return _dsn_backend(dsn, manage=manage)
    if kind == "embedded":
        return _embedded_backend()

    from kronos.container import start_container

    return start_container()


def _dsn_backend(dsn: str, *, manage: bool) -> Backend:
    server_version, cron_version = verify_dsn(dsn, manage=manage)
    return Backend(
        "dsn",
        dsn,
        server_version=server_version,
        pg_cron_version=cron_version,
        location=_where(dsn),
    )


def _embedded_backend() -> Backend:
    from kronos.server import EmbeddedServer

    server = EmbeddedServer().start()
    try:
        backend = Backend(
            "embedded",
            server.dsn,
            server_version=server.server_version,
            pg_cron_version=server.pg_cron_version,
            location=f"127.0.0.1:{server.port}, local binaries",
            server=server,
            closer=server.stop,
        )
    except BaseException:
        server.stop()
        raise
    return backend


def verify_dsn(dsn: str, *, manage: bool = True) -> tuple[str, str]:
    """Check a user's database is fit for the toolkit; return (server, pg_cron) version.

    It must be reachable, have the pg_cron extension in this very database, and
    (with ``manage``) let the role schedule and unschedule its own jobs and
    create workspaces. The scheduling probe runs in a transaction that is
    rolled back, so it leaves no trace. Raises :class:`EnvironmentProblem`
    saying what is missing and how to fix it.
    """
    where = _where(dsn)
    try:
        conn = psycopg.connect(dsn, autocommit=True, connect_timeout=10)
    except psycopg.Error as exc:
        raise EnvironmentProblem(
            f"cannot connect to {where}: {str(exc).strip()}. Check the DSN "
            "(--dsn, --kronos-dsn or KRONOS_DSN) and that the server accepts this role."
        ) from exc

    with conn:
        server_version = _one(conn, "SHOW server_version").split()[0]
        cron_version = _pg_cron_version(conn, where)
        if manage:
            _check_can_manage(conn, where)
    return server_version, cron_version


def _pg_cron_version(conn: psycopg.Connection, where: str) -> str:
    installed = conn.execute(
        "SELECT extversion FROM pg_extension WHERE extname = 'pg_cron'"
    ).fetchone()
    if installed is not None:
        return str(installed[0])

    database = _one(conn, "SELECT current_database()")
    cron_db = _one(conn, "SELECT current_setting('cron.database_name', true)")
    preload = _one(conn, "SHOW shared_preload_libraries")
    available = conn.execute(
        "SELECT 1 FROM pg_available_extensions WHERE name = 'pg_cron'"
    ).fetchone()

    if available is None:
        fix = (
            "install it on the server (Debian: postgresql-15-cron), add pg_cron "
            "to shared_preload_libraries, restart, and CREATE EXTENSION pg_cron"
        )
    elif "pg_cron" not in preload:
        fix = (
            "add pg_cron to shared_preload_libraries (it is "
            f"{preload or 'empty'!r}), set cron.database_name, restart the "
            "server, and CREATE EXTENSION pg_cron in that database"
        )
    elif cron_db and cron_db != database:
        fix = (
            f"pg_cron runs in database {cron_db!r} (cron.database_name); point "
            "the DSN at that database"
        )
    else:
        fix = "run CREATE EXTENSION pg_cron in it as a superuser"
    raise EnvironmentProblem(
        f"pg_cron is not installed in database {database!r} at {where}: {fix}."
    )


def _check_can_manage(conn: psycopg.Connection, where: str) -> None:
    """Schedule, see and unschedule a probe entry, then roll it all back."""
    role = _one(conn, "SELECT current_user")
    database = _one(conn, "SELECT current_database()")
    probe = f"kronos-backend-probe-{uuid.uuid4().hex[:12]}"

    try:
        with conn.transaction(force_rollback=True):
            conn.execute("SELECT cron.schedule(%s, '0 0 1 1 *', 'SELECT 1')", [probe])
            seen = conn.execute(
                "SELECT count(*) FROM cron.job WHERE jobname = %s", [probe]
            ).fetchone()
            if seen is None or seen[0] != 1:
                raise EnvironmentProblem(
                    f"role {role!r} scheduled a probe job in database "
                    f"{database!r} at {where} but cannot see it in cron.job; "
                    "the toolkit reads cron.job to check every job, so the role "
                    "needs SELECT on cron.job (and pg_cron's row level security "
                    "must show it its own rows)."
                )
            conn.execute("SELECT cron.unschedule(%s)", [probe])
    except psycopg.Error as exc:
        raise EnvironmentProblem(
            f"role {role!r} cannot manage pg_cron jobs in database {database!r} "
            f"at {where}: {str(exc).strip()}. " + _GRANTS_HINT.format(role=role)
        ) from exc

    if not _flag(conn, "SELECT has_database_privilege(current_database(), 'CREATE')"):
        raise EnvironmentProblem(
            f"role {role!r} cannot create schemas in database {database!r} at "
            f"{where}, and every test works in a workspace schema of its own. "
            f"Run as a superuser: GRANT CREATE ON DATABASE {database} TO {role};"
        )

    # Workspaces are listed in public.workspaces (kronos.workspace), created on
    # first use; PostgreSQL 15 no longer lets every role create in public.
    if _flag(conn, "SELECT to_regclass('public.workspaces') IS NOT NULL"):
        usable = _flag(
            conn,
            "SELECT bool_and(has_table_privilege('public.workspaces', p))"
            " FROM unnest(ARRAY['SELECT', 'INSERT', 'DELETE']) AS p",
        )
        missing = "SELECT, INSERT and DELETE on public.workspaces"
        grant = f"GRANT SELECT, INSERT, DELETE ON public.workspaces TO {role};"
    else:
        usable = _flag(conn, "SELECT has_schema_privilege('public', 'CREATE')")
        missing = "CREATE on schema public, to make the registry public.workspaces"
        grant = f"GRANT CREATE ON SCHEMA public TO {role};"
    if not usable:
        raise EnvironmentProblem(
            f"role {role!r} lacks {missing} in database {database!r} at {where}. "
            f"Run as a superuser: {grant}"
        )


def _one(conn: psycopg.Connection, query: str) -> str:
    row = conn.execute(query).fetchone()
    assert row is not None
    return "" if row[0] is None else str(row[0])


def _flag(conn: psycopg.Connection, query: str) -> bool:
    row = conn.execute(query).fetchone()
    return bool(row is not None and row[0])


def _where(dsn: str) -> str:
    """``user@host:port/dbname`` of a DSN, never its password."""
    try:
        parts = conninfo_to_dict(dsn)
    except psycopg.ProgrammingError as exc:
        raise KronosUsageError(
            f"the DSN is not a valid connection string: {exc}; use "
            "'host=... port=... dbname=... user=...' or a postgresql:// URL"
        ) from exc
    host = parts.get("host") or parts.get("hostaddr") or "local socket"
    user = parts.get("user") or os.environ.get("PGUSER") or "default user"
    return f"{user}@{host}:{parts.get('port') or 5432}/{parts.get('dbname') or '?'}"
