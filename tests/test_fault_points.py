"""The points made by the environment and the wire: each fires where it says.

For every point: the error the client sees is the one a real failure gives
(SQLSTATE checked), the point fires at the named statement and not at another,
and disarming leaves the server as it was (no trigger, role, lock, proxy or
extra backend behind). The pg_cron-internal points are in
test_fault_injection.py.
"""

from __future__ import annotations

import socket
import time
import uuid

import psycopg
import pytest
from psycopg import sql

from fault_injection import FaultInjector
from fault_injection.pgcron import LOCK_CLASS
from fault_injection.roles import ROLE_PREFIX
from kronos.checker import find_divergences
from kronos.errors import EnvironmentProblem, KronosUsageError
from kronos.jobs import JobChange, JobSpec
from kronos.outcome import resolve_outcome, run_operation
from kronos.registration import cron_job_name
from kronos.targets.atomic import AtomicTarget
from kronos.workspace import add_endpoint, create_workspace, drop_workspace

ATOMIC = AtomicTarget()


@pytest.fixture
def injector(kronos_dsn, kronos_server):
    with FaultInjector(kronos_dsn, server=kronos_server, seed=7) as injector:
        yield injector


@pytest.fixture
def cron_job(kronos_conn, kronos_workspace, kronos_endpoint):
    """An ACTIVE CRON job with its pg_cron entry."""
    spec = JobSpec.cron(kronos_endpoint.id, "nightly", "0 3 * * *")
    return ATOMIC.create_job(kronos_conn, kronos_workspace, spec)


def _spec(endpoint_id: int) -> JobSpec:
    return JobSpec.cron(endpoint_id, "report", "15 2 * * *")


def _server_state(observer: psycopg.Connection) -> dict[str, object]:
    """Everything a fault mechanism could leave behind."""
    return {
        "triggers": observer.execute(
            "SELECT tgname FROM pg_trigger WHERE tgrelid = 'cron.job'::regclass"
            " AND tgname LIKE 'fault_injection%'"
        ).fetchall(),
        "wrapper": observer.execute(
            "SELECT to_regprocedure('cron.unschedule(text)')"
        ).fetchone()[0],
        "roles": observer.execute(
            "SELECT rolname FROM pg_roles WHERE rolname LIKE %s", [ROLE_PREFIX + "%"]
        ).fetchall(),
        "cron.job locks": observer.execute(
            "SELECT pid, mode FROM pg_locks WHERE relation = 'cron.job'::regclass"
            " AND pid <> pg_backend_pid()"
        ).fetchall(),
        "advisory locks": observer.execute(
            "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND classid = %s",
            [LOCK_CLASS],
        ).fetchall(),
        "backends": sorted(
            row[0]
            for row in observer.execute(
                "SELECT pid FROM pg_stat_activity WHERE backend_type = 'client backend'"
                " AND pid <> pg_backend_pid()"
            ).fetchall()
        ),
    }


def _assert_clean(observer: psycopg.Connection, before: dict[str, object]) -> None:
    """The server is back to ``before`` (closed backends may take a moment)."""
    deadline = time.monotonic() + 5
    while (now := _server_state(observer)) != before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert now == before


def _entry(observer: psycopg.Connection, workspace: str, job_id: int):
    return observer.execute(
        "SELECT schedule FROM cron.job WHERE jobname = %s",
        [cron_job_name(workspace, job_id)],
    ).fetchone()


def _job_rows(observer: psycopg.Connection, workspace: str) -> list[tuple]:
    return observer.execute(
        sql.SQL("SELECT id, status, cron_expression FROM {} ORDER BY id").format(
            sql.Identifier(workspace, "jobs")
        )
    ).fetchall()


# -- commit.ack_lost ---------------------------------------------------------


def test_ack_lost_meets_both_real_outcomes_and_each_is_resolved_right(
    injector, kronos_dsn, kronos_observer, kronos_workspace, kronos_endpoint
) -> None:
    state = _server_state(kronos_observer)
    seen: dict[str, int] = {}

    for attempt in range(30):
        spec = JobSpec.cron(kronos_endpoint.id, f"job {attempt}", "0 3 * * *")
        with injector.arm("commit.ack_lost") as fault:
            with fault.connect() as conn:
                outcome = run_operation(
                    conn,
                    lambda conn=conn, spec=spec: ATOMIC.create_job(
                        conn, kronos_workspace, spec
                    ),
                )
        outcome = resolve_outcome(outcome, kronos_dsn)

        assert fault.fired and fault.hits == 1, fault.describe()
        assert "COMMIT 1" in fault.where
        assert outcome.status == "unknown" and outcome.sqlstate is None
        assert outcome.xid is not None
        in_table = kronos_observer.execute(
            sql.SQL("SELECT count(*) FROM {} WHERE name = %s").format(
                sql.Identifier(kronos_workspace, "jobs")
            ),
            [spec.name],
        ).fetchone()[0]
        assert outcome.resolved == ("committed" if in_table else "aborted")
        assert ("whole" in fault.where) == (outcome.resolved == "committed")
        seen[outcome.resolved] = seen.get(outcome.resolved, 0) + 1
        if len(seen) == 2:
            break

    assert set(seen) == {"committed", "aborted"}, seen
    assert find_divergences(kronos_observer, [kronos_workspace]).empty
    _assert_clean(kronos_observer, state)


def test_ack_lost_cuts_only_the_armed_commit(
    injector, kronos_observer, kronos_workspace, kronos_endpoint
) -> None:
    with injector.arm("commit.ack_lost", occurrence=2) as fault:
        with fault.connect() as conn:
            first = run_operation(
                conn,
                lambda: ATOMIC.create_job(
                    conn, kronos_workspace, _spec(kronos_endpoint.id)
                ),
            )
            assert first.status == "ok" and not fault.fired
            second = run_operation(
                conn,
                lambda: ATOMIC.create_job(
                    conn, kronos_workspace, _spec(kronos_endpoint.id)
                ),
            )

    assert second.status == "unknown"
    assert fault.fired and fault.hits == 2 and "COMMIT 2" in fault.where
    port = int(psycopg.conninfo.conninfo_to_dict(fault.dsn)["port"])
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=1).close()


# -- connection.drop ---------------------------------------------------------


def test_connection_drop_kills_the_session_inside_cron_unschedule(
    injector, kronos_observer, kronos_workspace, cron_job
) -> None:
    state = _server_state(kronos_observer)

    with injector.arm("connection.drop", at="unschedule") as fault:
        with fault.connect() as conn:
            outcome = run_operation(
                conn, lambda: ATOMIC.cancel_job(conn, kronos_workspace, cron_job.id)
            )
            assert conn.broken

    assert outcome.status == "failed" and outcome.sqlstate == "57P01"
    assert fault.fired and "in cron.unschedule" in fault.where
    assert "pg_terminate_backend" in fault.where
    assert _job_rows(kronos_observer, kronos_workspace)[0][1] == "ACTIVE"
    assert _entry(kronos_observer, kronos_workspace, cron_job.id) is not None
    _assert_clean(kronos_observer, state)


def test_connection_drop_at_schedule_spares_an_operation_without_one(
    injector, kronos_observer, kronos_workspace, cron_job
) -> None:
    with injector.arm("connection.drop", at="schedule") as fault:
        with fault.connect() as conn:
            outcome = run_operation(
                conn, lambda: ATOMIC.cancel_job(conn, kronos_workspace, cron_job.id)
            )

    assert outcome.status == "ok"
    assert not fault.fired and fault.hits == 0 and fault.where is None


# -- lock.timeout ------------------------------------------------------------


def test_lock_timeout_strikes_the_first_write_of_cron_job(
    injector, kronos_observer, kronos_workspace, kronos_endpoint
) -> None:
    state = _server_state(kronos_observer)

    with injector.arm("lock.timeout") as fault:
        held = kronos_observer.execute(
            "SELECT mode FROM pg_locks WHERE relation = 'cron.job'::regclass"
            " AND granted"
        ).fetchall()
        assert ("ShareRowExclusiveLock",) in held
        with fault.connect() as conn:
            immediate = run_operation(
                conn,
                lambda: ATOMIC.create_job(
                    conn, kronos_workspace, JobSpec.immediate(kronos_endpoint.id, "n")
                ),
            )
            assert immediate.status == "ok" and not fault.fired, "no cron.job write"
            outcome = run_operation(
                conn,
                lambda: ATOMIC.create_job(
                    conn, kronos_workspace, _spec(kronos_endpoint.id)
                ),
            )

    assert outcome.status == "failed" and outcome.sqlstate == "55P03"
    assert fault.fired and "cron.schedule" in fault.where
    assert [row[2] for row in _job_rows(kronos_observer, kronos_workspace)] == [None]
    _assert_clean(kronos_observer, state)


def test_lock_timeout_cannot_pick_a_later_hit(injector) -> None:
    with pytest.raises(KronosUsageError, match="only occurrence=1"):
        injector.arm("lock.timeout", occurrence=2)


# -- statement.timeout -------------------------------------------------------


def test_statement_timeout_cancels_a_slow_cron_schedule(
    injector, kronos_observer, kronos_workspace, kronos_endpoint
) -> None:
    state = _server_state(kronos_observer)

    with injector.arm("statement.timeout", at="schedule") as fault:
        with fault.connect() as conn:
            outcome = run_operation(
                conn,
                lambda: ATOMIC.create_job(
                    conn, kronos_workspace, _spec(kronos_endpoint.id)
                ),
            )

    assert outcome.status == "failed" and outcome.sqlstate == "57014"
    assert fault.fired and fault.hits == 1 and "in cron.schedule" in fault.where
    assert _job_rows(kronos_observer, kronos_workspace) == []
    _assert_clean(kronos_observer, state)


def test_statement_timeout_at_unschedule_spares_a_create(
    injector, kronos_workspace, kronos_endpoint
) -> None:
    with injector.arm("statement.timeout", at="unschedule") as fault:
        with fault.connect() as conn:
            outcome = run_operation(
                conn,
                lambda: ATOMIC.create_job(
                    conn, kronos_workspace, _spec(kronos_endpoint.id)
                ),
            )
    assert outcome.status == "ok" and not fault.fired and fault.hits == 0


def test_a_step_the_point_does_not_have_is_refused(injector) -> None:
    with pytest.raises(KronosUsageError, match="steps: schedule, unschedule"):
        injector.arm("statement.timeout", at="commit")
    with pytest.raises(KronosUsageError, match="one fixed place"):
        injector.arm("schedule.before", at="schedule")


# -- permission.denied -------------------------------------------------------


def test_permission_denied_runs_the_operation_as_a_role_without_cron(
    injector, kronos_observer, kronos_workspace, kronos_endpoint, cron_job
) -> None:
    state = _server_state(kronos_observer)

    with injector.arm("permission.denied", workspace=kronos_workspace) as fault:
        with fault.connect() as conn:
            assert conn.info.user.startswith(ROLE_PREFIX)
            immediate = run_operation(
                conn,
                lambda: ATOMIC.create_job(
                    conn, kronos_workspace, JobSpec.immediate(kronos_endpoint.id, "n")
                ),
            )
            assert immediate.status == "ok" and not fault.fired, "no pg_cron call"
            outcome = run_operation(
                conn,
                lambda: ATOMIC.update_job(
                    conn, kronos_workspace, cron_job.id, JobChange("5 5 * * *")
                ),
            )

    assert outcome.status == "failed" and outcome.sqlstate == "42501"
    assert fault.fired and "cron.job" in fault.where
    assert "permission denied for schema cron" in fault.where
    assert _entry(kronos_observer, kronos_workspace, cron_job.id) == ("0 3 * * *",)
    _assert_clean(kronos_observer, state)


def test_permission_denied_needs_the_workspace_to_grant(injector) -> None:
    with pytest.raises(KronosUsageError, match="workspace="):
        injector.arm("permission.denied")


# -- extension.missing -------------------------------------------------------


def test_extension_missing_runs_in_a_database_without_pg_cron(
    injector, kronos_observer
) -> None:
    state = _server_state(kronos_observer)
    nocron = injector.database_for("extension.missing")
    workspace = f"t_{uuid.uuid4().hex[:12]}"

    with psycopg.connect(nocron, autocommit=True) as there:
        assert there.execute("SELECT to_regclass('cron.job')").fetchone()[0] is None
        create_workspace(there, workspace)
        endpoint = add_endpoint(there, workspace, "hook", "https://example.test/h")
        try:
            with injector.arm("extension.missing") as fault:
                with fault.connect() as conn:
                    immediate = run_operation(
                        conn,
                        lambda: ATOMIC.create_job(
                            conn, workspace, JobSpec.immediate(endpoint.id, "n")
                        ),
                    )
                    assert immediate.status == "ok" and not fault.fired
                    outcome = run_operation(
                        conn,
                        lambda: ATOMIC.create_job(conn, workspace, _spec(endpoint.id)),
                    )
            rows = _job_rows(there, workspace)
        finally:
            there.execute(
                sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(workspace))
            )

    assert outcome.status == "failed" and outcome.sqlstate == "3F000"
    assert fault.fired and "cron.schedule" in fault.where
    assert 'schema "cron" does not exist' in fault.where
    assert [row[2] for row in rows] == [None], "only the IMMEDIATE job is there"
    _assert_clean(kronos_observer, state)


# -- server.crash ------------------------------------------------------------


def test_server_crash_is_refused_without_the_embedded_server(kronos_dsn) -> None:
    with FaultInjector(kronos_dsn) as plain:
        with pytest.raises(EnvironmentProblem, match="EmbeddedServer"):
            plain.arm("server.crash")


@pytest.mark.slow
def test_server_crash_recovers_and_the_lifecycle_goes_on(
    kronos_backend, injector, kronos_dsn
) -> None:
    """Crash inside cron.schedule; after recovery, check, then go on working.

    The test makes its own workspace: the crash ends every connection open
    before it, the fixtures' observer included.
    """
    if kronos_backend.kind != "embedded":
        pytest.skip(
            f"server.crash needs the embedded backend, not {kronos_backend.kind}"
        )
    server = kronos_backend.server
    workspace = f"t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(kronos_dsn, autocommit=True) as setup:
        create_workspace(setup, workspace)
        endpoint = add_endpoint(setup, workspace, "hook", "https://example.test/h")

    try:
        with injector.arm("server.crash", at="schedule") as fault:
            with fault.connect() as conn:
                outcome = run_operation(
                    conn, lambda: ATOMIC.create_job(conn, workspace, _spec(endpoint.id))
                )

        assert fault.fired and "server crashed" in fault.where, fault.describe()
        assert outcome.status == "failed" and server.is_running()
        assert "automatic recovery" in server.log_path.read_text()
        with psycopg.connect(kronos_dsn, autocommit=True) as observer:
            assert _job_rows(observer, workspace) == []
            assert find_divergences(observer, [workspace]).empty
            with injector.connect() as conn:
                job = ATOMIC.create_job(conn, workspace, _spec(endpoint.id))
                job = ATOMIC.update_job(conn, workspace, job.id, JobChange("0 4 * * *"))
                assert _entry(observer, workspace, job.id) == ("0 4 * * *",)
                ATOMIC.cancel_job(conn, workspace, job.id)
            assert _entry(observer, workspace, job.id) is None
            assert find_divergences(observer, [workspace]).empty
            assert _server_state(observer)["triggers"] == []
    finally:
        with psycopg.connect(kronos_dsn, autocommit=True) as cleanup:
            drop_workspace(cleanup, workspace)


def test_the_kronos_arm_fixture_takes_the_step_and_the_workspace(
    kronos_arm, kronos_workspace, cron_job
) -> None:
    fault = kronos_arm("connection.drop", at="unschedule")
    with fault.connect() as conn:
        outcome = run_operation(
            conn, lambda: ATOMIC.cancel_job(conn, kronos_workspace, cron_job.id)
        )
    assert outcome.sqlstate == "57P01" and fault.fired

    denied = kronos_arm("permission.denied", workspace=kronos_workspace)
    assert denied.dsn != fault.dsn and "user=" + ROLE_PREFIX in denied.dsn
