"""The rules of ``CLAIM_BY_ID``: claims of named tasks (as a broker delivers them) and the
list of overdue tasks, checked against the model."""

from __future__ import annotations

from hypothesis import strategies as st
from hypothesis.stateful import precondition, rule

from ...abc import QueueCapability
from ...queue._records import TaskState
from ._base import MachineBase
from ._core import QUEUE_SETS, WORKERS
from ._model import ModelTask

__all__ = ["ClaimByIdRules"]


def _since(t: ModelTask) -> float | None:
    """Since when ``t`` has been claimable (None: it is not waiting for a claim)."""
    if t.state is TaskState.QUEUED:
        return t.run_at
    if t.state is TaskState.RUNNING:
        return t.lease_until
    return None


class ClaimByIdRules(MachineBase):
    """``claim_ids`` and ``overdue``, when the backend declares ``CLAIM_BY_ID``."""

    @precondition(lambda self: self.has(QueueCapability.CLAIM_BY_ID) and bool(self.model.tasks))
    @rule(
        worker=st.sampled_from(WORKERS),
        picks=st.lists(st.integers(0, 1000), min_size=1, max_size=4),
        unknown=st.booleans(),
    )
    def claim_ids(self, worker: str, picks: list[int], unknown: bool) -> None:
        # Any tasks, in any state and queue, an id twice, and one nobody enqueued: what a
        # broker's deliveries (duplicates and stale copies included) may name.
        known = sorted(self.model.tasks)
        ids = [known[pick % len(known)] for pick in picks]
        if unknown:
            ids.insert(len(ids) // 2, "no-such-task")
        model, now = self.model, self.now
        wanted: list[str] = []
        dying: list[ModelTask] = []
        cancelling: list[ModelTask] = []
        for task_id in dict.fromkeys(ids):
            t = model.tasks.get(task_id)
            if t is None:
                continue
            if t.state is TaskState.QUEUED and t.run_at <= now:
                wanted.append(task_id)
            elif (
                t.state is TaskState.RUNNING and t.lease_until is not None and t.lease_until <= now
            ):
                if t.cancel_requested:
                    cancelling.append(t)
                elif t.attempts >= t.max_attempts:
                    dying.append(t)
                else:
                    wanted.append(task_id)
        records = self.call("claim_ids", ids, worker=worker, lease=model.lease_for, now=now)
        got = [r.id for r in records]
        assert got == wanted, f"claim_ids({ids}) took {got}, expected {wanted}"
        for t in dying:  # an expired lease on its last attempt: dead, as a claim makes it
            model.died(t, now)
        for t in cancelling:  # an expired lease of a task whose cancel was requested
            model.cancelled(t, now)
        for record in records:
            t = model.tasks[record.id]
            model.lease(t, worker, now)
            problem = t.mismatch(record)
            assert problem is None, problem

    @precondition(lambda self: self.has(QueueCapability.CLAIM_BY_ID))
    @rule(
        queues=st.sampled_from([None, *QUEUE_SETS]),
        back=st.sampled_from([0.0, 5.0, 30.0]),
        limit=st.integers(1, 4),
    )
    def overdue(self, queues: tuple[str, ...] | None, back: float, limit: int) -> None:
        before = self.now - self.seconds(back)
        records = self.call(
            "overdue", before=before, queues=None if queues is None else list(queues), limit=limit
        )
        expected: dict[str, float] = {}
        maybe: set[str] = set()  # died unseen, or not: either answer is right
        for t in self.model.tasks.values():
            since = _since(t)
            if since is None or since > before or (queues is not None and t.queue not in queues):
                continue
            if t.limbo:
                maybe.add(t.id)
            else:
                expected[t.id] = since
        got = [r.id for r in records]
        assert len(set(got)) == len(got), f"overdue listed a task twice: {got}"
        assert set(got) <= expected.keys() | maybe, (
            f"overdue({before}, {queues}) listed what is not overdue:"
            f" {set(got) - expected.keys() - maybe}"
        )
        assert min(limit, len(expected)) <= len(got) <= limit
        # The longest overdue first, and none left out that is more overdue than one listed.
        listed = [expected[i] for i in got if i in expected]
        assert listed == sorted(listed), f"overdue out of order: {got}"
        left = [since for i, since in expected.items() if i not in got]
        if listed and left and len(got) == limit:
            assert max(listed) <= min(left), f"overdue listed {got}, leaving an older one"
        for record in records:
            if record.id in expected:
                problem = self.model.tasks[record.id].mismatch(record)
                assert problem is None, problem
