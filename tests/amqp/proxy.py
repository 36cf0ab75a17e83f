"""The broker proxy of the older tests: now :mod:`tests.faults.proxy`, which also stalls and
delays each direction (``BrokerProxy`` is :class:`tests.faults.proxy.FaultProxy`)."""

from __future__ import annotations

from tests.faults.proxy import BrokerProxy, FaultProxy

__all__ = ["BrokerProxy", "FaultProxy"]
