"""Helpers for testing code built on tasker: a fake clock and backend contract suites.

The contract suites import pytest; they load on first use, so importing this module does
not require pytest.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ._fake_clock import FakeClock

if TYPE_CHECKING:
    from ._queue_contract import queue_backend_machine
    from ._scheduler_contract import SchedulerBackendContract

__all__ = ["FakeClock", "SchedulerBackendContract", "queue_backend_machine"]

FakeClock.__module__ = __name__

_LAZY = {
    "SchedulerBackendContract": "._scheduler_contract",
    "queue_backend_machine": "._queue_contract",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name], __name__), name)
        value.__module__ = __name__
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
