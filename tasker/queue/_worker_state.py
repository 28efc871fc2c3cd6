"""The state a worker's parts share, made in one place.

A :class:`tasker.queue.Worker` is one mixin per concept over this base: claiming
(``_claims``), running (``_runners``), keeping leases (``_leases``), the bounded stop
(``_stop``) and recording outcomes (``_recording``); the worker itself (``_worker``) adds
the lifecycle and statistics. The base makes the state they share and declares, for the
type checker only, the methods one part calls in another, each implemented by one part.

Why mixins over one object rather than parts that hold each other: the hot path costs tens
of microseconds per task, and reads this state several times per attempt; ``self.running``
is one lookup where ``self.leases.running`` would be two, and no part needs a reference to
the others (so no import cycle either: every part imports this module, none imports another).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import anyio
from anyio.streams.memory import MemoryObjectSendStream

from .._backoff import Backoff
from .._context import Context
from .._readiness import Probe
from ..abc import QueueBackend, QueueCapability
from ._attempt import Attempt
from ._info import TaskInfo
from ._progress import ProgressReports
from ._records import Outcome, TaskRecord
from ._registry import Registry
from ._retention import Retention
from ._time import BackendClock

__all__ = ["BACKEND_BACKOFF", "WorkerState"]

#: How a worker backs off while its backend is unreachable (claims, and recording).
BACKEND_BACKOFF = Backoff(initial=0.2, maximum=10.0)


class WorkerState:
    """What the parts of a worker share (see the module's notes)."""

    def __init__(
        self,
        backend: QueueBackend,
        registry: Registry,
        clock: BackendClock,
        queues: list[str],
        *,
        concurrency: int,
        lease: float,
        poll: float,
        worker_id: str,
        on_failure: Callable[[TaskInfo[Any]], object] | None,
        retention: Retention | None = None,
    ) -> None:
        self.backend = backend
        self._registry = registry
        self._time = clock
        self._on_failure = on_failure
        self._retention = retention
        self.purged = 0
        self._maintenance: anyio.CancelScope | None = None
        self.queues = queues
        # What log lines call this job (tasker's job_name reads __qualname__).
        self.__qualname__ = self.__name__ = f"worker({','.join(queues)})"
        self.concurrency = concurrency
        self.lease = lease
        self.poll = poll
        self.worker_id = worker_id
        self._batch = max(1, concurrency // 2)
        # Heartbeats failed in a row (an outage is logged once, and its end once).
        self._heartbeat_failures = 0
        # Claimed attempts by task id: running, queued for a runner, or being recorded.
        self.running: dict[str, Attempt] = {}
        # Those of ``running`` whose handler returned: their outcome is being recorded.
        self.reporting: set[str] = set()
        # Set when the claim loop has slots to fill, or the stop an attempt less to wait for.
        self._slot_freed = anyio.Event()
        # Outcomes waiting for the flush in progress, and the event their reporters wait on
        # (made by the first one that waits).
        self._pending_outcomes: list[tuple[Outcome, Attempt]] = []
        self._pending_done: anyio.Event | None = None
        self._flushing = False
        self.completed = 0
        self.leases_lost = 0
        self.discarded = 0
        # Slots promised to a claim in flight (the claim loop's or a flush's).
        self._reserved = 0
        # A backend that can record outcomes and claim in one round trip: then a flush
        # also fills the slots its tasks freed, and the claim loop leaves that to it.
        self._finish_and_claim: Any = (
            backend.finish_and_claim  # type: ignore[attr-defined]
            if QueueCapability.FINISH_AND_CLAIM in backend.capabilities
            else None
        )
        # A backend that records cancels (``QueueCapability.CANCEL``): each heartbeat then
        # asks which of the tasks it runs were cancelled meanwhile.
        self._cancel_requested: Any = (
            backend.cancel_requested  # type: ignore[attr-defined]
            if QueueCapability.CANCEL in backend.capabilities
            else None
        )
        self.cancelled = 0
        # The progress its handlers report (``QueueCapability.PROGRESS``): coalesced, and
        # written by the report itself, at each heartbeat, or before the outcome.
        self._progress = ProgressReports(backend, clock, worker_id, timeout=lease / 3)
        # Realtime tasks run (``Worker.spawn``), and the event a spawn waiting for a slot
        # waits on (made by the first that waits; set when a slot frees or the worker stops).
        self.realtime = 0
        self._spawn_wake: anyio.Event | None = None
        self._spawners = 0  # spawns waiting for a slot: the claim loop leaves them theirs
        self._ctx: Context | None = None
        self._send: MemoryObjectSendStream[Attempt] | None = None
        # Shutdown deadlines (anyio time), set when the worker's context is done.
        self._stopping = False
        self._cut_at: float | None = None
        self._give_up_at: float | None = None
        self._abandoned = False
        self._shielded: set[anyio.CancelScope] = set()
        # The claim loop's scope (made in the event loop, by ``run``): cut at the stop
        # deadline if a backend call holds it up.
        self._claims: anyio.CancelScope | None = None
        # Its say in the program's readiness (ready once a claim succeeded), if in one.
        self._probe: Probe | None = None
        self._started_at: float | None = None

    if TYPE_CHECKING:  # implemented by the parts (_claims, _runners, _leases, _stop, _recording)

        def _free(self) -> int: ...

        def _freed(self) -> None: ...

        async def _hand_to_runners(self, records: list[TaskRecord], sent: float) -> None: ...

        def _forget(self, attempt: Attempt, when: str) -> None: ...

        async def _report(self, outcome: Outcome, attempt: Attempt) -> None: ...

        async def _check_overdue(
            self, reported: list[tuple[Outcome, Attempt]], now: float
        ) -> list[tuple[Outcome, Attempt]]: ...

        def _shield(self, budget: float) -> anyio.CancelScope: ...

        async def _release(self, attempts: list[Attempt]) -> None: ...

        def _end_realtime(self, attempt: Attempt, outcome: Outcome) -> None: ...

        def _drop_realtime(self, attempts: list[Attempt], why: str) -> None: ...
