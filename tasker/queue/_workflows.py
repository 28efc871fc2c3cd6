"""Chains and groups: several tasks enqueued as one workflow (``QueueCapability.WORKFLOWS``).

A :class:`Step` names a task and its options, checked when the step is made. A chain is
stored as its first task, carrying the rest of the chain (``encode_chain``); the worker
enqueues each next step in the transaction that records its predecessor's success. A group
is enqueued at once, its members and its callback together (:class:`GroupSpec`); the
backend enqueues the callback when the last member finished.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta
from typing import Any

from .._context import to_seconds
from ..abc import QueueCapability
from ._chain import Step, encode_chain
from ._checks import check_int, check_name, check_priority
from ._core import QueueCore
from ._errors import UnknownTaskError
from ._ids import new_id
from ._info import Enqueued
from ._records import GroupSpec
from ._serializer import JSONSerializer

__all__ = ["WorkflowMethods"]


class WorkflowMethods(QueueCore):
    """The Queue's chains and groups: :meth:`step`, :meth:`enqueue_chain`, :meth:`enqueue_group`."""

    def step(
        self,
        name: str,
        payload: Any = None,
        *,
        queue: str | None = None,
        priority: int | None = None,
        max_attempts: int | None = None,
        timeout: float | timedelta | None = None,
    ) -> Step:
        """A task for :meth:`enqueue_chain` or :meth:`enqueue_group`; options as for enqueue.

        Raises:
            UnknownTaskError: no handler is registered as ``name``.
            ValueError: for an option out of range (checked here, not when the step runs).
        """
        if name not in self._registry.handlers:
            raise UnknownTaskError(name)
        return Step(
            name=name,
            payload=payload,
            queue=None if queue is None else check_name(queue, "queue"),
            priority=None if priority is None else check_priority(priority),
            max_attempts=None
            if max_attempts is None
            else check_int(max_attempts, "max_attempts", 1),
            timeout=None if timeout is None else to_seconds(timeout, "timeout", allow_zero=False),
        )

    async def enqueue_chain(self, *steps: Step) -> Enqueued[Any]:
        """Enqueue ``steps`` to run one after another, each receiving the previous result.

        The first step gets its own payload; every later step gets the result of the step
        before it as its payload (so later steps take no payload of their own). The next
        step is enqueued in the same transaction that records its predecessor's success; a
        step that dies ends the chain.

        Returns:
            The first step's :class:`Enqueued`.

        Raises:
            ValueError: for an empty chain or a payload on a later step.
            QueueFullError: the first step's queue is at its ``max_depth`` (only the first
                step counts: the later ones are enqueued as the chain moves on, never
                refused).
        """
        self._require(QueueCapability.WORKFLOWS, "enqueue_chain()")
        if not steps:
            raise ValueError("enqueue_chain(): needs at least one step")
        for later in steps[1:]:
            if later.payload is not None:
                raise ValueError(
                    f"enqueue_chain(): step {later.name!r} gets the previous result as its"
                    " payload; it cannot have one of its own"
                )
        for step in steps:
            if step.name not in self._registry.handlers:
                raise UnknownTaskError(step.name)
        rest = encode_chain(steps[1:])
        now = await self._now()
        first = steps[0]
        task = self._new_task(
            first.name,
            first.payload,
            now=now,
            priority=first.priority,
            queue=first.queue,
            max_attempts=first.max_attempts,
            timeout=first.timeout,
            chain=rest,
        )
        (result,) = await self._put([task], now=now)
        observer = self._registry.observer
        if observer is not None:
            observer.enqueued([task], [result.deduplicated])
        return Enqueued(id=result.id)

    async def enqueue_group(
        self, steps: Sequence[Step], *, then: Step | None = None
    ) -> list[Enqueued[Any]]:
        """Enqueue ``steps`` to run in parallel; ``then`` runs once all of them finished.

        ``then`` receives the list of the members' results, in order (None for a member
        that died). It needs the JSON serialiser (the results are joined as a JSON array).

        Raises:
            ValueError: for an empty group, or a payload on ``then``.
            TypeError: for a group callback with a non-JSON serialiser.
            QueueFullError: the members would take a queue past its ``max_depth``: no
                member is enqueued (``then`` does not count: it is enqueued when the last
                member finishes, never refused).
        """
        self._require(QueueCapability.WORKFLOWS, "enqueue_group()")
        if not steps:
            raise ValueError("enqueue_group(): needs at least one step")
        if then is not None:
            if then.payload is not None:
                raise ValueError("enqueue_group(): then receives the results; no payload")
            if not isinstance(self._registry.serializer, JSONSerializer):
                raise TypeError("enqueue_group(): a group callback needs the JSON serializer")
        now = await self._now()
        group_id = new_id()
        tasks = [
            self._new_task(
                step.name,
                step.payload,
                now=now,
                priority=step.priority,
                queue=step.queue,
                max_attempts=step.max_attempts,
                timeout=step.timeout,
                group=(group_id, index),
            )
            for index, step in enumerate(steps)
        ]
        callback = None
        if then is not None:
            callback = self._new_task(
                then.name,
                None,
                now=now,
                priority=then.priority,
                queue=then.queue,
                max_attempts=then.max_attempts,
                timeout=then.timeout,
                raw_payload=b"null",
            )
        group = GroupSpec(id=group_id, size=len(tasks), callback=callback)
        results = await self._put(tasks, group=group, now=now)
        observer = self._registry.observer
        if observer is not None:
            observer.enqueued(tasks, [r.deduplicated for r in results])
        return [Enqueued(id=r.id, deduplicated=r.deduplicated) for r in results]
