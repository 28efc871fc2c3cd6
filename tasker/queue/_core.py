"""What every part of the :class:`~tasker.queue.Queue` shares, and the check of its backend.

The Queue is assembled from one class per concept: registration, enqueueing and workers in
``_queue.py``; chains and groups (``_workflows.py``); inspection (``_inspection.py``) and
administration (``_administration.py``), the passthroughs of those two capabilities. Each
part derives from :class:`QueueCore`, which holds what they all use: the backend, whose
declared capabilities are checked once at construction (:func:`check_backend`) and then asked
by :meth:`QueueCore._require` before each call that needs one; the registry; and the
backend's clock. Parts never call each other's private methods, only the core's.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from ..abc import (
    BoundedEnqueue,
    ClaimById,
    FinishAndClaim,
    QueueAdministration,
    QueueBackend,
    QueueCapability,
    QueueInspection,
    TaskCancellation,
    TaskProgress,
    TransactionalEnqueue,
    WorkerRegistry,
)
from ._checks import check_headers
from ._errors import MissingCapabilityError
from ._records import EnqueueResult, GroupSpec, NewTask
from ._registry import Registry
from ._time import BackendClock

__all__ = ["QueueCore", "check_backend", "check_max_depth"]

#: The protocol each capability with methods of its own must implement.
_PROTOCOLS: dict[QueueCapability, type] = {
    QueueCapability.INSPECTION: QueueInspection,
    QueueCapability.ADMINISTRATION: QueueAdministration,
    QueueCapability.FINISH_AND_CLAIM: FinishAndClaim,
    QueueCapability.TRANSACTIONAL_ENQUEUE: TransactionalEnqueue,
    QueueCapability.WORKERS: WorkerRegistry,
    QueueCapability.CLAIM_BY_ID: ClaimById,
    QueueCapability.CANCEL: TaskCancellation,
    QueueCapability.PROGRESS: TaskProgress,
    QueueCapability.BOUNDED_QUEUES: BoundedEnqueue,
}


def check_backend(backend: object) -> frozenset[QueueCapability]:
    """``backend``'s declared capabilities, once it is shown to implement each of them.

    Raises:
        TypeError: for an object that is not a :class:`QueueBackend`, a ``capabilities``
            that is not a frozenset of :class:`QueueCapability`, or a declared capability
            whose protocol the backend does not implement.
    """
    if not isinstance(backend, QueueBackend):
        raise TypeError(f"Queue: {backend!r} is not a tasker.queue.QueueBackend")
    capabilities = backend.capabilities
    if not isinstance(capabilities, frozenset) or not all(
        isinstance(c, QueueCapability) for c in capabilities
    ):
        raise TypeError(
            f"Queue: {backend!r}.capabilities must be a frozenset of QueueCapability,"
            f" got {capabilities!r}"
        )
    for capability in sorted(capabilities, key=lambda c: c.name):
        protocol = _PROTOCOLS.get(capability)
        if protocol is not None and not isinstance(backend, protocol):
            raise TypeError(
                f"Queue: {backend!r} declares QueueCapability.{capability.name} but does"
                f" not implement tasker.abc.{protocol.__name__}"
            )
    return capabilities


def check_max_depth(max_depth: object) -> tuple[int | None, dict[str, int]]:
    """``Queue(max_depth=...)`` as (the bound of every queue, the bounds by queue name).

    Raises:
        TypeError: for something that is neither an int nor a mapping of names to ints.
        ValueError: for a bound below 1, or an empty queue name.
    """

    def bound(value: object, where: str) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"Queue: {where} must be an int, got {value!r}")
        if value < 1:
            raise ValueError(f"Queue: {where} must be at least 1, got {value!r}")
        return value

    if max_depth is None:
        return None, {}
    if isinstance(max_depth, Mapping):
        by_queue: dict[str, int] = {}
        for name, value in max_depth.items():
            if not isinstance(name, str) or not name:
                raise ValueError(f"Queue: max_depth's keys must be queue names, got {name!r}")
            by_queue[name] = bound(value, f"max_depth[{name!r}]")
        return None, by_queue
    if isinstance(max_depth, int) and not isinstance(max_depth, bool):
        return bound(max_depth, "max_depth"), {}
    raise TypeError(
        f"Queue: max_depth must be an int (every queue), a mapping of queue names to ints,"
        f" or None, got {max_depth!r}"
    )


class QueueCore:
    """The state every part of the Queue uses, set by ``Queue.__init__``.

    Attributes:
        backend: where tasks live, checked by :func:`check_backend`.
    """

    backend: QueueBackend
    _registry: Registry
    _time: BackendClock
    #: ``max_depth``: every queue's bound, and the bounds by name (which take precedence).
    _depth_default: int | None
    _depth_by_queue: Mapping[str, int]

    async def _now(self) -> float:
        return await self._time.now()

    def _bounds(self, tasks: Sequence[NewTask]) -> dict[str, int]:
        """The ``max_depth`` of each queue of ``tasks`` that has one."""
        bounds: dict[str, int] = {}
        for task in tasks:
            bound = self._depth_by_queue.get(task.queue, self._depth_default)
            if bound is not None:
                bounds[task.queue] = bound
        return bounds

    async def _put(
        self, tasks: Sequence[NewTask], *, group: GroupSpec | None = None, now: float
    ) -> list[EnqueueResult]:
        """Enqueue ``tasks`` on the backend: bounded (``BOUNDED_QUEUES``, checked when the
        Queue was built) when a queue of theirs has a ``max_depth``; under the tracer's
        spans when it has one (``tasker.tracing``)."""
        tracer = self._registry.tracer
        if tracer is not None:
            return await tracer.enqueue(
                lambda tasks, group: self._store(tasks, group=group, now=now), tasks, group
            )
        return await self._store(tasks, group=group, now=now)

    async def _store(
        self, tasks: Sequence[NewTask], *, group: GroupSpec | None, now: float
    ) -> list[EnqueueResult]:
        bounds = self._bounds(tasks) if self._depth_default or self._depth_by_queue else None
        if bounds:
            bounded: Any = self.backend
            result: list[EnqueueResult] = await bounded.enqueue_bounded(
                tasks, max_depth=bounds, group=group, now=now
            )
            return result
        return await self.backend.enqueue(tasks, group=group, now=now)

    def _require(self, capability: QueueCapability, needed_by: str) -> Any:
        """The backend, if it declares ``capability``; else MissingCapabilityError."""
        if capability not in self.backend.capabilities:
            raise MissingCapabilityError(self.backend, capability, needed_by)
        return self.backend

    def _new_task(self, name: str, payload: Any, **options: Any) -> NewTask:
        if options.get("unique_key") is not None:
            self._require(QueueCapability.UNIQUE_KEYS, "enqueue(unique_key=...)")
        if options.get("held"):
            self._require(QueueCapability.ADMINISTRATION, "enqueue(held=True)")
        if options.get("task_id") is not None:
            self._require(QueueCapability.TASK_IDS, "enqueue(task_id=...)")
        if options.get("concurrency_key") is not None:
            self._require(QueueCapability.CONCURRENCY_KEYS, "enqueue(concurrency_key=...)")
        if check_headers(options.get("headers")):  # checked first: the problem is named
            self._require(QueueCapability.HEADERS, "enqueue(headers=...)")
        return self._registry.new_task(name, payload, **options)
