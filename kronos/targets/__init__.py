"""Targets: implementations of the job lifecycle that the toolkit verifies.

A target is any object with the three writing operations of
:class:`Target`. Two ship here: ``atomic`` (the fix) and ``legacy`` (the
pre-fix behaviour, kept as the positive control). Name your own as
``package.module:object``; the object may be an instance or a class that takes
no arguments.
"""

from __future__ import annotations

import importlib
from typing import Protocol, runtime_checkable

import psycopg

from kronos.errors import UnknownTarget
from kronos.jobs import Job, JobChange, JobSpec

__all__ = ["BUILTIN_TARGETS", "Target", "resolve_target"]

BUILTIN_TARGETS = ("atomic", "legacy")

_OPERATIONS = ("create_job", "update_job", "cancel_job")


@runtime_checkable
class Target(Protocol):
    """The job-store interface every check runs against.

    Each operation receives an open connection in autocommit mode and must
    leave it idle (no transaction open) when it returns or raises. A target
    whose ``positive_control`` attribute is true is expected to diverge; the
    checks fail if it does not, because then they could not catch anything.
    """

    name: str

    def create_job(
        self, conn: psycopg.Connection, workspace: str, spec: JobSpec
    ) -> Job: ...

    def update_job(
        self, conn: psycopg.Connection, workspace: str, job_id: int, change: JobChange
    ) -> Job: ...

    def cancel_job(
        self, conn: psycopg.Connection, workspace: str, job_id: int
    ) -> Job: ...


def is_positive_control(target: object) -> bool:
    """Whether ``target`` declares that it lets the tables diverge."""
    return bool(getattr(target, "positive_control", False))


def resolve_target(spec: str | Target) -> Target:
    """Turn ``atomic``, ``legacy`` or ``package.module:object`` into a target."""
    if not isinstance(spec, str):
        return _checked(spec, repr(spec))

    if spec == "atomic":
        from kronos.targets.atomic import AtomicTarget

        return AtomicTarget()
    if spec == "legacy":
        from kronos.targets.legacy import LegacyTarget

        return LegacyTarget()

    module_name, sep, attribute = spec.partition(":")
    if not sep or not module_name or not attribute:
        raise UnknownTarget(
            f"unknown target {spec!r}; use one of {', '.join(BUILTIN_TARGETS)} "
            "or name your own as package.module:object"
        )
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise UnknownTarget(
            f"cannot import module {module_name!r} for target {spec!r}: {exc}; "
            "is it installed or on PYTHONPATH?"
        ) from exc
    except Exception as exc:  # the user's module failed while importing
        raise UnknownTarget(
            f"importing {module_name!r} for target {spec!r} raised "
            f"{type(exc).__name__}: {exc}"
        ) from exc

    obj: object = module
    for part in attribute.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError as exc:
            raise UnknownTarget(
                f"module {module_name!r} has no attribute {attribute!r}"
            ) from exc
    if isinstance(obj, type):
        try:
            obj = obj()
        except Exception as exc:
            raise UnknownTarget(
                f"creating target {spec!r} raised {type(exc).__name__}: {exc}; a "
                "target class must take no arguments (or name an instance)"
            ) from exc
    return _checked(obj, spec)


def _checked(obj: object, label: str) -> Target:
    missing = [op for op in _OPERATIONS if not callable(getattr(obj, op, None))]
    if missing:
        raise UnknownTarget(
            f"target {label} lacks {', '.join(missing)}; a target implements "
            f"{', '.join(_OPERATIONS)} (see kronos.targets.Target)"
        )
    if not isinstance(getattr(obj, "name", None), str):
        try:
            obj.name = label  # type: ignore[attr-defined]
        except AttributeError:
            pass
    return obj  # type: ignore[return-value]
