"""Make pg_cron and its transaction fail at a chosen point, for real.

>>> with FaultInjector(dsn) as injector:
...     conn = injector.connect()
...     with injector.arm("schedule.before") as fault:
...         ...  # run an operation on conn
...     assert fault.fired
"""

from __future__ import annotations

from fault_injection.client import FaultyConnection, InjectedClientFault
from fault_injection.injector import ArmedFault, FaultInjector
from fault_injection.points import OPERATIONS, POINTS, FaultPoint, get_point

__all__ = [
    "OPERATIONS",
    "POINTS",
    "ArmedFault",
    "FaultInjector",
    "FaultPoint",
    "FaultyConnection",
    "InjectedClientFault",
    "get_point",
]
