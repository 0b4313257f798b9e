"""Make pg_cron and its transaction fail at a chosen point, for real.

>>> with FaultInjector(dsn, server=server) as injector:
...     with injector.arm("connection.drop", at="unschedule") as fault:
...         with fault.connect() as conn:
...             ...  # run an operation on conn
...     assert fault.fired, fault.describe()
"""

from __future__ import annotations

from fault_injection.client import FaultyConnection, InjectedClientFault
from fault_injection.injector import ArmedFault, FaultInjector
from fault_injection.points import OPERATIONS, POINTS, STEPS, FaultPoint, get_point
from fault_injection.proxy import WireProxy

__all__ = [
    "OPERATIONS",
    "POINTS",
    "STEPS",
    "ArmedFault",
    "FaultInjector",
    "FaultPoint",
    "FaultyConnection",
    "InjectedClientFault",
    "WireProxy",
    "get_point",
]
