"""A non-superuser application role that has lost its rights on schema cron.

``permission.denied`` needs the operation to run as an ordinary role, the way
an application connects, and that role must lack a right pg_cron needs. The
role is created with what Kronos needs in one workspace and with USAGE on
schema ``cron`` (what a working deployment grants), and then USAGE on ``cron``
is revoked: every later pg_cron call fails with SQLSTATE 42501. The role and
its privileges are dropped when the fault is disarmed.
"""

from __future__ import annotations

import logging
import secrets

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from kronos.errors import EnvironmentProblem, KronosUsageError

__all__ = ["RestrictedRole"]

logger = logging.getLogger(__name__)

ROLE_PREFIX = "kronos_fault_app_"


class RestrictedRole:
    """A login role with rights on ``workspace`` and none on schema cron."""

    def __init__(self, admin_dsn: str, workspace: str | None) -> None:
        if not workspace:
            raise KronosUsageError(
                "permission.denied runs the operation as a role made for one "
                "workspace: pass workspace=<name> to arm()"
            )
        self._admin_dsn = admin_dsn
        self.name = ROLE_PREFIX + secrets.token_hex(4)
        self._password = secrets.token_hex(16)
        role, schema = sql.Identifier(self.name), sql.Identifier(workspace)

        with psycopg.connect(admin_dsn, autocommit=True) as admin:
            with admin.transaction():
                admin.execute(
                    sql.SQL(
                        "CREATE ROLE {} LOGIN NOSUPERUSER NOBYPASSRLS PASSWORD {}"
                    ).format(role, sql.Literal(self._password))
                )
                for grant in (
                    "GRANT USAGE ON SCHEMA {s} TO {r}",
                    "GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA"
                    " {s} TO {r}",
                    "GRANT USAGE ON ALL SEQUENCES IN SCHEMA {s} TO {r}",
                    "GRANT USAGE ON SCHEMA cron TO {r}",
                    "REVOKE USAGE ON SCHEMA cron FROM {r}",
                ):
                    admin.execute(sql.SQL(grant).format(s=schema, r=role))
            still = admin.execute(
                "SELECT has_schema_privilege(%s, 'cron', 'USAGE')", [self.name]
            ).fetchone()[0]

        if still:
            self.drop()
            raise EnvironmentProblem(
                "permission.denied cannot take USAGE on schema cron away from one "
                "role on this server: PUBLIC or a role it inherits still grants "
                "it; revoke it there (REVOKE USAGE ON SCHEMA cron FROM PUBLIC)"
            )
        logger.debug("created role %s without USAGE on cron", self.name)

    def dsn(self, base: str) -> str:
        """``base`` with this role's user name and password."""
        params = conninfo_to_dict(base)
        params.update(user=self.name, password=self._password)
        return make_conninfo(**params)

    def drop(self) -> None:
        """End the role's sessions, then drop its privileges and the role."""
        role = sql.Identifier(self.name)
        with psycopg.connect(self._admin_dsn, autocommit=True) as admin:
            admin.execute(
                "SELECT pg_terminate_backend(pid, 10000) FROM pg_stat_activity"
                " WHERE usename = %s",
                [self.name],
            )
            with admin.transaction():
                admin.execute(sql.SQL("DROP OWNED BY {}").format(role))
                admin.execute(sql.SQL("DROP ROLE {}").format(role))
        logger.debug("dropped role %s", self.name)
