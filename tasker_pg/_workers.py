"""The worker registry of the Postgres queue backend (``QueueCapability.WORKERS``)."""

from __future__ import annotations

from tasker.queue import WorkerInfo

from ._connection import PoolSource
from ._queue_sql import QueueStatements

__all__ = ["WorkerRegistryMethods"]


class WorkerRegistryMethods:
    """Registry methods of :class:`tasker_pg.PostgresQueueBackend`: one row per worker in
    ``queue_workers``, replaced at each heartbeat, deleted when it stops or expires."""

    _source: PoolSource
    _sql: QueueStatements

    async def worker_seen(self, worker: WorkerInfo) -> None:
        """Insert or replace ``worker``'s entry in the registry table."""
        pool = await self._source.pool()
        await pool.execute(
            self._sql.worker_seen,
            worker.id,
            list(worker.queues),
            worker.concurrency,
            worker.running,
            worker.started_at,
            worker.last_seen,
            worker.expires_at,
        )

    async def worker_gone(self, worker_id: str) -> None:
        """Remove ``worker_id``'s entry."""
        pool = await self._source.pool()
        await pool.execute(self._sql.worker_gone, worker_id)

    async def workers(self, *, now: float) -> list[WorkerInfo]:
        """The live entries, by id; expired ones are deleted."""
        pool = await self._source.pool()
        async with pool.acquire() as connection, connection.transaction():
            await connection.execute(self._sql.workers_expire, now)
            rows = await connection.fetch(self._sql.workers, now)
        return [
            WorkerInfo(
                id=row[0],
                queues=tuple(row[1]),
                concurrency=row[2],
                running=row[3],
                started_at=row[4],
                last_seen=row[5],
                expires_at=row[6],
            )
            for row in rows
        ]
