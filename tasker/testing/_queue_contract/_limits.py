"""The rules of ``RATE_LIMITS`` and ``CONCURRENCY_KEYS``: enqueues of limited tasks, whose
claims (the core rules' ``claim``, ``work`` and ``finish_and_claim``) are checked against
the model by :func:`check_limited`.

What the model holds a backend to (``_model``): a claim starts a rate-limited task only
while fewer than its ``count`` entries of its name's log expire after ``now`` (each start
writes one, expiring ``per`` later), and a task with a concurrency key only while fewer
than its limit of the key's tasks run under a live lease; a blocked task is skipped and the
claim goes on in claim order, so that nothing it could have taken is left behind a task it
took, and a claim short of its limit left only blocked tasks. Time moves with the core
rule ``time_passes`` (windows of 5 s against steps of 1 to 31 s).
"""

from __future__ import annotations

from collections.abc import Sequence

from hypothesis import strategies as st
from hypothesis.stateful import precondition, rule

from ...abc import QueueCapability
from ...queue._limits import RateLimit
from ...queue._records import NewTask
from ._base import MachineBase
from ._model import QUEUES, Model, ModelTask

__all__ = ["LimitRules", "check_limited"]

_RATE = QueueCapability.RATE_LIMITS
_KEYS = QueueCapability.CONCURRENCY_KEYS


class LimitRules(MachineBase):
    """Enqueues of rate-limited and keyed tasks (their claims are the core rules')."""

    @precondition(lambda self: self.has(_RATE) or self.has(_KEYS))
    @rule(
        queue=st.sampled_from(QUEUES),
        name=st.sampled_from(["slow", "slow", "job"]),
        priority=st.integers(0, 2),
        rated=st.booleans(),
        count=st.integers(1, 2),
        key=st.sampled_from([None, "c1", "c1", "c2"]),
        key_limit=st.integers(1, 2),
        max_attempts=st.integers(1, 3),
        batch=st.integers(1, 3),
    )
    def enqueue_limited(
        self,
        queue: str,
        name: str,
        priority: int,
        rated: bool,
        count: int,
        key: str | None,
        key_limit: int,
        max_attempts: int,
        batch: int,
    ) -> None:
        if not self.has(_RATE):
            rated = False
        if not self.has(_KEYS):
            key = None
        if not rated and key is None:
            rated = self.has(_RATE)
            key = None if rated else "c1"
        tasks = []
        for _ in range(batch):
            self.tick()
            tasks.append(
                NewTask(
                    id=self.model.new_id("l"),
                    name=name,
                    queue=queue,
                    payload=b"{}",
                    priority=priority,
                    run_at=self.now,
                    max_attempts=max_attempts,
                    created_at=self.now,
                    rate_limit=RateLimit(count=count, per=self.seconds(5.0)) if rated else None,
                    concurrency_key=key,
                    concurrency_limit=key_limit,
                )
            )
        results = self.call("enqueue", tasks, now=self.now)
        assert [r.id for r in results] == [t.id for t in tasks]
        for task in tasks:
            self.model.add(task)


def check_limited(
    model: Model,
    now: float,
    got: Sequence[str],
    limit: int,
    reclaimable: set[str],
    due: Sequence[ModelTask],
) -> None:
    """Check a claim of ``got`` at ``now`` among limited tasks against the model (before
    the model leases them): nothing past its limits, nothing claimable left by a claim
    short of ``limit``, nothing claimable left behind a task taken after it."""
    taken = [model.tasks[i] for i in got]
    for index, t in enumerate(taken):
        assert not model.blocked(t, now, taken[:index]), f"claimed {t.id} past its limits"
    candidates = [model.tasks[i] for i in reclaimable] + list(due)
    if len(got) < limit:
        for t in candidates:
            if t.id not in got:
                assert model.blocked(t, now, taken), (
                    f"a claim of {list(got)} (limit {limit}) left {t.id}, which its limits allow"
                )
    again = [t for t in taken if t.id in reclaimable]
    for t in candidates:
        if t.id in got:
            continue
        if t.id in reclaimable:
            ahead, after = again, [o.id for o in taken if o.id not in reclaimable]
        else:
            ahead = again + [
                o for o in taken if o.id not in reclaimable and o.claim_key <= t.claim_key
            ]
            after = [o.id for o in taken if o.id not in reclaimable and o.claim_key > t.claim_key]
        if after:
            assert model.blocked(t, now, ahead), (
                f"claimed {after} after {t.id}, which its limits allow"
            )
