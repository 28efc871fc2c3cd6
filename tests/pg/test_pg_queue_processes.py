"""Four real worker processes on Postgres, 5,000 tasks, and the faults of issue 7.

One worker is SIGKILLed, one connection of another worker is ended with
``pg_terminate_backend``, and (on a private server the test controls, never the shared one)
the server is stopped for two seconds and started again while the other workers work.
Every task must succeed and be recorded done; a task may run twice only for the reasons,
and within the bounds, stated in ``_check``.
"""

from __future__ import annotations

import signal
import subprocess
from collections import Counter
from dataclasses import dataclass

import anyio
import asyncpg
import pytest

from ..helpers import python_process
from .embedded import EmbeddedPostgres
from .queue_worker_pg import CONCURRENCY, build

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

TASKS = 5000
WORKERS = 4
OUTAGE = 2.0


def _start(dsn: str, schema: str, name: str) -> subprocess.Popen[str]:
    # The application name lets the test pick this worker's connections in pg_stat_activity.
    separator = "&" if "?" in dsn else "?"
    proc = python_process(
        ["tests/pg/queue_worker_pg.py", f"{dsn}{separator}application_name={name}", schema]
    )
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "ready"
    return proc


def _communicate(proc: subprocess.Popen[str]) -> tuple[str, str]:
    return proc.communicate(timeout=60)


@dataclass(kw_only=True)
class _Run:
    """What the database and the workers say after a run."""

    victim_pid: int
    states: dict[str, int]
    #: Payload ("task-N") -> the pids of the processes whose handler did its work, one a run.
    runs: dict[str, list[int]]
    #: Queue task id -> its attempts recorded as ``succeeded`` in the queue's history.
    successes: Counter[str]
    returncodes: list[int | None]
    stderr: list[str]


async def _fill(dsn: str, schema: str) -> asyncpg.Connection:
    queue = build(dsn, schema)
    try:
        await queue.backend.migrate()  # type: ignore[attr-defined]
        admin = await asyncpg.connect(dsn)
        await admin.execute(f'create table "{schema}".done (task text not null, pid int not null)')
        async with anyio.create_task_group() as tg:
            for chunk in range(10):

                async def fill(start: int = chunk * (TASKS // 10)) -> None:
                    for i in range(start, start + TASKS // 10):
                        await queue.enqueue("touch", f"task-{i}")

                tg.start_soon(fill)
    finally:
        # Closed before any restart: the test's own pool would only hold dead connections.
        await queue.backend.aclose()
    return admin


async def _until(admin: asyncpg.Connection, query: str, *args: object, timeout: float) -> None:
    """Poll until ``query`` returns true: the work is done by other processes."""
    with anyio.fail_after(timeout):
        while not await admin.fetchval(query, *args):  # noqa: ASYNC110 - see the docstring
            await anyio.sleep(0.02)


async def _run(dsn: str, schema: str, server: EmbeddedPostgres | None) -> _Run:
    """Run the workers through the faults (the restart only with a ``server`` to restart)."""
    admin = await _fill(dsn, schema)
    # Names unique to the run: another session may run this test on the shared server.
    names = [f"tasker-{schema}-{n}" for n in range(WORKERS)]
    workers = [_start(dsn, schema, name) for name in names]
    done = f'select count(distinct task) >= $1 from "{schema}".done'
    try:
        await _until(admin, done, 1000, timeout=60)
        workers[0].send_signal(signal.SIGKILL)
        # End one connection of another worker while it works: a statement on a pool
        # connection, not its LISTEN connection (which sits idle most of the time).
        terminate = (
            "select pg_terminate_backend(pid) from pg_stat_activity where application_name = $1"
            " and state = 'active' and query not ilike 'listen%' limit 1"
        )
        await _until(admin, terminate, names[1], timeout=10)
        if server is not None:
            await _until(admin, done, 2500, timeout=60)
            await admin.close()
            # "fast" ends every session, as a restart does; the workers keep running.
            await anyio.to_thread.run_sync(server.stop)
            await anyio.sleep(OUTAGE)
            await anyio.to_thread.run_sync(server.start)
            admin = await asyncpg.connect(dsn)
        await _until(admin, done, TASKS, timeout=60)
        # The last outcomes are recorded just after their handlers return.
        recorded = f"select bool_and(state = 'succeeded') from \"{schema}\".queue_tasks"
        await _until(admin, recorded, timeout=30)
        # Idle now, each surviving worker waits on a LISTEN connection again (made anew
        # after the restart): a listener that did not come back would leave it polling.
        listening = (
            "select count(*) = $2 from pg_stat_activity where application_name = any($1)"
            " and query ilike 'listen%'"
        )
        await _until(admin, listening, names[1:], len(names[1:]), timeout=10)
        rows = await admin.fetch(
            f'select state, count(*) from "{schema}".queue_tasks group by state'
        )
        states: dict[str, int] = {r[0]: r[1] for r in rows}
        runs: dict[str, list[int]] = {}
        for task, pid in await admin.fetch(f'select task, pid from "{schema}".done'):
            runs.setdefault(task, []).append(pid)
        rows = await admin.fetch(
            f'select task_id, count(*) from "{schema}".queue_history'
            " where outcome = 'succeeded' group by task_id"
        )
        successes = Counter({r[0]: r[1] for r in rows})
    finally:
        for proc in workers[1:]:
            proc.send_signal(signal.SIGTERM)
        results = [await anyio.to_thread.run_sync(_communicate, p) for p in workers]
        for proc in workers:
            proc.kill()
        await admin.close()
    return _Run(
        victim_pid=workers[0].pid,
        states=states,
        runs=runs,
        successes=successes,
        returncodes=[p.returncode for p in workers],
        stderr=[r[1] for r in results],
    )


def _check(run: _Run, *, restarted: bool) -> None:
    """Assert the outcome, and that tasks ran twice only for the reasons stated below."""
    assert run.returncodes[1:] == [0] * (WORKERS - 1), [e[-1500:] for e in run.stderr[1:]]
    assert run.states == {"succeeded": TASKS}
    assert set(run.runs) == {f"task-{i}" for i in range(TASKS)}, "a task never ran"
    # Exactly one attempt per task is recorded as the success: the queue accepts an outcome
    # only from the worker holding the lease, and a task that succeeded is never claimed again.
    assert len(run.successes) == TASKS
    assert set(run.successes.values()) == {1}
    twice = {task: pids for task, pids in run.runs.items() if len(pids) > 1}
    killed = {task for task, pids in twice.items() if run.victim_pid in pids}
    others = {task: twice[task] for task in set(twice) - killed}
    # A task runs twice only when its work was done (its row inserted into ``done``) but its
    # success was not recorded, so the task ran again:
    # - the SIGKILLed worker held at most CONCURRENCY running tasks (their handlers may have
    #   finished) plus the tasks whose handlers had returned while their outcomes were being
    #   recorded (at most CONCURRENCY more while the server answers: a batch is one round
    #   trip, shorter than a task); other workers claim them when their leases expire;
    assert len(killed) <= 2 * CONCURRENCY, sorted(killed)
    # - pg_terminate_backend can lose the reply to a committed ``insert into done`` (the
    #   handler fails after its work was done and its retry runs it again): at most one task,
    #   the one statement in flight on that connection;
    # - a restart ends every session and lasts longer than the lease (2 s). A surviving
    #   worker then holds at most CONCURRENCY running tasks plus the outcomes it is
    #   recording, and keeps them: its flush retries with backoff and its heartbeat extends
    #   the leases again once the server is back. Most handlers cut off by the outage fail
    #   before their insert and are retried, which is no double run. A task runs twice if
    #   the restart lost the reply to its committed insert (as above), or if another worker's
    #   claim reaches its expired lease before the owner's heartbeat (every lease / 3) does:
    #   the owner's outcome is then refused. Hence at most 2 * CONCURRENCY per surviving
    #   worker. In practice the heartbeat wins: the claims after an outage back off
    #   (0.2 s, 0.4 s, 0.8 s, ...); in 30 runs measured the count was 0 each time.
    bound = 1 + ((WORKERS - 1) * 2 * CONCURRENCY if restarted else 0)
    assert len(others) <= bound, others


async def test_four_workers_survive_sigkill_and_terminated_connection(
    pg_dsn: str, schema: str
) -> None:
    """On the shared server (whatever version CI runs): every task succeeds once; only tasks
    the killed worker held, or the one statement on the ended connection, ran twice."""
    run = await _run(pg_dsn, schema, None)
    _check(run, restarted=False)
    # Without an outage no surviving worker loses a lease (nor warns that it did).
    assert not [e for e in run.stderr[1:] if "lost the lease" in e], run.stderr[1:]


async def test_four_workers_survive_sigkill_terminated_connection_and_restart(
    controlled_pg: EmbeddedPostgres,
) -> None:
    """Issue 7: with a SIGKILL, a terminated connection and a server restart in one run,
    every task succeeds once and is recorded done; tasks ran twice only within the bounds."""
    run = await _run(controlled_pg.dsn, "queue_faults", controlled_pg)
    _check(run, restarted=True)
