"""pg_cron registration: names, commands, idempotent unschedule."""

from __future__ import annotations

import time
import uuid

import psycopg
import pytest

from kronos import registration
from kronos.jobs import JobSpec
from kronos.targets.atomic import AtomicTarget
from kronos.workspace import add_endpoint, create_workspace, drop_workspace


def test_job_names_round_trip_even_with_underscores_in_the_schema() -> None:
    name = registration.cron_job_name("team_a_b", 42)
    assert name == "kronos_team_a_b_42"
    assert registration.parse_cron_job_name(name) == ("team_a_b", 42)
    assert registration.parse_cron_job_name("nightly-vacuum") is None
    assert registration.parse_cron_job_name(None) is None


def test_unschedule_of_a_missing_entry_is_not_an_error(
    kronos_observer: psycopg.Connection, kronos_workspace: str
) -> None:
    with kronos_observer.transaction():
        assert registration.unschedule(kronos_observer, kronos_workspace, 999) is False


def test_unschedule_propagates_other_errors(
    kronos_dsn: str, kronos_workspace: str, kronos_arm
) -> None:
    with psycopg.connect(kronos_dsn, autocommit=True) as conn:
        with conn.transaction():
            registration.schedule(conn, kronos_workspace, 7, "0 3 * * *")
        fault = kronos_arm("unschedule.before")
        with pytest.raises(psycopg.errors.InternalError_, match="fault injected"):
            with conn.transaction():
                registration.unschedule(conn, kronos_workspace, 7)
        assert fault.fired


@pytest.mark.parametrize(
    "workspace", ["plain", "Mixed Case", "quote'and\"double", "semi;colon --", "ünï"]
)
def test_the_command_pg_cron_runs_is_quoted_for_any_workspace_name(
    kronos_observer: psycopg.Connection, workspace: str
) -> None:
    """The stored command runs as is and queues exactly one execution per tick."""
    create_workspace(kronos_observer, workspace)
    try:
        endpoint = add_endpoint(kronos_observer, workspace, "e", "https://x.test")
        job = AtomicTarget().create_job(
            kronos_observer, workspace, JobSpec.cron(endpoint.id, "j", "0 3 * * *")
        )
        command = kronos_observer.execute(
            "SELECT command FROM cron.job WHERE jobname = %s",
            [registration.cron_job_name(workspace, job.id)],
        ).fetchone()[0]

        kronos_observer.execute(command)
        kronos_observer.execute(command)

        queued = kronos_observer.execute(
            psycopg.sql.SQL(
                "SELECT count(*) FROM {}.executions WHERE job_id = %s"
                " AND status = 'QUEUED'"
            ).format(psycopg.sql.Identifier(workspace)),
            [job.id],
        ).fetchone()[0]
        assert queued == 1
    finally:
        drop_workspace(kronos_observer, workspace)


@pytest.mark.slow
def test_pg_cron_itself_runs_the_command(
    kronos_observer: psycopg.Connection, kronos_workspace: str, kronos_endpoint
) -> None:
    """Not just valid SQL: the scheduler runs it and an execution appears.

    pg_cron 1.4 has no sub-minute schedules, so this waits for the next
    minute's tick (up to about a minute, hence the slow mark).
    """
    job = AtomicTarget().create_job(
        kronos_observer,
        kronos_workspace,
        JobSpec.cron(kronos_endpoint.id, "j", "0 3 * * *"),
    )
    command = registration.cron_command(kronos_workspace, job.id).as_string(
        kronos_observer
    )
    kronos_observer.execute(
        "SELECT cron.schedule('kronos_probe_tick', '* * * * *', %s)", [command]
    )
    try:
        deadline = time.monotonic() + 75
        queued = 0
        while time.monotonic() < deadline and not queued:
            time.sleep(0.5)
            queued = kronos_observer.execute(
                psycopg.sql.SQL("SELECT count(*) FROM {}.executions").format(
                    psycopg.sql.Identifier(kronos_workspace)
                )
            ).fetchone()[0]
    finally:
        kronos_observer.execute("SELECT cron.unschedule('kronos_probe_tick')")
    assert queued >= 1, "pg_cron did not run the job's command within 75 s"


def test_a_superuser_cancels_a_job_another_role_scheduled(
    kronos_dsn: str,
    kronos_observer: psycopg.Connection,
    kronos_workspace: str,
    kronos_endpoint,
    kronos_check,
) -> None:
    """cron.unschedule(name) finds only the caller's own entries; the entry of
    the role that created the job must still go, or it keeps firing."""
    role = f"app_{uuid.uuid4().hex[:8]}"
    ident = psycopg.sql.Identifier(role)
    ws = psycopg.sql.Identifier(kronos_workspace)
    for statement in (
        "CREATE ROLE {role} LOGIN",
        "GRANT USAGE ON SCHEMA cron, {ws} TO {role}",
        "GRANT ALL ON ALL TABLES IN SCHEMA {ws} TO {role}",
    ):
        kronos_observer.execute(psycopg.sql.SQL(statement).format(role=ident, ws=ws))
    try:
        with psycopg.connect(kronos_dsn, user=role, autocommit=True) as app:
            job = AtomicTarget().create_job(
                app,
                kronos_workspace,
                JobSpec.cron(kronos_endpoint.id, "r", "0 3 * * *"),
            )
        owner = kronos_observer.execute(
            "SELECT username FROM cron.job WHERE jobname = %s",
            [registration.cron_job_name(kronos_workspace, job.id)],
        ).fetchone()[0]
        assert owner == role

        AtomicTarget().cancel_job(kronos_observer, kronos_workspace, job.id)

        kronos_check([kronos_workspace])
    finally:
        kronos_observer.execute(
            psycopg.sql.SQL("DROP OWNED BY {0}; DROP ROLE {0}").format(ident)
        )
