"""A store beside the broker: tasker_amqp with results, history, unique keys and workflows.

RabbitMQ moves tasks; the store (any backend that declares ``CLAIM_BY_ID`` and
``INSPECTION``: :class:`tasker.queue.SQLiteQueueBackend`, tasker_pg's and tasker_redis's)
is the source of truth for what they are and how they ended. Each step writes the store
first and the broker second, so the store never says less than the broker knows:

- **enqueue**: the store stores the tasks (deduplicating unique keys, holding held ones,
  recording the group), then each stored, unheld task is published, confirmed.
- **claim**: the broker's deliveries name tasks; the store leases those it still may
  (``claim_ids``: due, and nobody else holds them) and counts the attempt. A delivery the
  store refuses is a stale copy: of a finished or unknown task it is acknowledged and
  dropped; of a task not yet due, or held under a live lease by another worker (a copy
  redelivered after a connection dropped), it is published again for when that changes.
- **heartbeat**: the store's leases; a dropped channel loses no lease.
- **finish**: the store records the outcomes (with follow-ups and group callbacks), then
  the broker is settled: a retry published for its time, a hand-back republished, the
  next step of a chain and a group's callback published, the delivery acknowledged.
- **the sweep**: what the store holds as due (or whose lease expired) for longer than
  ``republish_after``, in queues whose broker queue has nothing waiting, had its
  publication lost between the two systems: it is published again.

So a failure between the two writes costs time, never a task: a publish lost after the
store's write is caught by the sweep, and a broker that acknowledged what the store did
not record hands the message back (it was never acknowledged) or the sweep publishes the
task again. Duplicated messages are harmless: the store leases a task once.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Coroutine, Sequence
from typing import TYPE_CHECKING, Any

import aiormq.exceptions

from tasker.abc import QueueBackend, QueueCapability
from tasker.queue import EnqueueResult, GroupSpec, NewTask, Outcome, OutcomeKind, TaskRecord
from tasker.queue import TaskState as S

from ._stats import broker_stats

if TYPE_CHECKING:
    from ._queue_backend import AmqpQueueBackend, _Delivery, _Link

__all__ = ["StoreSide", "store_capabilities"]

logger = logging.getLogger("tasker_amqp")

#: What the composition offers when its store does.
_FROM_STORE = frozenset(
    {
        QueueCapability.INSPECTION,
        QueueCapability.ADMINISTRATION,
        QueueCapability.UNIQUE_KEYS,
        QueueCapability.WORKFLOWS,
        QueueCapability.WORKERS,
        QueueCapability.TASK_IDS,
    }
)
_NEEDED = (QueueCapability.CLAIM_BY_ID, QueueCapability.INSPECTION)
#: At most this many overdue tasks are published again per sweep.
_SWEEP_LIMIT = 500
#: Held tasks looked at per dispatch (more are published by the sweep).
_DISPATCH_SCAN = 10_000
#: What a failed publish after the store's write can raise: it is left to the sweep.
_BROKER_ERRORS = (aiormq.exceptions.AMQPError, ConnectionError, OSError, asyncio.TimeoutError)


def store_capabilities(store: object) -> frozenset[QueueCapability]:
    """What tasker_amqp offers with ``store`` beside it, once ``store`` is shown fit.

    Raises:
        TypeError: ``store`` is not a queue backend.
        ValueError: it cannot claim tasks by id or look them up.
    """
    declared = getattr(store, "capabilities", None)
    if not isinstance(store, QueueBackend) or not isinstance(declared, frozenset):
        raise TypeError(
            f"store must be a tasker queue backend (SQLiteQueueBackend, tasker_pg's or"
            f" tasker_redis's), got {store!r}"
        )
    missing = [c for c in _NEEDED if c not in declared]
    if missing:
        raise ValueError(
            f"store {store!r} lacks {', '.join(c.value for c in missing)}: tasker_amqp needs"
            " a store that declares QueueCapability.CLAIM_BY_ID and INSPECTION"
            " (SQLiteQueueBackend, tasker_pg.PostgresQueueBackend, tasker_redis's backend)"
        )
    return declared & _FROM_STORE


class StoreSide:
    """The store's part of an :class:`~tasker_amqp.AmqpQueueBackend` built with one."""

    def __init__(self, owner: AmqpQueueBackend, store: Any, republish_after: float) -> None:
        self.owner = owner
        self.store = store
        self.republish_after = republish_after
        #: The callback of each claimed group member's group (from its message), by
        #: (worker, task id), kept past a dropped channel until the member's outcome is in.
        self._callbacks: dict[tuple[str, str], str] = {}
        self._next_sweep = 0.0  # monotonic

    # -- enqueue --------------------------------------------------------------------------

    async def enqueue(
        self, link: _Link, tasks: Sequence[NewTask], group: GroupSpec | None, now: float
    ) -> list[EnqueueResult]:
        owner = self.owner
        callback = None if group is None or group.callback is None else group.callback.id
        plans = []
        for task in tasks:  # routed before anything is stored: a bad key stores nothing
            meta = owner._meta(task, callback=callback if task.group_id is not None else None)
            plans.append((task, meta, await owner._target(link, task.queue, meta.headers)))
        results: list[EnqueueResult] = await self.store.enqueue(tasks, group=group, now=now)
        await self._publish(
            [
                owner._send(link, meta, task.payload, now, targets=targets)
                for (task, meta, targets), result in zip(plans, results, strict=True)
                if not result.deduplicated and not task.held
            ],
            "enqueued",
        )
        return results

    async def _publish(self, sends: Sequence[Coroutine[Any, Any, None]], what: str) -> None:
        """Publish after the store's write; a failure is logged and left to the sweep."""
        if not sends:
            return
        results = await asyncio.gather(*sends, return_exceptions=True)
        failed = [r for r in results if isinstance(r, BaseException)]
        for result in failed:
            if not isinstance(result, (*_BROKER_ERRORS, ValueError)):
                raise result
        if failed:
            logger.warning(
                "%d of %d tasks %s in the store could not be published to RabbitMQ (%s):"
                " they will be published again once overdue by republish_after (%gs)",
                len(failed),
                len(sends),
                what,
                failed[0],
                self.republish_after,
            )

    async def _publish_stored(self, link: _Link, task_ids: Sequence[str], now: float) -> None:
        """Publish those of ``task_ids`` that the store holds as queued."""
        records = await asyncio.gather(*(self.store.get(task_id) for task_id in task_ids))
        await self._publish(
            [
                self._send_task(link, record, now)
                for record in records
                if record is not None and record.state is S.QUEUED
            ],
            "made due",
        )

    # -- claim, heartbeat, finish ----------------------------------------------------------

    async def claim(
        self,
        link: _Link,
        queues: Sequence[str],
        limit: int,
        worker: str,
        lease: float,
        now: float,
        exclude: Sequence[str],
    ) -> list[TaskRecord]:
        owner = self.owner
        if time.monotonic() >= self._next_sweep:
            await self._sweep(link, queues, now)
        claimed: list[TaskRecord] = []
        tried = set(exclude)
        # Deliveries the store refuses (copies of finished tasks, expired last attempts it
        # makes dead) do not use up the limit: the claim goes on with the next ones.
        while len(claimed) < limit:
            taken, _, redelays = owner._pick(queues, limit - len(claimed), now, tried, alone=False)
            for delivery in redelays:
                await owner._redeliver(link, delivery, delivery.meta, now)
            if not taken:
                break
            tried.update(d.meta.id for d in taken)
            claimed.extend(await self._claim_ids(link, taken, worker, lease, now))
        return claimed

    async def _claim_ids(
        self, link: _Link, taken: list[_Delivery], worker: str, lease: float, now: float
    ) -> list[TaskRecord]:
        owner = self.owner
        try:
            records: list[TaskRecord] = await self.store.claim_ids(
                [d.meta.id for d in taken], worker=worker, lease=lease, now=now
            )
        except BaseException:
            owner._unpick(taken)
            raise
        leased = {record.id: record for record in records}
        claimed: list[TaskRecord] = []
        refused: list[_Delivery] = []
        for delivery in taken:
            record = leased.get(delivery.meta.id)
            if record is None:
                refused.append(delivery)
                continue
            owner._drop(delivery)  # a lease taken over: held by its old worker until now
            delivery.attempts = record.attempts
            delivery.worker = worker
            delivery.lease_until = now + lease
            owner._next_expiry = min(owner._next_expiry, delivery.lease_until)
            owner._held[worker, record.id] = delivery
            owner._running.add((delivery.queue, record.id))
            if delivery.meta.callback is not None:
                self._callbacks[worker, record.id] = delivery.meta.callback
            # The store keeps no headers: the message has them.
            claimed.append(dataclasses.replace(record, headers=delivery.meta.headers or None))
        if refused:
            await self._refused(link, refused, now)
        return claimed

    async def _refused(self, link: _Link, deliveries: Sequence[_Delivery], now: float) -> None:
        """Deliveries the store would not lease: stale copies, settled by what it holds."""
        owner = self.owner
        records = await asyncio.gather(*(self.store.get(d.meta.id) for d in deliveries))
        callbacks = []
        for delivery, record in zip(deliveries, records, strict=True):
            owner._drop(delivery)
            if record is None or record.state in (S.SUCCEEDED, S.DEAD, S.CANCELLED, S.HELD):
                # Finished (a copy of a task already run), dead (an expired lease's last
                # attempt: the claim just made it so), cancelled (through the store's own
                # queue: the broker's has no cancel), unknown (purged) or held again.
                if record is not None and record.state is S.DEAD and delivery.meta.callback:
                    callbacks.append(delivery.meta.callback)
                await _ack(delivery)
                continue
            # Not yet due, or leased to another worker (this copy came back when a
            # connection dropped): round again, for when that may have changed.
            if record.state is S.QUEUED:
                at = max(record.run_at, now)
            else:
                at = max(record.lease_until or now, now)
            await owner._redeliver(
                link, delivery, dataclasses.replace(delivery.meta, run_at=at), now
            )
        if callbacks:
            await self._publish_stored(link, callbacks, now)

    async def heartbeat(
        self, worker: str, ids: Sequence[str], lease: float, now: float
    ) -> set[str]:
        held: set[str] = await self.store.heartbeat(worker, ids, lease=lease, now=now)
        owner = self.owner
        for task_id in held:
            delivery = owner._held.get((worker, task_id))
            if delivery is not None:
                delivery.lease_until = now + lease
        return held

    async def finish(self, outcomes: Sequence[Outcome], now: float) -> None:
        # The store first: if it fails, nothing was settled and the worker reports again.
        await self.store.finish(outcomes, now=now)
        owner = self.owner
        try:
            link = await owner._connected()
        except _BROKER_ERRORS as exc:
            # The deliveries went back to their queues with the connection; the store says
            # what became of each when they come again. (The outage itself is logged once,
            # by the connection.)
            logger.debug("outcomes recorded in the store; RabbitMQ is unreachable (%s)", exc)
            return
        sends: list[Coroutine[Any, Any, None]] = []
        callbacks = []
        for outcome in outcomes:
            delivery = owner._held.get((outcome.worker, outcome.id))
            if delivery is not None and not owner._valid(delivery):
                owner._drop(delivery)
                delivery = None
            callback = self._callbacks.pop((outcome.worker, outcome.id), None)
            kind = outcome.kind
            if kind in (OutcomeKind.SUCCEEDED, OutcomeKind.DEAD) and callback is not None:
                callbacks.append(callback)
            if kind is OutcomeKind.SUCCEEDED:
                sends.extend(self._send_task(link, task, now) for task in outcome.follow_ups)
            if delivery is not None:
                sends.append(self._settle(link, outcome, delivery, now))
        await self._publish(sends, "settled")
        if callbacks:
            await self._publish_stored(link, callbacks, now)

    async def _send_task(self, link: _Link, task: NewTask | TaskRecord, now: float) -> None:
        """Publish a task the store holds (a new chain step, a callback, a released or
        requeued task) to the queues its routing key reaches."""
        owner = self.owner
        meta = owner._meta(task)
        targets = await owner._target(link, task.queue, meta.headers)
        await owner._send(link, meta, task.payload, now, targets=targets)

    async def _settle(self, link: _Link, outcome: Outcome, delivery: _Delivery, now: float) -> None:
        owner = self.owner
        kind = outcome.kind
        if kind is OutcomeKind.RETRY:
            run_at = outcome.retry_at if outcome.retry_at is not None else now
            await owner._redeliver(
                link, delivery, dataclasses.replace(delivery.meta, run_at=run_at), now
            )
        elif kind in (OutcomeKind.RELEASED, OutcomeKind.INTERRUPTED):
            await owner._redeliver(link, delivery, delivery.meta, now)
        else:
            owner._drop(delivery)
            await _ack(delivery)

    # -- the sweep -------------------------------------------------------------------------

    def sweep_in(self) -> float:
        """Seconds until the next sweep is due (what an idle worker's wait is capped by)."""
        return max(0.0, self._next_sweep - time.monotonic())

    async def _sweep(self, link: _Link, queues: Sequence[str], now: float) -> None:
        """Publish again what the store holds as overdue, in queues the broker has nothing
        waiting in: its publication was lost between the two systems."""
        self._next_sweep = time.monotonic() + self.republish_after / 3
        owner = self.owner
        try:
            overdue: list[TaskRecord] = await self.store.overdue(
                before=now - self.republish_after,
                queues=list(queues) if owner._auto else None,
                limit=_SWEEP_LIMIT,
            )
            if not overdue:
                return
            consumed = set(queues)
            reach = {r.id: owner._reaches(r.queue, owner._meta(r).headers) for r in overdue}
            names = sorted({q for hits in reach.values() for q in hits})
            stats = await broker_stats(owner._source, [owner.amqp_name(q) for q in names])
            empty = {s.name for s in stats if s.ready == 0}
            again = [
                r
                for r in overdue
                if reach[r.id]
                and consumed.intersection(reach[r.id])
                and all(owner.amqp_name(q) in empty for q in reach[r.id])
            ]
            if not again:
                return
            sends = []
            for record in again:
                meta = owner._meta(record)
                # A lease that expired unseen: published for now, the store takes it over.
                if record.state is S.RUNNING:
                    meta = dataclasses.replace(meta, run_at=now)
                sends.append(owner._send(link, meta, record.payload, now))
            await self._publish(sends, "overdue")
        except _BROKER_ERRORS as exc:
            logger.warning("the sweep for overdue tasks failed (%s); it runs again later", exc)
            return
        logger.warning(
            "published %d overdue tasks again: the store held them as due for over %gs with"
            " nothing waiting in their queues on RabbitMQ (a publication lost between the two)",
            len(again),
            self.republish_after,
        )

    # -- administration --------------------------------------------------------------------

    async def requeue(self, link: _Link, task_id: str, now: float) -> bool:
        done: bool = await self.store.requeue(task_id, now=now)
        if done:
            await self._publish_stored(link, [task_id], now)
        return done

    async def dispatch(
        self, link: _Link, queue: str, name: str | None, limit: int | None, now: float
    ) -> int:
        held: list[TaskRecord] = await self.store.tasks(
            state=S.HELD, queue=queue, limit=_DISPATCH_SCAN
        )
        count: int = await self.store.dispatch(queue, name=name, limit=limit, now=now)
        if count:
            await self._publish_stored(
                link, [r.id for r in held if name is None or r.name == name], now
            )
        return count


async def _ack(delivery: _Delivery) -> None:
    await delivery.acks.ack((delivery.tag,))
