"""The queue's exceptions, and which backend errors are about the data rather than an outage."""

from __future__ import annotations

from .._errors import TaskerError
from ..abc import QueueCapability

__all__ = [
    "MissingCapabilityError",
    "PayloadError",
    "UnknownTaskError",
    "UnstorableRecordError",
    "is_data_error",
]


class UnknownTaskError(TaskerError, KeyError):
    """No handler is registered under this task name."""

    def __init__(self, name: str) -> None:
        self.name = name
        super().__init__(f"no task handler is registered as {name!r}")

    def __str__(self) -> str:
        return str(self.args[0])


class PayloadError(TaskerError, TypeError):
    """A payload (or result) the serialiser cannot represent."""

    def __init__(self, name: str, reason: str) -> None:
        self.name = name
        self.reason = reason
        super().__init__(f"payload of task {name!r} cannot be serialised: {reason}")


class MissingCapabilityError(TaskerError, NotImplementedError):
    """The queue's backend lacks a capability that a call needs.

    Attributes:
        backend: the backend's repr.
        capability: the :class:`tasker.abc.QueueCapability` missing.
        needed_by: what needed it (``"Queue.history()"``).
    """

    def __init__(self, backend: object, capability: QueueCapability, needed_by: str) -> None:
        self.backend = repr(backend)
        self.capability = capability
        self.needed_by = needed_by
        super().__init__(
            f"{needed_by} needs {capability.value}, which the backend {self.backend} does not"
            f" offer (it declares: {_declared(backend)}); use a backend that declares"
            f" QueueCapability.{capability.name}"
        )


def _declared(backend: object) -> str:
    capabilities: frozenset[object] = getattr(backend, "capabilities", frozenset())
    names = sorted(c.name for c in capabilities if isinstance(c, QueueCapability))
    return ", ".join(names) or "nothing beyond the core"


class UnstorableRecordError(TaskerError, ValueError):
    """A backend cannot store a record as it was given: its data, not the backend, is at fault.

    Raised by a backend (translated from its driver's data errors) so that the worker knows
    that retrying the same record fails the same way: the worker then stores the outcome in a
    reduced form instead of waiting for the backend as in an outage.
    """

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(f"the backend cannot store this record: {reason}")


def is_data_error(exc: BaseException) -> bool:
    """Whether ``exc`` says the record is at fault (retrying it unchanged would fail again).

    :class:`UnstorableRecordError`, and the builtin errors of bad values (``ValueError``,
    ``TypeError``, ``UnicodeError``, ``OverflowError``) that drivers raise when they cannot
    encode a value; never an ``OSError`` (a connection that failed).
    """
    return isinstance(exc, ValueError | TypeError | OverflowError) and not isinstance(exc, OSError)
