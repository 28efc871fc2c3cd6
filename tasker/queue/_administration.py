"""Acting on stored tasks: the Queue's passthroughs to ``QueueCapability.ADMINISTRATION``.

Releasing held tasks (manual dispatch) and putting dead ones back. The third part of that
capability, purging, is the workers' job (:class:`Retention`), not a method of the Queue.
"""

from __future__ import annotations

from ..abc import QueueCapability
from ._checks import check_int
from ._core import QueueCore

__all__ = ["AdministrationMethods"]


class AdministrationMethods(QueueCore):
    """The Queue's administration: :meth:`dispatch` and :meth:`requeue`."""

    async def dispatch(
        self, queue: str = "default", *, name: str | None = None, limit: int | None = None
    ) -> int:
        """Release tasks enqueued with ``held=True`` (manual dispatch); return how many.

        Args:
            queue: the queue to dispatch from.
            name: only tasks of this name (e.g. one type of task).
            limit: at most this many (``limit=1`` dispatches a single task).
        """
        admin = self._require(QueueCapability.ADMINISTRATION, "Queue.dispatch()")
        if limit is not None:
            check_int(limit, "limit", 1)
        return int(await admin.dispatch(queue, name=name, limit=limit, now=await self._now()))

    async def requeue(self, task_id: str) -> bool:
        """Put a dead task back with fresh attempts.

        Returns:
            False if it is not dead, or a newer live task holds its unique key.
        """
        admin = self._require(QueueCapability.ADMINISTRATION, "Queue.requeue()")
        return bool(await admin.requeue(task_id, now=await self._now()))
