"""Fixtures for this repository's tests.

The Kronos fixtures themselves come from the package's pytest plugin
(``kronos.pytest_plugin``, loaded through its entry point), the same plugin
other projects use.
"""

from __future__ import annotations
