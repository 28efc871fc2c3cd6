"""The NATS JetStream queue backend: a record per task, changed by compare-and-set.

Design notes:

- **One stream per namespace**, ``<namespace>_queue`` (subjects ``<namespace>.queue.>``,
  one message per subject kept, direct gets, file storage): the task records
  (``t.<id>``), the worker registry (``w.<id>``) and the clock. Each record is one
  message; its revision (stream sequence) is the version every change expects
  (``Nats-Expected-Last-Subject-Sequence``), so two workers can never both take a task, and
  a late report from a worker whose lease expired (the record moved on) changes nothing.
  History is a second stream, ``<namespace>_history``, capped at ``history_limit``
  messages, one per finished attempt, on the task's subject.
- **Why not AckWait and** ``nak(delay)``: a JetStream consumer delivers in append order and
  times leases and delays on the server's real clock. tasker's queue promises the claim
  order "highest priority, then oldest ``run_at``" across the queues a worker serves (a
  retried, released or dispatched task re-enters with an older ``run_at``), and compares
  leases and due times with the ``now`` it is given, on the backend's one clock (so tests
  move time, and a worker with a wrong clock neither steals leases nor starts tasks
  early). So the records are the truth, and each process keeps a view of them, indexed
  for claims (``_view``), fed by an ordered consumer.
- **Claims** take the view's candidates (expired leases first, then due tasks in claim
  order) and write them all at once, each expecting the revision the view holds; a write
  that finds another revision (another worker was first) is dropped and the record read
  again. **Finishing**, **heartbeats** and **administration** are the same: read the
  record (from the view), compute the change, write it expecting its revision.
- **Several writes that must happen together** (the tasks of one enqueue) are one atomic
  batch (NATS 2.12+); on 2.11 they are written one by one (see ``enqueue``).
- **Writes that need not happen together** (a claim's, a batch of outcomes and the next
  claim, their history entries) are each their own message, sent at once, their
  acknowledgements awaited together on the connection's one reply subscription
  (``_wire.Acks``). Not one atomic batch: the server takes about 9 ms to commit one on a
  file stream, against some 0.3 ms for ten separate acknowledged publishes.
- **Wake-ups**: the view's consumer sees every change; a waiting worker wakes when a task
  becomes queued or running, or at the view's next due time.
- **Time** is the server's: the time it stored a message on the ``clock`` subject, read
  every ``clock_resync`` seconds and advanced by the local monotonic clock in between.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import os
import random
import ssl
import uuid
from collections.abc import Awaitable, Callable, Iterator, Sequence
from datetime import timedelta
from typing import Any

import anyio
import nats.errors
import nats.js
import nats.js.api
import nats.js.errors

from tasker.backends import (
    LEASE_EXPIRED,
    dead_record,
    group_payload,
    record_from_new,
    replace_record,
    settled_record,
    to_seconds,
)
from tasker.queue import (
    EnqueueResult,
    GroupSpec,
    HistoryEntry,
    NewTask,
    Outcome,
    OutcomeKind,
    QueueCapability,
    TaskRecord,
    TaskState,
    UnstorableRecordError,
    WorkerInfo,
)

from ._codec import (
    decode_history,
    decode_new_task,
    decode_record,
    decode_worker,
    encode_history,
    encode_new_task,
    encode_record,
    encode_worker,
    record_mark,
)
from ._connection import (
    NatsSource,
    ServerClock,
    check_asyncio,
    check_namespace,
    decode_key,
    encode_key,
)
from ._errors import NatsSetupError
from ._shared import KV_DEL, KV_OP, is_wrong_last_sequence, source_of
from ._view import View
from ._wire import Acks, Message

__all__ = ["QUEUE_MIN_VERSION", "NatsQueueBackend"]

logger = logging.getLogger("tasker_nats")

_EXPECTED = "Nats-Expected-Last-Subject-Sequence"
#: The oldest NATS server the queue runs on: atomic batches came in 2.12.
QUEUE_MIN_VERSION = (2, 12, 0)
#: How long a deletion's marker is kept (real time): a view that was away longer than this
#: may keep a deleted task until it is rebuilt.
_TOMBSTONE_TTL = "24h"
#: Rounds of a claim that lost races before it returns what it has.
_CLAIM_ROUNDS = 4
#: Rounds of a finish or heartbeat whose write met a newer revision of the same owner's task.
_WRITE_ROUNDS = 4
#: Seconds a write may wait for its acknowledgement (nats-py's JetStream default).
_REQUEST_TIMEOUT = 5.0
#: Seconds the view may take to replay the stream before a call counts it as an outage.
_SYNC_TIMEOUT = 60.0
#: The most writes a purge has in flight at once.
_FAN_OUT = 64
#: Rounds of a finish whose write met a newer revision (its group's, as a rule) before it
#: raises, to be reported again.
_FINISH_ROUNDS = 64
#: The most messages of one atomic batch (the server's limit).
_BATCH_LIMIT = 1000
#: The states in which a task holds its unique key.
_LIVE = frozenset({TaskState.HELD, TaskState.QUEUED, TaskState.RUNNING})


class NatsQueueBackend:
    """:class:`tasker.queue.QueueBackend` on NATS JetStream (nats-py; asyncio only; see the
    module notes and the NATS guide).

    Declares every capability (:class:`tasker.abc.QueueCapability`) but
    ``TRANSACTIONAL_ENQUEUE`` (NATS has no transaction a caller's other writes could share),
    ``HEADERS``, ``CLAIM_BY_ID`` and, for now, ``CANCEL``. Needs NATS server 2.12 or newer
    with JetStream (atomic batches); nothing to migrate: the streams are created on first
    use.

    Args:
        url_or_source: ``nats://[user:password@]host[:port]`` (several comma-separated),
            ``tls://`` for TLS; or a :class:`NatsSource` to share a connection.
        namespace: names the streams (``<namespace>_queue``, ``<namespace>_history``) and
            their subjects: queues of two namespaces on one server never meet. 1 to 64
            letters, digits, ``_`` or ``-``.
        history_limit: the finished attempts the history stream keeps (the oldest go
            first); 0 keeps all until :meth:`purge`.
        replicas: the streams' replicas when tasker_nats creates them (3 in a cluster).
        clock_resync: seconds (or a ``timedelta``) between readings of the server's clock.
        credentials: a ``.creds`` file (with a URL).
        nkey_seed: a file holding a user's nkey seed (with a URL).
        token: a token (with a URL).
        tls: the TLS context (with a URL).

    Raises:
        ValueError: for a bad URL, namespace, limit or duration.
        TypeError: for an option of the wrong type.
    """

    capabilities: frozenset[QueueCapability] = frozenset(QueueCapability) - {
        QueueCapability.TRANSACTIONAL_ENQUEUE,
        QueueCapability.HEADERS,  # a broker's: they are not stored
        QueueCapability.CLAIM_BY_ID,  # a broker itself: JetStream delivers its own tasks
        QueueCapability.CANCEL,  # not yet: its records carry no cancel requests
        # Not yet: its claim would have to count a name's starts and a key's running
        # tasks atomically with the take (a script that reads every limited task).
        QueueCapability.RATE_LIMITS,
        QueueCapability.CONCURRENCY_KEYS,
        QueueCapability.PROGRESS,  # not yet: its records carry no progress
        # Not yet: the depth check would have to count a queue's waiting tasks in the
        # same atomic step as the insert.
        QueueCapability.BOUNDED_QUEUES,
    }

    def __init__(
        self,
        url_or_source: str | Sequence[str] | NatsSource,
        *,
        namespace: str = "tasker",
        history_limit: int = 100_000,
        replicas: int = 1,
        clock_resync: float | timedelta = 30.0,
        credentials: str | os.PathLike[str] | None = None,
        nkey_seed: str | os.PathLike[str] | None = None,
        token: str | None = None,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        self.namespace = check_namespace(namespace)
        if isinstance(history_limit, bool) or not isinstance(history_limit, int):
            raise TypeError(f"history_limit must be an int, got {history_limit!r}")
        if history_limit < 0:
            raise ValueError(f"history_limit must be >= 0, got {history_limit}")
        self.history_limit = history_limit
        if isinstance(replicas, bool) or not isinstance(replicas, int) or not 1 <= replicas <= 5:
            raise ValueError(f"replicas must be an int from 1 to 5, got {replicas!r}")
        self.replicas = replicas
        resync = to_seconds(clock_resync, "clock_resync")
        self._source = source_of(
            url_or_source,
            tls,
            "tasker-queue",
            credentials=credentials,
            nkey_seed=nkey_seed,
            token=token,
        )
        self.stream = f"{self.namespace}_queue"
        self.history_stream = f"{self.namespace}_history"
        self._prefix = f"{self.namespace}.queue."
        self._history_prefix = f"{self.namespace}.history."
        self._clock = ServerClock(self.stream, self._prefix + "clock", resync=resync)
        self._lock: asyncio.Lock | None = None
        self._state: _Connected | None = None

    def __repr__(self) -> str:
        return f"NatsQueueBackend({self._source.url!r}, namespace={self.namespace!r})"

    # -- the connection, the streams and the view ----------------------------------------

    async def _connected(self) -> _Connected:
        check_asyncio()
        js = await self._source.jetstream()
        self._source.raise_if_denied()
        state = self._state
        if state is not None and state.js is js:
            if not state.synced.is_set():
                await _synced(state)
            return state
        loop = asyncio.get_running_loop()
        if self._lock is None or self._lock_loop is not loop:
            self._lock = asyncio.Lock()
            self._lock_loop = loop
        async with self._lock:
            state = self._state
            if state is None or state.js is not js:
                if state is not None:
                    await state.close()
                state = self._state = await self._connect(js)
        await _synced(state)
        return state

    _lock_loop: asyncio.AbstractEventLoop | None = None

    async def _connect(self, js: nats.js.JetStreamContext) -> _Connected:
        version = self._source.server_version or (0, 0, 0)
        if version < QUEUE_MIN_VERSION:
            raise NatsSetupError(
                f"the NATS server at {self._source.url} is {'.'.join(map(str, version))}; the"
                f" queue needs {'.'.join(map(str, QUEUE_MIN_VERSION))} or newer (atomic batches)",
                "upgrade the server (the Scheduler's backends need only 2.11)",
            )
        await self._ensure_stream(
            nats.js.api.StreamConfig(
                name=self.stream,
                subjects=[self._prefix + ">"],
                max_msgs_per_subject=1,
                allow_direct=True,
                allow_msg_ttl=True,
                allow_atomic=True,
                discard=nats.js.api.DiscardPolicy.OLD,
                num_replicas=self.replicas,
                storage=nats.js.api.StorageType.FILE,
            ),
            js,
        )
        await self._ensure_stream(
            nats.js.api.StreamConfig(
                name=self.history_stream,
                subjects=[self._history_prefix + ">"],
                max_msgs=self.history_limit or -1,
                allow_direct=True,
                discard=nats.js.api.DiscardPolicy.OLD,
                num_replicas=self.replicas,
                storage=nats.js.api.StorageType.FILE,
            ),
            js,
        )
        client = await self._source.client()
        state = _Connected(js, client)
        try:
            await state.acks.start()
        except BaseException:
            await state.close()
            raise
        view = state.view
        inflight = state.inflight
        task_prefix = self._prefix + "t."
        skip = len(task_prefix)

        async def on_message(msg: Any) -> None:
            sequence, pending = _ack_position(msg)
            task_id = decode_key(msg.subject[skip:])
            held = view.records.get(task_id)
            data = msg.data
            if held is not None and held[0] >= sequence:
                pass  # the echo of this process's own write (or older): nothing to decode
            elif not data or (msg.headers or {}).get(KV_OP) == KV_DEL:
                view.apply(task_id, sequence, None)
            else:
                # The echo of an own write whose acknowledgement has not been read yet:
                # the same bytes are the same record, which the write still holds.
                mine = inflight.get(task_id)
                view.apply(
                    task_id,
                    sequence,
                    mine[1] if mine is not None and mine[0] == data else decode_record(data),
                )
            view.passed(sequence)
            state.processed += 1
            if pending == 0:
                state.synced.set()

        state.subscription = await js.subscribe(
            task_prefix + ">",
            stream=self.stream,
            cb=on_message,
            ordered_consumer=True,
            idle_heartbeat=1.0,
            flow_control=True,
            deliver_policy=nats.js.api.DeliverPolicy.LAST_PER_SUBJECT,
        )
        try:
            info = await state.subscription.consumer_info()
        except BaseException:
            await state.close()  # no second consumer replaying the stream on the next try
            raise
        if info.num_pending == 0 and state.processed >= info.delivered.consumer_seq:
            state.synced.set()  # everything to replay was taken in (or there was nothing)
        state.forget_hook = self._source.on_reconnect(state.resume_consumer)
        return state

    async def _ensure_stream(
        self, config: nats.js.api.StreamConfig, js: nats.js.JetStreamContext
    ) -> nats.js.api.StreamConfig:
        """The configuration of the stream ``config`` names (made with it if missing)."""
        assert config.name is not None
        try:
            info = await js.stream_info(config.name)
        except nats.js.errors.NotFoundError:
            info = await js.add_stream(config)
        return info.config

    def _subject(self, task_id: str) -> str:
        return self._prefix + "t." + encode_key(task_id)

    def _task_write(
        self, record: TaskRecord, expected: int, *, new: bool = False, mark: str | None = None
    ) -> _Write:
        return _Write(
            self._subject(record.id),
            encode_record(record, mark=mark),
            expected,
            task_id=record.id,
            record=record,
            msg_id=f"t:{record.id}" if new else None,
        )

    def _tombstone(self, subject: str, expected: int, task_id: str | None = None) -> _Write:
        return _Write(subject, b"", expected, task_id=task_id, delete=True)

    async def _commit(self, state: _Connected, writes: list[_Write]) -> bool:
        """Make ``writes`` together: one publish, or one atomic batch for several (all or
        none). False if a subject was not at its expected revision (nothing was written);
        the view learns what was."""
        return await self._store(state, writes) is not None

    async def _store(self, state: _Connected, writes: list[_Write]) -> list[int] | None:
        """:meth:`_commit`, returning the sequences ``writes`` were stored at (None: a
        subject was not at its expected revision, nothing was written)."""
        if not writes:
            return []
        if len(writes) > _BATCH_LIMIT:
            raise UnstorableRecordError(
                f"{len(writes)} changes in one step; NATS takes at most {_BATCH_LIMIT} in one"
                " atomic batch"
            )
        with _inflight(state, writes):
            sequences = await self._send(state, writes)
        if sequences is None:
            return None
        apply = state.view.apply
        for write, sequence in zip(writes, sequences, strict=True):
            if write.task_id is not None:
                apply(write.task_id, sequence, None if write.delete else write.record)
        return sequences

    async def _send(self, state: _Connected, writes: list[_Write]) -> list[int] | None:
        if len(writes) == 1:
            write = writes[0]
            try:
                sequence = await _publish(state, write.subject, write.data, write.headers())
            except nats.js.errors.APIError as exc:
                if is_wrong_last_sequence(exc):
                    return None
                raise
            except nats.errors.MaxPayloadError as exc:
                raise UnstorableRecordError(
                    f"the record exceeds the server's max payload ({exc})"
                ) from None
            return [sequence]
        answer = await _atomic(state, [(w.subject, w.data, w.headers()) for w in writes])
        error = answer.get("error")
        if error is not None:
            # A wrong last sequence, or (checked first in a batch) a message id in the
            # duplicate window: a record created already.
            if error.get("err_code") in (10071, 10164, 10201):
                return None
            if error.get("err_code") == 10054:  # message too large
                raise UnstorableRecordError(error.get("description", "too large"))
            raise nats.js.errors.APIError.from_error(error)
        last = int(answer["seq"])
        return list(range(last - len(writes) + 1, last + 1))

    async def _get_json(self, state: _Connected, subject: str) -> tuple[int, Any]:
        """The revision and JSON of ``subject``'s message, or (0, None) if it has none (a
        deletion's marker counts as none, at its revision)."""
        try:
            msg = await state.js.get_msg(self.stream, subject=subject)  # the leader's
        except nats.js.errors.NotFoundError:
            return 0, None
        assert msg.seq is not None
        if (msg.headers or {}).get(KV_OP) == KV_DEL or not msg.data:
            return msg.seq, None
        return msg.seq, json.loads(msg.data)

    def _unique_subject(self, key: str) -> str:
        return self._prefix + "u." + encode_key(key)

    def _group_subject(self, group_id: str) -> str:
        return self._prefix + "g." + encode_key(group_id)

    async def _group_writes(
        self, state: _Connected, member: TaskRecord, now: float, writes: list[_Write]
    ) -> None:
        """Add to ``writes`` what ``member`` settling does to its group: one more finished
        member, or, with the last, the group's end and its callback (exactly once: the
        group's revision is expected)."""
        if member.group_id is None or member.state not in (TaskState.SUCCEEDED, TaskState.DEAD):
            return
        subject = self._group_subject(member.group_id)
        revision, group = await self._get_json(state, subject)
        if group is None:
            return  # closed already (a member requeued after that changes nothing)
        finished = set(group["finished"]) | {member.id}
        members: list[str] = group["members"]
        if not finished.issuperset(members):
            group["finished"] = sorted(finished)
            writes.append(_Write(subject, _json(group), revision))
            return
        writes.append(self._tombstone(subject, revision))
        if group["callback"] is None:
            return
        others = await asyncio.gather(*(self._read(state, m) for m in members if m != member.id))
        records = {found[1].id: found[1] for found in others if found is not None}
        records[member.id] = member
        ordered = sorted(records.values(), key=lambda r: r.group_index or 0)
        payload = group_payload(
            [r.result if r.state is TaskState.SUCCEEDED else None for r in ordered]
        )
        callback = decode_new_task(group["callback"])
        callback = dataclasses.replace(callback, payload=payload, run_at=now)
        writes.append(self._task_write(record_from_new(callback), 0, new=True))

    async def _settle(
        self,
        state: _Connected,
        revision: int,
        record: TaskRecord,
        now: float,
        follow_ups: Sequence[NewTask] = (),
        mark: str | None = None,
    ) -> bool:
        """Write ``record`` (settled) over ``revision``, with its follow-ups and what it
        does to its group, all at once."""
        writes = [self._task_write(record, revision, mark=mark)]
        writes += [self._task_write(record_from_new(f), 0, new=True) for f in follow_ups]
        group_id = record.group_id
        if group_id is None or record.state not in (TaskState.SUCCEEDED, TaskState.DEAD):
            return await self._commit(state, writes)
        # Members of one group settling together all change the group's record: one at a
        # time in this process (other processes' members meet at its revision).
        locks = state.group_locks
        if len(locks) > 1024:  # forget the locks of groups nobody settles now
            for key in [k for k, held in locks.items() if not held.locked()]:
                del locks[key]
        async with locks.setdefault(group_id, asyncio.Lock()):
            await self._group_writes(state, record, now, writes)
            return await self._commit(state, writes)

    async def _read(self, state: _Connected, task_id: str) -> tuple[int, TaskRecord] | None:
        """The stored record of ``task_id`` and its revision (None: there is none); the view
        learns it too."""
        revision, record = await self._slot(state, task_id)
        return None if record is None else (revision, record)

    async def _slot(self, state: _Connected, task_id: str) -> tuple[int, TaskRecord | None]:
        """The revision of ``task_id``'s subject (0: it has no message) and its record (None
        also for a deletion's marker, which a new record replaces at its revision); the
        view learns it too."""
        try:
            msg = await state.js.get_msg(self.stream, subject=self._subject(task_id))
        except nats.js.errors.NotFoundError:
            held = state.view.records.get(task_id)
            if held is not None:
                state.view.apply(task_id, held[0] + 1, None)  # gone from the stream
            return 0, None
        assert msg.seq is not None
        if (msg.headers or {}).get(KV_OP) == KV_DEL or not msg.data:
            state.view.apply(task_id, msg.seq, None)
            return msg.seq, None
        record = decode_record(msg.data)
        state.view.apply(task_id, msg.seq, record)
        return msg.seq, record

    async def _current(self, state: _Connected, task_id: str) -> tuple[int, TaskRecord] | None:
        held = state.view.records.get(task_id)
        return held if held is not None else await self._read(state, task_id)

    # -- the protocol ----------------------------------------------------------------------

    async def time(self) -> float:
        """The server's clock, in POSIX seconds (see :class:`ServerClock`)."""
        check_asyncio()
        js = await self._source.jetstream()
        self._source.raise_if_denied()
        state = self._state
        if state is None or state.js is not js:
            state = await self._connected()
        return await self._clock.read(js)

    async def enqueue(
        self, tasks: Sequence[NewTask], *, group: GroupSpec | None = None, now: float
    ) -> list[EnqueueResult]:
        """Store ``tasks`` (and their ``group``) at once: one atomic batch (all stored or
        none), up to 1,000 records a batch (a larger plain enqueue is stored in batches of
        1,000, each all or none; with unique keys or a group, more is refused). A task
        whose id names a stored task (in any state), or whose unique key a live task holds,
        or a finished one within its window, is not stored: its result names that task,
        which is left as it is.

        An answer lost to a dropped connection is waited for again: the enqueue is sent
        again (twice at most), and a resend stores nothing twice (``Nats-Msg-Id``, and a
        record is created only where its subject has none), so a caller never has to guess
        whether its tasks were stored and enqueue them under new ids. A resend answers as
        the first send did: a stored record that is this very task (its created_at, name
        and payload) was stored by it, not deduplicated.
        """
        for attempt in range(3):
            try:
                return await self._enqueue(tasks, group, now)
            except (nats.errors.TimeoutError, nats.errors.ConnectionClosedError) as exc:
                if attempt == 2:
                    raise
                logger.info("enqueue: no answer (%s); sending it again", type(exc).__name__)
        raise AssertionError("unreachable")  # pragma: no cover

    async def _enqueue(
        self, tasks: Sequence[NewTask], group: GroupSpec | None, now: float
    ) -> list[EnqueueResult]:
        state = await self._connected()
        if group is not None or any(task.unique_key is not None for task in tasks):
            return await self._enqueue_checked(state, tasks, group, now)
        # Plain tasks: created where their subjects have no message, no read first.
        results: list[EnqueueResult] = []
        for start in range(0, len(tasks), _BATCH_LIMIT):
            chunk = tasks[start : start + _BATCH_LIMIT]
            writes = [self._task_write(record_from_new(task), 0, new=True) for task in chunk]
            if await self._commit(state, writes):
                results += [EnqueueResult(id=task.id) for task in chunk]
            else:  # an id is stored: a resend, or an id enqueued again (or purged)
                results += await self._enqueue_checked(state, chunk, None, now)
        return results

    async def _enqueue_checked(
        self, state: _Connected, tasks: Sequence[NewTask], group: GroupSpec | None, now: float
    ) -> list[EnqueueResult]:
        """Enqueue ``tasks`` after reading what their ids and unique keys name, at once."""
        for _ in range(_WRITE_ROUNDS * 4):
            writes, results = await self._enqueue_writes(state, tasks, group, now)
            if await self._commit(state, writes):
                return results
        raise RuntimeError("enqueue: lost too many races for its ids or unique keys; try again")

    async def _enqueue_writes(
        self, state: _Connected, tasks: Sequence[NewTask], group: GroupSpec | None, now: float
    ) -> tuple[list[_Write], list[EnqueueResult]]:
        writes: list[_Write] = []
        results: list[EnqueueResult] = []
        taken: dict[str, str] = {}  # unique keys this enqueue takes -> the task taking them
        stored: list[str] = []
        written: set[str] = set()  # the ids this enqueue creates
        slots = await asyncio.gather(*(self._slot(state, task.id) for task in tasks))
        for task, (revision, found) in zip(tasks, slots, strict=True):
            if found is not None and _same_task(found, task):
                results.append(EnqueueResult(id=task.id))  # a resend: stored already
                stored.append(task.id)
                continue
            if found is not None or task.id in written:  # its id names another task
                results.append(EnqueueResult(id=task.id, deduplicated=True))
                continue
            key = task.unique_key
            if key is not None:
                if key in taken:
                    results.append(EnqueueResult(id=taken[key], deduplicated=True))
                    continue
                subject = self._unique_subject(key)
                key_revision, holder = await self._get_json(state, subject)
                if holder is not None and holder["id"] != task.id:
                    live = await self._read(state, holder["id"])
                    until = holder["until"]
                    if live is not None and (
                        live[1].state in _LIVE or (until is not None and now < until)
                    ):
                        results.append(EnqueueResult(id=holder["id"], deduplicated=True))
                        continue
                writes.append(
                    _Write(
                        subject, _json({"id": task.id, "until": task.unique_until}), key_revision
                    )
                )
                taken[key] = task.id
            # Over a deletion's marker (a purged task), at its revision and without a
            # message id: the purged task's id may still be in the duplicate window.
            writes.append(self._task_write(record_from_new(task), revision, new=revision == 0))
            results.append(EnqueueResult(id=task.id))
            stored.append(task.id)
            written.add(task.id)
        if group is not None:
            subject = self._group_subject(group.id)
            revision, existing = await self._get_json(state, subject)
            # A deletion marker: the group was stored and has closed since (a resend).
            if existing is None and revision == 0:
                data = {
                    "members": stored,
                    "finished": [],
                    "callback": None if group.callback is None else encode_new_task(group.callback),
                }
                writes.append(_Write(subject, _json(data), revision))
        return writes, results

    async def claim(
        self,
        queues: Sequence[str],
        limit: int,
        *,
        worker: str,
        lease: float,
        now: float,
        exclude: Sequence[str] = (),
    ) -> list[TaskRecord]:
        """Lease up to ``limit`` due tasks of ``queues``: expired leases first (a task whose
        last attempt's lease expired dies instead), then by priority and ``run_at``."""
        state = await self._connected()
        return await self._claim(state, queues, limit, worker, lease, now, frozenset(exclude))

    async def _claim(
        self,
        state: _Connected,
        queues: Sequence[str],
        limit: int,
        worker: str,
        lease: float,
        now: float,
        exclude: frozenset[str],
    ) -> list[TaskRecord]:
        view = state.view
        expired_claims: list[TaskRecord] = []
        due_claims: list[TaskRecord] = []
        skip = set(exclude)
        for _ in range(_CLAIM_ROUNDS):
            wanted = limit - len(expired_claims) - len(due_claims)
            if wanted <= 0:
                break
            frozen = frozenset(skip)
            expired = view.expired(queues, now, frozen)
            dying = [(rev, r) for rev, r in expired if r.attempts >= r.max_attempts]
            reclaim = [(rev, r) for rev, r in expired if r.attempts < r.max_attempts][:wanted]
            due = view.due(queues, now, frozen | {r.id for _, r in reclaim}, wanted - len(reclaim))
            if not (dying or reclaim or due):
                break
            leased_until = now + lease
            settles = [
                self._settle(state, rev, dead_record(r, LEASE_EXPIRED, None, now), now)
                for rev, r in dying
            ]
            planned = [
                (
                    kind,
                    replace_record(
                        r,
                        state=TaskState.RUNNING,
                        attempts=r.attempts + 1,
                        lease_owner=worker,
                        lease_until=leased_until,
                    ),
                    rev,
                )
                for kind, group in (("expired", reclaim), ("due", due))
                for rev, r in group
            ]
            claims = [self._task_write(record, rev) for _, record, rev in planned]
            results = await self._claim_writes(state, settles, claims)
            failures = [r for r in results if isinstance(r, BaseException)]
            if failures:
                # Keep what was leased (those tasks are this worker's now); without any,
                # the outage is the caller's to retry.
                if not any(r is True for r in results) and not expired_claims + due_claims:
                    raise failures[0]
                logger.warning(
                    "claim: %d of %d writes failed (%s); keeping the rest",
                    len(failures),
                    len(results),
                    failures[0],
                )
                results = [r if not isinstance(r, BaseException) else False for r in results]
            lost = [r.id for (_, r), done in zip(dying, results, strict=False) if not done]
            for (kind, record, _), done in zip(planned, results[len(dying) :], strict=True):
                skip.add(record.id)
                if not done:
                    lost.append(record.id)
                elif kind == "expired":
                    expired_claims.append(record)
                else:
                    due_claims.append(record)
            if not lost:
                continue
            # Another worker wrote these first: learn what they are now, then look again.
            await asyncio.gather(*(self._read(state, task_id) for task_id in lost))
            for task_id in lost:
                skip.discard(task_id)
        due_claims.sort(key=lambda r: (-r.priority, r.run_at, r.created_at, r.id))
        return expired_claims + due_claims

    async def _claim_writes(
        self, state: _Connected, settles: Sequence[Awaitable[bool]], claims: list[_Write]
    ) -> list[bool | BaseException]:
        """Run ``settles`` (dying tasks) and write ``claims``, each on its own but all sent
        together (one acknowledgement each, awaited at once); whether each succeeded (or
        its error), in that order."""
        if not settles:  # the usual case: no task of its own for one coroutine
            claimed = await self._commit_each(state, claims)
            return [r if isinstance(r, BaseException) else r is not None for r in claimed]
        settled, claimed = await asyncio.gather(
            asyncio.gather(*settles, return_exceptions=True), self._commit_each(state, claims)
        )
        return [
            *settled,
            *(r if isinstance(r, BaseException) else r is not None for r in claimed),
        ]

    async def _commit_each(
        self, state: _Connected, writes: list[_Write]
    ) -> list[int | BaseException | None]:
        """Make each of ``writes`` (one message each) on its own, all sent at once: for
        each, the sequence it was stored at, None if its subject was not at the expected
        revision, or the error that refused it; an error of the whole (no answer in
        time) is each one's."""
        if not writes:
            return []
        if len(writes) == 1:
            try:
                stored = await self._store(state, writes)
            except Exception as exc:
                return [exc]
            return [None if stored is None else stored[0]]
        try:
            with _inflight(state, writes):
                replies = await _request_many(
                    state, [(w.subject, w.data, w.headers()) for w in writes]
                )
        except Exception as exc:
            return [exc] * len(writes)
        results: list[int | BaseException | None] = []
        apply = state.view.apply
        for write, reply in zip(writes, replies, strict=True):
            try:
                sequence = _sequence(reply)
            except nats.js.errors.APIError as exc:
                results.append(None if is_wrong_last_sequence(exc) else exc)
                continue
            if write.task_id is not None:
                apply(write.task_id, sequence, None if write.delete else write.record)
            results.append(sequence)
        return results

    async def heartbeat(
        self, worker: str, ids: Sequence[str], *, lease: float, now: float
    ) -> set[str]:
        """Extend ``worker``'s leases on ``ids``; return the ids it still holds."""
        state = await self._connected()
        until = now + lease

        async def extend(task_id: str) -> bool:
            for _ in range(_WRITE_ROUNDS):
                current = await self._current(state, task_id)
                if current is None:
                    return False
                revision, record = current
                if record.state is not TaskState.RUNNING or record.lease_owner != worker:
                    return False
                extended = self._task_write(replace_record(record, lease_until=until), revision)
                if await self._commit(state, [extended]):
                    return True
                await self._read(state, task_id)
            return False

        held = await asyncio.gather(*(extend(task_id) for task_id in ids))
        return {task_id for task_id, ok in zip(ids, held, strict=True) if ok}

    async def finish(self, outcomes: Sequence[Outcome], *, now: float) -> None:
        """Record how claimed tasks ended, with their history; an outcome for a task the
        worker no longer holds is ignored. Each outcome is recorded all or none (with its
        follow-ups and its group's change); a cancelled finish may have recorded some of
        them, and a report sent again records nothing twice."""
        state = await self._connected()
        await self._finish_all(state, outcomes, now)

    def _plan_finish(
        self, state: _Connected, outcomes: Sequence[Outcome]
    ) -> tuple[list[tuple[Outcome, TaskRecord]], list[_Write], list[Outcome]]:
        """Split ``outcomes``: those whose change is one message (a task the view shows held
        by its worker, in no group, without follow-ups), with their records and writes,
        and the others (a follow-up is created atomically with its outcome, a group's
        change is serialised: :meth:`_finish` does those)."""
        view = state.view
        together: list[tuple[Outcome, TaskRecord]] = []
        writes: list[_Write] = []
        alone: list[Outcome] = []
        seen: set[str] = set()
        for outcome in outcomes:
            current = view.records.get(outcome.id)
            if (
                current is None
                or outcome.id in seen
                or current[1].state is not TaskState.RUNNING
                or current[1].lease_owner != outcome.worker
                or current[1].group_id is not None
                or (outcome.follow_ups and outcome.kind is OutcomeKind.SUCCEEDED)
            ):
                alone.append(outcome)
                continue
            seen.add(outcome.id)
            revision, record = current
            together.append((outcome, record))
            writes.append(
                self._task_write(settled_record(record, outcome), revision, mark=_mark(outcome))
            )
        return together, writes, alone

    async def _finish_all(self, state: _Connected, outcomes: Sequence[Outcome], now: float) -> None:
        """Record ``outcomes``: those of one message each (:meth:`_plan_finish`) sent
        together, each its own write, then their history entries together; the others,
        and any whose write met a newer revision, one by one through :meth:`_finish`."""
        together, writes, alone = self._plan_finish(state, outcomes)
        if len(together) < 2:
            alone, together = list(outcomes), []

        async def send_together() -> None:
            results = await self._commit_each(state, writes)
            await self._settled(state, together, results, now)

        if not alone:
            await send_together()
            return
        await asyncio.gather(
            *(self._finish(state, outcome, now) for outcome in alone),
            *([send_together()] if together else []),
        )

    async def _settled(
        self,
        state: _Connected,
        together: list[tuple[Outcome, TaskRecord]],
        results: Sequence[int | BaseException | None],
        now: float,
    ) -> None:
        """After the writes of ``together`` (``results``, as :meth:`_commit_each` gives
        them): the history entries of those stored, and :meth:`_finish` of those whose
        record had moved on; then the first error, if a write had one."""
        entries: list[tuple[TaskRecord, Outcome, int]] = []
        again: list[Outcome] = []
        errors: list[BaseException] = []
        for (outcome, record), stored in zip(together, results, strict=True):
            if isinstance(stored, BaseException):
                errors.append(stored)
            elif stored is None:
                again.append(outcome)  # a record moved on meanwhile: on its own, to see how
            elif outcome.kind is not OutcomeKind.RELEASED:
                entries.append((record, outcome, stored))
        if again:
            await asyncio.gather(
                self._record_histories(state, entries),
                *(self._finish(state, outcome, now) for outcome in again),
            )
        else:  # the usual case: no task of its own for one coroutine
            await self._record_histories(state, entries)
        if errors:
            raise errors[0]

    async def _finish(self, state: _Connected, outcome: Outcome, now: float) -> None:
        mark = _mark(outcome)
        for round_ in range(_FINISH_ROUNDS):
            if round_:
                # Another write came first (another member of the task's group, settled by
                # another process): look again after a moment, a little apart from it.
                await asyncio.sleep(random.uniform(0, 0.002 * min(round_, 10)))
            current = await self._current(state, outcome.id)
            if current is None:
                return
            revision, record = current
            if record.state is not TaskState.RUNNING or record.lease_owner != outcome.worker:
                # The lease was lost (a newer attempt owns the task), or this very outcome
                # was stored and its answer lost: then its history entry may be missing.
                await self._history_of_a_resend(state, outcome, mark)
                return
            settled = settled_record(record, outcome)
            follow_ups = outcome.follow_ups if outcome.kind is OutcomeKind.SUCCEEDED else ()
            if not await self._settle(state, revision, settled, now, follow_ups, mark):
                await self._read(state, outcome.id)
                continue
            if outcome.kind is not OutcomeKind.RELEASED:
                written = state.view.records[outcome.id][0]
                await self._record_history(state, record, outcome, written)
            return
        raise RuntimeError(
            f"finish of task {outcome.id!r}: {_FINISH_ROUNDS} writes in a row met a newer"
            " revision; the outcome is reported again"
        )

    async def _history_of_a_resend(self, state: _Connected, outcome: Outcome, mark: str) -> None:
        if outcome.kind is OutcomeKind.RELEASED:
            return
        try:
            msg = await state.js.get_msg(self.stream, subject=self._subject(outcome.id))
        except nats.js.errors.NotFoundError:
            return
        if not msg.data or msg.seq is None or record_mark(msg.data) != mark:
            return
        settled = decode_record(msg.data)
        # The entry's attempt: the one that ran (an interrupted one was handed back).
        attempt = settled.attempts + (1 if outcome.kind is OutcomeKind.INTERRUPTED else 0)
        await self._record_history(
            state, replace_record(settled, attempts=attempt), outcome, msg.seq
        )

    async def _record_history(
        self, state: _Connected, record: TaskRecord, outcome: Outcome, revision: int
    ) -> None:
        await self._record_histories(state, [(record, outcome, revision)])

    def _history_message(self, record: TaskRecord, outcome: Outcome, revision: int) -> Message:
        entry = HistoryEntry(
            task_id=record.id,
            name=record.name,
            queue=record.queue,
            worker=outcome.worker,
            attempt=record.attempts,
            started_at=outcome.started_at,
            finished_at=outcome.finished_at,
            outcome=outcome.kind.value,
            error=outcome.error,
        )
        return (
            self._history_prefix + encode_key(record.id),
            encode_history(entry),
            # The revision the outcome was stored at: unique per change, the same on a resend.
            {"Nats-Msg-Id": f"h:{record.id}:{revision}"},
        )

    async def _record_histories(
        self, state: _Connected, entries: Sequence[tuple[TaskRecord, Outcome, int]]
    ) -> None:
        """Append the history entries of settled attempts (record as claimed, outcome,
        revision the outcome was stored at), one acknowledged publish each, sent together
        (an atomic batch takes the server longer than separate publishes). A resend stores
        nothing twice (``Nats-Msg-Id``)."""
        if entries:
            await _publish_many(state, [self._history_message(*entry) for entry in entries])

    async def finish_and_claim(
        self,
        outcomes: Sequence[Outcome],
        *,
        now: float,
        queues: Sequence[str],
        limit: int,
        worker: str,
        lease: float,
        exclude: Sequence[str] = (),
    ) -> list[TaskRecord]:
        """:meth:`finish`, then :meth:`claim` (never of ``outcomes`` or ``exclude``).

        The outcomes' writes and the claim's go out together (one wait for all their
        acknowledgements, then one for the history entries), each its own write as
        :meth:`finish` and :meth:`claim` make them. Should the outcomes' part fail after
        the claims were stored, the claimed tasks are handed back (queued again, the
        attempt not counted) before the error is raised, so they need not wait for their
        leases to expire.
        """
        state = await self._connected()
        skip = frozenset(exclude).union(o.id for o in outcomes)
        view = state.view
        expired = view.expired(queues, now, skip) if limit > 0 else []
        if limit <= 0 or any(r.attempts >= r.max_attempts for _, r in expired):
            # A lease that expired on the last attempt: the claim settles it (its group
            # and history included), which :meth:`_claim` does.
            await self._finish_all(state, outcomes, now)
            return await self._claim(state, queues, limit, worker, lease, now, skip)
        together, writes, alone = self._plan_finish(state, outcomes)
        reclaim = expired[:limit]
        due = view.due(queues, now, skip | {r.id for _, r in reclaim}, limit - len(reclaim))
        leased_until = now + lease
        planned = [
            (
                index < len(reclaim),
                original,
                replace_record(
                    original,
                    state=TaskState.RUNNING,
                    attempts=original.attempts + 1,
                    lease_owner=worker,
                    lease_until=leased_until,
                ),
                revision,
            )
            for index, (revision, original) in enumerate(reclaim + due)
        ]
        claims = [self._task_write(record, revision) for _, _, record, revision in planned]
        results = await self._commit_each(state, writes + claims)
        expired_claims: list[TaskRecord] = []
        due_claims: list[TaskRecord] = []
        taken: list[tuple[TaskRecord, int]] = []  # the original record, its claim's revision
        lost: list[str] = []
        failures: list[BaseException] = []
        for (was_expired, original, record, _), stored in zip(
            planned, results[len(writes) :], strict=True
        ):
            if isinstance(stored, BaseException):
                failures.append(stored)
            elif stored is None:
                lost.append(record.id)
            else:
                (expired_claims if was_expired else due_claims).append(record)
                taken.append((original, stored))
        if failures:
            logger.warning(
                "claim: %d of %d writes failed (%s); keeping the rest",
                len(failures),
                len(planned),
                failures[0],
            )
        try:
            if alone:
                await asyncio.gather(
                    self._settled(state, together, results[: len(writes)], now),
                    *(self._finish(state, outcome, now) for outcome in alone),
                )
            else:
                await self._settled(state, together, results[: len(writes)], now)
        except Exception:
            await self._hand_back(state, taken)
            raise
        due_claims.sort(key=lambda r: (-r.priority, r.run_at, r.created_at, r.id))
        claimed = expired_claims + due_claims
        if lost and len(claimed) < limit:
            # Another worker wrote these first: learn what they are now, then look again.
            await asyncio.gather(*(self._read(state, task_id) for task_id in lost))
            claimed += await self._claim(
                state,
                queues,
                limit - len(claimed),
                worker,
                lease,
                now,
                skip.union(r.id for r in claimed),
            )
        return claimed

    async def _hand_back(self, state: _Connected, taken: list[tuple[TaskRecord, int]]) -> None:
        """Queue claimed tasks again as they were before their claim (best effort, briefly:
        what is not handed back waits for its lease to expire)."""
        if not taken:
            return
        writes = [self._task_write(original, revision) for original, revision in taken]
        try:
            with anyio.fail_after(1.0):
                await self._commit_each(state, writes)
        except Exception as exc:
            logger.debug("could not hand %d claimed task(s) back: %s", len(writes), exc)

    async def next_run_at(self, queues: Sequence[str]) -> float | None:
        """The earliest ``run_at`` of a queued task, or lease expiry of a running one, in
        ``queues``, as this process's view knows it."""
        state = await self._connected()
        return state.view.next_run_at(queues)

    async def wait_for_work(self, queues: Sequence[str], timeout: float) -> None:
        """Return when a task of any queue becomes queued or running (the view's consumer
        sees it), at the next due time of ``queues``, or after ``timeout`` seconds."""
        state = await self._connected()
        work = state.view.work
        due = state.view.next_run_at(queues)
        if due is not None:
            wait = due - await self.time()
            if wait <= 0:
                await asyncio.sleep(0)
                return
            timeout = min(timeout, wait)
        with anyio.move_on_after(timeout):
            await work.wait()

    async def aclose(self) -> None:
        """Stop the view's consumer and close the connection; calling it again does
        nothing."""
        state, self._state = self._state, None
        if state is not None:
            try:
                running = asyncio.get_running_loop()
            except RuntimeError:  # pragma: no cover
                running = None
            if running is not None and state.loop is running:
                await state.close()
        await self._source.aclose()

    # -- inspection ------------------------------------------------------------------------

    async def get(self, task_id: str) -> TaskRecord | None:
        """The stored task with this id (read from the server), or None."""
        state = await self._connected()
        found = await self._read(state, task_id)
        return None if found is None else found[1]

    async def tasks(
        self, *, state: TaskState | None = None, queue: str | None = None, limit: int = 100
    ) -> list[TaskRecord]:
        """Tasks, newest first, optionally of one state and queue (from this process's
        view: what other processes wrote in the last milliseconds may be missing)."""
        connected = await self._connected()
        found = [
            record
            for _, record in connected.view.records.values()
            if (state is None or record.state is state) and (queue is None or record.queue == queue)
        ]
        found.sort(key=lambda r: (r.created_at, r.id), reverse=True)
        return found[:limit]

    async def counts(self) -> dict[str, dict[TaskState, int]]:
        """Task counts per queue and state (from this process's view)."""
        state = await self._connected()
        return state.view.counts()

    async def history(self, *, task_id: str | None = None, limit: int = 100) -> list[HistoryEntry]:
        """Finished attempts, newest first (all of one task, or the last ``limit``)."""
        state = await self._connected()
        if task_id is not None:
            messages = await self._direct_batch(
                state, self.history_stream, 1, self._history_prefix + encode_key(task_id), None
            )
        else:
            info = await state.js.stream_info(self.history_stream)
            last = info.state.last_seq
            start = max(info.state.first_seq, last - limit + 1, 1)
            messages = await self._direct_batch(
                state, self.history_stream, start, self._history_prefix + ">", limit
            )
        entries = [decode_history(data) for _, _, data in messages]
        return entries[::-1][:limit]

    async def _direct_batch(
        self, state: _Connected, stream: str, start: int, subjects: str, limit: int | None
    ) -> list[tuple[str, int, bytes]]:
        """The messages of ``stream`` on ``subjects`` from sequence ``start`` (all of them,
        or up to ``limit``), by batched direct gets: (subject, sequence, data)."""
        client = state.client
        found: list[tuple[str, int, bytes]] = []
        inbox = client.new_inbox()
        subscription = await client.subscribe(inbox)
        try:
            while limit is None or len(found) < limit:
                batch = 1000 if limit is None else min(1000, limit - len(found))
                request = {"seq": start, "batch": batch, "next_by_subj": subjects}
                await client.publish(
                    f"$JS.API.DIRECT.GET.{stream}", json.dumps(request).encode(), reply=inbox
                )
                more = False
                while True:
                    msg = await subscription.next_msg(timeout=5.0)
                    headers = msg.headers or {}
                    status = headers.get("Status")
                    if status is None:
                        sequence = int(headers["Nats-Sequence"])
                        found.append((headers["Nats-Subject"], sequence, msg.data))
                        start = sequence + 1
                        continue
                    if status == "204":  # end of this batch
                        more = int(headers.get("Nats-Num-Pending", "0")) > 0
                    break  # 404: nothing (more)
                if not more:
                    break
        finally:
            await subscription.unsubscribe()
        return found

    # -- administration --------------------------------------------------------------------

    async def requeue(self, task_id: str, *, now: float) -> bool:
        """Put a dead task back in its queue with its attempts reset."""
        state = await self._connected()
        for _ in range(_WRITE_ROUNDS):
            current = await self._read(state, task_id)
            if current is None or current[1].state is not TaskState.DEAD:
                return False
            revision, record = current
            queued = replace_record(
                record, state=TaskState.QUEUED, attempts=0, run_at=now, finished_at=None
            )
            writes = [self._task_write(queued, revision)]
            if record.unique_key is not None:
                subject = self._unique_subject(record.unique_key)
                held_at, holder = await self._get_json(state, subject)
                if holder is not None and holder["id"] != task_id:
                    other = await self._read(state, holder["id"])
                    if other is not None and other[1].state in _LIVE:
                        return False  # a newer task holds the unique key
                writes.append(_Write(subject, _json({"id": task_id, "until": None}), held_at))
            if record.group_id is not None:
                subject = self._group_subject(record.group_id)
                group_at, group = await self._get_json(state, subject)
                if group is not None and task_id in group["finished"]:
                    group["finished"] = [m for m in group["finished"] if m != task_id]
                    writes.append(_Write(subject, _json(group), group_at))
            if await self._commit(state, writes):
                return True
        return False

    async def dispatch(
        self, queue: str, *, name: str | None = None, limit: int | None = None, now: float
    ) -> int:
        """Release held tasks of ``queue`` (of one name, at most ``limit``), highest
        priority first, then the oldest."""
        state = await self._connected()
        held = [(rev, r) for rev, r in state.view.held(queue) if name is None or r.name == name]
        if limit is not None:
            held = held[:limit]
        written = await asyncio.gather(
            *(
                self._commit(
                    state,
                    [
                        self._task_write(
                            replace_record(r, state=TaskState.QUEUED, run_at=min(r.run_at, now)),
                            rev,
                        )
                    ],
                )
                for rev, r in held
            )
        )
        return sum(written)

    async def purge(
        self,
        *,
        now: float,
        history_before: float | None = None,
        dead_before: float | None = None,
    ) -> int:
        """Delete succeeded tasks whose results expired and dead tasks that finished before
        ``dead_before``; history entries that finished before ``history_before`` (from the
        oldest on: the history is kept in finishing order). Returns the tasks deleted."""
        state = await self._connected()
        expired = [
            (revision, record)
            for revision, record in list(state.view.records.values())
            if (
                record.state is TaskState.SUCCEEDED
                and record.result_expires is not None
                and record.result_expires <= now
            )
            or (
                record.state is TaskState.DEAD
                and dead_before is not None
                and record.finished_at is not None
                and record.finished_at < dead_before
            )
        ]
        limit = asyncio.Semaphore(_FAN_OUT)

        async def purge_one(revision: int, record: TaskRecord) -> bool:
            async with limit:
                return await self._purge_task(state, revision, record, now)

        deleted = await asyncio.gather(*(purge_one(rev, record) for rev, record in expired))
        if history_before is not None:
            await self._purge_history(state, history_before)
        return sum(1 for ok in deleted if ok)

    async def _purge_task(
        self, state: _Connected, revision: int, record: TaskRecord, now: float
    ) -> bool:
        """Delete ``record`` unless its group is open or its unique window is; its unique
        key goes with it if it holds it."""
        writes = [self._tombstone(self._subject(record.id), revision, record.id)]
        if record.group_id is not None:
            _, group = await self._get_json(state, self._group_subject(record.group_id))
            if group is not None:
                return False  # its group's callback has not run
        if record.unique_key is not None:
            subject = self._unique_subject(record.unique_key)
            held_at, holder = await self._get_json(state, subject)
            if holder is not None and holder["id"] == record.id:
                if holder["until"] is not None and holder["until"] > now:
                    return False  # its unique window is open
                writes.append(self._tombstone(subject, held_at))
        return await self._commit(state, writes)

    async def _purge_history(self, state: _Connected, before: float) -> None:
        info = await state.js.stream_info(self.history_stream)
        start = info.state.first_seq
        keep_from: int | None = None
        while keep_from is None:
            messages = await self._direct_batch(
                state, self.history_stream, start, self._history_prefix + ">", 500
            )
            if not messages:
                keep_from = info.state.last_seq + 1
                break
            for _, sequence, data in messages:
                if decode_history(data).finished_at >= before:
                    keep_from = sequence
                    break
            else:
                start = messages[-1][1] + 1
        if keep_from > info.state.first_seq:
            await state.js.purge_stream(self.history_stream, seq=keep_from)

    # -- the worker registry ---------------------------------------------------------------

    def _worker_subject(self, worker_id: str) -> str:
        return self._prefix + "w." + encode_key(worker_id)

    async def worker_seen(self, worker: WorkerInfo) -> None:
        """Insert or replace ``worker``'s entry (deleted by the server a day after its last
        change if nobody does it earlier)."""
        state = await self._connected()
        await state.js.publish(
            self._worker_subject(worker.id), encode_worker(worker), headers={"Nats-TTL": "24h"}
        )

    async def worker_gone(self, worker_id: str) -> None:
        """Remove ``worker_id``'s entry."""
        state = await self._connected()
        await state.js.purge_stream(self.stream, subject=self._worker_subject(worker_id))

    async def workers(self, *, now: float) -> list[WorkerInfo]:
        """The entries whose ``expires_at`` is after ``now``, by id (expired ones are
        deleted on the way)."""
        state = await self._connected()
        messages = await self._direct_batch(state, self.stream, 1, self._prefix + "w.>", None)
        found = []
        for subject, _, data in messages:
            if not data:
                continue
            worker = decode_worker(data)
            if worker.expires_at > now:
                found.append(worker)
            else:
                await state.js.purge_stream(self.stream, subject=subject)
        return sorted(found, key=lambda w: w.id)


async def _publish(
    state: _Connected, subject: str, data: bytes, headers: dict[str, str] | None
) -> int:
    """``js.publish`` without its acknowledgement object: the stored sequence.

    Raises:
        nats.js.errors.APIError: the stream refused the message (a wrong last sequence...).
        nats.errors.TimeoutError: no answer in time.
    """
    if len(data) > state.client.max_payload:
        raise nats.errors.MaxPayloadError
    reply = await state.acks.request(subject, data, headers, _REQUEST_TIMEOUT)
    return _sequence(reply)


@contextlib.contextmanager
def _inflight(state: _Connected, writes: Sequence[Any]) -> Iterator[None]:
    """While ``writes`` are sent, the view's consumer may bring them back before their
    acknowledgement is read: it takes each record from ``state.inflight`` instead of
    decoding the echo. Only this send's entries are removed afterwards."""
    inflight = state.inflight
    for write in writes:
        if write.record is not None and write.task_id is not None:
            inflight[write.task_id] = (write.data, write.record)
    try:
        yield
    finally:
        for write in writes:
            if write.record is not None and write.task_id is not None:
                mine = inflight.get(write.task_id)
                if mine is not None and mine[0] is write.data:
                    del inflight[write.task_id]


def _sequence(reply: Any) -> int:
    """The stored sequence a JetStream publish's acknowledgement gives.

    Raises:
        nats.js.errors.NoStreamResponseError: no stream takes the subject.
        nats.js.errors.APIError: the stream refused the message.
    """
    if not reply.data and (reply.headers or {}).get("Status") == "503":
        raise nats.js.errors.NoStreamResponseError
    answer = json.loads(reply.data)
    error = answer.get("error")
    if error is not None:
        raise nats.js.errors.APIError.from_error(error)
    sequence: int = answer["seq"]
    return sequence


async def _request_many(state: _Connected, messages: list[Message]) -> list[Any]:
    """Publish ``messages`` (each its own, not atomic), sent together, and return their
    acknowledgements.

    Raises:
        UnstorableRecordError: a message exceeds the server's max payload (checked before
            the first is sent).
        nats.errors.TimeoutError: not every answer came in time.
    """
    limit = state.client.max_payload
    for _, data, _ in messages:
        if len(data) > limit:
            raise UnstorableRecordError(
                f"a record of {len(data)} bytes exceeds the server's max payload ({limit})"
            )
    return await state.acks.request_many(messages, _REQUEST_TIMEOUT)


async def _publish_many(state: _Connected, messages: list[Message]) -> list[int]:
    """:func:`_publish` of several messages, sent together: their stored sequences."""
    return [_sequence(reply) for reply in await _request_many(state, messages)]


async def _atomic(state: _Connected, messages: list[Message]) -> dict[str, Any]:
    """Publish ``messages`` as one atomic batch (NATS 2.12+) and return the commit's
    answer (its ``seq`` is the last message's; an ``error`` refused them all).

    Raises:
        UnstorableRecordError: a message exceeds the server's max payload (checked
            before the first is sent: no half-sent batch).
        nats.errors.TimeoutError: no answer in time.
    """
    client = state.client
    limit = client.max_payload
    for _, data, _ in messages:
        if len(data) > limit:
            raise UnstorableRecordError(
                f"a record of {len(data)} bytes exceeds the server's max payload ({limit})"
            )
    batch = state.new_batch_id()
    last = len(messages)
    publish = client.publish
    for index, (subject, data, headers) in enumerate(messages, 1):
        headers = dict(headers or {})
        headers["Nats-Batch-Id"] = batch
        headers["Nats-Batch-Sequence"] = str(index)
        if index < last:
            await publish(subject, data, headers=headers)
            continue
        headers["Nats-Batch-Commit"] = "1"
        reply = await state.acks.request(subject, data, headers, 10.0)
    if not reply.data and (reply.headers or {}).get("Status") == "503":
        raise nats.js.errors.NoStreamResponseError
    answer: dict[str, Any] = json.loads(reply.data)
    return answer


def _ack_position(msg: Any) -> tuple[int, int]:
    """The stream sequence and the pending count of a consumer's message, read off its
    reply subject (``$JS.ACK.<stream>.<consumer>.<delivered>.<sseq>.<cseq>.<ts>.<pending>``,
    or the newer form with a domain and an account hash first) without building nats-py's
    metadata object."""
    tokens = msg.reply.split(".")
    if len(tokens) == 9:
        return int(tokens[5]), int(tokens[8])
    metadata = msg.metadata
    return metadata.sequence.stream, metadata.num_pending


def _log_failure(task: asyncio.Future[Any]) -> None:
    if not task.cancelled() and task.exception() is not None:
        logger.warning("could not make the view's consumer again: %s", task.exception())


async def _synced(state: _Connected) -> None:
    """Wait until the view has replayed the stream (an outage if it takes too long)."""
    try:
        await asyncio.wait_for(state.synced.wait(), _SYNC_TIMEOUT)
    except TimeoutError:
        raise ConnectionError(
            f"the queue's view did not catch up with the stream within {_SYNC_TIMEOUT:g}s"
        ) from None


@dataclasses.dataclass(slots=True)
class _Write:
    """One message of a change: its subject, data and the revision it expects."""

    subject: str
    data: bytes
    expected: int
    task_id: str | None = None
    record: TaskRecord | None = None
    delete: bool = False
    msg_id: str | None = None

    def headers(self) -> dict[str, str]:
        headers = {_EXPECTED: str(self.expected)}
        if self.msg_id is not None:
            headers["Nats-Msg-Id"] = self.msg_id
        if self.delete:
            headers[KV_OP] = KV_DEL
            headers["Nats-TTL"] = _TOMBSTONE_TTL
        return headers


def _mark(outcome: Outcome) -> str:
    """The mark a record settled by ``outcome`` carries (see :func:`record_mark`)."""
    return f"{outcome.worker}|{outcome.started_at!r}|{outcome.kind.value}"


def _same_task(record: TaskRecord, task: NewTask) -> bool:
    """Whether ``record`` is ``task`` as stored (what none of its changes touch): a
    resend of the enqueue that stored it, not another task under its id."""
    return (
        record.created_at == task.created_at
        and record.name == task.name
        and record.payload == task.payload
    )


def _json(data: Any) -> bytes:
    return json.dumps(data, separators=(",", ":")).encode("ascii")


class _Connected:
    """What the backend holds for one connection: the JetStream context, the view and its
    consumer."""

    def __init__(self, js: nats.js.JetStreamContext, client: Any) -> None:
        self.js = js
        self.client = client
        self.view = View()
        self.synced = asyncio.Event()
        #: Messages the view's consumer delivered and the view took in.
        self.processed = 0
        self.subscription: Any = None
        self.forget_hook: Callable[[], None] | None = None
        self.tasks: set[asyncio.Future[Any]] = set()
        self.group_locks: dict[str, asyncio.Lock] = {}
        self.loop = asyncio.get_running_loop()
        self.acks = Acks(client)
        #: task id -> (data, record) of a write of it whose acknowledgement is awaited.
        self.inflight: dict[str, tuple[bytes, TaskRecord]] = {}
        self._batch_prefix = uuid.uuid4().hex[:12]
        self._batches = 0

    def new_batch_id(self) -> str:
        """An atomic batch's id: unique per connection, short (it is stored with every
        message of the batch)."""
        self._batches += 1
        return f"{self._batch_prefix}{self._batches}"

    def resume_consumer(self) -> None:
        """After a reconnect: make the view's consumer again from the last sequence it
        delivered, at once. (nats-py notices a consumer lost to a server restart only by
        two missed idle heartbeats, seconds later; meanwhile no change reaches the view.)"""
        task = asyncio.ensure_future(self._resume())
        self.tasks.add(task)  # held until done (the loop keeps only weak references)
        task.add_done_callback(self.tasks.discard)
        task.add_done_callback(_log_failure)

    async def _resume(self) -> None:
        # JetStream may not answer for a moment after a server restart: try again until
        # the new consumer exists (nats-py's own watchdog remains the last resort).
        for delay in (0.0, 0.25, 0.5, 1.0, 2.0):
            await asyncio.sleep(delay)
            subscription = self.subscription
            jsi = getattr(subscription, "_jsi", None)
            reset = getattr(jsi, "reset_ordered_consumer", None)
            sequence = getattr(jsi, "_sseq", None)
            if subscription is None or reset is None or not isinstance(sequence, int):
                return  # closed, or a nats-py that moved it
            await reset(sequence + 1)
            await asyncio.sleep(0.2)  # it makes the consumer in a task of its own
            try:
                await subscription.consumer_info()
            except Exception as exc:
                logger.debug("the view's consumer is not back yet (%s)", exc)
                continue
            return

    async def close(self) -> None:
        if self.forget_hook is not None:
            self.forget_hook()
            self.forget_hook = None
        await self.acks.close()
        subscription, self.subscription = self.subscription, None
        if subscription is not None:
            try:
                await subscription.unsubscribe()
            except Exception as exc:  # pragma: no cover - a connection already gone
                logger.debug("stopping the view's consumer failed: %s", exc)
