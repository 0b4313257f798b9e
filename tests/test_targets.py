"""Naming a target: built-in names, package.module:object, and clear errors."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from kronos.errors import UnknownTarget
from kronos.targets import resolve_target
from kronos.targets.atomic import AtomicTarget


@pytest.fixture
def user_modules(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.syspath_prepend(str(tmp_path))
    yield tmp_path
    for name in ("raises_on_import", "broken_syntax", "needs_args", "good_one"):
        sys.modules.pop(name, None)


def test_built_in_targets_resolve_by_name() -> None:
    assert resolve_target("atomic").name == "atomic"
    assert resolve_target("legacy").positive_control is True


def test_a_users_class_is_instantiated(user_modules: Path) -> None:
    (user_modules / "good_one.py").write_text(
        "from kronos.targets.atomic import AtomicTarget\n"
        "class Mine(AtomicTarget):\n    name = 'mine'\n"
    )
    target = resolve_target("good_one:Mine")
    assert isinstance(target, AtomicTarget) and target.name == "mine"


@pytest.mark.parametrize(
    ("source", "spec", "complaint"),
    [
        ("raise RuntimeError('boom')\n", "raises_on_import:X", "RuntimeError: boom"),
        ("def (\n", "broken_syntax:X", "SyntaxError"),
        (
            "class T:\n    def __init__(self, x):\n        pass\n",
            "needs_args:T",
            "must take no arguments",
        ),
    ],
)
def test_a_broken_user_target_is_a_usage_error(
    user_modules: Path, source: str, spec: str, complaint: str
) -> None:
    (user_modules / f"{spec.split(':')[0]}.py").write_text(source)
    with pytest.raises(UnknownTarget, match=complaint):
        resolve_target(spec)


@pytest.mark.parametrize(
    ("spec", "complaint"),
    [
        ("nonsense", "unknown target"),
        ("os:path", "lacks create_job"),
        ("no_such_module_here:X", "cannot import"),
        ("os:no_such_attribute", "has no attribute"),
    ],
)
def test_names_that_are_not_targets_are_refused(spec: str, complaint: str) -> None:
    with pytest.raises(UnknownTarget, match=complaint):
        resolve_target(spec)
