"""Our job store, held to kronos-atomicity's checks through its pytest plugin.

Run from this folder with ``pytest``: the plugin is loaded by its entry point,
and pyproject.toml names our target with ``--kronos-target=my_jobs:MyTarget``.
"""

from __future__ import annotations

import psycopg
import pytest

from kronos.errors import InvalidJob
from kronos.jobs import JobChange, JobSpec


def test_the_plugin_hands_us_our_own_target(kronos_target) -> None:
    assert kronos_target.name == "my_jobs"


def test_a_cron_job_is_scheduled_with_its_tidied_expression(
    kronos_target, kronos_conn, kronos_observer, kronos_workspace, kronos_endpoint,
    kronos_check,
) -> None:
    spec = JobSpec.cron(kronos_endpoint.id, "report", "0  3 *  * *")

    job = kronos_target.create_job(kronos_conn, kronos_workspace, spec)

    schedule = kronos_observer.execute(
        "SELECT schedule FROM cron.job WHERE jobname = %s",
        [f"kronos_{kronos_workspace}_{job.id}"],
    ).fetchone()[0]
    assert schedule == "0 3 * * *"
    kronos_check()


def test_update_and_cancel_keep_jobs_and_cron_in_step(
    kronos_target, kronos_conn, kronos_workspace, kronos_endpoint, kronos_check
) -> None:
    spec = JobSpec.cron(kronos_endpoint.id, "a", "* * * * *")
    job = kronos_target.create_job(kronos_conn, kronos_workspace, spec)

    change = JobChange(cron_expression="*/10 * * * *")
    newer = kronos_target.update_job(kronos_conn, kronos_workspace, job.id, change)
    kronos_check()
    kronos_target.cancel_job(kronos_conn, kronos_workspace, newer.id)
    kronos_check()


def test_a_failing_pg_cron_leaves_nothing_behind(
    kronos_target, kronos_conn, kronos_observer, kronos_workspace, kronos_endpoint,
    kronos_arm, kronos_check,
) -> None:
    fault = kronos_arm("schedule.before")

    with pytest.raises(psycopg.Error):
        kronos_target.create_job(
            kronos_conn,
            kronos_workspace,
            JobSpec.cron(kronos_endpoint.id, "b", "5 * * * *"),
        )

    assert fault.fired
    rows = kronos_observer.execute(
        f'SELECT count(*) FROM "{kronos_workspace}".jobs'
    ).fetchone()[0]
    assert rows == 0
    kronos_check()


def test_our_own_rule_rejects_a_big_payload_before_any_write(
    kronos_target, kronos_conn, kronos_workspace, kronos_endpoint, kronos_check
) -> None:
    spec = JobSpec.cron(
        kronos_endpoint.id, "big", "0 * * * *", payload={"blob": "x" * 5000}
    )

    with pytest.raises(InvalidJob, match="we allow 4096"):
        kronos_target.create_job(kronos_conn, kronos_workspace, spec)
    kronos_check()
