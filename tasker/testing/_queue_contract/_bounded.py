"""The rules of ``BOUNDED_QUEUES``: bounded enqueues against a queue's depth, checked
against the model.

What the model holds a backend to (``_model``): a queue's depth is its held and queued
tasks (delayed ones included); ``enqueue_bounded`` stores its batch as ``enqueue`` does
when every bounded queue stays within its bound with the tasks it adds, and otherwise
raises :class:`tasker.queue.QueueFullError` naming the first such queue (by name), its
depth (counted up to the bound), the bound and what the batch would have added, and stores
nothing. A task deduplicated to a stored one (its id) adds nothing and is never refused;
a queue not named in ``max_depth`` is not bounded. (The concurrency of the check, which a
sequential machine cannot see, is the subject of ``tests/test_queue_backpressure.py``.)
"""

from __future__ import annotations

from hypothesis import strategies as st
from hypothesis.stateful import precondition, rule

from ...abc import QueueCapability
from ...queue._errors import QueueFullError
from ...queue._records import NewTask
from ._core import CoreRules
from ._model import QUEUES

__all__ = ["BoundedRules"]

_BOUNDED = QueueCapability.BOUNDED_QUEUES


class BoundedRules(CoreRules):
    """``enqueue_bounded`` (on top of the core rules, whose claims empty the queues)."""

    @precondition(lambda self: self.has(_BOUNDED))
    @rule(
        queue=st.sampled_from(QUEUES),
        count=st.integers(1, 3),
        slack=st.integers(-2, 3),
        other=st.sampled_from([0, 0, 1]),
        bound_other=st.booleans(),
        held=st.sampled_from([False, False, True]),
        reuse=st.sampled_from([None, None, 0, 5]),
        delay=st.sampled_from([0.0, 0.0, 30.0]),
    )
    def enqueue_bounded(
        self,
        queue: str,
        count: int,
        slack: int,
        other: int,
        bound_other: bool,
        held: bool,
        reuse: int | None,
        delay: float,
    ) -> None:
        # ``count`` tasks for ``queue``, bounded near its depth (``slack`` from it: full,
        # nearly, or with room), and ``other`` for the other queue, bounded at its depth
        # plus what it adds (it fits) or not bounded at all.
        model = self.model
        held = held and self.has(QueueCapability.ADMINISTRATION)
        second = next(q for q in QUEUES if q != queue)
        self.tick()
        tasks = [
            NewTask(
                id=model.new_id(),
                name="job",
                queue=queue if i < count else second,
                payload=b"{}",
                run_at=self.now + self.seconds(delay),
                held=held,
                created_at=self.now,
            )
            for i in range(count + other)
        ]
        known = sorted(model.tasks)
        if reuse is not None and known and self.has(QueueCapability.TASK_IDS):
            # A stored id: deduplicated to it, so it adds nothing, whatever the depth.
            existing = known[reuse % len(known)]
            tasks[0] = NewTask(
                id=existing,
                name="job",
                queue=queue,
                payload=b"{}",
                run_at=self.now,
                created_at=self.now,
            )
        adding = {
            q: sum(1 for t in tasks if t.queue == q and t.id not in model.tasks) for q in QUEUES
        }
        depth = model.depth(queue)
        bounds = {queue: max(1, depth + slack)}
        if bound_other and other:
            bounds[second] = model.depth(second) + adding[second]
        full = adding[queue] > 0 and depth + adding[queue] > bounds[queue]
        refusal: QueueFullError | None = None
        try:
            results = self.call("enqueue_bounded", tasks, max_depth=bounds, now=self.now)
        except QueueFullError as exc:
            refusal = exc
        if refusal is not None:
            assert full, f"refused with room: depth {depth}, adding {adding}, bounds {bounds}"
            got = (refusal.queue, refusal.max_depth, refusal.adding)
            assert got == (queue, bounds[queue], adding[queue]), f"refused with {refusal!r}"
            assert refusal.depth == min(depth, bounds[queue]), (
                f"QueueFullError.depth={refusal.depth}, the depth is {depth}"
                f" (bound {bounds[queue]})"
            )
            self.check_nothing_stored(tasks)
            return
        assert not full, f"stored past a bound: depth {depth}, adding {adding}, bounds {bounds}"
        assert [r.id for r in results] == [t.id for t in tasks]
        for task, result in zip(tasks, results, strict=True):
            assert result.deduplicated is (task.id in model.tasks), f"{task.id}: {result}"
            if not result.deduplicated:
                model.add(task)

    def check_nothing_stored(self, tasks: list[NewTask]) -> None:
        """A refused batch left no task of its own behind."""
        if not self.has(QueueCapability.INSPECTION):
            return
        for task in tasks:
            if task.id not in self.model.tasks:
                assert self.call("get", task.id) is None, f"a refused enqueue stored {task.id}"
