"""The Redis queue backend: tasks in hashes, ready sets by priority, one script per change.

Design notes:

- **Every change is one Lua script** (``queue.lua``): an enqueue with its unique key and
  group, a claim, a finish with its history, follow-ups and group callback. A crash or a
  lost connection between two steps cannot leave a task half moved: Redis runs a script
  whole or not at all (and writes it to the AOF as one transaction).
- **Claim order.** A queue's queued tasks sit in one sorted set per priority, scored by
  ``run_at``; a claim takes the highest priority first, then the oldest ``run_at``, across
  every queue it serves, up to its free slots. A delayed task waits in the same set until
  its score is due, so nothing has to move it. Running tasks sit in a sorted set by lease
  expiry: a claim takes expired leases first (a crashed worker's tasks). (A consumer
  group delivers in append order, which a retried or delayed task, re-entering later with
  an older ``run_at``, would break; see the Redis guide.)
- **Wake-ups.** Every change that makes work claimable appends to the queue's wake-up
  stream ``w:<queue>``. An idle worker asks once when work is next due and for the last
  entry id of its queues (one script), then blocks in one ``XREAD`` after that id until a
  new entry arrives or the due time comes: no polling, and no wake-up lost between the
  question and the wait.
- **A worker's calls** (claims, finishes, heartbeats, the clock: ``WIRE_SCRIPTS``) run on
  connections of the backend's own (``_wire.py``: a fifth of the driver's CPU per call);
  the rest on coredis.
- **Time** is the server's: :meth:`RedisQueueBackend.time` reads ``TIME`` every
  ``clock_resync`` seconds and advances it by the local monotonic clock in between; every
  call compares leases and due times with the ``now`` it is given, which callers take
  from that clock.
"""

from __future__ import annotations

import json
import logging
import ssl
from collections.abc import Sequence
from datetime import timedelta
from typing import Any

import anyio
import coredis.exceptions

from tasker import redact_dsn
from tasker.backends import to_seconds
from tasker.queue import (
    EnqueueResult,
    GroupSpec,
    HistoryEntry,
    NewTask,
    Outcome,
    QueueCapability,
    TaskRecord,
    TaskState,
    WorkerInfo,
)

from ._connection import RedisSource, ServerClock, check_namespace
from ._scripts import (
    RECORD_FIELDS,
    SCRIPT_TEXTS,
    WIRE_SCRIPTS,
    decode_history,
    decode_json_records,
    decode_record,
    encode_group,
    encode_outcome,
    encode_task,
    pack,
)
from ._shared import ScriptSet
from ._wire import ScriptWire

__all__ = ["RedisQueueBackend"]

logger = logging.getLogger("tasker_redis")


class RedisQueueBackend:
    """:class:`tasker.queue.QueueBackend` on Redis (coredis; asyncio and trio).

    Declares every capability (:class:`tasker.abc.QueueCapability`) but
    ``TRANSACTIONAL_ENQUEUE`` (Redis has no transaction a caller's other writes could
    share), ``HEADERS`` and, for now, ``CANCEL``. Needs Redis 6.2 or newer; nothing to
    migrate.

    Args:
        url: ``redis://[[user]:password@]host[:port][/db]``, ``rediss://`` for TLS, or
            ``unix:///path``.
        namespace: the keys' prefix and hash tag (``{namespace}:...``): queues of two
            namespaces on one server never meet. 1 to 64 letters, digits, ``_.-``.
        history_limit: the finished attempts kept in the history stream (approximately:
            trimmed as it grows); 0 keeps all until :meth:`purge`.
        batch_size: the most tasks one claim takes (the seed's ``BatchSize``); by default a
            claim fills every free slot of the worker. A small batch spreads long tasks
            more evenly across many workers.
        clock_resync: seconds (or a ``timedelta``) between readings of the server's clock;
            0 reads it every time.
        ssl_context: the TLS context for ``rediss://`` (default: verify the server with
            the system's CA store).

    Raises:
        ValueError: for a bad URL or namespace, or a negative duration or limit.
        TypeError: for an option of the wrong type.
    """

    capabilities: frozenset[QueueCapability] = frozenset(QueueCapability) - {
        QueueCapability.TRANSACTIONAL_ENQUEUE,
        QueueCapability.HEADERS,  # a broker's: they are not stored
        QueueCapability.CANCEL,  # not yet: its scripts know no cancel requests
        # Not yet: its claim would have to count a name's starts and a key's running
        # tasks atomically with the take (a script that reads every limited task).
        QueueCapability.RATE_LIMITS,
        QueueCapability.CONCURRENCY_KEYS,
        QueueCapability.PROGRESS,  # not yet: its hashes have no progress fields
        # Not yet: the depth check would have to count a queue's waiting tasks in the
        # same atomic step as the insert.
        QueueCapability.BOUNDED_QUEUES,
    }

    def __init__(
        self,
        url: str,
        *,
        namespace: str = "tasker",
        history_limit: int = 100_000,
        batch_size: int | None = None,
        clock_resync: float | timedelta = 30.0,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.namespace = check_namespace(namespace)
        if isinstance(history_limit, bool) or not isinstance(history_limit, int):
            raise TypeError(f"history_limit must be an int, got {history_limit!r}")
        if history_limit < 0:
            raise ValueError(f"history_limit must be >= 0, got {history_limit}")
        self.history_limit = history_limit
        if batch_size is not None and (
            isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1
        ):
            raise ValueError(f"batch_size must be an integer >= 1 or None, got {batch_size!r}")
        self.batch_size = batch_size
        self._source = RedisSource(url, ssl_context=ssl_context, client_name="tasker-queue")
        self._clock = ServerClock(to_seconds(clock_resync, "clock_resync"))
        self._prefix = "{" + namespace + "}:"
        self._keys = [self._prefix + "n"]  # KEYS[1]: routes a call to the namespace's slot
        self._scripts = ScriptSet(self._source, SCRIPT_TEXTS)
        self._wire = ScriptWire(
            self._source, {name: SCRIPT_TEXTS[name] for name in sorted(WIRE_SCRIPTS)}
        )
        self._cap = str(history_limit)

    def __repr__(self) -> str:
        return f"RedisQueueBackend({redact_dsn(self._source.url)!r}, namespace={self.namespace!r})"

    # -- plumbing ------------------------------------------------------------------------

    async def _run(self, name: str, args: list[Any]) -> Any:
        if name in WIRE_SCRIPTS:  # a worker's call: on the queue's own connections
            return await self._wire.run(name, self._keys, [self._prefix, self._cap, "", *args])
        return await self._scripts.run(name, self._keys, [self._prefix, self._cap, pack(args)])

    # -- time ------------------------------------------------------------------------------

    async def time(self) -> float:
        """The server's clock (``TIME``), as a POSIX timestamp.

        Read at most every ``clock_resync`` seconds; in between, the last reading plus the
        local monotonic time since. When a reading fails after a first one succeeded, the
        last one is extrapolated the same way.
        """
        return await self._clock.read(lambda: self._run("time", []))

    # -- the core protocol -------------------------------------------------------------------

    async def enqueue(
        self, tasks: Sequence[NewTask], *, group: GroupSpec | None = None, now: float
    ) -> list[EnqueueResult]:
        """Store tasks (and their group) in one script; stored ids and unique keys
        deduplicate (a stored task is left as it is).

        Sent again once when the connection drops before the reply (a server restart, a
        killed connection): the script stores nothing twice, since finding this very task
        (same created_at, name and payload) stored means that the first send was applied,
        whole; it then answers as that send did.
        """
        args: list[Any] = [repr(float(now)), str(len(tasks))]
        for task in tasks:
            encode_task(task, args)
        encode_group(group, args)
        try:
            reply = await self._run("enqueue", args)
        except coredis.exceptions.ConnectionError as exc:
            logger.debug("enqueue: the connection dropped (%s); sending it again", exc)
            reply = await self._run("enqueue", args)
        return [
            EnqueueResult(id=task_id.decode(), deduplicated=bool(dedup)) for task_id, dedup in reply
        ]

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
        """Lease due tasks, expired leases first (never those in ``exclude``)."""
        if self.batch_size is not None:
            limit = min(limit, self.batch_size)
        if limit <= 0 or not queues:
            return []
        args = [repr(float(now)), *_claim_args(queues, limit, worker, now + lease, exclude)]
        return decode_json_records(await self._run("claim", args))

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
        """:meth:`finish`, then :meth:`claim` (never of ``outcomes`` or ``exclude``), in one
        script."""
        args: list[Any] = [repr(float(now)), str(len(outcomes))]
        for outcome in outcomes:
            encode_outcome(outcome, args)
        if self.batch_size is not None:
            limit = min(limit, self.batch_size)
        # (The worker's exclude lists the outcomes' tasks too: each id is sent once.)
        skip = list(dict.fromkeys([*exclude, *(o.id for o in outcomes)]))
        args += _claim_args(queues, max(limit, 0), worker, now + lease, skip)
        return decode_json_records(await self._run("finish_and_claim", args))

    async def claim_ids(
        self, ids: Sequence[str], *, worker: str, lease: float, now: float
    ) -> list[TaskRecord]:
        """Lease those of ``ids`` that are due, or whose lease expired (one on its last
        attempt dies, as in :meth:`claim`), whatever their queue, in the order given, each
        once; in one script.

        A queued task leaves its ready set and a running one moves in its lease set, so
        :meth:`claim` never takes either while the new lease lasts.
        """
        if not ids:
            return []
        args = [worker, repr(float(now)), repr(float(now + lease)), *ids]
        return decode_json_records(await self._run("claim_ids", args))

    async def overdue(
        self, *, before: float, queues: Sequence[str] | None = None, limit: int = 100
    ) -> list[TaskRecord]:
        """Queued tasks due and running ones whose lease expired by ``before``, of ``queues``
        (None: every queue with a task count), the longest overdue first; read from the
        ready and lease sets, changing nothing."""
        if limit <= 0 or (queues is not None and not queues):
            return []
        args = [repr(float(before)), str(limit), *(queues or ())]
        return [decode_record(flat) for flat in await self._run("overdue", args)]

    async def heartbeat(
        self, worker: str, ids: Sequence[str], *, lease: float, now: float
    ) -> set[str]:
        """Extend the leases ``worker`` still holds; return their ids."""
        if not ids:
            return set()
        reply = await self._run("heartbeat", [worker, repr(float(now + lease)), *ids])
        return {task_id.decode() for task_id in reply}

    async def finish(self, outcomes: Sequence[Outcome], *, now: float) -> None:
        """Record outcomes of tasks their workers still hold, in one script."""
        if not outcomes:
            return
        args: list[Any] = [repr(float(now)), str(len(outcomes))]
        for outcome in outcomes:
            encode_outcome(outcome, args)
        await self._run("finish", args)

    async def next_run_at(self, queues: Sequence[str]) -> float | None:
        """Earliest run_at of a queued task, or lease expiry of a running one."""
        due, _ = await self._run("next_due", list(queues))
        return None if due is None else float(due)

    async def wait_for_work(self, queues: Sequence[str], timeout: float) -> None:
        """Return when work may be claimable in ``queues``, or after ``timeout`` seconds.

        Asks when work is next due and for the wake-up streams' last ids (one script);
        returns at once if something is due, else blocks in one ``XREAD`` until a newer
        entry or the due time.
        """
        if not queues:
            await anyio.sleep(timeout)
            return
        due, ids = await self._run("next_due", list(queues))
        if due is not None:
            wait = float(due) - await self.time()
            if wait <= 0:
                await anyio.lowlevel.checkpoint()
                return
            timeout = min(timeout, wait)
        client = await self._source.client()
        streams = {self._prefix + "w:" + q: last for q, last in zip(queues, ids, strict=True)}
        await client.xread(streams, count=1, block=max(1, int(timeout * 1000)))

    async def aclose(self) -> None:
        """Close the connections; calling it again does nothing."""
        await self._wire.aclose()
        await self._source.aclose()

    # -- inspection ----------------------------------------------------------------------

    async def get(self, task_id: str) -> TaskRecord | None:
        """Return a task by id, or None."""
        client = await self._source.client()
        values = await client.hmget(self._prefix + "t:" + task_id, RECORD_FIELDS)
        if values[0] is None:
            return None
        return decode_record(values)

    async def tasks(
        self, *, state: TaskState | None = None, queue: str | None = None, limit: int = 100
    ) -> list[TaskRecord]:
        """List tasks, newest first, optionally of one state and queue."""
        if limit <= 0:
            return []
        state_text = "" if state is None else state.value
        reply = await self._run("tasks", [state_text, queue or "", str(limit)])
        return [decode_record(flat) for flat in reply]

    async def counts(self) -> dict[str, dict[TaskState, int]]:
        """Task counts per queue and state."""
        client = await self._source.client()
        raw = await client.hgetall(self._prefix + "n")
        result: dict[str, dict[TaskState, int]] = {}
        for field, value in raw.items():
            if int(value) <= 0:
                continue
            queue, _, state = field.decode().rpartition("\0")
            result.setdefault(queue, {})[TaskState(state)] = int(value)
        return result

    async def history(self, *, task_id: str | None = None, limit: int = 100) -> list[HistoryEntry]:
        """Finished attempts, newest first."""
        if limit <= 0:
            return []
        reply = await self._run("history", [task_id or "", str(limit)])
        return [decode_history(flat) for flat in reply]

    # -- administration ------------------------------------------------------------------

    async def requeue(self, task_id: str, *, now: float) -> bool:
        """Put a dead task back in its queue with its attempts reset."""
        return bool(await self._run("requeue", [task_id, repr(float(now))]))

    async def dispatch(
        self, queue: str, *, name: str | None = None, limit: int | None = None, now: float
    ) -> int:
        """Release held tasks of ``queue`` (optionally of one name, at most ``limit``)."""
        count = -1 if limit is None else limit
        released: int = await self._run(
            "dispatch", [queue, name or "", str(count), repr(float(now))]
        )
        return released

    async def purge(
        self,
        *,
        now: float,
        history_before: float | None = None,
        dead_before: float | None = None,
    ) -> int:
        """Delete what retention no longer keeps, in chunks of a few hundred per script
        (so one purge never blocks the server for long); return the tasks deleted."""
        args = [
            repr(float(now)),
            "" if history_before is None else repr(float(history_before)),
            "" if dead_before is None else repr(float(dead_before)),
        ]
        deleted = 0
        while True:
            count, more = await self._run("purge", args)
            deleted += int(count)
            if not more:
                return deleted

    # -- the worker registry -------------------------------------------------------------

    async def worker_seen(self, worker: WorkerInfo) -> None:
        """Insert or replace ``worker``'s entry."""
        info = json.dumps(
            {
                "id": worker.id,
                "queues": list(worker.queues),
                "concurrency": worker.concurrency,
                "running": worker.running,
                "started_at": worker.started_at,
                "last_seen": worker.last_seen,
                "expires_at": worker.expires_at,
            }
        )
        await self._run("worker_seen", [worker.id, info, repr(float(worker.expires_at))])

    async def worker_gone(self, worker_id: str) -> None:
        """Remove ``worker_id``'s entry."""
        await self._run("worker_gone", [worker_id])

    async def workers(self, *, now: float) -> list[WorkerInfo]:
        """The live entries, by id; expired ones are deleted."""
        reply = await self._run("workers", [repr(float(now))])
        found = []
        for raw in reply:
            if raw is None:
                continue
            data = json.loads(raw)
            found.append(
                WorkerInfo(
                    id=data["id"],
                    queues=tuple(data["queues"]),
                    concurrency=data["concurrency"],
                    running=data["running"],
                    started_at=data["started_at"],
                    last_seen=data["last_seen"],
                    expires_at=data["expires_at"],
                )
            )
        return sorted(found, key=lambda worker: worker.id)


def _claim_args(
    queues: Sequence[str], limit: int, worker: str, until: float, exclude: Sequence[str]
) -> list[Any]:
    return [
        str(limit),
        worker,
        repr(float(until)),
        str(len(queues)),
        *queues,
        str(len(exclude)),
        *exclude,
    ]
