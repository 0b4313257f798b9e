"""Concurrent updates and cancels of the same jobs, each thread on its own connection.

Afterwards the three invariants hold, and every outcome a thread saw is
consistent with the final state: each version was retired by at most one
successful operation, every chain grew by exactly its successful updates, and
the only error a race may produce is ``JobNotActive``.
"""

from __future__ import annotations

import random
import threading
from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

import psycopg
import pytest

from kronos.checker import assert_in_sync
from kronos.errors import JobNotActive
from kronos.jobs import JobChange, JobSpec
from kronos.model import ExpectedJob, check_versions, read_view
from kronos.targets import Target, is_positive_control
from kronos.workspace import Endpoint

pytestmark = pytest.mark.slow

THREADS = 4
ITERATIONS = 15
CHAINS = 3
SCHEDULES = ["*/5 * * * *", "0 3 * * *", "@hourly", "15 4 1 * *"]


@dataclass(frozen=True)
class Report:
    """What one thread asked for and what it was told."""

    thread: int
    op: str
    job_id: int
    result_id: int | None
    error: BaseException | None


def _worker(
    number: int,
    dsn: str,
    target: Target,
    workspace: str,
    known: list[int],
    lock: threading.Lock,
    start: threading.Barrier,
    reports: list[Report],
) -> None:
    rng = random.Random(number)
    with psycopg.connect(dsn, autocommit=True) as conn:
        for _ in range(ITERATIONS):
            # Every thread starts each round together, mostly on the newest
            # versions, so most rounds are a real race for the same row.
            start.wait()
            with lock:
                job_id = rng.choice(known[-CHAINS:])
            op = "cancel" if rng.random() < 0.08 else "update"
            try:
                if op == "update":
                    change = JobChange(cron_expression=rng.choice(SCHEDULES))
                    new = target.update_job(conn, workspace, job_id, change)
                    with lock:
                        known.append(new.id)
                    reports.append(Report(number, op, job_id, new.id, None))
                else:
                    target.cancel_job(conn, workspace, job_id)
                    reports.append(Report(number, op, job_id, None, None))
            except Exception as exc:  # judged after the race, with the others
                reports.append(Report(number, op, job_id, None, exc))
                if conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
                    conn.rollback()


@pytest.mark.parametrize("round_", range(3), ids=lambda r: f"round{r}")
def test_racing_updates_and_cancels_leave_one_consistent_history(
    round_: int,
    kronos_dsn: str,
    kronos_target: Target,
    kronos_conn: psycopg.Connection,
    kronos_observer: psycopg.Connection,
    kronos_workspace: str,
    kronos_endpoint: Endpoint,
) -> None:
    """Several threads fight over the same CRON jobs; nothing is lost or doubled."""
    if is_positive_control(kronos_target):
        pytest.skip(
            f"{kronos_target.name} is a positive control: it diverges by design, "
            "and under a race only sometimes; the state machine catches it"
        )
    roots = [
        kronos_target.create_job(
            kronos_conn, kronos_workspace,
            JobSpec.cron(kronos_endpoint.id, f"job {n}", SCHEDULES[n]),
        ).id
        for n in range(CHAINS)
    ]
    known, reports = list(roots), []
    lock, start = threading.Lock(), threading.Barrier(THREADS)
    threads = [
        threading.Thread(
            target=_worker,
            args=(n + 10 * round_, kronos_dsn, kronos_target, kronos_workspace,
                  known, lock, start, reports),
        )
        for n in range(THREADS)
    ]

    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)

    assert not any(thread.is_alive() for thread in threads), "a worker hung"
    assert len(reports) == THREADS * ITERATIONS
    leaked = [r for r in reports if r.error and not isinstance(r.error, JobNotActive)]
    assert not leaked, (
        "a race surfaced as an internal error instead of JobNotActive: "
        + "; ".join(f"{r.op} {r.job_id}: {r.error!r}" for r in leaked)
    )

    assert_in_sync(kronos_observer, [kronos_workspace])
    view = read_view(kronos_observer, [kronos_workspace])[kronos_workspace]
    assert check_versions(view) == []
    _assert_consistent(reports, {job.id: job for job in view.jobs}, roots)


def _assert_consistent(
    reports: list[Report], jobs: dict[int, ExpectedJob], roots: list[int]
) -> None:
    ok = [r for r in reports if r.error is None]

    retirements = Counter(r.job_id for r in ok)
    assert all(count == 1 for count in retirements.values()), (
        f"a version was retired by more than one successful operation: {retirements}"
    )
    for report in ok:
        old = jobs[report.job_id]
        assert old.status == "RETIRED", report
        if report.op == "update":
            new = jobs[report.result_id]
            assert old.replaced_by_id == new.id and new.previous_version_id == old.id
        else:
            assert old.replaced_by_id is None, report
    for report in reports:
        if report.error is not None:
            assert report.job_id in retirements, (
                f"{report.op} of job {report.job_id} raised JobNotActive but no "
                "operation retired that job"
            )

    updates = sum(1 for r in ok if r.op == "update")
    assert len(jobs) == len(roots) + updates, "a failed update left a row behind"
    cancelled = {r.job_id for r in ok if r.op == "cancel"}
    for root in roots:
        chain, job = [], jobs[root]
        while True:
            chain.append(job)
            if job.replaced_by_id is None:
                break
            job = jobs[job.replaced_by_id]
        active = [j.id for j in chain if j.status == "ACTIVE"]
        expected_active = 0 if cancelled & {j.id for j in chain} else 1
        assert len(active) == expected_active, (root, chain)


def test_racing_delayed_creates_with_one_key_make_one_job(
    kronos_dsn: str,
    kronos_target: Target,
    kronos_observer: psycopg.Connection,
    kronos_workspace: str,
    kronos_endpoint: Endpoint,
) -> None:
    """The idempotency key holds under a race: one job, one execution, one answer."""
    run_at = datetime.now(timezone.utc) + timedelta(hours=1)
    spec = JobSpec.delayed(kronos_endpoint.id, "later", run_at, "order-race")
    start, answers = threading.Barrier(THREADS), []

    def create() -> None:
        with psycopg.connect(kronos_dsn, autocommit=True) as conn:
            start.wait()
            try:
                job = kronos_target.create_job(conn, kronos_workspace, spec)
                answers.append(job.id)
            except Exception as exc:  # judged below, with the other answers
                answers.append(exc)

    threads = [threading.Thread(target=create) for _ in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)

    view = read_view(kronos_observer, [kronos_workspace])[kronos_workspace]
    assert len(answers) == THREADS
    assert len(set(answers)) == 1 and isinstance(answers[0], int), answers
    assert [job.id for job in view.jobs] == answers[:1]
    assert view.executions == ((answers[0], "PENDING", "order-race"),)
