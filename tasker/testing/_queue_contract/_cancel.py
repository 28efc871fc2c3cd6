"""The rules of ``CANCEL``: cancels of tasks in every state, the worker's question at each
heartbeat, and the outcomes of cancelled attempts, checked against the model.

What the model holds a backend to (``_model``): a cancel makes a held, queued or delayed
task cancelled at once, as it does a running one whose lease expired (no history row, its
group told); a running one under a live lease gets ``cancel_requested``, and then any
outcome but a success records it cancelled, a success enqueues no follow-up, and once its
lease expires a claim cancels it instead of taking it. A finished task and an unknown id are
left alone. The rules run with ``INSPECTION`` too (the machine must be able to ask whether
a claim cancelled an expired task or the limit stopped it first).
"""

from __future__ import annotations

from hypothesis import strategies as st
from hypothesis.stateful import precondition, rule

from ...abc import QueueCapability
from ...queue._records import CancelResult, CancelStatus, OutcomeKind, TaskState
from ._core import QUEUE_SETS, WORKERS, CoreRules

__all__ = ["CancelRules"]

_CANCEL = QueueCapability.CANCEL
_INSPECTION = QueueCapability.INSPECTION


class CancelRules(CoreRules):
    """``cancel``, ``cancel_requested``, and the outcomes of tasks whose cancel was
    requested (on top of the core rules, whose claims it uses)."""

    @precondition(lambda self: self.has(_CANCEL) and self.has(_INSPECTION))
    @rule(
        pick=st.integers(0, 1000),
        running=st.sampled_from([True, True, False]),
        claim=st.sampled_from([None, *WORKERS]),
        queues=st.sampled_from(QUEUE_SETS),
        unknown=st.sampled_from([False] * 7 + [True]),
    )
    def cancel(
        self,
        pick: int,
        running: bool,
        claim: str | None,
        queues: tuple[str, ...],
        unknown: bool,
    ) -> None:
        # Any task, a running one most of the time (the interesting case: first claimed
        # by ``claim`` in this step, when given), or an id nobody enqueued.
        model = self.model
        if running and claim is not None:
            self.claim(claim, 1, queues, own=True)
        pool = [t.id for t in model.running()] if running else []
        pool = pool or sorted(model.tasks)
        task_id = "no-such-task" if unknown or not pool else pool[pick % len(pool)]
        t = model.tasks.get(task_id)
        status = model.cancel(t, self.now)
        result = self.call("cancel", task_id, now=self.now)
        assert isinstance(result, CancelResult), f"cancel answered {result!r}"
        expected_state = None if t is None else t.state
        assert (result.id, result.status, result.state) == (task_id, status, expected_state), (
            f"cancel({task_id}) answered {result}, expected {status} in {expected_state}"
        )
        assert bool(result) is (status in (CancelStatus.CANCELLED, CancelStatus.REQUESTED))
        if t is not None:
            stored = self.call("get", task_id)
            problem = t.mismatch(stored)
            assert problem is None, problem

    @precondition(lambda self: self.has(_CANCEL) and self.has(_INSPECTION))
    @rule(worker=st.sampled_from(WORKERS), others=st.booleans())
    def cancel_requested(self, worker: str, others: bool) -> None:
        # The worker asks about the tasks it holds (and, ``others``, about tasks it does
        # not: another worker's, finished ones, an unknown id): only its own running ones
        # whose cancel was requested are named.
        model = self.model
        ids = sorted(t.id for t in model.tasks.values() if t.owner == worker)
        if others:
            ids += sorted(t.id for t in model.tasks.values() if t.owner != worker)[:5]
            ids.append("no-such-task")
        got = self.call("cancel_requested", worker, ids)
        expected = {
            t.id
            for t in model.tasks.values()
            if t.id in ids
            and t.state is TaskState.RUNNING
            and t.owner == worker
            and t.cancel_requested
        }
        assert got == expected, f"cancel_requested({worker}) said {got}, expected {expected}"

    @precondition(
        lambda self: (
            self.has(_CANCEL)
            and self.has(_INSPECTION)
            and any(t.cancel_requested for t in self.model.running())
        )
    )
    @rule(
        pick=st.integers(0, 1000),
        kind=st.sampled_from([OutcomeKind.CANCELLED, OutcomeKind.CANCELLED, *OutcomeKind]),
        stale=st.sampled_from([False, False, False, True]),
        again=st.booleans(),
    )
    def finish_after_cancel(self, pick: int, kind: OutcomeKind, stale: bool, again: bool) -> None:
        # The worker that holds a task whose cancel was requested reports it: stopped
        # (CANCELLED, what tasker's worker reports once it knows), or ended otherwise
        # before it heard of the cancel (a success, with its chain's next step; a failure,
        # a release, an interruption: all recorded cancelled). ``stale``: another worker
        # reports it (ignored).
        candidates = [t for t in self.model.running() if t.cancel_requested]
        t = candidates[pick % len(candidates)]
        assert t.owner is not None
        worker = t.owner if not stale else next(w for w in WORKERS if w != t.owner)
        outcome = self.model.outcome(t, kind, worker, self.now)
        self.call("finish", [outcome], now=self.now)
        self.model.settle(outcome, self.now)
        if again:  # a report sent twice changes nothing
            self.call("finish", [outcome], now=self.now)
