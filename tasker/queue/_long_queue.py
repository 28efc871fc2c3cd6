"""The long-queue hook: ``on_long_queue(stats)`` once each time a queue grows long.

Checked after each enqueue. A queue is *long* from the enqueue that finds it long until an
enqueue finds it short again; the hook runs once per such crossing, not on every enqueue
while the queue stays long. A failing hook is logged, never raised into the enqueue.

Long means either threshold is reached:

- **depth**: at least ``long_queue_threshold`` queued tasks (``INSPECTION``: the counts);
- **drain time**: the estimated time to work through the queued tasks is at least
  ``long_queue_drain_time``. This is taskrunner's ``(T_avg * Q_len) / (W_num *
  ReplicationFactor)`` with every term measured instead of configured: ``T_avg`` is the mean
  duration of the queue's recent attempts (the history), ``Q_len`` its depth, and the
  workers times replicas is the concurrency of the live workers that take from it, across
  every replica (``WORKERS``). A queued task with no live worker to take it drains never:
  the estimate is infinite.

The depth is read at every check; the mean duration and the capacity change slowly and cost
two more reads, so they are read at most once a second per queue.
"""

from __future__ import annotations

import inspect
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..abc import QueueInspection, WorkerRegistry
from ._records import TaskState

__all__ = ["LongQueue", "LongQueueWatch"]

logger = logging.getLogger("tasker.queue")

#: How long a measured mean duration and capacity are reused.
_STATS_TTL = 1.0
#: How many of the newest history entries the mean duration is taken from.
_RECENT = 200
#: Outcomes of attempts that ran to their end (an interrupted one was cut short).
_RAN = frozenset({"succeeded", "retry", "dead"})


@dataclass(frozen=True, slots=True, kw_only=True)
class LongQueue:
    """What the long-queue hook is told about the queue that has just grown long.

    Attributes:
        queue: the queue's name.
        depth: its queued tasks (delayed ones included).
        mean_duration: the mean seconds of its recent attempts, or None before any (or
            without the drain-time check).
        capacity: how many of its tasks the live workers that take from it can run at
            once, across every replica (a worker of several queues counts for each), or
            None without the drain-time check.
        drain_time: the estimated seconds to work through ``depth`` tasks,
            ``mean_duration * depth / capacity``: ``math.inf`` when tasks wait and no
            live worker takes from the queue, None when it cannot be estimated (no
            attempt measured yet, or no drain-time check).
    """

    queue: str
    depth: int
    mean_duration: float | None = None
    capacity: int | None = None
    drain_time: float | None = None


def drain_estimate(depth: int, mean_duration: float | None, capacity: int) -> float | None:
    """``mean_duration * depth / capacity``, the seed's formula, with its edge cases."""
    if depth == 0:
        return 0.0
    if capacity == 0:
        return math.inf
    if mean_duration is None:
        return None
    return mean_duration * depth / capacity


class LongQueueWatch:
    """Which queues are long now, the thresholds, and the hook to call when one becomes long."""

    __slots__ = ("_depth", "_drain_time", "_hook", "_long", "_measured")

    def __init__(
        self,
        hook: Callable[[LongQueue], object],
        *,
        depth: int | None,
        drain_time: float | None,
    ) -> None:
        self._hook = hook
        self._depth = depth
        self._drain_time = drain_time
        self._long: set[str] = set()
        # queue -> (monotonic time measured, mean duration, capacity)
        self._measured: dict[str, tuple[float, float | None, int]] = {}

    async def check(self, backend: Any, queue: str, now: float) -> None:
        """Measure ``queue``; call the hook if it has just become long."""
        inspection: QueueInspection = backend
        depth = (await inspection.counts()).get(queue, {}).get(TaskState.QUEUED, 0)
        stats = LongQueue(queue=queue, depth=depth)
        long = self._depth is not None and depth >= self._depth
        if self._drain_time is not None:
            mean, capacity = await self._measure(backend, queue, now)
            drain = drain_estimate(depth, mean, capacity)
            stats = LongQueue(
                queue=queue,
                depth=depth,
                mean_duration=mean,
                capacity=capacity,
                drain_time=drain,
            )
            long = long or (drain is not None and drain >= self._drain_time)
        if long:
            if queue not in self._long:
                self._long.add(queue)
                await _call_hook(self._hook, stats)
        else:
            self._long.discard(queue)

    async def _measure(self, backend: Any, queue: str, now: float) -> tuple[float | None, int]:
        measured = self._measured.get(queue)
        if measured is not None and time.monotonic() - measured[0] < _STATS_TTL:
            return measured[1], measured[2]
        inspection: QueueInspection = backend
        registry: WorkerRegistry = backend
        durations = [
            entry.duration
            for entry in await inspection.history(limit=_RECENT)
            if entry.queue == queue and entry.outcome in _RAN
        ]
        mean = sum(durations) / len(durations) if durations else None
        capacity = sum(w.concurrency for w in await registry.workers(now=now) if queue in w.queues)
        self._measured[queue] = (time.monotonic(), mean, capacity)
        return mean, capacity


async def _call_hook(hook: Callable[..., object], *args: Any) -> None:
    try:
        result = hook(*args)
        if inspect.isawaitable(result):
            await result
    except Exception:
        logger.exception("queue hook %r failed", hook)
