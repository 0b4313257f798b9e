"""Outcomes: ok, failed for sure, or unknown until pg_xact_status says."""

from __future__ import annotations

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict

from fault_injection import FaultyConnection, WireProxy
from kronos.jobs import JobSpec
from kronos.outcome import Outcome, resolve_outcome, run_operation
from kronos.targets.atomic import AtomicTarget

ATOMIC = AtomicTarget()


@pytest.fixture
def proxy(kronos_dsn):
    params = conninfo_to_dict(kronos_dsn)
    with WireProxy(str(params.get("host")), int(params["port"])) as proxy:
        yield proxy


def _names(observer, workspace) -> list[str]:
    return [
        row[0]
        for row in observer.execute(
            sql.SQL("SELECT name FROM {} ORDER BY id").format(
                sql.Identifier(workspace, "jobs")
            )
        ).fetchall()
    ]


def test_an_operation_that_returns_is_ok_and_applied(
    kronos_conn, kronos_workspace, kronos_endpoint
) -> None:
    spec = JobSpec.cron(kronos_endpoint.id, "a", "@daily")
    outcome = run_operation(
        kronos_conn, lambda: ATOMIC.create_job(kronos_conn, kronos_workspace, spec)
    )
    assert outcome.status == "ok" and outcome.applied is True
    assert outcome.value.name == "a" and outcome.describe() == "ok"


def test_a_server_error_before_commit_is_failed_with_its_sqlstate(
    kronos_conn, kronos_workspace
) -> None:
    spec = JobSpec.cron(999_999, "no such endpoint", "@daily")
    outcome = run_operation(
        kronos_conn, lambda: ATOMIC.create_job(kronos_conn, kronos_workspace, spec)
    )
    assert outcome.status == "failed" and outcome.applied is False
    assert "EndpointNotFound" in outcome.error
    assert kronos_conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE


@pytest.mark.parametrize(
    ("forward", "resolved"), [("whole", "committed"), ("partial", "aborted")]
)
def test_a_lost_commit_is_unknown_until_pg_xact_status_resolves_it(
    forward,
    resolved,
    proxy,
    kronos_dsn,
    kronos_observer,
    kronos_workspace,
    kronos_endpoint,
) -> None:
    proxy.cut_commit(1, forward=forward)
    spec = JobSpec.cron(kronos_endpoint.id, "lost", "@daily")

    with FaultyConnection.connect(proxy.dsn_for(kronos_dsn), autocommit=True) as conn:
        outcome = run_operation(
            conn, lambda: ATOMIC.create_job(conn, kronos_workspace, spec)
        )

    assert outcome.status == "unknown" and outcome.applied is None
    assert outcome.xid is not None and outcome.resolved is None
    assert [cut.forwarded for cut in proxy.cuts] == [forward]

    outcome = resolve_outcome(outcome, kronos_dsn)

    assert outcome.resolved == resolved
    assert outcome.describe() == f"unknown -> {resolved}"
    assert _names(kronos_observer, kronos_workspace) == (
        ["lost"] if resolved == "committed" else []
    )


def test_outcomes_that_are_not_unknown_need_no_resolving(kronos_dsn) -> None:
    failed = Outcome("failed", error="x", sqlstate="XX000")
    assert resolve_outcome(failed, kronos_dsn) is failed
    assert failed.describe() == "failed (XX000)"
    assert Outcome("unknown").applied is None
    assert Outcome("unknown", resolved="aborted").applied is False
