"""tasker_amqp's exceptions and its fault classifier: which AMQP errors retrying cannot fix."""

from __future__ import annotations

import aiormq.exceptions

from tasker import TaskerError, redact_dsn
from tasker.backends import PermanentFault, register_fault_classifier

__all__ = [
    "AmqpSetupError",
    "AmqpUnreachableError",
    "AsyncioRequiredError",
    "classify_fault",
]


class AsyncioRequiredError(TaskerError, RuntimeError):
    """tasker_amqp runs on asyncio only: aiormq, its driver, does not support trio."""

    def __init__(self, backend: str) -> None:
        self.backend = backend
        super().__init__(
            f"tasker_amqp needs asyncio, but this code runs on {backend}: aiormq (the AMQP"
            " client) is asyncio-only. Run the program with tasker.main(..., backend='asyncio'),"
            " or use tasker_redis or the embedded backends on trio"
        )


class AmqpSetupError(TaskerError, RuntimeError):
    """RabbitMQ cannot serve tasker_amqp as configured (a refused login, a missing virtual
    host, a queue declared elsewhere with other arguments): retrying cannot fix it."""

    def __init__(self, problem: str, fix: str) -> None:
        self.problem = problem
        self.fix = fix
        self.fault = PermanentFault(problem, fix)
        super().__init__(f"{problem}: {fix}")


class AmqpUnreachableError(TaskerError, ConnectionError):
    """The broker stayed unreachable through every reconnection attempt the source allows
    (``AmqpSource(reconnect_retries=...)``): the workers stop, and ``tasker.main`` exits
    non-zero, as gofort's dispatcher closes its workers when its retries run out."""

    def __init__(self, url: str, attempts: int, last_error: str) -> None:
        self.url = url
        self.attempts = attempts
        self.last_error = last_error
        super().__init__(
            f"RabbitMQ at {url} stayed unreachable through {attempts} reconnection"
            f" attempts (last error: {last_error})"
        )


@register_fault_classifier
def classify_fault(exc: BaseException) -> PermanentFault | None:
    """aiormq's errors that retrying cannot fix, with their fix (see
    :func:`tasker.backends.permanent_fault`); an outage or anything else is None."""
    if isinstance(exc, AmqpSetupError):
        return exc.fault
    if isinstance(exc, AsyncioRequiredError):
        return PermanentFault(str(exc), "run the program on asyncio")
    if isinstance(exc, AmqpUnreachableError):
        return PermanentFault(
            str(exc),
            "start the broker or fix the URL; give AmqpSource(reconnect_retries=None) to"
            " retry forever",
        )
    if isinstance(exc, aiormq.exceptions.ProbableAuthenticationError):
        return login_refused(redact_dsn(str(exc)))
    if isinstance(exc, aiormq.exceptions.ChannelAccessRefused):
        return PermanentFault(
            f"RabbitMQ refused an operation ({redact_dsn(str(exc))})",
            "give the user configure, write and read permissions on the virtual host"
            " (`rabbitmqctl set_permissions`)",
        )
    if isinstance(exc, aiormq.exceptions.ChannelPreconditionFailed) and "inequivalent arg" in str(
        exc
    ):
        return PermanentFault(
            f"a queue or exchange exists with other arguments ({exc})",
            "delete it (`rabbitmqctl delete_queue NAME`) if nothing in it is needed, or use"
            " other names (the backend's prefix, dead_queue, or queue names)",
        )
    return None


def login_refused(detail: str) -> PermanentFault:
    """The fault of a login the broker refused."""
    return PermanentFault(
        f"RabbitMQ refused the login ({detail})",
        "check the user and password in the URL (and that the user may use the virtual host)",
    )


def vhost_refused(vhost: str) -> PermanentFault:
    """The fault of a virtual host the broker would not open."""
    return PermanentFault(
        f"RabbitMQ would not open the virtual host {vhost!r} (it does not exist, or the user"
        " has no permissions on it)",
        "create it (`rabbitmqctl add_vhost NAME`) and grant the user permissions on it"
        " (`rabbitmqctl set_permissions -p NAME USER '.*' '.*' '.*'`), or fix the URL's path",
    )
