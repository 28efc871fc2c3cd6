"""The rules of ``WORKFLOWS``: chains and groups, enqueued as tasker's queue enqueues them.

What happens to them afterwards is in the model (``_model``), applied by the core rules:

- **Chains**: a step's success carries the next step as its follow-up (built as tasker's
  worker builds it, from the chain the backend stored with the claimed task); the backend
  enqueues it in the same finish, exactly once (a report sent twice, or by a worker that
  lost the lease, enqueues nothing). A step that dies, by its outcome or by its last lease
  expiring, ends the chain.
- **Groups**: the callback is enqueued exactly once, when the last member settles
  (succeeds or dies, in any order, several in one finish, or by a lease expiring in a
  claim), with the members' results in index order (``null`` for a dead one); a member
  requeued after that changes nothing. Members of an open group are never purged.
"""

from __future__ import annotations

from hypothesis import strategies as st
from hypothesis.stateful import initialize, precondition, rule

from ...abc import QueueCapability
from ...backends import encode_chain
from ...queue._chain import Step
from ...queue._records import GroupSpec, NewTask
from ._base import MachineBase
from ._model import QUEUES, ModelGroup

__all__ = ["WorkflowRules"]

_WORKFLOWS = QueueCapability.WORKFLOWS
_INSPECTION = QueueCapability.INSPECTION

_STEP = st.tuples(st.sampled_from(QUEUES), st.integers(0, 3), st.integers(1, 2))
_LATER = st.lists(_STEP, min_size=1, max_size=2)
_MEMBERS = st.lists(_STEP, min_size=1, max_size=3)
_CALLBACK_QUEUE = st.sampled_from([None, *QUEUES])
#: Members, the callback's queue (None: no callback), and whether the members are given
#: in reverse order (the index, not the order given, orders the results).
_GROUP = st.tuples(_MEMBERS, _CALLBACK_QUEUE, st.booleans())


class WorkflowRules(MachineBase):
    """Enqueue chains and groups."""

    # Every example starts with a chain and a group (when declared), so that the few
    # steps of an example are enough to carry some of them through; one rule adds more
    # (one rule, not two: every rule takes its share of an example's steps).
    @initialize(chain=st.tuples(_STEP, _LATER), group=_GROUP)
    def start_workflows(
        self,
        chain: tuple[tuple[str, int, int], list[tuple[str, int, int]]],
        group: tuple[list[tuple[str, int, int]], str | None, bool],
    ) -> None:
        if self.has(_WORKFLOWS):
            self._enqueue_chain(*chain)
        if self.has(_WORKFLOWS) and self.has(_INSPECTION):
            self._enqueue_group(*group)

    @precondition(lambda self: self.has(_WORKFLOWS))
    @rule(
        chain=st.tuples(_STEP, _LATER),
        group=st.none() | _GROUP,
    )
    def enqueue_workflow(
        self,
        chain: tuple[tuple[str, int, int], list[tuple[str, int, int]]],
        group: tuple[list[tuple[str, int, int]], str | None, bool] | None,
    ) -> None:
        # Without INSPECTION the model could not tell when a member whose last lease
        # expired died (and so when the callback appears): groups need both.
        if group is not None and self.has(_INSPECTION):
            self._enqueue_group(*group)
        else:
            self._enqueue_chain(*chain)

    def _enqueue_chain(
        self, first: tuple[str, int, int], later: list[tuple[str, int, int]]
    ) -> None:
        self.tick()
        queue, priority, max_attempts = first
        steps = [
            Step(name=f"step{n}", queue=q, priority=p, max_attempts=m)
            for n, (q, p, m) in enumerate(later, 2)
        ]
        task = NewTask(
            id=self.model.new_id(),
            name="step1",
            queue=queue,
            payload=b"{}",
            priority=priority,
            run_at=self.now,
            max_attempts=max_attempts,
            chain=encode_chain(steps),
            created_at=self.now,
        )
        (result,) = self.call("enqueue", [task], now=self.now)
        assert (result.id, result.deduplicated) == (task.id, False)
        self.model.add(task)

    def _enqueue_group(
        self,
        members: list[tuple[str, int, int]],
        callback_queue: str | None,
        reverse: bool,
    ) -> None:
        self.tick()
        group_id = self.model.new_id("g")
        tasks = [
            NewTask(
                id=self.model.new_id(),
                name="member",
                queue=q,
                payload=str(index).encode(),
                priority=p,
                run_at=self.now,
                max_attempts=m,
                group_id=group_id,
                group_index=index,
                created_at=self.now,
            )
            for index, (q, p, m) in enumerate(members)
        ]
        callback = None
        if callback_queue is not None:  # a group without a callback: it just closes
            callback = NewTask(
                id=self.model.new_id(),
                name="callback",
                queue=callback_queue,
                payload=b"null",  # the results replace it
                priority=1,
                run_at=self.now,
                max_attempts=1,
                created_at=self.now,
            )
        given = tasks[::-1] if reverse else tasks
        results = self.call(
            "enqueue",
            given,
            group=GroupSpec(id=group_id, size=len(tasks), callback=callback),
            now=self.now,
        )
        assert [(r.id, r.deduplicated) for r in results] == [(t.id, False) for t in given]
        for task in tasks:
            self.model.add(task)
        self.model.groups[group_id] = ModelGroup([t.id for t in tasks], callback)
