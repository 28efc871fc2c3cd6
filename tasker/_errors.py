"""The exceptions tasker raises.

Every exception derives from :class:`TaskerError` and from the builtin it refines, so
``except ValueError`` keeps working for code that does not know tasker. Each keeps its
arguments as attributes and builds its own message.
"""

from __future__ import annotations

__all__ = [
    "BackendConfigurationError",
    "JobTimeoutError",
    "RestartLimitError",
    "ServerStartError",
    "SignalInstallError",
    "TaskerError",
]


class TaskerError(Exception):
    """Base class of every exception tasker raises on purpose."""


class BackendConfigurationError(TaskerError, RuntimeError):
    """A backend is set up wrong, so that retrying cannot help: the program stops.

    Raised by the Scheduler and the queue's workers (chained to the driver's error) when a
    backend error is permanent: tables that were never created, a password the server
    refuses, a database that does not exist, a permission the role or the process lacks, an
    unwritable state directory. An outage (a refused connection, a restarting server) is
    not one: it is retried. :func:`tasker.backends.permanent_fault` decides, in one place
    for every backend.

    Attributes:
        component: what stopped (for example ``"Scheduler"`` or ``"worker host:1:ab12cd"``).
        problem: what is wrong.
        fix: what to do about it.
    """

    def __init__(self, component: str, problem: str, fix: str) -> None:
        self.component = component
        self.problem = problem
        self.fix = fix
        super().__init__(f"{component}: {problem}; retrying cannot help. Fix: {fix}")


class JobTimeoutError(TaskerError, TimeoutError):
    """A job wrapped with :func:`tasker.with_timeout` did not finish within its time.

    Attributes:
        seconds: the time limit that was exceeded.
    """

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        super().__init__(f"job did not finish within {seconds:g} seconds")


class RestartLimitError(TaskerError, RuntimeError):
    """A supervised job failed more often than :func:`tasker.with_restart` allows.

    The last failure is chained as ``__cause__``.

    Attributes:
        restarts: how many restarts happened inside the window.
        window: the window in seconds.
    """

    def __init__(self, restarts: int, window: float) -> None:
        self.restarts = restarts
        self.window = window
        super().__init__(f"job failed {restarts + 1} times within {window:g} seconds; giving up")


class ServerStartError(TaskerError, RuntimeError):
    """A server run by :func:`tasker.serve_asgi` could not start.

    Raised when the chosen server cannot run on the current event loop (uvicorn on trio), or
    when it gave up during startup (an application whose lifespan startup failed); the
    server's own log says why in the second case. A port that cannot be bound is a plain
    ``OSError`` instead.

    Attributes:
        server: the server's name, ``"uvicorn"`` or ``"hypercorn"``.
        address: the ``host:port`` it was to listen on.
        reason: what went wrong.
    """

    def __init__(self, server: str, address: str, reason: str) -> None:
        self.server = server
        self.address = address
        self.reason = reason
        super().__init__(f"{server} cannot start on {address}: {reason}")


class SignalInstallError(TaskerError, RuntimeError):
    """Signal handlers cannot be installed here (not the main thread of the main interpreter)."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(f"cannot install signal handlers: {reason}")
