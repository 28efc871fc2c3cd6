"""The rules of the core protocol, which every backend has: enqueue, claim, heartbeat, finish
(and ``finish_and_claim`` when declared), time passing and the backend's clock."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

from hypothesis import strategies as st
from hypothesis.stateful import precondition, rule

from ...abc import QueueCapability
from ...queue._records import NewTask, Outcome, OutcomeKind, TaskRecord, TaskState
from ._base import MachineBase
from ._limits import check_limited
from ._model import QUEUES, ModelTask

__all__ = ["QUEUE_SETS", "WORKERS", "CoreRules"]

WORKERS = ("w1", "w2")
QUEUE_SETS = (("q1",), ("q2",), QUEUES)

# Successes weigh more: chains move on and groups complete only through them. A worker
# reports CANCELLED only for a task whose cancel was requested: the ``_cancel`` rules.
_KINDS = [OutcomeKind.SUCCEEDED, *(k for k in OutcomeKind if k is not OutcomeKind.CANCELLED)]


class CoreRules(MachineBase):
    """Enqueue, claim, heartbeat and finish, checked against the model."""

    @rule(
        queue=st.sampled_from(QUEUES),
        name=st.sampled_from(["job", "job", "mail"]),
        priority=st.integers(0, 3),
        delay=st.sampled_from([0.0, 0.0, 5.0, 30.0]),
        max_attempts=st.integers(1, 3),
        unique=st.sampled_from([None, None, "k1", "k2"]),
        held=st.sampled_from([False, False, False, True]),
        reuse=st.sampled_from([None, None, None, None, 0, 7]),
    )
    def enqueue(
        self,
        queue: str,
        name: str,
        priority: int,
        delay: float,
        max_attempts: int,
        unique: str | None,
        held: bool,
        reuse: int | None,
    ) -> None:
        if not self.has(QueueCapability.UNIQUE_KEYS):
            unique = None
        if not self.has(QueueCapability.ADMINISTRATION):
            held = False
        known = sorted(self.model.tasks)
        if reuse is not None and known and self.has(QueueCapability.TASK_IDS):
            # The id of a task stored already, in whatever state: the enqueue is
            # deduplicated to it, and nothing changes (a retried enqueue).
            existing = known[reuse % len(known)]
            self.tick()
            again = NewTask(
                id=existing,
                name=name,
                queue=queue,
                payload=b"{}",
                run_at=self.now,
                created_at=self.now,
            )
            (result,) = self.call("enqueue", [again], now=self.now)
            assert result.deduplicated, f"an enqueue of stored id {existing} must deduplicate"
            assert result.id == existing
            return
        self.tick()
        new = NewTask(
            id=self.model.new_id(),
            name=name,
            queue=queue,
            payload=b"{}",
            priority=priority,
            run_at=self.now + self.seconds(delay),
            max_attempts=max_attempts,
            unique_key=unique,
            held=held,
            created_at=self.now,
        )
        (result,) = self.call("enqueue", [new], now=self.now)
        live = self.model.live_holder(unique)
        if live is not None:
            assert result.deduplicated, "a live unique key must deduplicate"
            assert result.id == live.id
            return
        assert not result.deduplicated
        assert result.id == new.id
        self.model.add(new)

    @rule(
        worker=st.sampled_from(WORKERS),
        limit=st.integers(1, 3),
        queues=st.sampled_from(QUEUE_SETS),
        own=st.booleans(),
    )
    def claim(self, worker: str, limit: int, queues: tuple[str, ...], own: bool) -> None:
        # As a worker does: exclude the tasks it holds (expired leases included).
        exclude = frozenset(t.id for t in self.model.tasks.values() if own and t.owner == worker)
        self.claim_and_check(
            worker,
            limit,
            queues,
            lambda: self.call(
                "claim",
                list(queues),
                limit,
                worker=worker,
                lease=self.model.lease_for,
                now=self.now,
                exclude=sorted(exclude),
            ),
            exclude=exclude,
        )

    @rule(
        worker=st.sampled_from(WORKERS),
        queues=st.sampled_from(QUEUE_SETS),
        kinds=st.lists(st.sampled_from(_KINDS), min_size=1, max_size=3),
    )
    def work(self, worker: str, queues: tuple[str, ...], kinds: list[OutcomeKind]) -> None:
        """A worker's round, in one step: claim, run, report (what moves chains and groups
        on; ``claim`` and ``finish`` alone interleave more freely)."""
        before = {t.id for t in self.model.running() if t.owner == worker}
        self.claim(worker, len(kinds), queues, own=True)
        mine = [t for t in self.model.running() if t.owner == worker and t.id not in before]
        outcomes = [
            self.model.outcome(t, kind, worker, self.now)
            for t, kind in zip(mine, kinds, strict=False)
        ]
        if outcomes:
            self.call("finish", outcomes, now=self.now)
            self._settle(outcomes)

    def claim_and_check(
        self,
        worker: str,
        limit: int,
        queues: tuple[str, ...],
        claim: Callable[[], list[TaskRecord]],
        exclude: frozenset[str] = frozenset(),
    ) -> None:
        """Run ``claim`` and check what it took against the model, then lease it there."""
        self.delivered()
        model, now = self.model, self.now
        expired = model.expired(queues, now, exclude)
        reclaimable = {t.id for t in expired if model.reclaimable(t)}
        due = model.due(queues, now, exclude)
        candidates = reclaimable | {t.id for t in due}
        records = claim()
        got = [r.id for r in records]
        assert len(set(got)) == len(got), "a task is claimed once per call"
        # Expired leases on their last attempt die instead of being claimed, and those whose
        # cancel was requested are cancelled; the callback of a group whose last member
        # settled so may be claimed by the same call.
        fired = self._deaths([t for t in expired if t.id not in reclaimable], queues, exclude)
        assert set(got) <= candidates | fired, f"claimed what is not due: {set(got) - candidates}"
        # Every claimable task is taken until the limit is reached, and no more.
        assert len(got) <= limit, f"claimed {len(got)} tasks with a limit of {limit}"
        taken = [model.tasks[i].claim_key for i in got if i not in reclaimable]
        assert taken == sorted(taken), f"claimed out of order: {got}"
        if any(model.tasks[i].rate or model.tasks[i].key for i in candidates):
            check_limited(model, now, got, limit, reclaimable, due)
        else:
            assert min(limit, len(candidates)) <= len(got) <= min(limit, len(candidates | fired))
            # Priority, then FIFO: the queued tasks taken come in claim order, and none left
            # behind comes before one taken.
            left = [t.claim_key for t in due if t.id not in got]
            if taken and left:
                assert max(taken) <= min(left), f"claimed {got}, leaving an earlier due task"
        for record in records:
            t = model.tasks[record.id]
            model.lease(t, worker, now)
            model.started(t, now)
            self.check_record(record, t)

    def _deaths(
        self, dying: Sequence[ModelTask], queues: tuple[str, ...], exclude: frozenset[str]
    ) -> set[str]:
        """Learn which of ``dying`` the claim made dead (or cancelled, those whose cancel
        was requested); the callbacks that fired then."""
        fired: set[str] = set()
        for t in dying:
            if not self.has(QueueCapability.INSPECTION):
                t.limbo = True  # it cannot be told apart here; a heartbeat tells
                continue
            # Either it settled now, or the limit stopped the scan before it.
            stored = self.call("get", t.id)
            settled = TaskState.CANCELLED if t.cancel_requested else TaskState.DEAD
            assert stored.state in (TaskState.RUNNING, settled), (
                f"task {t.id}: an expired lease left it {stored.state}, expected running or"
                f" {settled}"
            )
            if stored.state is settled:
                if settled is TaskState.CANCELLED:
                    callback = self.model.cancelled(t, self.now)
                else:
                    callback = self.model.died(t, self.now)
                if callback is not None and callback.queue in queues:
                    fired.add(callback.id)
        return fired - exclude

    def check_record(self, record: TaskRecord, t: ModelTask) -> None:
        problem = t.mismatch(record)
        assert problem is None, problem

    @rule(worker=st.sampled_from(WORKERS))
    def heartbeat(self, worker: str) -> None:
        mine = [t for t in self.model.tasks.values() if t.owner == worker]
        held = self.call(
            "heartbeat", worker, [t.id for t in mine], lease=self.model.lease_for, now=self.now
        )
        for t in mine:
            if t.limbo and t.state is TaskState.RUNNING:  # the answer tells whether it died
                if t.id in held:
                    t.limbo = False
                else:
                    self.model.died(t, self.now)
        expected = {t.id for t in mine if t.state is TaskState.RUNNING}
        assert held == expected
        for task_id in held:
            self.model.tasks[task_id].lease_until = self.now + self.model.lease_for

    @precondition(lambda self: bool(self.model.running()))
    @rule(
        worker=st.sampled_from(WORKERS),
        picks=st.lists(
            st.tuples(st.integers(0, 1000), st.sampled_from(_KINDS)), min_size=1, max_size=3
        ),
        stale=st.sampled_from([False, False, False, True]),
        claim_limit=st.integers(0, 3),
        queues=st.sampled_from(QUEUE_SETS),
        again=st.booleans(),
    )
    def finish(
        self,
        worker: str,
        picks: list[tuple[int, OutcomeKind]],
        stale: bool,
        claim_limit: int,
        queues: tuple[str, ...],
        again: bool,
    ) -> None:
        # One report of up to three running tasks by one worker (a worker's batch): its own
        # tasks, or (``stale``) any, as from a worker whose lease expired and was taken; an
        # outcome for a task the worker does not hold is ignored.
        running = self.model.running()
        if not stale:
            running = [t for t in running if t.owner == worker] or running
        chosen: dict[str, OutcomeKind] = {}
        for pick, kind in picks:
            chosen.setdefault(running[pick % len(running)].id, kind)
        outcomes = [
            self.model.outcome(self.model.tasks[i], kind, worker, self.now)
            for i, kind in chosen.items()
        ]
        if not claim_limit or not self.has(QueueCapability.FINISH_AND_CLAIM):
            self.call("finish", outcomes, now=self.now)
            self._settle(outcomes)
        else:
            # The optional combined call: the same as finish, then claim (which may take
            # the next step or a group's callback the finish enqueued), except that the
            # claim never takes a reported task (even one released back to its queue).
            self._settle(outcomes)
            self.claim_and_check(
                worker,
                claim_limit,
                queues,
                lambda: self.call(
                    "finish_and_claim",
                    outcomes,
                    now=self.now,
                    queues=list(queues),
                    limit=claim_limit,
                    worker=worker,
                    lease=self.model.lease_for,
                ),
                exclude=frozenset(chosen),
            )
        if again:  # the same report sent twice (a retried call): it changes nothing
            self.call("finish", outcomes, now=self.now)

    def _settle(self, outcomes: Sequence[Outcome]) -> None:
        for outcome in outcomes:
            self.model.settle(outcome, self.now)

    @rule(seconds=st.sampled_from([0.0, 1.0, 4.0, 6.0, 11.0, 31.0]))
    def time_passes(self, seconds: float) -> None:
        """Time passes; the backend's clock reads a plain timestamp that never goes back."""
        self.advance(self.seconds(seconds))
        reading: Any = self.call("time")
        assert isinstance(reading, float)
        assert reading >= self.last_clock
        if self.fake_clock is not None:
            assert reading == self.now, "time() reads the clock the backend was built on"
        # The backend's clock is real time somewhere (a server's, the machine's): within
        # a day of this machine's, which a test server or a fake clock also satisfies.
        assert abs(reading - time.time()) < 86400 or self.fake_clock_allowed
        self.last_clock = reading
