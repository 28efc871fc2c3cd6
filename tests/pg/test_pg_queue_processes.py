"""Four real worker processes on Postgres, 5,000 tasks, a SIGKILL and a killed connection."""

from __future__ import annotations

import signal
import subprocess
from collections import Counter

import anyio
import asyncpg
import pytest

from ..helpers import python_process
from .queue_worker_pg import build

pytestmark = pytest.mark.anyio

TASKS = 5000


def _start(dsn: str, schema: str) -> subprocess.Popen[str]:
    proc = python_process(["tests/pg/queue_worker_pg.py", dsn, schema])
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "ready"
    return proc


def _communicate(proc: subprocess.Popen[str]) -> tuple[str, str]:
    return proc.communicate(timeout=60)


@pytest.mark.slow
async def test_four_workers_survive_sigkill_and_terminated_connection(
    pg_dsn: str, schema: str
) -> None:
    """Every task succeeds; only tasks the killed worker held may have run twice."""
    queue = build(pg_dsn, schema)
    await queue.backend.migrate()  # type: ignore[attr-defined]
    admin = await asyncpg.connect(pg_dsn)
    await admin.execute(f'create table "{schema}".done (task text not null, pid int not null)')
    async with anyio.create_task_group() as tg:
        for chunk in range(10):

            async def fill(start: int = chunk * (TASKS // 10)) -> None:
                for i in range(start, start + TASKS // 10):
                    await queue.enqueue("touch", f"task-{i}")

            tg.start_soon(fill)
    workers = [_start(pg_dsn, schema) for _ in range(4)]

    async def done_count() -> int:
        value: int = await admin.fetchval(f'select count(distinct task) from "{schema}".done')
        return value

    try:
        with anyio.fail_after(60):
            while await done_count() < 1000:  # noqa: ASYNC110 - polling another process's work
                await anyio.sleep(0.05)
        victim = workers[0]
        victim.send_signal(signal.SIGKILL)
        # Kill one connection of another worker while it works.
        pid = await admin.fetchval(
            "select pid from pg_stat_activity where datname = current_database()"
            " and pid <> pg_backend_pid() and query like '%queue_tasks%' limit 1"
        )
        if pid is not None:
            await admin.execute("select pg_terminate_backend($1)", pid)
        with anyio.fail_after(90):
            while await done_count() < TASKS:  # noqa: ASYNC110
                await anyio.sleep(0.1)
        rows = await admin.fetch(
            f'select state, count(*) from "{schema}".queue_tasks group by state'
        )
        states: dict[str, int] = {r[0]: r[1] for r in rows}
        done = Counter(r[0] for r in await admin.fetch(f'select task from "{schema}".done'))
        rows = await admin.fetch(f'select id, attempts from "{schema}".queue_tasks')
        attempts: dict[str, int] = {r[0]: r[1] for r in rows}
    finally:
        for proc in workers[1:]:
            proc.send_signal(signal.SIGTERM)
        results = [await anyio.to_thread.run_sync(_communicate, p) for p in workers]
        for proc in workers:
            proc.kill()
        await admin.close()
        await queue.backend.aclose()  # type: ignore[attr-defined]
    assert [p.returncode for p in workers[1:]] == [0, 0, 0], [r[1][-1500:] for r in results[1:]]
    assert states == {"succeeded": TASKS}
    assert set(done) == {f"task-{i}" for i in range(TASKS)}
    twice = [task for task, n in done.items() if n > 1]
    assert len(twice) <= 10  # at most the killed worker's concurrency
    assert len([n for n in attempts.values() if n > 1]) <= 20
