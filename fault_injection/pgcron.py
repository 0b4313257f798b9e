"""Failures inside pg_cron's own path, armed per point, firing once.

``cron.schedule`` writes ``cron.job`` through SPI, so row triggers on
``cron.job`` see it: a BEFORE INSERT trigger fails it before the write, an
AFTER trigger right after. ``cron.unschedule`` in pg_cron 1.4 deletes with
``simple_heap_delete``, which fires no trigger, so the unschedule points wrap
the function instead: an overload ``cron.unschedule(text)`` that PostgreSQL
prefers for a text or untyped argument, and that calls the real
``cron.unschedule(name)``. A caller that passes an explicit ``::name`` or a
``bigint`` job id bypasses the wrapper; the tests show that Kronos's calls go
through it.

A point fires on its Nth hit (``occurrence``). Hits are counted with a
sequence, because ``nextval`` survives the rollback the fault causes, so the
harness can tell afterwards whether and how often the point was reached.
Everything is created when a point is armed and removed when it is disarmed.
"""

from __future__ import annotations

import logging

import psycopg
from psycopg import sql

__all__ = ["PgCronFaults"]

logger = logging.getLogger(__name__)

_INSTALL = """
CREATE SCHEMA IF NOT EXISTS fault_injection;

CREATE TABLE IF NOT EXISTS fault_injection.armed (
    point text PRIMARY KEY,
    occurrence integer NOT NULL CHECK (occurrence >= 1),
    hits_sequence text NOT NULL
);

CREATE OR REPLACE FUNCTION fault_injection.strike(p_point text) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_occurrence integer;
    v_sequence text;
    v_hit bigint;
BEGIN
    SELECT occurrence, hits_sequence INTO v_occurrence, v_sequence
      FROM fault_injection.armed WHERE point = p_point;
    IF NOT FOUND THEN
        RETURN;
    END IF;
    v_hit := nextval(v_sequence::regclass);
    IF v_hit = v_occurrence THEN
        RAISE EXCEPTION 'pg_cron failed: fault injected at % (hit %)', p_point, v_hit
            USING ERRCODE = 'XX000',
                  HINT = 'armed by fault_injection; it fires once';
    END IF;
END
$$;

CREATE OR REPLACE FUNCTION fault_injection.on_cron_job_before() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM fault_injection.strike('schedule.before');
    RETURN NEW;
END
$$;

CREATE OR REPLACE FUNCTION fault_injection.on_cron_job_after() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM fault_injection.strike('schedule.after');
    RETURN NULL;
END
$$;
"""

_WRAPPER = """
CREATE OR REPLACE FUNCTION cron.unschedule(job_name text) RETURNS boolean
LANGUAGE plpgsql AS $$
DECLARE
    v_result boolean;
BEGIN
    PERFORM fault_injection.strike('unschedule.before');
    v_result := cron.unschedule(job_name::name);
    PERFORM fault_injection.strike('unschedule.after');
    RETURN v_result;
END
$$;
"""

# point -> (statement that installs its hook, statement that removes it)
_HOOKS = {
    "schedule.before": (
        "CREATE TRIGGER fault_injection_schedule_before BEFORE INSERT ON cron.job"
        " FOR EACH ROW EXECUTE FUNCTION fault_injection.on_cron_job_before()",
        "DROP TRIGGER IF EXISTS fault_injection_schedule_before ON cron.job",
    ),
    "schedule.after": (
        "CREATE TRIGGER fault_injection_schedule_after AFTER INSERT OR UPDATE"
        " ON cron.job FOR EACH ROW EXECUTE FUNCTION fault_injection.on_cron_job_after()",
        "DROP TRIGGER IF EXISTS fault_injection_schedule_after ON cron.job",
    ),
    "unschedule.before": (_WRAPPER, None),
    "unschedule.after": (_WRAPPER, None),
}

_DROP_WRAPPER = "DROP FUNCTION IF EXISTS cron.unschedule(text)"

POINT_NAMES = tuple(_HOOKS)


def _sequence(point: str) -> str:
    return "fault_injection.hits_" + point.replace(".", "_")


class PgCronFaults:
    """Arms and disarms the pg_cron points through a superuser connection."""

    def __init__(self, admin: psycopg.Connection) -> None:
        self._admin = admin

    def arm(self, point: str, occurrence: int) -> None:
        """Install the point's hook and reset its hit counter."""
        sequence = _sequence(point)
        create, _ = _HOOKS[point]

        with self._admin.transaction():
            self._admin.execute(_INSTALL)
            self._admin.execute(
                sql.SQL("CREATE SEQUENCE IF NOT EXISTS {}").format(
                    sql.Identifier(*sequence.split("."))
                )
            )
            self._admin.execute("SELECT setval(%s::regclass, 1, false)", [sequence])
            self._admin.execute(
                "INSERT INTO fault_injection.armed (point, occurrence, hits_sequence)"
                " VALUES (%s, %s, %s) ON CONFLICT (point) DO UPDATE"
                " SET occurrence = excluded.occurrence",
                [point, occurrence, sequence],
            )
            drop = _HOOKS[point][1]
            if drop:
                self._admin.execute(drop)
            self._admin.execute(create)

        logger.debug("armed %s (fires on hit %d)", point, occurrence)

    def hits(self, point: str) -> int:
        """How many times the point was reached since it was armed."""
        row = self._admin.execute(
            sql.SQL(
                "SELECT CASE WHEN is_called THEN last_value ELSE 0 END FROM {}"
            ).format(sql.Identifier(*_sequence(point).split(".")))
        ).fetchone()
        return int(row[0])

    def disarm(self, point: str) -> None:
        """Remove the point's hook; drop shared pieces no armed point needs."""
        with self._admin.transaction():
            self._admin.execute(
                "DELETE FROM fault_injection.armed WHERE point = %s", [point]
            )
            drop = _HOOKS[point][1]
            if drop:
                self._admin.execute(drop)
            still_armed = {
                row[0]
                for row in self._admin.execute(
                    "SELECT point FROM fault_injection.armed"
                ).fetchall()
            }
            if not still_armed & {"unschedule.before", "unschedule.after"}:
                self._admin.execute(_DROP_WRAPPER)

        logger.debug("disarmed %s", point)

    def uninstall(self) -> None:
        """Remove every trigger, the wrapper and the ``fault_injection`` schema."""
        with self._admin.transaction():
            for _, drop in _HOOKS.values():
                if drop:
                    self._admin.execute(drop)
            self._admin.execute(_DROP_WRAPPER)
            self._admin.execute("DROP SCHEMA IF EXISTS fault_injection CASCADE")
