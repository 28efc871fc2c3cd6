"""tasker: start, compose, schedule and stop the long-lived work of a service.

Everything is a job, ``async def job(ctx) -> None``; combinators build programs out of jobs;
:func:`main` runs them with graceful shutdown on asyncio or trio.
"""

from __future__ import annotations

import contextlib

# The families first: tasker.abc names their records (ScheduleState, the queue's records),
# and the families implement tasker.abc's protocols.
from . import schedule, scheduler  # isort: skip
from . import abc, queue
from ._asgi import ASGIApp, serve_asgi, serve_health
from ._backoff import Backoff
from ._clock import Clock, SystemClock
from ._combinators import concurrence, sequence
from ._context import DEFAULT_GRACE, Context, StopReason
from ._error_handling import ErrorHandler, ignore_error, on_error
from ._errors import (
    BackendConfigurationError,
    JobTimeoutError,
    RestartLimitError,
    ServerStartError,
    SignalInstallError,
    TaskerError,
)
from ._job import Job
from ._main import main
from ._no_overlap import with_no_overlap
from ._readiness import Probe, Readiness, current_readiness, health_app
from ._redact import RedactingFilter, redact_dsn
from ._repeat import with_repeat
from ._retry import with_restart, with_retry
from ._run import run
from ._shutdown import with_shutdown
from ._signals import with_signal_notify
from ._threads import in_thread
from ._timeout import with_timeout
from .scheduler import (
    CatchUp,
    FileLockerFactory,
    FirstRun,
    MemoryLockerFactory,
    MemoryStateRepository,
    Scheduler,
    SchedulerStatistics,
    ScheduleState,
    SQLiteStateRepository,
    scheduled_slot,
)

__all__ = [
    "DEFAULT_GRACE",
    "ASGIApp",
    "BackendConfigurationError",
    "Backoff",
    "CatchUp",
    "Clock",
    "Context",
    "ErrorHandler",
    "FileLockerFactory",
    "FirstRun",
    "Job",
    "JobTimeoutError",
    "MemoryLockerFactory",
    "MemoryStateRepository",
    "Probe",
    "Readiness",
    "RedactingFilter",
    "RestartLimitError",
    "SQLiteStateRepository",
    "ScheduleState",
    "Scheduler",
    "SchedulerStatistics",
    "ServerStartError",
    "SignalInstallError",
    "StopReason",
    "SystemClock",
    "TaskerError",
    "abc",
    "concurrence",
    "current_readiness",
    "health_app",
    "ignore_error",
    "in_thread",
    "main",
    "on_error",
    "queue",
    "redact_dsn",
    "run",
    "schedule",
    "scheduled_slot",
    "scheduler",
    "sequence",
    "serve_asgi",
    "serve_health",
    "with_no_overlap",
    "with_repeat",
    "with_restart",
    "with_retry",
    "with_shutdown",
    "with_signal_notify",
    "with_timeout",
]

# Show the public path in reprs and tracebacks (tasker.Context, not tasker._context.Context).
for _name in __all__:
    _obj = globals()[_name]
    if isinstance(_obj, type) or (callable(_obj) and hasattr(_obj, "__module__")):
        with contextlib.suppress(AttributeError, TypeError):  # type aliases
            _obj.__module__ = __name__
del _name, _obj
