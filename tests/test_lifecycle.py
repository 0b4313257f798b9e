"""The job lifecycle of the target under test, checked through an observer.

These run against ``--kronos-target`` (``atomic`` by default), so a team can
hold its own implementation to the same behaviour.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import psycopg
import pytest
from psycopg import sql

from kronos import registration
from kronos.errors import (
    EndpointNotFound,
    InvalidJob,
    InvalidSchedule,
    InvalidTimeZone,
    InvalidWorkspace,
    JobNotActive,
    JobNotFound,
    KronosUsageError,
)
from kronos.jobs import JobChange, JobSpec, get_job, list_versions


def _rows(observer: psycopg.Connection, workspace: str, query: str) -> list[tuple]:
    return observer.execute(
        sql.SQL(query).format(ws=sql.Identifier(workspace))
    ).fetchall()


def _cron_entry(observer: psycopg.Connection, workspace: str, job_id: int):
    return observer.execute(
        "SELECT schedule, active FROM cron.job WHERE jobname = %s",
        [registration.cron_job_name(workspace, job_id)],
    ).fetchone()


def _counts(observer: psycopg.Connection, workspace: str) -> tuple[int, int, int]:
    jobs = _rows(observer, workspace, "SELECT count(*) FROM {ws}.jobs")[0][0]
    executions = _rows(observer, workspace, "SELECT count(*) FROM {ws}.executions")
    cron = observer.execute("SELECT count(*) FROM cron.job").fetchone()[0]
    return jobs, executions[0][0], cron


def test_create_immediate_queues_one_execution(
    kronos_target,
    kronos_conn,
    kronos_observer,
    kronos_workspace,
    kronos_endpoint,
    kronos_check,
) -> None:
    job = kronos_target.create_job(
        kronos_conn, kronos_workspace, JobSpec.immediate(kronos_endpoint.id, "ping")
    )

    assert (job.trigger, job.status, job.version) == ("IMMEDIATE", "ACTIVE", 1)
    executions = _rows(
        kronos_observer, kronos_workspace, "SELECT job_id, status FROM {ws}.executions"
    )
    assert executions == [(job.id, "QUEUED")]
    assert _cron_entry(kronos_observer, kronos_workspace, job.id) is None
    kronos_check([kronos_workspace])


def test_create_delayed_holds_a_pending_execution_and_is_idempotent(
    kronos_target, kronos_conn, kronos_observer, kronos_workspace, kronos_endpoint
) -> None:
    run_at = datetime.now(timezone.utc) + timedelta(hours=1)
    spec = JobSpec.delayed(kronos_endpoint.id, "later", run_at, "order-17")

    first = kronos_target.create_job(kronos_conn, kronos_workspace, spec)
    again = kronos_target.create_job(kronos_conn, kronos_workspace, spec)

    assert again.id == first.id
    executions = _rows(
        kronos_observer,
        kronos_workspace,
        "SELECT job_id, status, idempotency_key, run_at FROM {ws}.executions",
    )
    assert executions == [(first.id, "PENDING", "order-17", run_at)]


def test_create_cron_registers_the_schedule_in_the_same_commit(
    kronos_target,
    kronos_conn,
    kronos_observer,
    kronos_workspace,
    kronos_endpoint,
    kronos_check,
) -> None:
    job = kronos_target.create_job(
        kronos_conn,
        kronos_workspace,
        JobSpec.cron(kronos_endpoint.id, "report", "0 3 * * *", "Europe/Paris"),
    )

    assert get_job(kronos_observer, kronos_workspace, job.id) == job
    assert _cron_entry(kronos_observer, kronos_workspace, job.id) == ("0 3 * * *", True)
    kronos_check([kronos_workspace])


def test_update_retires_the_old_version_and_moves_the_schedule(
    kronos_target,
    kronos_conn,
    kronos_observer,
    kronos_workspace,
    kronos_endpoint,
    kronos_check,
) -> None:
    first = kronos_target.create_job(
        kronos_conn,
        kronos_workspace,
        JobSpec.cron(kronos_endpoint.id, "report", "0 3 * * *", payload={"a": 1}),
    )

    second = kronos_target.update_job(
        kronos_conn,
        kronos_workspace,
        first.id,
        JobChange(cron_expression="*/10 * * * *", payload={"a": 2}),
    )

    chain = list_versions(kronos_observer, kronos_workspace, second.id)
    assert [(j.id, j.version, j.status) for j in chain] == [
        (first.id, 1, "RETIRED"),
        (second.id, 2, "ACTIVE"),
    ]
    assert chain[0].replaced_by_id == second.id
    assert chain[1].previous_version_id == first.id
    assert (second.cron_expression, second.payload) == ("*/10 * * * *", {"a": 2})
    assert second.timezone == first.timezone
    assert _cron_entry(kronos_observer, kronos_workspace, first.id) is None
    assert _cron_entry(kronos_observer, kronos_workspace, second.id) == (
        "*/10 * * * *",
        True,
    )
    kronos_check([kronos_workspace])


def test_cancel_cron_retires_and_unschedules(
    kronos_target,
    kronos_conn,
    kronos_observer,
    kronos_workspace,
    kronos_endpoint,
    kronos_check,
) -> None:
    job = kronos_target.create_job(
        kronos_conn, kronos_workspace, JobSpec.cron(kronos_endpoint.id, "r", "@daily")
    )

    cancelled = kronos_target.cancel_job(kronos_conn, kronos_workspace, job.id)

    assert cancelled.status == "RETIRED" and cancelled.retired_at is not None
    assert _cron_entry(kronos_observer, kronos_workspace, job.id) is None
    kronos_check([kronos_workspace])


def test_cancel_delayed_cancels_its_pending_execution(
    kronos_target, kronos_conn, kronos_observer, kronos_workspace, kronos_endpoint
) -> None:
    run_at = datetime.now(timezone.utc) + timedelta(days=1)
    job = kronos_target.create_job(
        kronos_conn,
        kronos_workspace,
        JobSpec.delayed(kronos_endpoint.id, "later", run_at, "k1"),
    )

    kronos_target.cancel_job(kronos_conn, kronos_workspace, job.id)

    assert _rows(
        kronos_observer, kronos_workspace, "SELECT status FROM {ws}.executions"
    ) == [("CANCELLED",)]


def test_cancel_succeeds_when_the_schedule_is_already_gone(
    kronos_target,
    kronos_conn,
    kronos_observer,
    kronos_workspace,
    kronos_endpoint,
    kronos_check,
) -> None:
    job = kronos_target.create_job(
        kronos_conn, kronos_workspace, JobSpec.cron(kronos_endpoint.id, "r", "@hourly")
    )
    kronos_observer.execute(
        "SELECT cron.unschedule(%s::name)",
        [registration.cron_job_name(kronos_workspace, job.id)],
    )

    cancelled = kronos_target.cancel_job(kronos_conn, kronos_workspace, job.id)

    assert cancelled.status == "RETIRED"
    kronos_check([kronos_workspace])


def _cron_job(target, conn, workspace, endpoint):
    return target.create_job(
        conn, workspace, JobSpec.cron(endpoint.id, "r", "0 3 * * *")
    )


BAD_INPUTS = {
    "invalid cron expression": (
        InvalidSchedule,
        lambda t, c, w, e, j: t.create_job(c, w, JobSpec.cron(e.id, "r", "61 * * * *")),
    ),
    "six-field cron expression": (
        InvalidSchedule,
        lambda t, c, w, e, j: t.create_job(
            c, w, JobSpec.cron(e.id, "r", "* * * * * *")
        ),
    ),
    "unknown time zone": (
        InvalidTimeZone,
        lambda t, c, w, e, j: t.create_job(
            c, w, JobSpec.cron(e.id, "r", "0 3 * * *", "Mars/Base")
        ),
    ),
    "unknown endpoint": (
        EndpointNotFound,
        lambda t, c, w, e, j: t.create_job(
            c, w, JobSpec.cron(e.id + 99, "r", "@daily")
        ),
    ),
    "delayed without run_at": (
        InvalidJob,
        lambda t, c, w, e, j: t.create_job(c, w, JobSpec.delayed(e.id, "r", None, "k")),
    ),
    "delayed with a naive run_at": (
        InvalidJob,
        lambda t, c, w, e, j: t.create_job(
            c, w, JobSpec.delayed(e.id, "r", datetime(2030, 1, 1), "k")
        ),
    ),
    "payload with a NUL character": (
        InvalidJob,
        lambda t, c, w, e, j: t.create_job(
            c, w, JobSpec.immediate(e.id, "i", {"note": "a\x00b"})
        ),
    ),
    "payload that is not JSON": (
        InvalidJob,
        lambda t, c, w, e, j: t.update_job(
            c, w, j.id, JobChange(payload={"ratio": float("nan")})
        ),
    ),
    "update of a non-CRON job": (
        InvalidJob,
        lambda t, c, w, e, j: t.update_job(
            c,
            w,
            t.create_job(c, w, JobSpec.immediate(e.id, "i")).id,
            JobChange(cron_expression="@daily"),
        ),
    ),
    "update with an invalid schedule": (
        InvalidSchedule,
        lambda t, c, w, e, j: t.update_job(c, w, j.id, JobChange(cron_expression="x")),
    ),
    "update that changes nothing": (
        InvalidJob,
        lambda t, c, w, e, j: t.update_job(c, w, j.id, JobChange()),
    ),
    "update of a retired job": (
        JobNotActive,
        lambda t, c, w, e, j: t.update_job(
            c,
            w,
            t.update_job(
                c, w, j.id, JobChange(cron_expression="@daily")
            ).previous_version_id,
            JobChange(cron_expression="@hourly"),
        ),
    ),
    "cancel twice": (
        JobNotActive,
        lambda t, c, w, e, j: t.cancel_job(c, w, t.cancel_job(c, w, j.id).id),
    ),
    "cancel of an unknown job": (
        JobNotFound,
        lambda t, c, w, e, j: t.cancel_job(c, w, j.id + 1000),
    ),
    "unknown workspace": (
        InvalidWorkspace,
        lambda t, c, w, e, j: t.cancel_job(c, "no_such_workspace", j.id),
    ),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS), ids=list(BAD_INPUTS))
def test_bad_input_raises_a_clear_error_and_writes_nothing(
    case,
    kronos_target,
    kronos_conn,
    kronos_observer,
    kronos_workspace,
    kronos_endpoint,
    kronos_check,
) -> None:
    error, operation = BAD_INPUTS[case]
    job = _cron_job(kronos_target, kronos_conn, kronos_workspace, kronos_endpoint)

    with pytest.raises(KronosUsageError) as raised:
        # Some cases need a valid step first (a retired job, a non-CRON job);
        # the counts are taken right before the step that must fail.
        operation(
            _Counting(kronos_target, kronos_observer, kronos_workspace),
            kronos_conn,
            kronos_workspace,
            kronos_endpoint,
            job,
        )

    assert isinstance(raised.value, error), raised.value
    assert str(raised.value)
    counting = _Counting.last
    assert counting is not None
    assert _counts(kronos_observer, kronos_workspace) == counting.before_failure
    assert kronos_conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
    kronos_check([kronos_workspace])


class _Counting:
    """Wraps a target to remember the row counts before each operation."""

    last: _Counting | None = None

    def __init__(self, target, observer, workspace) -> None:
        self._target, self._observer, self._workspace = target, observer, workspace
        self.before_failure: tuple[int, int, int] | None = None
        _Counting.last = self

    def _call(self, name, *args):
        self.before_failure = _counts(self._observer, self._workspace)
        return getattr(self._target, name)(*args)

    def create_job(self, *args):
        return self._call("create_job", *args)

    def update_job(self, *args):
        return self._call("update_job", *args)

    def cancel_job(self, *args):
        return self._call("cancel_job", *args)
