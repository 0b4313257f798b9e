"""Seed a database with a realistic mix of workspaces and jobs, and plant faults.

An audit is only convincing when it is shown to find what is there and
nothing else. :func:`seed_demo` builds workspaces with endpoints and IMMEDIATE,
DELAYED and CRON jobs (some updated, some cancelled) through the atomic
target, so they start in sync, then writes ``cron.job`` or ``jobs`` out of
band to plant a chosen number of divergences of each kind, the way a
pre-fix handler or a hand-edited table would. It returns exactly what it
planted, so a checker run can be compared with it.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

import pandas as pd
import psycopg
from psycopg import sql

from kronos.checker import KINDS
from kronos.errors import InvalidWorkspace, KronosUsageError
from kronos.jobs import Job, JobChange, JobSpec
from kronos.registration import cron_command, cron_job_name
from kronos.targets.atomic import AtomicTarget
from kronos.workspace import add_endpoint, create_workspace, drop_workspace

__all__ = ["DEFAULT_PLANT", "SeedResult", "seed_demo"]

logger = logging.getLogger(__name__)

DEFAULT_PLANT: dict[str, int] = {kind: 1 for kind in KINDS}

_COMPANIES = (
    "acme", "globex", "initech", "umbrella", "hooli",
    "stark", "wayne", "wonka", "tyrell", "soylent",
)
_ENDPOINTS = ("billing", "crm_sync", "alerts", "export", "audit_log")
_SCHEDULES = (
    "0 3 * * *", "*/15 * * * *", "30 6 * * 1-5", "0 0 1 * *",
    "0 */2 * * *", "45 23 * * 0", "5 4 * * *", "0 9 * * 1",
)
_TIME_ZONES = ("UTC", "Europe/Paris", "America/New_York", "Asia/Tokyo")
_BASE_TIME = datetime(2030, 1, 1, tzinfo=timezone.utc)

PLANTED_COLUMNS = ["kind", "workspace", "job_id", "jobname", "how"]


@dataclass
class SeedResult:
    """The workspaces and jobs a seed made, and the divergences it planted."""

    workspaces: list[str]
    jobs: pd.DataFrame
    planted: pd.DataFrame

    def compare(self, found: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
        """``(missed, unexpected)``: planted rows not found, found rows not planted.

        ``found`` is a :func:`~kronos.checker.find_divergences` table; both
        results are empty when the checker found exactly what was planted.
        """
        keys = ["kind", "workspace", "job_id"]
        planted = self.planted[keys].astype({"job_id": "int64"})
        seen = found[keys].astype({"job_id": "int64"})
        merged = planted.merge(seen, how="outer", on=keys, indicator="side")
        missed = self.planted.merge(
            merged[merged["side"] == "left_only"][keys], on=keys
        )
        unexpected = found.astype({"job_id": "int64"}).merge(
            merged[merged["side"] == "right_only"][keys], on=keys
        )
        return missed, unexpected


def seed_demo(
    conn: psycopg.Connection,
    *,
    workspaces: int = 4,
    jobs_per_workspace: int = 12,
    plant: Mapping[str, int] | None = None,
    seed: int = 0,
    prefix: str = "demo",
    replace: bool = False,
) -> SeedResult:
    """Create workspaces full of jobs, then plant ``plant`` divergences by kind.

    ``conn`` must be an autocommit superuser connection (planting writes
    ``cron.job`` directly). Workspaces are named ``<prefix>_<company>``; an
    existing one is an error unless ``replace`` is true, which drops it first.
    The same ``seed`` gives the same jobs and the same plants.
    """
    wanted = dict(DEFAULT_PLANT if plant is None else plant)
    _check_request(workspaces, jobs_per_workspace, wanted)
    rng = random.Random(seed)
    names = _workspace_names(prefix, workspaces)
    _clear(conn, names, replace)

    for name in names:
        _seed_workspace(conn, name, jobs_per_workspace, rng)
    planted = _plant(conn, names, wanted, rng)
    jobs = _job_table(conn, names)
    logger.info(
        "seeded %d workspaces with %d job versions, planted %d divergences",
        len(names), len(jobs), len(planted),
    )
    return SeedResult(names, jobs, planted)


def _check_request(
    workspaces: int, jobs_per_workspace: int, wanted: Mapping[str, int]
) -> None:
    if workspaces < 1 or jobs_per_workspace < 1:
        raise KronosUsageError("seed at least one workspace with at least one job")
    unknown = sorted(set(wanted) - set(KINDS))
    if unknown:
        raise KronosUsageError(
            f"cannot plant {unknown}; known kinds: {', '.join(KINDS)}"
        )
    if any(not isinstance(n, int) or n < 0 for n in wanted.values()):
        raise KronosUsageError(f"plant counts must be integers >= 0: {dict(wanted)}")


def _workspace_names(prefix: str, count: int) -> list[str]:
    names = []
    for index in range(count):
        company = _COMPANIES[index % len(_COMPANIES)]
        rounds = index // len(_COMPANIES)
        names.append(f"{prefix}_{company}" + (f"{rounds + 1}" if rounds else ""))
    return names


def _clear(conn: psycopg.Connection, names: list[str], replace: bool) -> None:
    taken = [
        row[0]
        for row in conn.execute(
            "SELECT nspname FROM pg_namespace WHERE nspname = ANY(%s)", [names]
        ).fetchall()
    ]
    if taken and not replace:
        raise InvalidWorkspace(
            f"workspaces {', '.join(sorted(taken))} already exist; pass "
            "replace=True to drop and reseed them, or choose another prefix"
        )
    for name in taken:
        drop_workspace(conn, name)


def _seed_workspace(
    conn: psycopg.Connection, workspace: str, count: int, rng: random.Random
) -> None:
    """Jobs of every trigger; some CRON jobs updated, some jobs cancelled."""
    target = AtomicTarget()
    create_workspace(conn, workspace)
    endpoints = [
        add_endpoint(conn, workspace, name, f"https://{workspace}.example/{name}").id
        for name in rng.sample(_ENDPOINTS, rng.randint(1, 3))
    ]

    for index in range(1, count + 1):
        endpoint = rng.choice(endpoints)
        trigger = rng.choices(["CRON", "IMMEDIATE", "DELAYED"], [6, 2, 2])[0]
        if trigger == "CRON":
            spec = JobSpec.cron(
                endpoint, f"report {index}", rng.choice(_SCHEDULES),
                rng.choice(_TIME_ZONES),
            )
        elif trigger == "IMMEDIATE":
            spec = JobSpec.immediate(endpoint, f"send {index}")
        else:
            run_at = _BASE_TIME + timedelta(hours=rng.randint(1, 24 * 30))
            spec = JobSpec.delayed(endpoint, f"remind {index}", run_at, f"key-{index}")
        job = target.create_job(conn, workspace, spec)

        roll = rng.random()
        if trigger == "CRON" and roll < 0.25:
            change = JobChange(cron_expression=_other_schedule(job, rng))
            target.update_job(conn, workspace, job.id, change)
        elif roll > 0.85:
            target.cancel_job(conn, workspace, job.id)


def _job_table(conn: psycopg.Connection, names: list[str]) -> pd.DataFrame:
    """Every job version the seed made, as the database holds it now."""
    columns = ["workspace", "job_id", "name", "trigger", "status", "cron_expression"]
    parts = [
        sql.SQL(
            "SELECT {name}::text, id, name, trigger, status, cron_expression"
            " FROM {jobs}"
        ).format(name=sql.Literal(name), jobs=sql.Identifier(name, "jobs"))
        for name in names
    ]
    rows = conn.execute(
        sql.SQL(" UNION ALL ").join(parts) + sql.SQL(" ORDER BY 1, 2")
    ).fetchall()
    return pd.DataFrame(rows, columns=columns)


def _plant(
    conn: psycopg.Connection,
    names: list[str],
    wanted: Mapping[str, int],
    rng: random.Random,
) -> pd.DataFrame:
    """Break ``wanted`` jobs, one divergence per job, and say how."""
    active, retired = _cron_jobs(conn, names)
    rng.shuffle(active)
    rng.shuffle(retired)
    needed = sum(wanted.values()) - min(wanted.get("orphan schedule", 0), len(retired))
    if needed > len(active):
        raise KronosUsageError(
            f"planting {dict(wanted)} needs {needed} ACTIVE CRON jobs but the seed "
            f"made {len(active)}; raise jobs_per_workspace or plant fewer"
        )

    rows = []
    for kind in KINDS:
        for _ in range(wanted.get(kind, 0)):
            if kind == "orphan schedule" and retired:
                workspace, job_id, expression = retired.pop()
            else:
                workspace, job_id, expression = active.pop()
            how = _break(conn, kind, workspace, job_id, expression)
            name = cron_job_name(workspace, job_id)
            rows.append((kind, workspace, job_id, name, how))
    return pd.DataFrame(rows, columns=PLANTED_COLUMNS)


def _break(
    conn: psycopg.Connection, kind: str, workspace: str, job_id: int, expression: str
) -> str:
    """Write one divergence out of band; return what was done, as a sentence."""
    name = cron_job_name(workspace, job_id)
    command = cron_command(workspace, job_id).as_string(conn)

    if kind == "missing schedule":
        conn.execute(
            "SELECT cron.unschedule(jobid) FROM cron.job WHERE jobname = %s", [name]
        )
        return f"unscheduled {name} behind the ACTIVE job's back"
    if kind == "orphan schedule":
        status = conn.execute(
            sql.SQL("SELECT status FROM {} WHERE id = %s").format(
                sql.Identifier(workspace, "jobs")
            ),
            [job_id],
        ).fetchone()[0]
        if status == "ACTIVE":
            conn.execute(
                sql.SQL(
                    "UPDATE {} SET status = 'RETIRED', retired_at = now() WHERE id = %s"
                ).format(sql.Identifier(workspace, "jobs")),
                [job_id],
            )
            return f"retired job {job_id} in jobs, leaving {name} scheduled"
        conn.execute("SELECT cron.schedule(%s, %s, %s)", [name, expression, command])
        return f"scheduled {name} again for the RETIRED job {job_id}"
    if kind == "schedule mismatch":
        other = "17 1 * * *" if expression != "17 1 * * *" else "18 1 * * *"
        conn.execute("SELECT cron.schedule(%s, %s, %s)", [name, other, command])
        return f"rescheduled {name} on {other!r} instead of {expression!r}"
    if kind == "command mismatch":
        wrong = cron_command(workspace, job_id + 100_000).as_string(conn)
        conn.execute("SELECT cron.schedule(%s, %s, %s)", [name, expression, wrong])
        return f"pointed {name}'s command at job {job_id + 100_000}"
    conn.execute("UPDATE cron.job SET active = false WHERE jobname = %s", [name])
    return f"set {name} inactive in cron.job"


def _cron_jobs(
    conn: psycopg.Connection, names: list[str]
) -> tuple[list[tuple[str, int, str]], list[tuple[str, int, str]]]:
    """``(active, retired)`` CRON job versions as (workspace, id, expression)."""
    active: list[tuple[str, int, str]] = []
    retired: list[tuple[str, int, str]] = []
    for workspace in names:
        rows = conn.execute(
            sql.SQL(
                "SELECT id, status, cron_expression FROM {} WHERE trigger = 'CRON'"
                " ORDER BY id"
            ).format(sql.Identifier(workspace, "jobs"))
        ).fetchall()
        for job_id, status, expression in rows:
            bucket = active if status == "ACTIVE" else retired
            bucket.append((workspace, int(job_id), expression))
    return active, retired


def _other_schedule(job: Job, rng: random.Random) -> str:
    return rng.choice([s for s in _SCHEDULES if s != job.cron_expression])
