"""Backends: a DSN of your own, the embedded server, and a container, all for real.

The DSN backend is tested against a second embedded server started by this
module (not the session's), as a user's staging database would be: with a
superuser, with roles that lack pg_cron or schema rights, and in a database
without pg_cron. The container tests start PostgreSQL through testcontainers
from the image ``make image`` builds; without a Docker engine they fail with
the reason, they do not skip.
"""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import Iterator

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from kronos.backends import Backend, choose_backend, resolve_backend, verify_dsn
from kronos.checker import assert_in_sync
from kronos.errors import EnvironmentProblem, KronosUsageError
from kronos.jobs import JobChange, JobSpec
from kronos.server import NOCRON_DB_NAME, EmbeddedServer
from kronos.targets import resolve_target
from kronos.workspace import add_endpoint, create_workspace, drop_workspace


@pytest.fixture(scope="module")
def staging() -> Iterator[EmbeddedServer]:
    """A separately started server that plays the user's own database."""
    with EmbeddedServer() as server:
        yield server


def _as_role(server: EmbeddedServer, role: str, dbname: str = "kronos") -> str:
    return make_conninfo(server.dsn_for(dbname), user=role)


@pytest.fixture
def make_role(staging: EmbeddedServer) -> Iterator:
    """``make_role(*grants)``: a login role with those grants, dropped afterwards."""
    made: list[str] = []

    def make(*grants: str) -> str:
        role = f"kronos_role_{uuid.uuid4().hex[:8]}"
        with psycopg.connect(staging.dsn, autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(role)))
            for grant in grants:
                conn.execute(grant.format(role=role))
        made.append(role)
        return role

    yield make
    with psycopg.connect(staging.dsn, autocommit=True) as conn:
        for role in made:
            conn.execute(
                "SELECT cron.unschedule(jobid) FROM cron.job WHERE username = %s",
                [role],
            )
            conn.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(role)))
            conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))


FULL_GRANTS = (
    "GRANT USAGE ON SCHEMA cron TO {role}",
    "GRANT CREATE ON DATABASE kronos TO {role}",
    "GRANT CREATE ON SCHEMA public TO {role}",
)


def _cron_count(dsn: str) -> int:
    with psycopg.connect(dsn) as conn:
        return conn.execute("SELECT count(*) FROM cron.job").fetchone()[0]


def _lifecycle(conn: psycopg.Connection, observer: psycopg.Connection) -> str:
    """Create, update and cancel CRON jobs in a new workspace, checking each step."""
    target = resolve_target("atomic")
    workspace = create_workspace(observer, f"b_{uuid.uuid4().hex[:10]}")
    endpoint = add_endpoint(observer, workspace, "hook", "https://example.test/h")

    first = target.create_job(
        conn, workspace, JobSpec.cron(endpoint.id, "a", "*/5 * * * *")
    )
    second = target.create_job(
        conn, workspace, JobSpec.cron(endpoint.id, "b", "0 * * * *")
    )
    assert_in_sync(observer, [workspace])

    target.update_job(conn, workspace, first.id, JobChange(cron_expression="0 3 * * *"))
    target.cancel_job(conn, workspace, second.id)
    assert_in_sync(observer, [workspace])
    return workspace


# -- choosing ---------------------------------------------------------------------


def test_embedded_is_the_default_and_a_dsn_implies_the_dsn_backend() -> None:
    assert choose_backend(environ={}) == ("embedded", None)
    assert choose_backend(environ={"KRONOS_DSN": "dbname=x"}) == ("dsn", "dbname=x")
    assert choose_backend(dsn="dbname=y", environ={}) == ("dsn", "dbname=y")


def test_a_named_backend_wins_over_the_environment() -> None:
    env = {"KRONOS_BACKEND": "testcontainers", "KRONOS_DSN": "dbname=x"}

    assert choose_backend(environ=env) == ("testcontainers", None)
    assert choose_backend("embedded", environ=env) == ("embedded", None)
    assert choose_backend("dsn", environ=env) == ("dsn", "dbname=x")


def test_an_unknown_backend_or_a_dsn_backend_without_dsn_is_a_usage_error() -> None:
    with pytest.raises(KronosUsageError, match="unknown backend 'docker'.*dsn"):
        choose_backend("docker", environ={})
    with pytest.raises(KronosUsageError, match="needs a connection string.*KRONOS_DSN"):
        choose_backend("dsn", environ={})


# -- embedded -------------------------------------------------------------------------


def test_the_embedded_backend_exposes_its_server_and_stops_it_on_close() -> None:
    backend = resolve_backend("embedded", environ={})

    with backend:
        assert backend.kind == "embedded"
        assert isinstance(backend.server, EmbeddedServer)
        assert backend.server.is_running()
        assert backend.server_version.startswith("15.")
        assert backend.describe().startswith(
            f"embedded: PostgreSQL {backend.server_version}, "
            f"pg_cron {backend.pg_cron_version} (127.0.0.1:"
        )

    assert not backend.server.is_running()
    backend.close()  # a second close is harmless


# -- a DSN of your own -------------------------------------------------------------


def test_a_dsn_backend_reports_versions_and_leaves_the_server_running(
    staging: EmbeddedServer,
) -> None:
    before = _cron_count(staging.dsn)

    with resolve_backend(environ={"KRONOS_DSN": staging.dsn}) as backend:
        assert (backend.kind, backend.dsn) == ("dsn", staging.dsn)
        assert backend.server is None
        assert backend.server_version == staging.server_version
        assert backend.pg_cron_version == staging.pg_cron_version
        assert f"postgres@127.0.0.1:{staging.port}/kronos" in backend.describe()

    assert staging.is_running()
    assert _cron_count(staging.dsn) == before, "the probe entry must leave no trace"


def test_a_database_without_pg_cron_is_named_with_the_fix(
    staging: EmbeddedServer,
) -> None:
    dsn = staging.dsn_for(NOCRON_DB_NAME)

    with pytest.raises(EnvironmentProblem) as raised:
        resolve_backend("dsn", dsn)

    message = str(raised.value)
    assert f"pg_cron is not installed in database '{NOCRON_DB_NAME}'" in message
    assert "pg_cron runs in database 'kronos' (cron.database_name)" in message
    assert "point the DSN at that database" in message


def test_an_unreachable_dsn_says_so_without_the_password() -> None:
    dsn = "host=127.0.0.1 port=1 dbname=kronos user=app password=s3cret"

    with pytest.raises(EnvironmentProblem, match="cannot connect to app@127.0.0.1:1"):
        verify_dsn(dsn)

    try:
        verify_dsn(dsn)
    except EnvironmentProblem as exc:
        assert "s3cret" not in str(exc)


def test_a_role_that_cannot_use_pg_cron_gets_the_grants_to_run(
    staging: EmbeddedServer, make_role
) -> None:
    role = make_role("GRANT CREATE ON DATABASE kronos TO {role}")

    with pytest.raises(EnvironmentProblem) as raised:
        resolve_backend("dsn", _as_role(staging, role))

    message = str(raised.value)
    assert f"role '{role}' cannot manage pg_cron jobs in database 'kronos'" in message
    assert "permission denied for schema cron" in message
    assert f"GRANT USAGE ON SCHEMA cron TO {role}" in message


def test_a_role_that_cannot_create_workspaces_is_told_which_grant_is_missing(
    staging: EmbeddedServer, make_role
) -> None:
    role = make_role("GRANT USAGE ON SCHEMA cron TO {role}")

    with pytest.raises(EnvironmentProblem) as raised:
        resolve_backend("dsn", _as_role(staging, role))

    assert f"role '{role}' cannot create schemas in database 'kronos'" in str(
        raised.value
    )
    assert f"GRANT CREATE ON DATABASE kronos TO {role};" in str(raised.value)


def test_read_only_use_skips_the_scheduling_probe(
    staging: EmbeddedServer, make_role
) -> None:
    role = make_role()

    with resolve_backend("dsn", _as_role(staging, role), manage=False) as backend:
        assert backend.pg_cron_version == staging.pg_cron_version


def test_a_granted_role_runs_the_lifecycle_and_touches_nothing_it_did_not_create(
    staging: EmbeddedServer, make_role
) -> None:
    role = make_role(*FULL_GRANTS)
    with psycopg.connect(staging.dsn, autocommit=True) as admin:
        admin.execute("SELECT cron.schedule('app_nightly', '0 2 * * *', 'SELECT 1')")

    try:
        with resolve_backend("dsn", _as_role(staging, role)) as backend:
            with psycopg.connect(backend.dsn, autocommit=True) as observer:
                with psycopg.connect(backend.dsn, autocommit=True) as conn:
                    workspace = _lifecycle(conn, observer)
                drop_workspace(observer, workspace)

        with psycopg.connect(staging.dsn) as admin:
            names = [r[0] for r in admin.execute("SELECT jobname FROM cron.job")]
            schema = admin.execute(
                "SELECT 1 FROM pg_namespace WHERE nspname = %s", [workspace]
            ).fetchone()
        assert "app_nightly" in names
        assert not [n for n in names if workspace in n]
        assert schema is None
    finally:
        with psycopg.connect(staging.dsn, autocommit=True) as admin:
            admin.execute("SELECT cron.unschedule('app_nightly')")


# -- testcontainers ----------------------------------------------------------------


def _docker(*args: str) -> str:
    result = subprocess.run(
        ["docker", *args], capture_output=True, text=True, timeout=60, check=False
    )
    return result.stdout


@pytest.fixture(scope="module")
def container() -> Iterator[Backend]:
    """PostgreSQL with pg_cron in a container; failing, not skipping, without Docker."""
    try:
        backend = resolve_backend("testcontainers", environ={})
    except EnvironmentProblem as exc:
        pytest.fail(
            f"the testcontainers backend could not start: {exc}\n"
            "Run `make image` (it installs docker.io, starts dockerd and builds "
            "the image), then run the tests again.",
            pytrace=False,
        )
    with backend:
        yield backend


@pytest.mark.slow
def test_the_container_listens_on_loopback_and_reports_its_versions(
    container: Backend,
) -> None:
    with psycopg.connect(container.dsn) as conn:
        listen = conn.execute("SHOW listen_addresses").fetchone()[0]
        preload = conn.execute("SHOW shared_preload_libraries").fetchone()[0]

    assert listen == "127.0.0.1"
    assert "pg_cron" in preload
    assert conninfo_to_dict(container.dsn)["host"] == "127.0.0.1"
    assert container.kind == "testcontainers"
    assert container.server is None
    assert container.server_version.startswith("15.")
    assert container.describe().startswith(
        f"testcontainers: PostgreSQL {container.server_version}, "
        f"pg_cron {container.pg_cron_version} (image kronos-pg-cron:15, container "
    )


@pytest.mark.slow
def test_the_lifecycle_and_the_checker_run_in_the_container(
    container: Backend,
) -> None:
    with psycopg.connect(container.dsn, autocommit=True) as observer:
        with psycopg.connect(container.dsn, autocommit=True) as conn:
            workspace = _lifecycle(conn, observer)
        entries = observer.execute(
            "SELECT count(*) FROM cron.job WHERE jobname LIKE %s",
            [f"kronos_{workspace}_%"],
        ).fetchone()[0]
        drop_workspace(observer, workspace)
        left = observer.execute("SELECT count(*) FROM cron.job").fetchone()[0]

    assert entries == 1, "only the updated job's new version keeps a schedule"
    assert left == 0


@pytest.mark.slow
def test_closing_the_container_backend_removes_the_container() -> None:
    backend = resolve_backend("testcontainers", environ={})
    short_id = backend.location.split("container ")[1].split(",")[0]
    assert short_id in _docker("ps", "-q")

    backend.close()

    assert short_id not in _docker("ps", "-a", "-q")


@pytest.mark.slow
def test_a_missing_image_says_how_to_build_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KRONOS_IMAGE", "kronos-no-such-image:0")

    with pytest.raises(EnvironmentProblem, match=r"not in the local .*make image"):
        resolve_backend("testcontainers", environ={})


# -- the command line ---------------------------------------------------------------


def test_matrix_and_check_print_the_backend_line(staging: EmbeddedServer) -> None:
    from click.testing import CliRunner

    from kronos.cli import main

    runner = CliRunner()
    matrix = runner.invoke(
        main,
        ["matrix", "--backend", "dsn", "--dsn", staging.dsn, "--target", "atomic",
         "--operation", "create_cron", "--fault", "schedule.before"],
        env={"COLUMNS": "200"},
    )
    check = runner.invoke(main, ["check", "--dsn", staging.dsn])

    expected = (
        f"backend dsn: PostgreSQL {staging.server_version}, pg_cron "
        f"{staging.pg_cron_version} (postgres@127.0.0.1:{staging.port}/kronos)"
    )
    assert matrix.exit_code == 0, matrix.output
    assert expected in matrix.output
    assert check.exit_code == 0, check.output
    assert expected in check.output
