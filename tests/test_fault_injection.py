"""Each fault point fires where it says, once, and only when armed."""

from __future__ import annotations

import psycopg
import pytest

from fault_injection import POINTS, InjectedClientFault, get_point
from kronos import registration
from kronos.errors import KronosUsageError
from kronos.jobs import JobChange, JobSpec
from kronos.targets.atomic import AtomicTarget


def _schedule(conn, workspace, job_id):
    with conn.transaction():
        registration.schedule(conn, workspace, job_id, "@daily")


def _unschedule(conn, workspace, job_id):
    with conn.transaction():
        registration.unschedule(conn, workspace, job_id)


def _entry_exists(observer, workspace, job_id) -> bool:
    return bool(
        observer.execute(
            "SELECT 1 FROM cron.job WHERE jobname = %s",
            [registration.cron_job_name(workspace, job_id)],
        ).fetchone()
    )


@pytest.mark.parametrize("point", ["schedule.before", "schedule.after"])
def test_schedule_points_fail_cron_schedule_with_a_server_error(
    point, kronos_conn, kronos_observer, kronos_workspace, kronos_arm
) -> None:
    fault = kronos_arm(point)
    assert fault.hits == 0 and not fault.fired

    with pytest.raises(psycopg.errors.InternalError_) as raised:
        _schedule(kronos_conn, kronos_workspace, 1)

    assert raised.value.sqlstate == get_point(point).sqlstate == "XX000"
    assert f"fault injected at {point}" in str(raised.value)
    assert fault.fired and fault.hits == 1
    assert not _entry_exists(kronos_observer, kronos_workspace, 1)


@pytest.mark.parametrize("point", ["unschedule.before", "unschedule.after"])
def test_unschedule_points_fail_cron_unschedule(
    point, kronos_conn, kronos_observer, kronos_workspace, kronos_arm
) -> None:
    _schedule(kronos_conn, kronos_workspace, 1)
    fault = kronos_arm(point)

    with pytest.raises(psycopg.errors.InternalError_, match=point):
        _unschedule(kronos_conn, kronos_workspace, 1)

    assert fault.fired
    assert _entry_exists(kronos_observer, kronos_workspace, 1), "rolled back"


def test_a_point_fires_once_then_lets_calls_through(
    kronos_conn, kronos_observer, kronos_workspace, kronos_arm
) -> None:
    fault = kronos_arm("schedule.before")
    with pytest.raises(psycopg.errors.InternalError_):
        _schedule(kronos_conn, kronos_workspace, 1)

    _schedule(kronos_conn, kronos_workspace, 2)

    assert fault.hits == 2
    assert _entry_exists(kronos_observer, kronos_workspace, 2)


def test_occurrence_picks_which_call_fails(
    kronos_conn, kronos_observer, kronos_workspace, kronos_arm
) -> None:
    fault = kronos_arm("schedule.before", occurrence=2)
    _schedule(kronos_conn, kronos_workspace, 1)
    assert not fault.fired

    with pytest.raises(psycopg.errors.InternalError_, match="hit 2"):
        _schedule(kronos_conn, kronos_workspace, 2)

    assert fault.fired
    assert _entry_exists(kronos_observer, kronos_workspace, 1)
    assert not _entry_exists(kronos_observer, kronos_workspace, 2)


def test_schedule_points_are_not_reached_by_unschedule_and_vice_versa(
    kronos_conn, kronos_workspace, kronos_arm
) -> None:
    _schedule(kronos_conn, kronos_workspace, 1)
    schedule_fault = kronos_arm("schedule.before")
    _unschedule(kronos_conn, kronos_workspace, 1)
    assert schedule_fault.hits == 0
    schedule_fault.disarm()

    unschedule_fault = kronos_arm("unschedule.before")
    _schedule(kronos_conn, kronos_workspace, 3)
    assert unschedule_fault.hits == 0


def test_unarmed_points_do_nothing_and_disarming_removes_every_hook(
    kronos_conn, kronos_observer, kronos_workspace, kronos_faults
) -> None:
    for point in ("schedule.before", "schedule.after", "unschedule.before"):
        kronos_faults.arm(point).disarm()

    _schedule(kronos_conn, kronos_workspace, 1)
    _unschedule(kronos_conn, kronos_workspace, 1)

    triggers = kronos_observer.execute(
        "SELECT tgname FROM pg_trigger WHERE tgrelid = 'cron.job'::regclass"
        " AND tgname LIKE 'fault_injection%'"
    ).fetchall()
    wrapper = kronos_observer.execute(
        "SELECT to_regprocedure('cron.unschedule(text)')"
    ).fetchone()[0]
    assert triggers == [] and wrapper is None


def test_commit_before_rolls_back_the_whole_operation(
    kronos_conn, kronos_observer, kronos_workspace, kronos_endpoint, kronos_arm
) -> None:
    fault = kronos_arm("commit.before", connection=kronos_conn)

    with pytest.raises(InjectedClientFault, match="before COMMIT"):
        AtomicTarget().create_job(
            kronos_conn,
            kronos_workspace,
            JobSpec.cron(kronos_endpoint.id, "r", "@daily"),
        )

    assert fault.fired and fault.hits == 1
    jobs = kronos_observer.execute(
        psycopg.sql.SQL("SELECT count(*) FROM {}.jobs").format(
            psycopg.sql.Identifier(kronos_workspace)
        )
    ).fetchone()[0]
    assert jobs == 0
    assert kronos_conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE


def test_commit_before_strikes_only_the_connection_it_was_armed_on(
    kronos_conn, kronos_observer, kronos_workspace, kronos_endpoint, kronos_arm
) -> None:
    fault = kronos_arm("commit.before")
    spec = JobSpec.cron(kronos_endpoint.id, "r", "@daily")

    AtomicTarget().create_job(kronos_conn, kronos_workspace, spec)
    assert not fault.fired, "kronos_conn is not the fault's connection"
    with fault.connect() as struck, pytest.raises(InjectedClientFault):
        AtomicTarget().create_job(struck, kronos_workspace, spec)

    assert fault.fired and fault.where == "in the client, before COMMIT 1"
    with pytest.raises(KronosUsageError, match="FaultyConnection"):
        kronos_arm("commit.before", connection=kronos_observer)


def test_unknown_points_are_refused_with_the_list(kronos_arm) -> None:
    with pytest.raises(KronosUsageError, match="known points: schedule.before"):
        kronos_arm("schedule.sometimes")


def test_the_update_passes_through_both_pg_cron_points_once(
    kronos_conn, kronos_workspace, kronos_endpoint, kronos_arm
) -> None:
    target = AtomicTarget()
    job = target.create_job(
        kronos_conn, kronos_workspace, JobSpec.cron(kronos_endpoint.id, "r", "@daily")
    )
    schedule_fault = kronos_arm("schedule.after", occurrence=99)
    unschedule_fault = kronos_arm("unschedule.before", occurrence=99)

    target.update_job(kronos_conn, kronos_workspace, job.id, JobChange("@hourly"))

    assert (schedule_fault.hits, unschedule_fault.hits) == (1, 1)


def test_every_catalogued_point_names_what_it_strikes() -> None:
    for point in POINTS.values():
        assert point.description and point.mechanism and point.strikes


def test_arming_an_armed_point_again_is_refused(kronos_faults) -> None:
    """Two armings would share one hook and hit counter; the second is refused."""
    with kronos_faults.arm("schedule.before") as first:
        with pytest.raises(KronosUsageError, match="already armed"):
            kronos_faults.arm("schedule.before")
        assert first.armed
    with kronos_faults.arm("schedule.before") as again:
        assert again.armed
