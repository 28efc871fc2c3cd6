"""The long-queue hook: ``on_long_queue(queue, depth)`` once each time a queue grows long.

Checked after each enqueue (so it needs ``QueueCapability.INSPECTION`` for the counts). A queue
is "long" from the enqueue that finds at least ``threshold`` queued tasks in it until an
enqueue finds fewer; the hook runs once per such crossing, not on every enqueue while the
queue stays long. A failing hook is logged, never raised into the enqueue that ran it.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable
from typing import Any

from ..abc import QueueInspection
from ._records import TaskState

__all__ = ["LongQueueWatch"]

logger = logging.getLogger("tasker.queue")


class LongQueueWatch:
    """Which queues are long now, and the hook to call when one becomes long."""

    __slots__ = ("_hook", "_long", "_threshold")

    def __init__(self, threshold: int, hook: Callable[[str, int], object]) -> None:
        self._threshold = threshold
        self._hook = hook
        self._long: set[str] = set()

    async def check(self, inspection: QueueInspection, queue: str) -> None:
        """Count ``queue``'s queued tasks; call the hook if it has just become long."""
        depth = (await inspection.counts()).get(queue, {}).get(TaskState.QUEUED, 0)
        if depth >= self._threshold:
            if queue not in self._long:
                self._long.add(queue)
                await _call_hook(self._hook, queue, depth)
        else:
            self._long.discard(queue)


async def _call_hook(hook: Callable[..., object], *args: Any) -> None:
    try:
        result = hook(*args)
        if inspect.isawaitable(result):
            await result
    except Exception:
        logger.exception("queue hook %r failed", hook)
