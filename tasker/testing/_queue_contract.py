"""The queue backend contract: a hypothesis state machine against a small reference model.

Usage in a test module::

    from tasker.testing import queue_backend_machine

    TestMyBackend = queue_backend_machine(lambda: MyBackend(...)).TestCase

Each example gets a fresh backend from the factory and drives it through enqueue, claim,
heartbeat, finish (success, retry, dead, release), requeue, dispatch and the passing of
time (leases expire), checking every answer against the model. Each capability is checked
when the backend declares it (``QueueBackend.capabilities``): lookups (``INSPECTION``),
requeue (``ADMINISTRATION``), unique keys, and ``finish_and_claim``. The backend's
coroutines run on an event loop in a helper thread (anyio's blocking portal), on
``anyio_backend``.

Time: the machine passes ``now`` to every call, as the queue does with its reading of the
backend's clock, and moves it forward itself. A backend must compare leases and due times
with the ``now`` it is given, never with a clock of the calling process; its own clock,
``time()``, is checked to be a plain, never-decreasing timestamp near the real time.
"""

from __future__ import annotations

import inspect
import itertools
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from anyio.from_thread import BlockingPortal, start_blocking_portal
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from ..abc import QueueBackend, QueueCapability
from ..queue._records import NewTask, Outcome, OutcomeKind, TaskState

__all__ = ["queue_backend_machine"]

WORKERS = ("w1", "w2")
QUEUES = ("q1", "q2")
LEASE = 10.0


@dataclass
class _Task:
    id: str
    queue: str
    priority: int
    run_at: float
    max_attempts: int
    unique_key: str | None
    state: TaskState = TaskState.QUEUED
    attempts: int = 0
    owner: str | None = None
    lease_until: float | None = None
    history: list[str] = field(default_factory=list)
    #: When it last became succeeded or dead, and when a success's result expires.
    finished_at: float | None = None
    expires: float | None = None
    order: int = 0


def queue_backend_machine(
    make_backend: Callable[[], Any],
    *,
    anyio_backend: str = "asyncio",
    allow_fake_clock: bool = False,
) -> type[RuleBasedStateMachine]:
    """Build the state machine for backends made by ``make_backend`` (sync or async).

    ``allow_fake_clock``: the backend's ``time()`` may be far from real time (a backend
    built with a fake clock); it must still never go back.

    Returns:
        A ``RuleBasedStateMachine`` subclass; its ``TestCase`` attribute is a unittest case
        that pytest collects.
    """

    class QueueBackendMachine(RuleBasedStateMachine):
        def __init__(self) -> None:
            super().__init__()
            self._portal_cm = start_blocking_portal(anyio_backend)
            self.portal: BlockingPortal = self._portal_cm.__enter__()
            self.backend = self.portal.call(_make, make_backend)
            self.now = 1_000_000.0
            #: The capabilities the backend declares: the rules and invariants that need
            #: one run only when it is declared, and then they check it.
            self.caps: frozenset[QueueCapability] = self.backend.capabilities
            #: History of tasks purged from the model (the backend keeps their history).
            self.purged_history: dict[str, list[str]] = {}
            self.last_clock = -math.inf
            self.fake_clock_allowed = allow_fake_clock
            self.tasks: dict[str, _Task] = {}
            self.ids = itertools.count()

        def teardown(self) -> None:
            aclose = getattr(self.backend, "aclose", None)
            if callable(aclose):
                self.portal.call(aclose)
            close = getattr(self.backend, "close", None)
            if callable(close):
                close()
            self._portal_cm.__exit__(None, None, None)

        def call(self, method: str, *args: Any, **kwargs: Any) -> Any:
            func = getattr(self.backend, method)
            return self.portal.call(lambda: func(*args, **kwargs))

        # -- rules -----------------------------------------------------------------------

        @rule(
            queue=st.sampled_from(QUEUES),
            priority=st.integers(0, 3),
            delay=st.sampled_from([0.0, 0.0, 5.0, 30.0]),
            max_attempts=st.integers(1, 3),
            unique=st.sampled_from([None, None, "k1", "k2"]),
            held=st.sampled_from([False, False, False, True]),
        )
        def enqueue(
            self,
            queue: str,
            priority: int,
            delay: float,
            max_attempts: int,
            unique: str | None,
            held: bool,
        ) -> None:
            if QueueCapability.UNIQUE_KEYS not in self.caps:
                unique = None
            if QueueCapability.ADMINISTRATION not in self.caps:
                held = False
            task_id = f"t{next(self.ids)}"
            new = NewTask(
                id=task_id,
                name="job",
                queue=queue,
                payload=b"{}",
                priority=priority,
                run_at=self.now + delay,
                max_attempts=max_attempts,
                unique_key=unique,
                held=held,
                created_at=self.now,
            )
            (result,) = self.call("enqueue", [new], now=self.now)
            live = [
                t
                for t in self.tasks.values()
                if unique is not None
                and t.unique_key == unique
                and t.state in (TaskState.QUEUED, TaskState.RUNNING, TaskState.HELD)
            ]
            if live:
                assert result.deduplicated, "a live unique key must deduplicate"
                assert result.id == live[0].id
                return
            assert not result.deduplicated
            assert result.id == task_id
            self.tasks[task_id] = _Task(
                task_id,
                queue,
                priority,
                self.now + delay,
                max_attempts,
                unique,
                state=TaskState.HELD if held else TaskState.QUEUED,
                order=next(self.ids),
            )

        @rule(
            worker=st.sampled_from(WORKERS),
            limit=st.integers(1, 3),
            queues=st.sampled_from([("q1",), ("q2",), QUEUES]),
            own=st.booleans(),
        )
        def claim(self, worker: str, limit: int, queues: tuple[str, ...], own: bool) -> None:
            # As a worker does: exclude the tasks it holds (expired leases included).
            exclude = frozenset(t.id for t in self.tasks.values() if own and t.owner == worker)
            self._claim_and_check(
                worker,
                limit,
                queues,
                lambda: self.call(
                    "claim",
                    list(queues),
                    limit,
                    worker=worker,
                    lease=LEASE,
                    now=self.now,
                    exclude=sorted(exclude),
                ),
                exclude=exclude,
            )

        def _claim_and_check(
            self,
            worker: str,
            limit: int,
            queues: tuple[str, ...],
            claim: Callable[[], Any],
            exclude: frozenset[str] = frozenset(),
        ) -> None:
            # Expired leases on their last attempt die instead of being claimed.
            expired = [
                t
                for t in self.tasks.values()
                if t.state is TaskState.RUNNING
                and t.queue in queues
                and t.lease_until is not None
                and t.lease_until <= self.now
                and t.id not in exclude
            ]
            due = [
                t
                for t in self.tasks.values()
                if t.state is TaskState.QUEUED
                and t.queue in queues
                and t.run_at <= self.now
                and t.id not in exclude
            ]
            records = claim()
            got = {r.id for r in records}
            assert len(got) == len(records), "a task is claimed once per call"
            reclaimable = {t.id for t in expired if t.attempts < t.max_attempts}
            candidates = reclaimable | {t.id for t in due}
            assert got <= candidates, f"claimed tasks that are not due: {got - candidates}"
            # Every claimable task is taken until the limit is reached, and no more.
            assert len(got) <= limit, f"claimed {len(got)} tasks with a limit of {limit}"
            assert len(got) == min(limit, len(candidates))
            # Priority: no due queued task left behind outranks a claimed queued one.
            claimed_queued = [self.tasks[i] for i in got if self.tasks[i].state is TaskState.QUEUED]
            left = [t for t in due if t.id not in got]
            if claimed_queued and left and not reclaimable - got:
                assert min(t.priority for t in claimed_queued) >= max(t.priority for t in left)
            for t in expired:
                if t.attempts >= t.max_attempts and t.id not in got:
                    if QueueCapability.INSPECTION not in self.caps:
                        continue  # cannot be told apart here; the next claim skips it anyway
                    # Either it died now, or the limit stopped the scan before it.
                    stored = self.call("get", t.id)
                    if stored.state is TaskState.DEAD:
                        t.state, t.owner, t.lease_until = TaskState.DEAD, None, None
                        t.finished_at = self.now
            for record in records:
                t = self.tasks[record.id]
                t.state = TaskState.RUNNING
                t.attempts += 1
                t.owner = worker
                t.lease_until = self.now + LEASE
                assert record.attempts == t.attempts
                assert record.lease_owner == worker

        @rule(worker=st.sampled_from(WORKERS))
        def heartbeat(self, worker: str) -> None:
            mine = [t.id for t in self.tasks.values() if t.owner == worker]
            held = self.call("heartbeat", worker, mine, lease=LEASE, now=self.now)
            expected = {
                t.id
                for t in self.tasks.values()
                if t.owner == worker and t.state is TaskState.RUNNING
            }
            assert held == expected
            for task_id in held:
                self.tasks[task_id].lease_until = self.now + LEASE

        @precondition(lambda self: any(t.state is TaskState.RUNNING for t in self.tasks.values()))
        @rule(
            pick=st.integers(0, 1000),
            kind=st.sampled_from(list(OutcomeKind)),
            worker=st.sampled_from(WORKERS),
            claim_limit=st.integers(0, 3),
            queues=st.sampled_from([("q1",), ("q2",), QUEUES]),
        )
        def finish(
            self,
            pick: int,
            kind: OutcomeKind,
            worker: str,
            claim_limit: int,
            queues: tuple[str, ...],
        ) -> None:
            t, outcome = self._outcome(pick, kind, worker)
            if not claim_limit or QueueCapability.FINISH_AND_CLAIM not in self.caps:
                self.call("finish", [outcome], now=self.now)
                self._finished(t, kind, worker)
                return
            # The optional combined call: the same as finish, then claim, except that the
            # claim never takes the reported task (even one released back to its queue).

            def finish_and_claim() -> Any:
                records = self.call(
                    "finish_and_claim",
                    [outcome],
                    now=self.now,
                    queues=list(queues),
                    limit=claim_limit,
                    worker=worker,
                    lease=LEASE,
                )
                self._finished(t, kind, worker)
                return records

            self._claim_and_check(
                worker, claim_limit, queues, finish_and_claim, exclude=frozenset({t.id})
            )

        def _outcome(self, pick: int, kind: OutcomeKind, worker: str) -> tuple[_Task, Outcome]:
            running = sorted(t.id for t in self.tasks.values() if t.state is TaskState.RUNNING)
            t = self.tasks[running[pick % len(running)]]
            return t, Outcome(
                id=t.id,
                worker=worker,
                kind=kind,
                started_at=self.now,
                finished_at=self.now,
                result=b"1" if kind is OutcomeKind.SUCCEEDED else None,
                result_expires=self.now + 20 if kind is OutcomeKind.SUCCEEDED else None,
                error=None if kind is OutcomeKind.SUCCEEDED else "Boom: x",
                retry_at=self.now + 5 if kind is OutcomeKind.RETRY else None,
            )

        def _finished(self, t: _Task, kind: OutcomeKind, worker: str) -> None:
            if t.owner != worker:
                return  # a worker that does not hold the task is ignored
            t.owner, t.lease_until = None, None
            if kind is OutcomeKind.SUCCEEDED:
                t.state, t.finished_at, t.expires = TaskState.SUCCEEDED, self.now, self.now + 20
            elif kind is OutcomeKind.DEAD:
                t.state, t.finished_at = TaskState.DEAD, self.now
            elif kind is OutcomeKind.RETRY:
                t.state, t.run_at = TaskState.QUEUED, self.now + 5
            else:
                t.state, t.attempts = TaskState.QUEUED, t.attempts - 1
            if kind is not OutcomeKind.RELEASED:
                t.history.append(kind.value)

        @precondition(
            lambda self: (
                QueueCapability.ADMINISTRATION in self.caps
                and any(t.state is TaskState.DEAD for t in self.tasks.values())
            )
        )
        @rule(pick=st.integers(0, 1000))
        def requeue(self, pick: int) -> None:
            dead = sorted(t.id for t in self.tasks.values() if t.state is TaskState.DEAD)
            t = self.tasks[dead[pick % len(dead)]]
            taken = t.unique_key is not None and any(
                o.unique_key == t.unique_key
                and o.state in (TaskState.QUEUED, TaskState.RUNNING, TaskState.HELD)
                for o in self.tasks.values()
            )
            assert self.call("requeue", t.id, now=self.now) is not taken
            if not taken:
                t.state, t.attempts, t.run_at = TaskState.QUEUED, 0, self.now
                t.finished_at = None

        @precondition(lambda self: QueueCapability.ADMINISTRATION in self.caps)
        @rule(
            queue=st.sampled_from(QUEUES),
            limit=st.sampled_from([None, 1, 2]),
            named=st.booleans(),
        )
        def dispatch(self, queue: str, limit: int | None, named: bool) -> None:
            held = [
                t for t in self.tasks.values() if t.state is TaskState.HELD and t.queue == queue
            ]
            count = self.call(
                "dispatch", queue, name="job" if named else None, limit=limit, now=self.now
            )
            assert count == (len(held) if limit is None else min(limit, len(held)))
            # Which ones: the highest priorities first (ties in any order), found by asking.
            released = []
            for t in held:
                if QueueCapability.INSPECTION in self.caps:
                    state = self.call("get", t.id).state
                else:
                    state = TaskState.QUEUED if limit is None else TaskState.HELD
                if state is TaskState.QUEUED:
                    t.state, t.run_at = TaskState.QUEUED, min(t.run_at, self.now)
                    released.append(t)
            assert len(released) == count or QueueCapability.INSPECTION not in self.caps
            kept = [t for t in held if t.state is TaskState.HELD]
            if released and kept:
                assert min(t.priority for t in released) >= max(t.priority for t in kept)

        @precondition(lambda self: QueueCapability.ADMINISTRATION in self.caps)
        @rule(dead_age=st.sampled_from([None, 0.0, 10.0]))
        def purge(self, dead_age: float | None) -> None:
            dead_before = None if dead_age is None else self.now - dead_age
            gone = [
                t
                for t in self.tasks.values()
                if (
                    t.state is TaskState.SUCCEEDED
                    and t.expires is not None
                    and t.expires <= self.now
                )
                or (
                    t.state is TaskState.DEAD
                    and dead_before is not None
                    and t.finished_at is not None
                    and t.finished_at < dead_before
                )
            ]
            deleted = self.call("purge", now=self.now, dead_before=dead_before)
            assert deleted == len(gone)
            for t in gone:
                if t.history:
                    self.purged_history[t.id] = t.history
                del self.tasks[t.id]
                if QueueCapability.INSPECTION in self.caps:
                    assert self.call("get", t.id) is None

        @rule(seconds=st.sampled_from([1.0, 4.0, 6.0, 11.0, 31.0]))
        def time_passes(self, seconds: float) -> None:
            self.now += seconds

        @rule()
        def backend_clock(self) -> None:
            reading = self.call("time")
            assert isinstance(reading, float)
            assert reading >= self.last_clock
            # The backend's clock is real time somewhere (a server's, the machine's): within
            # a day of this machine's, which a test server or a fake clock also satisfies.
            assert abs(reading - time.time()) < 86400 or self.fake_clock_allowed
            self.last_clock = reading

        # -- invariants ------------------------------------------------------------------

        @precondition(lambda self: QueueCapability.INSPECTION in self.caps)
        @invariant()
        def states_match(self) -> None:
            counts = self.call("counts")
            expected: dict[str, dict[TaskState, int]] = {}
            for t in self.tasks.values():
                per_queue = expected.setdefault(t.queue, {})
                per_queue[t.state] = per_queue.get(t.state, 0) + 1
            assert counts == expected

        @precondition(lambda self: QueueCapability.INSPECTION in self.caps)
        @invariant()
        def records_match(self) -> None:
            for t in self.tasks.values():
                record = self.call("get", t.id)
                assert record is not None
                assert (record.state, record.attempts) == (t.state, t.attempts), t
                if t.state is TaskState.RUNNING:
                    assert record.lease_owner == t.owner

        @precondition(lambda self: QueueCapability.INSPECTION in self.caps)
        @invariant()
        def history_matches(self) -> None:
            entries = self.call("history", limit=10_000)
            recorded: dict[str, list[str]] = {}
            for entry in reversed(entries):
                recorded.setdefault(entry.task_id, []).append(entry.outcome)
            expected = {t.id: t.history for t in self.tasks.values() if t.history}
            expected.update(self.purged_history)
            assert recorded == expected

    QueueBackendMachine.TestCase.settings = settings(
        max_examples=30, stateful_step_count=25, deadline=None
    )
    return QueueBackendMachine


async def _make(factory: Callable[[], Any]) -> QueueBackend:
    backend = factory()
    if inspect.isawaitable(backend):  # an async factory (it may migrate a database first)
        backend = await backend
    result: QueueBackend = backend
    return result
