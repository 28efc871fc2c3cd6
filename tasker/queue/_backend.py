"""The queue backend protocols, defined in :mod:`tasker.abc` (re-exported by the queue)."""

from __future__ import annotations

from ..abc import (
    FinishAndClaim,
    QueueAdministration,
    QueueBackend,
    QueueCapability,
    QueueInspection,
    TransactionalEnqueue,
    WorkerRegistry,
)

__all__ = [
    "FinishAndClaim",
    "QueueAdministration",
    "QueueBackend",
    "QueueCapability",
    "QueueInspection",
    "TransactionalEnqueue",
    "WorkerRegistry",
]
