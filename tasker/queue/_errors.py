"""The queue's exceptions, and which backend errors are about the data rather than an outage."""

from __future__ import annotations

from .._errors import TaskerError
from ..abc import QueueCapability

__all__ = [
    "MissingCapabilityError",
    "PayloadError",
    "QueueFullError",
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


class QueueFullError(TaskerError, RuntimeError):
    """An enqueue was refused: it would make a queue deeper than its ``max_depth``.

    Depth is the tasks waiting in the queue: held and queued (delayed ones included). The
    enqueue stored nothing (a batch, such as a group, is all or nothing); retrying once
    workers have taken tasks from the queue may succeed.

    Attributes:
        queue: the queue that is full.
        depth: the tasks waiting in it when the enqueue was refused (counted up to
            ``max_depth``: a backend stops counting there).
        max_depth: its bound.
        adding: how many tasks the refused enqueue would have added to it.
    """

    def __init__(self, queue: str, *, depth: int, max_depth: int, adding: int = 1) -> None:
        self.queue = queue
        self.depth = depth
        self.max_depth = max_depth
        self.adding = adding
        super().__init__(queue, depth, max_depth, adding)

    def __str__(self) -> str:
        return (
            f"queue {self.queue!r} is full: {self.depth} tasks waiting (held or queued) of"
            f" max_depth={self.max_depth}, no room for {self.adding} more (nothing was"
            " enqueued); retry once workers have taken some, or raise its max_depth"
        )

    def __reduce__(self) -> tuple[object, ...]:
        return (_queue_full, (self.queue, self.depth, self.max_depth, self.adding))


def _queue_full(queue: str, depth: int, max_depth: int, adding: int) -> QueueFullError:
    return QueueFullError(queue, depth=depth, max_depth=max_depth, adding=adding)


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
