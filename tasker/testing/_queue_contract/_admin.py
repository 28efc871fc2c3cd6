"""The rules of the capabilities with methods of their own: ``ADMINISTRATION`` (requeue, held
tasks and dispatch, purge) and ``INSPECTION`` (lookups, checked after every step)."""

from __future__ import annotations

from hypothesis import strategies as st
from hypothesis.stateful import initialize, invariant, precondition, rule

from ...abc import QueueCapability
from ...queue._records import NewTask, TaskState
from ._base import MachineBase
from ._model import LIVE, QUEUES

__all__ = ["AdminRules"]

_ADMIN = QueueCapability.ADMINISTRATION
_INSPECTION = QueueCapability.INSPECTION


class AdminRules(MachineBase):
    """Requeue, dispatch and purge; the lookups compared with the model after every step."""

    # Every example starts with a few held tasks (when declared), at one or two priorities,
    # so that a dispatch has an order to get right.
    @initialize(held=st.lists(st.tuples(st.sampled_from(QUEUES), st.integers(0, 1)), max_size=4))
    def start_held(self, held: list[tuple[str, int]]) -> None:
        if not self.has(_ADMIN):
            return
        for queue, priority in held:
            self.tick()
            task = NewTask(
                id=self.model.new_id(),
                name="job",
                queue=queue,
                payload=b"{}",
                priority=priority,
                run_at=self.now,
                held=True,
                created_at=self.now,
            )
            (result,) = self.call("enqueue", [task], now=self.now)
            assert (result.id, result.deduplicated) == (task.id, False)
            self.model.add(task)

    @precondition(
        lambda self: (
            self.has(_ADMIN) and any(t.state is TaskState.DEAD for t in self.model.tasks.values())
        )
    )
    @rule(pick=st.integers(0, 1000))
    def requeue(self, pick: int) -> None:
        dead = sorted(t.id for t in self.model.tasks.values() if t.state is TaskState.DEAD)
        t = self.model.tasks[dead[pick % len(dead)]]
        taken = t.unique_key is not None and any(
            o.unique_key == t.unique_key and o.state in LIVE for o in self.model.tasks.values()
        )
        assert self.call("requeue", t.id, now=self.now) is not taken
        if not taken:
            self.model.requeue(t, self.now)

    @precondition(lambda self: self.has(_ADMIN))
    @rule(
        queue=st.sampled_from(QUEUES),
        limit=st.sampled_from([None, 1, 2]),
        name=st.sampled_from([None, None, "job", "mail"]),
    )
    def dispatch(self, queue: str, limit: int | None, name: str | None) -> None:
        held = self.model.held(queue, name)  # in dispatch order
        count = self.call("dispatch", queue, name=name, limit=limit, now=self.now)
        expected = held[:limit]
        assert count == len(expected)
        released = expected
        if self.has(_INSPECTION):  # which ones, as the backend says
            released = [t for t in held if self.call("get", t.id).state is TaskState.QUEUED]
            assert len(released) == count
        # Highest priority first, then the oldest: none kept comes before one released
        # (every task is enqueued at its own instant, so this names exactly which ones).
        kept = [t for t in held if t.id not in {r.id for r in released}]
        if released and kept:
            first_kept = min(t.dispatch_key for t in kept)
            assert max(t.dispatch_key for t in released) <= first_kept, (
                f"dispatched {[t.id for t in released]} before {[t.id for t in kept]}"
            )
        for t in released:
            t.state, t.run_at = TaskState.QUEUED, min(t.run_at, self.now)

    @precondition(lambda self: self.has(_ADMIN))
    @rule(dead_age=st.sampled_from([None, 0.0, 10.0]))
    def purge(self, dead_age: float | None) -> None:
        dead_before = None if dead_age is None else self.now - self.seconds(dead_age)
        gone = self.model.purgeable(self.now, dead_before)
        deleted = self.call("purge", now=self.now, dead_before=dead_before)
        assert deleted == len(gone)
        self.model.purge(gone)
        if self.has(_INSPECTION):
            for t in gone:
                assert self.call("get", t.id) is None

    # -- invariants ------------------------------------------------------------------------

    @precondition(lambda self: self.has(_INSPECTION))
    @invariant()
    def states_match(self) -> None:
        # Also: nothing was enqueued twice (a chain's step, a group's callback).
        assert self.call("counts") == self.model.counts()

    @precondition(lambda self: self.has(_INSPECTION))
    @invariant()
    def records_match(self) -> None:
        # One listing (a round trip), not a lookup per task; ``get`` is checked by the rules.
        records = {r.id: r for r in self.call("tasks", limit=10_000)}
        assert set(records) == set(self.model.tasks), (
            f"stored but not expected: {set(records) - set(self.model.tasks)};"
            f" expected but missing: {set(self.model.tasks) - set(records)}"
        )
        for t in self.model.tasks.values():
            problem = t.mismatch(records[t.id])
            assert problem is None, problem

    @precondition(lambda self: self.has(_INSPECTION))
    @invariant()
    def history_matches(self) -> None:
        entries = self.call("history", limit=10_000)
        recorded: dict[str, list[str]] = {}
        for entry in reversed(entries):
            recorded.setdefault(entry.task_id, []).append(entry.outcome)
        expected = {t.id: t.history for t in self.model.tasks.values() if t.history}
        expected.update(self.model.purged_history)
        assert recorded == expected
