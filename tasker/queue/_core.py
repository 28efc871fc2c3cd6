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

from typing import Any

from ..abc import (
    ClaimById,
    FinishAndClaim,
    QueueAdministration,
    QueueBackend,
    QueueCapability,
    QueueInspection,
    TaskCancellation,
    TransactionalEnqueue,
    WorkerRegistry,
)
from ._checks import check_headers
from ._errors import MissingCapabilityError
from ._records import NewTask
from ._registry import Registry
from ._time import BackendClock

__all__ = ["QueueCore", "check_backend"]

#: The protocol each capability with methods of its own must implement.
_PROTOCOLS: dict[QueueCapability, type] = {
    QueueCapability.INSPECTION: QueueInspection,
    QueueCapability.ADMINISTRATION: QueueAdministration,
    QueueCapability.FINISH_AND_CLAIM: FinishAndClaim,
    QueueCapability.TRANSACTIONAL_ENQUEUE: TransactionalEnqueue,
    QueueCapability.WORKERS: WorkerRegistry,
    QueueCapability.CLAIM_BY_ID: ClaimById,
    QueueCapability.CANCEL: TaskCancellation,
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


class QueueCore:
    """The state every part of the Queue uses, set by ``Queue.__init__``.

    Attributes:
        backend: where tasks live, checked by :func:`check_backend`.
    """

    backend: QueueBackend
    _registry: Registry
    _time: BackendClock

    async def _now(self) -> float:
        return await self._time.now()

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
        if check_headers(options.get("headers")):  # checked first: the problem is named
            self._require(QueueCapability.HEADERS, "enqueue(headers=...)")
        return self._registry.new_task(name, payload, **options)
