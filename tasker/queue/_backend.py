"""The queue backend protocols, defined in :mod:`tasker.abc` (re-exported by the queue)."""

from __future__ import annotations

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

__all__ = [
    "ClaimById",
    "FinishAndClaim",
    "QueueAdministration",
    "QueueBackend",
    "QueueCapability",
    "QueueInspection",
    "TaskCancellation",
    "TransactionalEnqueue",
    "WorkerRegistry",
]
