"""``Scheduler``: run a job once per due slot across every replica of a service.

Design notes:

- Each schedule is one long-lived job that sleeps until its next slot (no polling: the only
  wake-ups between slots are the clock's own, at most one a minute), then takes the named lock
  *without waiting*, reads the state under the lock, runs the job if the slot is not done yet,
  records it and releases. The lock gives "at most one replica runs a name at a time"; the
  state gives "each slot once while runs succeed".
- Prepared ahead of the slot: a loop wakes a little *before* its slot (the lead, below),
  takes the lock and reads the state then, and waits for the slot holding the lock; at the
  slot it only decides (from the state read under the same lock, with the clock read after
  the wait) and starts the job. So the lock, the state read and a backend's round trips are
  off the path from the slot to the start, and a hundred schedules due at one second start
  within a few milliseconds of it instead of queueing behind each other's I/O (profiled on
  the embedded default: lock files, a SQLite read in a thread and the loop's own work took
  8-17 ms from slot to start at p50-p99 with 100 schedules). Nothing else changes: the job
  never starts before its slot, the state cannot change while the lock is held, and a
  replica that finds the lock taken retries after ``lock_retry`` as before. The cost is the
  lock held for the lead before each run, which another replica sees as busy.
- The lead adapts: it starts at 20 ms and becomes twice the longest preparation seen at a
  slot (from the wake-up to the state read), at most half a second; it shrinks again by a
  tenth per slot when preparations get quicker.
- Wake-ups are shared (``_alarms``): the loops waiting for the same slot, for the same phase,
  wait on one timer, and are released in one turn of the event loop.
- The state is written only after a run succeeded, so a run that failed, crashed, was
  cancelled or lost its lock leaves its slot due: at-least-once, never silently dropped.
- "Now" comes from the state repository when it has a clock of its own (a database), so
  replicas with skewed clocks agree on which slot is due; the local clock is used otherwise.
- ``first_run="immediately"`` (the Go original's ``IntervalImmediateStart``) is decided
  under the lock, from the state read there, never from the plan made before it: N
  replicas that start together all plan a first run, one takes the lock and runs it, and
  the others find its state and plan from it. A failed first run saves nothing, because
  no ``last_slot`` could say "due at once" again; the name stays stateless, so it is
  retried like any failed slot.
- ``forget`` deletes a state under the name's lock, so it never lands between a run's read
  and its save (which would bring the state back). It wakes this process's loop for the
  name (a cancel scope per sleeping loop) so it plans from the missing state at once;
  another process's loop notices at its next wake-up, when it reads the state under the
  lock anyway.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from pathlib import Path
from typing import Protocol, Self

import anyio

from .._backoff import Backoff
from .._context import Context, StopReason, to_seconds
from .._faults import raise_if_permanent
from .._job import Job, check_job, job_name
from .._readiness import Probe, optional_probe
from .._state_dir import default_state_dir
from .._stopping import Stopper, run_stoppable
from ..abc import Locker, LockerFactory, StateRepository
from ..schedule import Schedule
from ._alarms import Alarms
from ._embedded import FileLockerFactory, SQLiteStateRepository
from ._runs import (
    CatchUp,
    Counters,
    Entry,
    FirstRun,
    SchedulerStatistics,
    current_slot,
    latest_due,
    next_state,
    scheduled_slot,
)
from ._state import ScheduleState, check_name

__all__ = ["CatchUp", "FirstRun", "Scheduler", "SchedulerStatistics", "scheduled_slot"]

logger = logging.getLogger("tasker.scheduler")

#: How long an unlock may take before it is abandoned (it runs shielded from cancellation).
_UNLOCK_TIMEOUT = 10.0

#: Bounds of the lead: how long before a slot a loop takes its lock and reads its state.
_MIN_LEAD = 0.02
_MAX_LEAD = 0.5
#: The alarm phases: waking to prepare a slot, and the slot itself.
_PREPARE, _SLOT = 0, 1


def _missing(obj: object, methods: tuple[str, ...]) -> str:
    """`` (it has no delete)`` for the methods ``obj`` lacks, or ``""``: a repository written
    before ``delete`` joined the protocol lacks only that, and the error should say so."""
    missing = [method for method in methods if not callable(getattr(obj, method, None))]
    return f" (it has no {', '.join(missing)})" if missing else ""


class RunSpan(Protocol):
    """The open span of one scheduled run (``ScheduleTracer.run``), current while it runs."""

    def detach(self) -> None:
        """The job returned or raised: the span is no longer the current one."""

    def end(self, outcome: str, error: BaseException | None) -> None:
        """The run ended with ``outcome`` (``error`` if it failed): the span ends."""


class ScheduleTracer(Protocol):
    """Makes the span of each scheduled run (``tasker.tracing``)."""

    def run(self, name: str, slot: datetime) -> RunSpan:
        """Start the span of the run of schedule ``name`` for ``slot``, made current."""
        ...


class Scheduler:
    """Runs jobs at their schedules' slots, once per slot across every replica.

    Guarantees:

    - At most one replica runs a name at a time (the backend's lock, taken without waiting).
    - Each due slot runs once across replicas while runs succeed; a run that outlives its
      slot never has a second copy started beside it.
    - A failed, crashed, cancelled or interrupted run leaves its slot due; it is retried
      after ``retry_delay`` (at-least-once). A run that *returns* counts as done, also during
      a shutdown: a job that stops early because ``ctx`` is done should raise instead, so
      its slot stays due. A run whose lock was lost is never recorded.
    - Slots missed while every replica was down are caught up by *one* run (the default,
      ``catch_up="once"``) or dropped (``catch_up="skip"``); never a burst.
    - A name with no stored state (never run, or :meth:`forget`-ten) waits for its first
      slot after the moment it is seen, or, with ``first_run="immediately"``, runs once at
      that moment, on one replica only.
    - A backend outage does not end the program: the scheduler logs it once, retries with
      backoff and resumes; no slot is lost or doubled.

    Args:
        locker_factory: the locks (:class:`tasker.abc.LockerFactory`).
        repository: the state (:class:`tasker.abc.StateRepository`). Give both or neither;
            with neither, the embedded default is used: lock files and a SQLite file in
            ``state_dir``.
        state_dir: the embedded default's directory: ``$TASKER_STATE_DIR`` or ``./.tasker``.
        lock_retry: seconds before a replica that found the lock busy looks again.
        backend_backoff: the wait between retries while the backend is unreachable: a
            :class:`Backoff`, or a fixed duration (seconds or a ``timedelta``).

    Raises:
        ValueError: for only one of ``locker_factory``/``repository``, or a bad duration.
        TypeError: for a backend that does not implement its protocol.
    """

    def __init__(
        self,
        *,
        locker_factory: LockerFactory | None = None,
        repository: StateRepository | None = None,
        state_dir: str | Path | None = None,
        lock_retry: float | timedelta = 1.0,
        backend_backoff: Backoff | float | timedelta = Backoff(initial=0.5, maximum=30.0),  # noqa: B008
    ) -> None:
        if (locker_factory is None) != (repository is None):
            raise ValueError("Scheduler: give both locker_factory and repository, or neither")
        if locker_factory is None or repository is None:
            directory = Path(state_dir) if state_dir is not None else default_state_dir()
            locker_factory = FileLockerFactory(directory)
            repository = SQLiteStateRepository(directory / "state.sqlite3")
        elif state_dir is not None:
            raise ValueError("Scheduler: state_dir is only for the embedded default backend")
        if not isinstance(locker_factory, LockerFactory):
            raise TypeError(f"Scheduler: {locker_factory!r} is not a tasker.abc.LockerFactory")
        if not isinstance(repository, StateRepository):
            raise TypeError(
                f"Scheduler: {repository!r} is not a tasker.abc.StateRepository"
                + _missing(repository, ("now", "get", "save", "delete", "aclose"))
            )
        if not isinstance(backend_backoff, Backoff):
            if not isinstance(backend_backoff, int | float | timedelta) or isinstance(
                backend_backoff, bool
            ):
                raise TypeError(
                    "Scheduler: backend_backoff must be a Backoff or a duration, got"
                    f" {backend_backoff!r}"
                )
            backend_backoff = Backoff.fixed(to_seconds(backend_backoff, "backend_backoff"))
        self._lockers = locker_factory
        self._repository = repository
        self._lock_retry = to_seconds(lock_retry, "lock_retry", allow_zero=False)
        self._backend_backoff = backend_backoff
        self._entries: dict[str, Entry] = {}
        self._first_seen: dict[str, datetime] = {}
        # forget(name) bumps the name's generation and wakes its sleeping loops, so that a
        # loop never keeps a plan made from the state that was deleted.
        self._forgets: dict[str, int] = {}
        self._sleepers: dict[str, set[anyio.CancelScope]] = {}
        self._counters = Counters()
        self._running: set[str] = set()
        self._alarms = Alarms()
        #: Seconds before a slot that its loop prepares (see the notes; adapts to the load).
        self._lead = _MIN_LEAD
        self._shrunk_at = 0.0
        #: Makes a span of each run (``tasker.tracing``); None: one attribute read per run.
        self._tracer: ScheduleTracer | None = None

    @property
    def locker_factory(self) -> LockerFactory:
        """The lock backend."""
        return self._lockers

    @property
    def repository(self) -> StateRepository:
        """The state backend."""
        return self._repository

    @property
    def schedules(self) -> dict[str, Schedule]:
        """The registered schedules by name, in registration order (a copy)."""
        return {name: entry.schedule for name, entry in self._entries.items()}

    def with_schedule(
        self,
        name: str,
        schedule: Schedule,
        job: Job,
        *,
        catch_up: CatchUp = "once",
        retry_delay: float | timedelta = 10.0,
        first_run: FirstRun = "next_slot",
    ) -> Job:
        """Return a long-lived job that runs ``job`` once per due slot of ``schedule``.

        Compose the returned job with :func:`tasker.main` or :func:`tasker.concurrence`.
        :func:`scheduled_slot` tells ``job`` which slot it runs for.

        Args:
            name: the schedule's name, unique in this Scheduler and shared by the replicas
                that must coordinate (at most 200 printable characters).
            schedule: when to run (anything with ``next_after``).
            job: what to run; it receives a child of the scheduler job's context.
            catch_up: ``"once"`` to cover slots missed while every replica was down with one
                run, ``"skip"`` to drop them and wait for the next slot.
            retry_delay: seconds before a failed run's slot is tried again.
            first_run: what a name with no stored state does (a name never run anywhere,
                or one :meth:`forget` deleted): ``"next_slot"`` waits for the first slot
                after the moment it is seen; ``"immediately"`` runs once at that moment
                (the Go original's ``IntervalImmediateStart``, here for every schedule
                type), then follows the schedule: the run's state records the moment it
                started as its ``last_slot``, and :func:`scheduled_slot` gives that moment.
                Across replicas it runs once: the state is read again under the lock, and a
                replica that finds one there (another replica did the first run) plans from
                it instead. A failed first run stores no state (the name stays stateless,
                so the first run is retried after ``retry_delay``; its error is logged and
                counted, not stored as ``last_error``).

        - **On error**: a failing run is logged with its traceback on ``tasker.scheduler``,
          recorded as ``last_error``, and retried after ``retry_delay``; the scheduler job
          itself does not fail. Backend errors are retried with backoff.
        - **On cancellation**: the running job is cancelled, its slot stays due, and the lock
          is released in a shielded scope.
        - **On shutdown**: no new run starts; a running one sees ``ctx.done``; if it returns
          its slot is done, if it raises or is cancelled after the grace its slot stays due.

        Raises:
            ValueError: for a duplicate or invalid name, an unknown ``catch_up`` or
                ``first_run``, or a bad ``retry_delay``.
            TypeError: if ``job`` is not an async callable or ``schedule`` has no
                ``next_after``.
        """
        check_name(name, "Scheduler.with_schedule()")
        if name in self._entries:
            raise ValueError(f"Scheduler.with_schedule(): the name {name!r} is already used")
        if not callable(getattr(schedule, "next_after", None)):
            raise TypeError(
                f"Scheduler.with_schedule(): schedule must have next_after(), got {schedule!r}"
            )
        job = check_job(job, "Scheduler.with_schedule()")
        if catch_up not in ("once", "skip"):
            raise ValueError(
                f"Scheduler.with_schedule(): catch_up must be 'once' or 'skip', got {catch_up!r}"
            )
        if first_run not in ("next_slot", "immediately"):
            raise ValueError(
                "Scheduler.with_schedule(): first_run must be 'next_slot' or 'immediately',"
                f" got {first_run!r}"
            )
        entry = Entry(
            name,
            schedule,
            job,
            catch_up,
            to_seconds(retry_delay, "retry_delay"),
            first_run,
        )
        self._entries[name] = entry

        async def scheduled_job(ctx: Context) -> None:
            probe = optional_probe(f"schedule {name!r}")
            try:
                await self._loop(ctx, entry, probe)
            finally:
                if probe is not None:
                    probe.close()

        scheduled_job.__name__ = scheduled_job.__qualname__ = f"scheduled({name!r})"
        return scheduled_job

    async def forget(self, name: str, *, timeout: float | timedelta = 30.0) -> None:
        """Delete the stored state of the schedule ``name``: the name is then never seen.

        After it, the name waits for its first slot after the moment it is seen again, or
        runs at once with ``first_run="immediately"``. The main use is the leftover state of
        a schedule that was removed, or renamed; a name need not be registered in this
        Scheduler, but it is checked as :meth:`with_schedule` checks it.

        The state is deleted under the name's lock, so that it never lands between a run's
        read of the state and its save: while a run of the name holds the lock (in any
        replica), ``forget`` tries the lock again every ``lock_retry`` seconds, until
        ``timeout``. A loop of this Scheduler that runs the name plans again at once from
        the missing state (with ``first_run="immediately"`` it runs now); a loop in another
        process notices at its next wake-up (its next planned slot, or a retry), reads the
        missing state under the lock, and from that moment waits for the next slot or runs
        at once.

        Args:
            name: the schedule's name.
            timeout: seconds (or a ``timedelta``) to wait for a busy lock; 0 tries once.

        - **On error**: a backend error propagates as it is; the state was deleted or not.
        - **On cancellation**: the cancellation propagates; the state was deleted or not, and
          a lock taken is released in a shielded scope.

        Raises:
            TimeoutError: when the name's lock was still held after ``timeout``; nothing was
                deleted.
            ValueError: for an invalid name or a negative ``timeout``.
            TypeError: for a name that is not a string, or a ``timeout`` that is not a
                duration.
        """
        check_name(name, "Scheduler.forget()")
        limit = to_seconds(timeout, "timeout")
        locker = self._lockers.locker(name)
        deadline = anyio.current_time() + limit
        while not await locker.try_lock():
            remaining = deadline - anyio.current_time()
            if remaining <= 0:
                raise TimeoutError(
                    f"Scheduler.forget(): the schedule {name!r} was still locked after"
                    f" {limit:g}s (a run of it holds the lock); nothing was deleted"
                )
            await anyio.sleep(min(self._lock_retry, remaining))
        try:
            await self._repository.delete(name)
            logger.info("schedule %r: its state was deleted (forgotten)", name)
        finally:
            with anyio.CancelScope(shield=True), anyio.move_on_after(_UNLOCK_TIMEOUT):
                await locker.unlock()
            # Whether the delete happened or not (cancelled, failed), a re-read costs one get.
            self._first_seen.pop(name, None)
            self._forgets[name] = self._forgets.get(name, 0) + 1
            for scope in self._sleepers.get(name, ()):
                scope.cancel()

    async def aclose(self) -> None:
        """Close the lock factory and the state repository (idempotent)."""
        await self._lockers.aclose()
        await self._repository.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    def statistics(self) -> SchedulerStatistics:
        """A snapshot of the counters."""
        c = self._counters
        return SchedulerStatistics(
            schedules=len(self._entries),
            runs_started=c.runs_started,
            runs_succeeded=c.runs_succeeded,
            runs_failed=c.runs_failed,
            runs_interrupted=c.runs_interrupted,
            first_runs=c.first_runs,
            lock_busy=c.lock_busy,
            slots_skipped=c.slots_skipped,
            backend_errors=c.backend_errors,
        )

    def __repr__(self) -> str:
        return (
            f"<tasker.Scheduler schedules={sorted(self._entries)} running={sorted(self._running)}"
            f" locks={self._lockers!r} state={self._repository!r}>"
        )

    # -- the loop ----------------------------------------------------------------------

    async def _now(self, ctx: Context) -> datetime:
        return await self._repository.now() or ctx.clock.now()

    async def _target(self, ctx: Context, moment: datetime) -> tuple[datetime, datetime]:
        """The scheduler's "now" and the moment on ``ctx.clock`` that stands for ``moment``
        (``moment`` itself when the repository has no clock of its own)."""
        local = ctx.clock.now()
        now = await self._repository.now() or local
        return now, local + (moment - now)

    def _base(self, entry: Entry, state: ScheduleState | None, now: datetime) -> datetime:
        if state is not None:
            # Once a state exists, the moment this replica first saw the name is stale: if
            # the state is forgotten later, the name is first seen again then.
            self._first_seen.pop(entry.name, None)
            return state.last_slot
        return self._first_seen.setdefault(entry.name, now)

    def _plan(self, entry: Entry, state: ScheduleState | None, now: datetime) -> datetime:
        """The next moment to try ``entry``: a slot, or ``now`` for a first run at once."""
        if state is None and entry.first_run == "immediately":
            return now
        return entry.schedule.next_after(self._base(entry, state, now))

    async def _sleep(self, ctx: Context, name: str, seen: int, delay: float) -> bool:
        """``ctx.sleep(delay)``, cut short by :meth:`forget`; False only once ``ctx`` is done."""
        if self._forgets.get(name, 0) != seen:
            return True  # forgotten while this loop planned: plan again at once
        sleepers = self._sleepers.setdefault(name, set())
        with anyio.CancelScope() as wake:
            sleepers.add(wake)
            try:
                return await ctx.sleep(delay)
            finally:
                sleepers.discard(wake)
                if not sleepers and self._sleepers.get(name) is sleepers:
                    del self._sleepers[name]
        return True  # woken by forget()

    def _prepared(self, woke: tuple[float, float] | None) -> None:
        """Adapt the lead to a preparation that began when its alarm fired (``woke[0]``)."""
        if woke is None:
            return
        fired = woke[0]
        lead = self._lead
        if fired != self._shrunk_at:  # the first preparation after this alarm: may shrink
            self._shrunk_at = fired
            lead = max(_MIN_LEAD, lead * 0.9)
        self._lead = min(_MAX_LEAD, max(lead, 2 * (anyio.current_time() - fired)))

    async def _loop(self, ctx: Context, entry: Entry, probe: Probe | None) -> None:
        planned: datetime | None = None
        seen = self._forgets.get(entry.name, 0)
        outage_attempts = 0
        #: When the alarm that woke this loop to prepare its slot fired, and the lead then.
        woke: tuple[float, float] | None = None
        while not ctx.done:
            if self._forgets.get(entry.name, 0) != seen:  # forget(): the plan is stale
                seen = self._forgets.get(entry.name, 0)
                planned = None
            delay = 0.0
            prepare: datetime | None = None
            prepared_from, woke = woke, None
            try:
                now = await self._now(ctx)
                if planned is None:
                    state = await self._repository.get(entry.name)
                    planned = self._plan(entry, state, now)
                    if probe is not None:  # its backends answered
                        probe.set(True)
                lead = self._lead
                ahead = (planned - now).total_seconds() - lead
                # Wake a lead before the slot, with the others due at it; once woken for it,
                # prepare even if the lead shrank meanwhile.
                if ahead > 0 and prepared_from is None:
                    delay, prepare = ahead, planned
                else:
                    planned, delay = await self._attempt(ctx, entry, prepared_from)
                if outage_attempts:
                    logger.warning("schedule %r: backend reachable again", entry.name)
                    outage_attempts = 0
            except Exception as exc:
                raise_if_permanent(exc, f"Scheduler on {self._repository!r}")
                self._counters.backend_errors += 1
                outage_attempts += 1
                if probe is not None:
                    probe.set(False, f"backend unavailable ({type(exc).__name__})")
                if outage_attempts == 1:  # once per outage, not once per retry
                    logger.warning(
                        "schedule %r: backend unavailable (%s: %s); retrying with backoff",
                        entry.name,
                        type(exc).__name__,
                        exc,
                    )
                planned = None
                delay = self._backend_backoff.delay(outage_attempts)
            if delay <= 0:
                continue
            if prepare is None:
                if not await self._sleep(ctx, entry.name, seen, delay):
                    return
            elif self._forgets.get(entry.name, 0) == seen:
                fired = await self._wait_prepare(ctx, entry.name, prepare, delay)
                woke = None if fired is None else (fired, lead)

    async def _wait_prepare(
        self, ctx: Context, name: str, slot: datetime, delay: float
    ) -> float | None:
        """Sleep ``delay`` seconds, until a lead before ``slot``, on the alarm shared with the
        other loops due at it, cut short by :meth:`forget`; when the alarm fired, or None."""
        sleepers = self._sleepers.setdefault(name, set())
        with anyio.CancelScope() as wake:
            sleepers.add(wake)
            try:
                target = ctx.clock.now() + timedelta(seconds=delay)
                return await self._alarms.wait(ctx, slot, _PREPARE, target)
            finally:
                sleepers.discard(wake)
                if not sleepers and self._sleepers.get(name) is sleepers:
                    del self._sleepers[name]
        return None  # woken by forget()

    async def _attempt(
        self, ctx: Context, entry: Entry, woke: tuple[float, float] | None = None
    ) -> tuple[datetime | None, float]:
        """Try to run the due slot; return the next planned slot (or None) and a delay.

        A slot due within the lead is waited for holding the lock (see the notes); ``woke``
        is when the alarm that woke this loop to prepare fired and the lead it was set for,
        if one did (a database clock may find it a hair early: ``_MIN_LEAD`` of slack).
        """
        lead = self._lead if woke is None else max(self._lead, woke[1]) + _MIN_LEAD
        locker = self._lockers.locker(entry.name)
        if not await locker.try_lock():
            self._counters.lock_busy += 1
            logger.debug("schedule %r: another replica holds the lock", entry.name)
            return None, self._lock_retry
        try:
            now = await self._now(ctx)
            state = await self._repository.get(entry.name)
            if state is None and entry.first_run == "immediately":
                # Read under the lock: a replica that did the first run meanwhile left a
                # state, and then this branch is not taken.
                logger.info("schedule %r: no state yet; running at once for %s", entry.name, now)
                return await self._run(ctx, entry, locker, None, now, now, first=True)
            first = entry.schedule.next_after(self._base(entry, state, now))
            if first > now:
                ahead = (first - now).total_seconds()
                if ahead > lead:
                    return first, 0.0  # another replica did it already
                # Prepared ahead: wait for the slot holding the lock. The state cannot change
                # meanwhile (every writer holds the lock), so the decision below stays valid;
                # the slot after is worked out before the wait, not on the way to the start.
                self._prepared(woke)
                following = entry.schedule.next_after(first)
                while first > now:
                    now, target = await self._target(ctx, first)
                    if first > now and await self._alarms.wait(ctx, first, _SLOT, target) is None:
                        return None, 0.0  # done: no new run starts; the slot stays due
                    now = await self._now(ctx)
                slot, missed = (
                    (first, False) if now < following else latest_due(entry.schedule, first, now)
                )
            else:  # due already; a preparation that ran past the slot asks for a longer lead
                self._prepared(woke)
                slot, missed = latest_due(entry.schedule, first, now)
            if missed and entry.catch_up == "skip":
                self._counters.slots_skipped += 1
                logger.info(
                    "schedule %r: skipping missed slots from %s to %s", entry.name, first, slot
                )
                await self._repository.save(
                    next_state(entry, self._first_seen.get(entry.name), state, now, slot=slot)
                )
                return entry.schedule.next_after(slot), 0.0
            if missed:
                logger.info(
                    "schedule %r: one run catches up the slots from %s to %s",
                    entry.name,
                    first,
                    slot,
                )
            return await self._run(ctx, entry, locker, state, slot, now)
        finally:
            with anyio.CancelScope(shield=True), anyio.move_on_after(_UNLOCK_TIMEOUT):
                await locker.unlock()

    async def _run(
        self,
        ctx: Context,
        entry: Entry,
        locker: Locker,
        state: ScheduleState | None,
        slot: datetime,
        started: datetime,
        *,
        first: bool = False,
    ) -> tuple[datetime | None, float]:
        lost = False

        async def watch_lock(stopper: Stopper) -> None:
            nonlocal lost
            await locker.wait_lost()
            lost = True
            logger.error(
                "schedule %r: lost the lock during the run for %s; stopping it", entry.name, slot
            )
            stopper.soft_stop(StopReason.LOCK_LOST)

        counters = self._counters
        counters.runs_started += 1
        if first:
            counters.first_runs += 1
        self._running.add(entry.name)
        token = current_slot.set(slot)
        child = ctx.child()
        error: Exception | None = None
        tracer = self._tracer
        span = None if tracer is None else tracer.run(entry.name, slot)
        try:
            if locker.can_be_lost:
                await run_stoppable(entry.job, child, watch_lock)
            else:  # nothing to watch: no watcher task per run
                await entry.job(child)
        except Exception as exc:
            error = exc
        except BaseException:
            if span is not None:
                span.end("cancelled", None)  # detached below, never ended twice
            raise
        finally:
            if span is not None:
                span.detach()
            current_slot.reset(token)
            self._running.discard(entry.name)
        if span is not None:
            span.end(
                "interrupted" if lost else "failed" if error is not None else "succeeded", error
            )
        # The other runs due at this slot start before this one's bookkeeping (a job that
        # never yields would otherwise hold each next start back by a state save). Not
        # shielded (a shielded checkpoint costs a cancel scope, a third of a start): a hard
        # stop landing here leaves the slot due, as one during the save below already did.
        await anyio.lowlevel.checkpoint()

        if lost:
            self._counters.runs_interrupted += 1
            logger.warning(
                "schedule %r: the run for %s was interrupted (%s); its slot stays due",
                entry.name,
                slot,
                child.reason.value if child.reason else "stopped",
            )
            return None, self._lock_retry
        finished = await self._now(ctx)
        if error is not None:
            self._counters.runs_failed += 1
            logger.error(
                "schedule %r: %s failed for slot %s; retrying in %gs",
                entry.name,
                job_name(entry.job),
                slot,
                entry.retry_delay,
                exc_info=error,
            )
        if first and error is not None:
            # No state: the name stays stateless, so the first run is due again (see notes).
            return None, entry.retry_delay
        # A failed run leaves its slot due (slot=None): it is retried after retry_delay.
        await self._repository.save(
            next_state(
                entry,
                slot if first else self._first_seen.get(entry.name),
                state,
                started,
                finished=finished,
                error=error,
                slot=None if error is not None else slot,
            )
        )
        if error is not None:
            return None, entry.retry_delay
        self._counters.runs_succeeded += 1
        return entry.schedule.next_after(slot), 0.0
