"""The queue backend protocols, defined in :mod:`tasker.abc` (re-exported by the queue)."""

from __future__ import annotations

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

__all__ = [
    "BoundedEnqueue",
    "ClaimById",
    "FinishAndClaim",
    "QueueAdministration",
    "QueueBackend",
    "QueueCapability",
    "QueueInspection",
    "TaskCancellation",
    "TaskProgress",
    "TransactionalEnqueue",
    "WorkerRegistry",
]
