"""Failures inside pg_cron's own path, armed per point, firing once.

``cron.schedule`` writes ``cron.job`` through SPI, so row triggers on
``cron.job`` see it: a BEFORE INSERT trigger strikes before the write, an
AFTER trigger right after. ``cron.unschedule`` in pg_cron 1.4 deletes with
``simple_heap_delete``, which fires no trigger, so the unschedule places wrap
the function instead: an overload ``cron.unschedule(text)`` that PostgreSQL
prefers for a text or untyped argument, and that calls the real
``cron.unschedule(name)``. A caller that passes an explicit ``::name`` or a
``bigint`` job id bypasses the wrapper; the tests show that Kronos's calls go
through it.

These four hooks are the *places*. What a hook does when its armed hit comes is
the *action*: ``raise`` an error (the ``schedule.*`` and ``unschedule.*``
points), ``sleep`` past the caller's ``statement_timeout``
(``statement.timeout``), or ``block`` on an advisory lock the injector holds,
so that another session can terminate the backend or crash the server while
the statement is in progress (``connection.drop``, ``server.crash``).

A point fires on its Nth hit (``occurrence``). Hits are counted with a
sequence, because ``nextval`` survives the rollback the fault causes, so the
harness can tell afterwards whether and how often the point was reached. (A
crash makes a sequence skip ahead, so the crash mechanism records the count
before it crashes.) Everything is created when a point is armed and removed
when it is disarmed.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import psycopg
from psycopg import sql

__all__ = ["ACTIONS", "LOCK_CLASS", "PLACES", "PgCronFaults"]

logger = logging.getLogger(__name__)

ACTIONS = ("raise", "sleep", "block")

# The first key of every advisory lock a ``block`` hook waits on (the literal
# 19282 in strike() below); the second key tells armed points apart. pg_locks
# shows them as classid and objid.
LOCK_CLASS = 19282

_INSTALL = """
CREATE SCHEMA IF NOT EXISTS fault_injection;

CREATE TABLE IF NOT EXISTS fault_injection.armed (
    point text PRIMARY KEY,
    place text NOT NULL,
    action text NOT NULL,
    occurrence integer NOT NULL CHECK (occurrence >= 1),
    hits_sequence text NOT NULL,
    lock_key integer,
    sleep_seconds double precision
);

CREATE OR REPLACE FUNCTION fault_injection.strike(p_place text) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_armed record;
    v_hit bigint;
BEGIN
    FOR v_armed IN
        SELECT * FROM fault_injection.armed WHERE place = p_place ORDER BY point
    LOOP
        v_hit := nextval(v_armed.hits_sequence::regclass);
        CONTINUE WHEN v_hit <> v_armed.occurrence;
        IF v_armed.action = 'sleep' THEN
            PERFORM pg_sleep(v_armed.sleep_seconds);
        ELSIF v_armed.action = 'block' THEN
            PERFORM pg_advisory_xact_lock(19282, v_armed.lock_key);
        ELSE
            RAISE EXCEPTION 'pg_cron failed: fault injected at % (hit %)',
                v_armed.point, v_hit
                USING ERRCODE = 'XX000',
                      HINT = 'armed by fault_injection; it fires once';
        END IF;
    END LOOP;
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

# place -> (statement that installs its hook, statement that removes it)
_HOOKS = {
    "schedule.before": (
        "CREATE TRIGGER fault_injection_schedule_before BEFORE INSERT ON cron.job"
        " FOR EACH ROW EXECUTE FUNCTION fault_injection.on_cron_job_before()",
        "DROP TRIGGER IF EXISTS fault_injection_schedule_before ON cron.job",
    ),
    "schedule.after": (
        "CREATE TRIGGER fault_injection_schedule_after AFTER INSERT OR UPDATE"
        " ON cron.job FOR EACH ROW"
        " EXECUTE FUNCTION fault_injection.on_cron_job_after()",
        "DROP TRIGGER IF EXISTS fault_injection_schedule_after ON cron.job",
    ),
    "unschedule.before": (_WRAPPER, None),
    "unschedule.after": (_WRAPPER, None),
}

_DROP_WRAPPER = "DROP FUNCTION IF EXISTS cron.unschedule(text)"

PLACES = tuple(_HOOKS)

# Where each place sits, in words, for ArmedFault.where.
PLACE_DESCRIPTIONS = {
    "schedule.before": "in cron.schedule, before it writes cron.job",
    "schedule.after": "in cron.schedule, right after it wrote cron.job",
    "unschedule.before": "in cron.unschedule, before it deletes the entry",
    "unschedule.after": "in cron.unschedule, right after it deleted the entry",
}


def _sequence(point: str) -> str:
    return "fault_injection.hits_" + point.replace(".", "_")


class PgCronFaults:
    """Arms and disarms hooks in pg_cron's path through a superuser connection.

    ``admin`` returns the connection to use, so that the injector can replace
    it after a crash.
    """

    def __init__(self, admin: Callable[[], psycopg.Connection]) -> None:
        self._admin = admin

    def arm(
        self,
        point: str,
        place: str,
        occurrence: int,
        *,
        action: str = "raise",
        lock_key: int | None = None,
        sleep_seconds: float | None = None,
    ) -> None:
        """Install the place's hook and reset the point's hit counter."""
        sequence = _sequence(point)
        create, drop = _HOOKS[place]
        admin = self._admin()

        with admin.transaction():
            admin.execute(_INSTALL)
            admin.execute(
                sql.SQL("CREATE SEQUENCE IF NOT EXISTS {}").format(
                    sql.Identifier(*sequence.split("."))
                )
            )
            admin.execute("SELECT setval(%s::regclass, 1, false)", [sequence])
            admin.execute(
                "INSERT INTO fault_injection.armed (point, place, action, occurrence,"
                " hits_sequence, lock_key, sleep_seconds)"
                " VALUES (%s, %s, %s, %s, %s, %s, %s) ON CONFLICT (point) DO UPDATE"
                " SET place = excluded.place, action = excluded.action,"
                " occurrence = excluded.occurrence, lock_key = excluded.lock_key,"
                " sleep_seconds = excluded.sleep_seconds",
                [point, place, action, occurrence, sequence, lock_key, sleep_seconds],
            )
            if drop:
                admin.execute(drop)
            admin.execute(create)

        logger.debug("armed %s %s at %s (hit %d)", point, action, place, occurrence)

    def hits(self, point: str) -> int:
        """How many times the point was reached since it was armed."""
        row = self._admin().execute(
            sql.SQL(
                "SELECT CASE WHEN is_called THEN last_value ELSE 0 END FROM {}"
            ).format(sql.Identifier(*_sequence(point).split(".")))
        ).fetchone()
        return int(row[0])

    def disarm(self, point: str) -> None:
        """Forget the point; drop every hook no armed point still needs."""
        admin = self._admin()
        with admin.transaction():
            admin.execute("DELETE FROM fault_injection.armed WHERE point = %s", [point])
            still_used = {
                row[0]
                for row in admin.execute(
                    "SELECT DISTINCT place FROM fault_injection.armed"
                ).fetchall()
            }
            for place, (_, drop) in _HOOKS.items():
                if drop and place not in still_used:
                    admin.execute(drop)
            if not still_used & {"unschedule.before", "unschedule.after"}:
                admin.execute(_DROP_WRAPPER)

        logger.debug("disarmed %s", point)

    def uninstall(self) -> None:
        """Remove every trigger, the wrapper and the ``fault_injection`` schema."""
        admin = self._admin()
        with admin.transaction():
            for _, drop in _HOOKS.values():
                if drop:
                    admin.execute(drop)
            admin.execute(_DROP_WRAPPER)
            admin.execute("DROP SCHEMA IF EXISTS fault_injection CASCADE")
