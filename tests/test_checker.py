"""The checker finds every kind of divergence, in few queries, without writing."""

from __future__ import annotations

import uuid

import psycopg
import pytest
from psycopg import sql

from kronos import registration
from kronos.checker import KINDS, assert_in_sync, find_divergences
from kronos.errors import DivergenceError, InvalidWorkspace, KronosUsageError
from kronos.jobs import JobSpec
from kronos.targets.atomic import AtomicTarget


@pytest.fixture
def cron_job(kronos_observer, kronos_workspace, kronos_endpoint):
    return AtomicTarget().create_job(
        kronos_observer,
        kronos_workspace,
        JobSpec.cron(kronos_endpoint.id, "report", "0 3 * * *"),
    )


def _name(workspace: str, job_id: int) -> str:
    return registration.cron_job_name(workspace, job_id)


def test_agreeing_tables_give_an_empty_table_with_the_documented_columns(
    kronos_observer, kronos_workspace, cron_job
) -> None:
    found = find_divergences(kronos_observer, [kronos_workspace])

    assert found.empty
    assert list(found.columns)[:3] == ["kind", "workspace", "job_id"]


PLANTS = {
    "missing schedule": "SELECT cron.unschedule({name}::name)",
    "orphan schedule": "UPDATE {ws}.jobs SET status = 'RETIRED', retired_at = now()"
    " WHERE id = {id}",
    "schedule mismatch": "UPDATE cron.job SET schedule = '5 5 * * *'"
    " WHERE jobname = {name}",
    "command mismatch": "UPDATE cron.job SET command = 'SELECT 1'"
    " WHERE jobname = {name}",
    "inactive entry": "UPDATE cron.job SET active = false WHERE jobname = {name}",
}


@pytest.mark.parametrize("kind", KINDS)
def test_each_kind_of_divergence_is_found_and_explained(
    kind, kronos_observer, kronos_workspace, cron_job
) -> None:
    kronos_observer.execute(
        sql.SQL(PLANTS[kind]).format(
            ws=sql.Identifier(kronos_workspace),
            id=sql.Literal(cron_job.id),
            name=sql.Literal(_name(kronos_workspace, cron_job.id)),
        )
    )

    found = find_divergences(kronos_observer, [kronos_workspace])

    assert list(found["kind"]) == [kind]
    row = found.iloc[0]
    assert (row.workspace, row.job_id) == (kronos_workspace, cron_job.id)
    assert str(cron_job.id) in row.explanation
    with pytest.raises(DivergenceError, match=kind.split()[0]):
        assert_in_sync(kronos_observer, [kronos_workspace])


def test_an_entry_of_a_dropped_workspace_is_an_orphan(kronos_observer) -> None:
    ghost = f"ghost_{uuid.uuid4().hex[:8]}"
    kronos_observer.execute(
        "SELECT cron.schedule(%s, '@daily', 'SELECT 1')", [_name(ghost, 3)]
    )
    try:
        found = find_divergences(kronos_observer)
        mine = found[found["workspace"] == ghost]
        assert list(mine["kind"]) == ["orphan schedule"]
        assert "no CRON job 3" in mine.iloc[0].explanation
    finally:
        kronos_observer.execute("SELECT cron.unschedule(%s::name)", [_name(ghost, 3)])


def test_other_applications_entries_are_not_kronos_business(
    kronos_observer, kronos_workspace
) -> None:
    kronos_observer.execute(
        "SELECT cron.schedule('nightly-vacuum', '@daily', 'VACUUM')"
    )
    try:
        assert find_divergences(kronos_observer, [kronos_workspace]).empty
    finally:
        kronos_observer.execute("SELECT cron.unschedule('nightly-vacuum'::name)")


def test_unknown_workspace_is_a_usage_error(kronos_observer) -> None:
    with pytest.raises(InvalidWorkspace, match="no_such"):
        find_divergences(kronos_observer, ["no_such"])


def test_the_checker_refuses_a_connection_in_a_transaction(kronos_dsn) -> None:
    with psycopg.connect(kronos_dsn) as conn:
        conn.execute("SELECT 1")
        with pytest.raises(KronosUsageError, match="no transaction open"):
            find_divergences(conn)


def test_the_checker_works_with_a_role_that_can_only_read(
    kronos_dsn, kronos_observer, kronos_workspace, cron_job
) -> None:
    """A role without any write privilege can run it: the checker never writes."""
    role = f"reader_{uuid.uuid4().hex[:8]}"
    ws = sql.Identifier(kronos_workspace)
    kronos_observer.execute(
        sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(role))
    )
    try:
        for statement in (
            "GRANT USAGE ON SCHEMA {ws} TO {role}",
            "GRANT SELECT ON ALL TABLES IN SCHEMA {ws} TO {role}",
            "GRANT SELECT ON public.workspaces TO {role}",
            "GRANT USAGE ON SCHEMA cron TO {role}",
            # cron.job's row security shows a role only its own entries; a
            # reader that audits everything needs BYPASSRLS.
            "ALTER ROLE {role} BYPASSRLS",
        ):
            kronos_observer.execute(
                sql.SQL(statement).format(ws=ws, role=sql.Identifier(role))
            )
        kronos_observer.execute(
            "SELECT cron.unschedule(%s::name)", [_name(kronos_workspace, cron_job.id)]
        )

        with psycopg.connect(kronos_dsn, user=role, autocommit=True) as reader:
            found = find_divergences(reader, [kronos_workspace])

        assert list(found["kind"]) == ["missing schedule"]
    finally:
        kronos_observer.execute(
            sql.SQL("DROP OWNED BY {0}; DROP ROLE {0}").format(sql.Identifier(role))
        )


def test_a_role_limited_by_row_security_is_told_its_view_is_partial(
    kronos_dsn, kronos_observer, kronos_workspace, cron_job
) -> None:
    role = f"narrow_{uuid.uuid4().hex[:8]}"
    ident = sql.Identifier(role)
    ws = sql.Identifier(kronos_workspace)
    for statement in (
        "CREATE ROLE {role} LOGIN",
        "GRANT USAGE ON SCHEMA cron, {ws} TO {role}",
        "GRANT SELECT ON ALL TABLES IN SCHEMA {ws} TO {role}",
        "GRANT SELECT ON public.workspaces TO {role}",
    ):
        kronos_observer.execute(sql.SQL(statement).format(ws=ws, role=ident))
    try:
        with psycopg.connect(kronos_dsn, user=role, autocommit=True) as reader:
            found = find_divergences(reader, [kronos_workspace])

        # The superuser's entry is invisible to this role, so it looks missing,
        # and the result says why it cannot be trusted.
        assert list(found["kind"]) == ["missing schedule"]
        assert "row security" in found.attrs["partial_view"]
        assert (
            "partial_view"
            not in find_divergences(kronos_observer, [kronos_workspace]).attrs
        )
    finally:
        kronos_observer.execute(
            sql.SQL("DROP OWNED BY {0}; DROP ROLE {0}").format(ident)
        )


class _CountingConnection(psycopg.Connection):
    """Counts the statements sent, to show the checker's cost is flat."""

    statements = 0

    def execute(self, *args, **kwargs):
        type(self).statements += 1
        return super().execute(*args, **kwargs)


def test_the_number_of_queries_does_not_grow_with_the_number_of_jobs(
    kronos_dsn, kronos_observer, kronos_workspace, kronos_endpoint
) -> None:
    target = AtomicTarget()

    def queries_for_check() -> int:
        with _CountingConnection.connect(kronos_dsn, autocommit=True) as conn:
            _CountingConnection.statements = 0
            find_divergences(conn, [kronos_workspace])
            return _CountingConnection.statements

    target.create_job(
        kronos_observer,
        kronos_workspace,
        JobSpec.cron(kronos_endpoint.id, "a", "@daily"),
    )
    with_one_job = queries_for_check()
    for index in range(40):
        target.create_job(
            kronos_observer,
            kronos_workspace,
            JobSpec.cron(kronos_endpoint.id, f"j{index}", "@hourly"),
        )
    with_many_jobs = queries_for_check()

    assert with_one_job == with_many_jobs
    assert with_many_jobs <= 6
