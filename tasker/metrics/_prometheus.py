"""Prometheus metrics of a queue and a Scheduler, collected at scrape time.

Design notes:

- **Nothing of prometheus_client on the hot path.** A worker's hooks (``QueueObserver``)
  add to plain dicts of ints and bucket lists, keyed by (queue, task name); a collector
  turns them into metric families when Prometheus scrapes. A labelled ``Counter.inc()``
  takes a lock and a label lookup, ~1 us each, and a task touches six: a no-op task on the
  memory backend costs ~35 us, so that would be 15-20%, against a target of under 10%.
- **Counters that exist already are read, not kept twice**: the Scheduler's and the
  workers' ``statistics()`` are read at scrape time.
- **Low cardinality**: labels are queue and task names (and a worker's queue list, a
  schedule outcome), never ids.
- **The queue depth** needs the backend (``counts()``, a round trip), which a scrape, sync
  and on another thread perhaps, must not wait for: ``Metrics.job()`` refreshes it every
  ``every`` seconds, and the scrape reports the last reading, with its age.
- The hooks run on the event loop; a scrape may run on another thread (prometheus_client's
  own HTTP server): it copies the dicts first, and copies again if the loop changed them
  meanwhile.
"""

from __future__ import annotations

import bisect
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any
from weakref import WeakSet

try:
    from prometheus_client import CollectorRegistry, make_asgi_app
    from prometheus_client.core import (
        CounterMetricFamily,
        GaugeMetricFamily,
        HistogramMetricFamily,
    )
    from prometheus_client.registry import REGISTRY, Collector
except ImportError as exc:  # pragma: no cover - the extra is missing
    raise ImportError(
        "tasker.metrics needs prometheus_client: pip install 'tasker-jobs[metrics]'"
    ) from exc

from .._context import Context, to_seconds
from .._job import Job
from ..queue._records import NewTask, Outcome, OutcomeKind, TaskRecord

if TYPE_CHECKING:
    from ..queue import Queue
    from ..scheduler import Scheduler

__all__ = ["DEFAULT_BUCKETS", "Metrics", "instrument"]

logger = logging.getLogger("tasker.metrics")

#: Histogram buckets in seconds (run duration and enqueue-to-start): 1 ms to 10 min.
DEFAULT_BUCKETS: tuple[float, ...] = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0,
)  # fmt: skip

#: What each outcome adds to: (counters...).
_COUNTED = {
    OutcomeKind.SUCCEEDED: ("succeeded",),
    OutcomeKind.RETRY: ("failed", "retried"),
    OutcomeKind.DEAD: ("failed", "dead"),
    OutcomeKind.RELEASED: ("interrupted",),
    OutcomeKind.INTERRUPTED: ("interrupted",),
}
_CANCELLED = getattr(OutcomeKind, "CANCELLED", None)
if _CANCELLED is not None:
    _COUNTED[_CANCELLED] = ("cancelled",)

_COUNTERS: dict[str, str] = {
    "enqueued": "Tasks enqueued (and stored).",
    "deduplicated": "Enqueues that found the task stored already (unique key, task id).",
    "started": "Attempts started.",
    "succeeded": "Attempts that succeeded.",
    "failed": "Attempts that failed (retried or dead).",
    "retried": "Failed attempts with an attempt left: retried after their backoff.",
    "dead": "Failed last attempts: dead letters.",
    "cancelled": "Attempts stopped by a cancel (Queue.cancel).",
    "interrupted": "Attempts handed back uncounted (a shutdown).",
}


class _Histogram:
    """Bucket counts, a sum and a count: what a Prometheus histogram exposes."""

    __slots__ = ("buckets", "count", "sum")

    def __init__(self, size: int) -> None:
        self.buckets = [0] * (size + 1)  # the last one is +Inf
        self.sum = 0.0
        self.count = 0


class _Tallies:
    """The counters and histograms of one (queue, task name)."""

    __slots__ = ("counts", "duration", "wait")

    def __init__(self, size: int) -> None:
        self.counts = dict.fromkeys(_COUNTERS, 0)
        self.duration = _Histogram(size)
        self.wait = _Histogram(size)


class Metrics:
    """The metrics of one queue (its workers included) and one Scheduler, in a registry.

    Made by :func:`instrument`; no public constructor. Serve :meth:`asgi_app`, and run
    :meth:`job` beside the workers for the queue depth.
    """

    def __init__(
        self,
        *,
        queue: Queue | None,
        scheduler: Scheduler | None,
        registry: CollectorRegistry,
        buckets: Sequence[float],
        namespace: str,
    ) -> None:
        self._queue = queue
        self._scheduler = scheduler
        self.registry = registry
        self._bounds = tuple(float(b) for b in buckets)
        self._ns = namespace
        self._tallies: dict[tuple[str, str], _Tallies] = {}
        self._workers: WeakSet[Any] = WeakSet()
        self._depth: dict[str, dict[str, int]] = {}
        self._depth_at: float | None = None
        registry.register(_Collector(self))

    # -- the queue's hooks (QueueObserver) ----------------------------------------------

    def _tally(self, queue: str, name: str) -> _Tallies:
        tallies = self._tallies.get((queue, name))
        if tallies is None:
            tallies = self._tallies[queue, name] = _Tallies(len(self._bounds))
        return tallies

    def enqueued(self, tasks: Sequence[NewTask], deduplicated: Sequence[bool]) -> None:
        for task, again in zip(tasks, deduplicated, strict=True):
            self._tally(task.queue, task.name).counts["deduplicated" if again else "enqueued"] += 1

    def started(self, record: TaskRecord) -> None:
        self._tally(record.queue, record.name).counts["started"] += 1

    def finished(self, record: TaskRecord, outcome: Outcome) -> None:
        tallies = self._tally(record.queue, record.name)
        counts = tallies.counts
        for name in _COUNTED.get(outcome.kind, ()):
            counts[name] += 1
        if outcome.kind not in (OutcomeKind.RELEASED, OutcomeKind.INTERRUPTED):
            started = outcome.started_at
            self._observe(tallies.duration, max(0.0, outcome.finished_at - started))
            # Enqueue-to-start, from when it was due: its enqueue, its delay or its retry.
            self._observe(tallies.wait, max(0.0, started - record.run_at))

    def worker_started(self, worker: object) -> None:
        self._workers.add(worker)

    def worker_stopped(self, worker: object) -> None:
        self._workers.discard(worker)

    def _observe(self, histogram: _Histogram, value: float) -> None:
        histogram.buckets[bisect.bisect_left(self._bounds, value)] += 1
        histogram.sum += value
        histogram.count += 1

    # -- the queue depth ----------------------------------------------------------------

    async def refresh(self) -> None:
        """Read the queue's counts now (what :meth:`job` does every ``every`` seconds).

        Raises:
            MissingCapabilityError: the backend lacks ``QueueCapability.INSPECTION``.
        """
        if self._queue is None:
            return
        counts = await self._queue.counts()
        self._depth = {queue: dict(states) for queue, states in counts.items()}
        self._depth_at = time.time()

    def job(self, *, every: float = 15.0) -> Job:
        """A job that refreshes the queue depth every ``every`` seconds until its context
        is done (compose it with the workers).

        - **On error**: a failed read is logged (once per outage) and tried again at the
          next interval; the last reading stays, its age in ``tasker_queue_depth_age_seconds``.
        - **On cancellation**: it stops at once.
        - **On shutdown**: it returns.
        """
        interval = to_seconds(every, "every", allow_zero=False)

        async def metrics_job(ctx: Context) -> None:
            failing = False
            while not ctx.done:
                try:
                    await self.refresh()
                    if failing:
                        logger.warning("metrics: the queue's counts can be read again")
                    failing = False
                except Exception as exc:
                    if not failing:
                        logger.warning("metrics: cannot read the queue's counts: %s", exc)
                    failing = True
                await ctx.sleep(interval)

        metrics_job.__name__ = metrics_job.__qualname__ = "metrics.job()"
        return metrics_job

    # -- serving ------------------------------------------------------------------------

    def asgi_app(self) -> Callable[..., Any]:
        """An ASGI app that answers every GET with the registry's metrics (text format):
        mount it at ``/metrics``, serve it with :func:`tasker.serve_asgi`, or give it to
        :func:`tasker.serve_health` (``metrics=``)."""
        app: Callable[..., Any] = make_asgi_app(self.registry)
        return app

    def __repr__(self) -> str:
        return (
            f"<tasker.metrics.Metrics queue={self._queue is not None}"
            f" scheduler={self._scheduler is not None} series={len(self._tallies)}>"
        )

    # -- scraping -----------------------------------------------------------------------

    def _families(self) -> Iterator[Any]:
        ns = self._ns
        tallies = _copied(self._tallies)
        for name, help_text in _COUNTERS.items():
            family = CounterMetricFamily(f"{ns}_tasks_{name}", help_text, labels=["queue", "task"])
            for (queue, task), tally in tallies:
                family.add_metric([queue, task], tally.counts[name])
            yield family
        for attribute, metric, help_text in (
            ("duration", "task_duration_seconds", "Seconds an attempt ran."),
            ("wait", "task_wait_seconds", "Seconds from when a task was due to its start."),
        ):
            histograms = HistogramMetricFamily(
                f"{ns}_{metric}", help_text, labels=["queue", "task"]
            )
            for (queue, task), tally in tallies:
                histogram: _Histogram = getattr(tally, attribute)
                cumulative, buckets = 0, []
                for bound, count in zip(
                    (*self._bounds, float("inf")), histogram.buckets, strict=True
                ):
                    cumulative += count
                    buckets.append((_bound(bound), float(cumulative)))
                histograms.add_metric([queue, task], buckets, histogram.sum)
            yield histograms
        if self._queue is not None:
            depth = GaugeMetricFamily(
                f"{ns}_queue_depth",
                "Tasks per queue and state, at the last refresh (Metrics.job).",
                labels=["queue", "state"],
            )
            for queue, states in sorted(self._depth.items()):
                for state, count in sorted(states.items()):
                    depth.add_metric([queue, str(state)], count)
            yield depth
            age = GaugeMetricFamily(
                f"{ns}_queue_depth_age_seconds",
                "Seconds since the queue depth was read (NaN: never).",
            )
            age.add_metric(
                [], float("nan") if self._depth_at is None else time.time() - self._depth_at
            )
            yield age
            used = GaugeMetricFamily(
                f"{ns}_worker_slots_used",
                "Tasks the running workers of this process hold, by their queues.",
                labels=["queues"],
            )
            total = GaugeMetricFamily(
                f"{ns}_worker_slots",
                "The concurrency of the running workers of this process, by their queues.",
                labels=["queues"],
            )
            slots: dict[str, list[int]] = {}
            for worker in list(self._workers):
                stats = worker.statistics()
                key = ",".join(stats.queues)
                entry = slots.setdefault(key, [0, 0])
                entry[0] += stats.running
                entry[1] += stats.concurrency
            for key, (running, concurrency) in sorted(slots.items()):
                used.add_metric([key], running)
                total.add_metric([key], concurrency)
            yield used
            yield total
        if self._scheduler is not None:
            stats = self._scheduler.statistics()
            runs = CounterMetricFamily(
                f"{ns}_schedule_runs", "Scheduled runs that ended, by outcome.", labels=["outcome"]
            )
            runs.add_metric(["succeeded"], stats.runs_succeeded)
            runs.add_metric(["failed"], stats.runs_failed)
            runs.add_metric(["interrupted"], stats.runs_interrupted)
            yield runs
            for metric, value, help_text in (
                ("schedule_runs_started", stats.runs_started, "Scheduled runs started."),
                (
                    "schedule_lock_busy",
                    stats.lock_busy,
                    "Due slots whose lock another replica held (lock contention).",
                ),
                (
                    "schedule_slots_skipped",
                    stats.slots_skipped,
                    "Slots missed and not run (catch_up, or covered by one catch-up run).",
                ),
                (
                    "schedule_backend_errors",
                    stats.backend_errors,
                    "Calls to the Scheduler's backends that failed.",
                ),
            ):
                family = CounterMetricFamily(f"{ns}_{metric}", help_text)
                family.add_metric([], value)
                yield family
            schedules = GaugeMetricFamily(f"{ns}_schedules", "Schedules registered.")
            schedules.add_metric([], stats.schedules)
            yield schedules


def _bound(value: float) -> str:
    return "+Inf" if value == float("inf") else repr(value)


def _copied(tallies: dict[tuple[str, str], _Tallies]) -> list[tuple[tuple[str, str], _Tallies]]:
    """The entries, sorted, copied safely from a thread other than the loop's."""
    while True:
        try:
            return sorted(tallies.items())
        except RuntimeError:  # the loop added a key while this thread copied: again
            continue


class _Collector(Collector):
    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    def collect(self) -> Iterator[Any]:
        yield from self._metrics._families()


def instrument(
    *,
    queue: Queue | None = None,
    scheduler: Scheduler | None = None,
    registry: CollectorRegistry | None = None,
    buckets: Sequence[float] = DEFAULT_BUCKETS,
    namespace: str = "tasker",
) -> Metrics:
    """Count what ``queue`` (and every worker it makes, before or after) and ``scheduler``
    do, as Prometheus metrics in ``registry`` (default: prometheus_client's global one).

    Metrics (``tasker_`` is ``namespace``): ``tasker_tasks_{enqueued,deduplicated,started,
    succeeded,failed,retried,dead,cancelled,interrupted}_total`` and the histograms
    ``tasker_task_duration_seconds`` and ``tasker_task_wait_seconds`` (from due to start),
    all by ``queue`` and ``task``; ``tasker_queue_depth`` by ``queue`` and ``state``
    (refreshed by :meth:`Metrics.job`); ``tasker_worker_slots_used`` and
    ``tasker_worker_slots`` by the workers' ``queues``; ``tasker_schedule_runs_total`` by
    ``outcome``, ``tasker_schedule_runs_started_total``, ``tasker_schedule_lock_busy_total``
    (contention), ``tasker_schedule_slots_skipped_total`` (misses) and
    ``tasker_schedule_backend_errors_total``. Chain steps enqueued by the backend with an
    outcome are not counted as enqueued; realtime tasks (``Worker.spawn``) are not counted.

    Raises:
        ValueError: a queue that is instrumented already, or neither queue nor scheduler.
        TypeError: a queue or scheduler of the wrong type.
    """
    from ..queue import Queue
    from ..scheduler import Scheduler

    if queue is None and scheduler is None:
        raise ValueError("tasker.metrics.instrument(): give a queue, a scheduler, or both")
    if queue is not None and not isinstance(queue, Queue):
        raise TypeError(f"tasker.metrics.instrument(): queue must be a Queue, got {queue!r}")
    if scheduler is not None and not isinstance(scheduler, Scheduler):
        raise TypeError(
            f"tasker.metrics.instrument(): scheduler must be a Scheduler, got {scheduler!r}"
        )
    if list(buckets) != sorted(set(buckets)) or not buckets:
        raise ValueError(
            f"tasker.metrics.instrument(): buckets must be increasing and distinct, got {buckets!r}"
        )
    if queue is not None and queue._registry.observer is not None:
        raise ValueError(f"tasker.metrics.instrument(): {queue!r} is instrumented already")
    metrics = Metrics(
        queue=queue,
        scheduler=scheduler,
        registry=REGISTRY if registry is None else registry,
        buckets=buckets,
        namespace=namespace,
    )
    if queue is not None:
        queue._registry.observer = metrics
    return metrics
