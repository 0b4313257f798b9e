"""Our team's job store: the atomic lifecycle plus our own rules.

We tidy cron expressions (collapse runs of spaces) and refuse payloads larger
than 4 KiB before anything is written; everything else is the atomic target's
single transaction, which is what the tests below hold us to.
"""

from __future__ import annotations

import json
from dataclasses import replace

import psycopg

from kronos.errors import InvalidJob
from kronos.jobs import Job, JobChange, JobSpec
from kronos.targets.atomic import AtomicTarget

MAX_PAYLOAD_BYTES = 4096


class MyTarget:
    """Wraps :class:`AtomicTarget`; kronos finds it as ``my_jobs:MyTarget``."""

    name = "my_jobs"
    positive_control = False

    def __init__(self) -> None:
        self._inner = AtomicTarget()

    def create_job(
        self, conn: psycopg.Connection, workspace: str, spec: JobSpec
    ) -> Job:
        _check_payload(spec.payload)
        if spec.cron_expression is not None:
            spec = replace(spec, cron_expression=_tidy(spec.cron_expression))
        return self._inner.create_job(conn, workspace, spec)

    def update_job(
        self, conn: psycopg.Connection, workspace: str, job_id: int, change: JobChange
    ) -> Job:
        if change.payload is not None:
            _check_payload(change.payload)
        if change.cron_expression is not None:
            change = replace(change, cron_expression=_tidy(change.cron_expression))
        return self._inner.update_job(conn, workspace, job_id, change)

    def cancel_job(self, conn: psycopg.Connection, workspace: str, job_id: int) -> Job:
        return self._inner.cancel_job(conn, workspace, job_id)


def _tidy(expression: str) -> str:
    return " ".join(expression.split())


def _check_payload(payload: object) -> None:
    size = len(json.dumps(payload).encode())
    if size > MAX_PAYLOAD_BYTES:
        raise InvalidJob(
            f"payload is {size} bytes; we allow {MAX_PAYLOAD_BYTES}, so store "
            "large data elsewhere and pass a reference"
        )
