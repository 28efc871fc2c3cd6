"""The Redis queue under faults, with real worker processes and a private ``redis-server``.

Every test here runs on a server of its own (``private_redis``: AOF with ``appendfsync
always``, in a temp dir), never the shared one: they restart it, end its clients with
``CLIENT KILL`` and change its password.

- The fault run of issue 10 (``tests/queue_faults.py``: SIGKILL, SIGTERM mid-task, a clock
  120 s ahead, a SIGSTOP past the lease), with the connections of one worker ended by
  ``CLIENT KILL`` where Postgres uses ``pg_terminate_backend``.
- Issue 13's process test: 4 workers, 5,000 tasks, one worker SIGKILLed, another's
  connections ended, and the server restarted (SIGTERM, then started on the same AOF).
- A worker idle in its blocking ``XREAD`` through a restart and a ``CLIENT KILL``.
- Fail fast: a refused login, a missing permission or a disabled command stops the worker,
  without the password. (A server older than 6.2 cannot be had here. A user without
  ``XREAD`` is an expected failure for now: the worker's idle wait never asks whether its
  error is permanent.)
- Injection-shaped names: keys are built from them, never Lua; nothing else is touched.

The worker processes are ``tests/queue_fault_worker.py --backend redis:URL``. Each gets a
client name of its own through the URL's query (``?client_name=``, which coredis applies
over the backend's default ``tasker-queue``), so the test can find its connections in
``CLIENT LIST``. Worker loops are mixed in one run (asyncio and trio side by side).
"""

from __future__ import annotations

import gc
import json
import logging
import re
import signal
import subprocess
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import anyio
import coredis
import pytest

import tasker
from tasker import BackendConfigurationError
from tasker.queue import NewTask, Outcome, OutcomeKind, Queue, TaskState
from tasker_redis import RedisQueueBackend

from ..helpers import python_process
from ..queue_fault_worker import build
from ..queue_faults import _latest_attempts, _read, _runs, check, run_faults
from .servers import PrivateRedis

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

NAMESPACE = "faults"


@pytest.fixture
def anyio_backend() -> str:
    """The process tests' own process only enqueues and reads: once is enough (the
    workers, real processes, run on both event loops)."""
    return "asyncio"


def _client_name(name: str) -> str:
    return f"tasker-{NAMESPACE}-{name}"


def _worker_url(url: str, name: str) -> str:
    """``url`` with the client name of worker ``name`` (coredis: the query wins)."""
    return f"{url}?client_name={_client_name(name)}"


async def _clients(url: str) -> list[dict[str, object]]:
    client: coredis.Redis[bytes] = coredis.Redis.from_url(url)
    async with client:
        return [dict(info) for info in await client.client_list()]


async def kill_clients(url: str, client_name: str) -> int:
    """End every connection named ``client_name`` with ``CLIENT KILL ID``; how many."""
    client: coredis.Redis[bytes] = coredis.Redis.from_url(url)
    async with client:
        ids = [int(i["id"]) for i in await client.client_list() if i["name"] == client_name]
        for client_id in ids:
            await client.client_kill(identifier=client_id)
    return len(ids)


async def until_blocked(url: str, client_names: set[str], timeout: float = 10.0) -> None:
    """Wait until each of ``client_names`` has a connection blocked in ``XREAD``: its worker
    idles in ``wait_for_work`` again (no polling)."""
    blocked: set[object] = set()
    with anyio.move_on_after(timeout):
        while True:
            blocked = {
                info["name"]
                for info in await _clients(url)
                if info["cmd"] == "xread" and "b" in str(info["flags"])
            }
            if client_names <= blocked:
                return
            await anyio.sleep(0.05)
    raise AssertionError(f"not blocked in XREAD within {timeout} s: {client_names - blocked}")


# -- the fault run of issue 10 -------------------------------------------------------------

#: The event loop of each worker of the fault run (w2's connections are killed, w3 skewed).
FAULT_LOOPS = {"w0": "asyncio", "w1": "asyncio", "w2": "trio", "w3": "asyncio", "w4": "trio"}


async def test_redis_workers_survive_kill_term_skew_stop_and_client_kill(
    private_redis: PrivateRedis, tmp_path: Path
) -> None:
    """Issue 10's run on Redis, w2's connections ended by ``CLIENT KILL``: every task
    succeeds once, duplicates stay within the bound, no delayed task starts early (not on
    the worker 120 s ahead either), a stale attempt's outcome is never the one recorded."""
    url = private_redis.url

    async def terminate(name: str) -> int:
        return await kill_clients(url, _client_name(name))

    fault = await run_faults(
        backend=lambda: RedisQueueBackend(url, namespace=NAMESPACE),
        spec=lambda name: [
            "--backend",
            f"redis:{_worker_url(url, name)}",
            "--namespace",
            NAMESPACE,
            "--loop",
            FAULT_LOOPS[name],
        ],
        out=tmp_path,
        terminate=terminate,
    )
    figures = check(fault)
    # The ended connections were made anew: no outage lasted, none was logged twice.
    w2 = fault.stderr["w2"]
    assert w2.count("backend unavailable") <= 1, w2[-3000:]
    print(json.dumps(figures))  # the figures for the closing note (pytest -s)


# -- issue 13's process test ---------------------------------------------------------------

TASKS = 5000
WORKERS = 4
CONCURRENCY = 5
LEASE = 2.0
#: Each task's work: long enough that the faults land while the workers are busy.
WORK = 0.01
#: The server is down this long (then AOF loading): under the lease, so that surviving
#: workers' heartbeats reach it again before their leases expire.
OUTAGE = 1.0
#: The event loop of each worker (w0 is SIGKILLed, w1's connections are ended).
LOOPS = ["trio", "asyncio", "asyncio", "trio"]


def _start(url: str, out: Path, name: str, loop: str) -> subprocess.Popen[str]:
    proc = python_process(
        [
            "tests/queue_fault_worker.py",
            "--backend",
            f"redis:{_worker_url(url, name)}",
            "--namespace",
            NAMESPACE,
            "--out",
            str(out / f"out-{name}.txt"),
            "--concurrency",
            str(CONCURRENCY),
            "--lease",
            str(LEASE),
            "--loop",
            loop,
        ]
    )
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "ready", proc.stderr and proc.stderr.read()
    return proc


def _communicate(proc: subprocess.Popen[str]) -> tuple[str, str]:
    return proc.communicate(timeout=60)


async def _until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    try:
        with anyio.fail_after(timeout):
            while not predicate():  # noqa: ASYNC110 - the work is done by other processes
                await anyio.sleep(0.02)
    except TimeoutError:
        raise AssertionError(f"no {what} within {timeout} s") from None


async def _until_async(predicate: Callable[[], Awaitable[bool]], timeout: float) -> None:
    with anyio.fail_after(timeout):
        while not await predicate():  # noqa: ASYNC110 - the work is done by other processes
            await anyio.sleep(0.05)


async def test_four_workers_5000_tasks_survive_sigkill_client_kill_and_restart(
    private_redis: PrivateRedis, tmp_path: Path
) -> None:
    """Issue 13: with a SIGKILL, a ``CLIENT KILL`` and a server restart in one run, every
    task succeeds, recorded once; none is lost; tasks ran twice only within the bounds
    stated below; two runs of a task overlap only if one is the killed worker's; each
    surviving worker logs each outage once, and idles in its blocking read afterwards."""
    url = private_redis.url
    queue = build(RedisQueueBackend(url, namespace=NAMESPACE), str(tmp_path / "filler.txt"))
    ids: dict[str, int] = {}
    try:
        async with anyio.create_task_group() as tg:
            for chunk in range(10):

                async def fill(first: int = chunk * (TASKS // 10)) -> None:
                    for n in range(first, first + TASKS // 10):
                        ids[(await queue.enqueue("work", {"n": n, "sleep": WORK})).id] = n

                tg.start_soon(fill)
    finally:
        # Closed before the restart: the test's own pool would only hold dead connections.
        await queue.backend.aclose()

    def ended() -> int:
        return len({n for event, n, _, _ in _read(tmp_path) if event == "end"})

    names = [f"w{i}" for i in range(WORKERS)]
    survivors = {_client_name(name) for name in names[1:]}
    procs: list[subprocess.Popen[str]] = []
    inspect = RedisQueueBackend(url, namespace=NAMESPACE)
    figures: dict[str, object] = {}
    began = time.monotonic()
    try:
        for name, loop in zip(names, LOOPS, strict=True):
            procs.append(_start(url, tmp_path, name, loop))
        await _until(lambda: ended() >= 1000, 60, "1000 tasks done")
        procs[0].send_signal(signal.SIGKILL)
        await _until(lambda: ended() >= 1500, 60, "1500 tasks done")
        figures["connections killed (w1)"] = killed = await kill_clients(url, _client_name("w1"))
        assert killed >= 1
        await _until(lambda: ended() >= 2500, 60, "2500 tasks done")
        figures["done before the restart"] = ended()
        stopped = time.monotonic()
        await anyio.to_thread.run_sync(private_redis.stop)  # SIGTERM: it ends its AOF
        await anyio.sleep(OUTAGE)
        await anyio.to_thread.run_sync(private_redis.start)
        figures["server down (s)"] = round(time.monotonic() - stopped, 2)
        figures["done when it was back"] = back = ended()
        # The workers claimed again after the restart: most of the work was still to do.
        assert back < TASKS - 1000, back
        await _until(lambda: ended() >= TASKS, 60, "every task done")

        async def recorded() -> bool:
            counts = await inspect.counts()
            return counts.get("default", {}).get(TaskState.SUCCEEDED, 0) >= TASKS

        await _until_async(recorded, 30)
        figures["drained in (s)"] = round(time.monotonic() - began, 1)
        states = {s.value: c for s, c in (await inspect.counts()).get("default", {}).items()}
        history = await inspect.history(limit=10 * TASKS)
        # Idle now, each surviving worker waits in one blocking XREAD again.
        await until_blocked(url, survivors)
    finally:
        for proc in procs[1:]:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        results = []
        for proc in procs:
            try:
                results.append(await anyio.to_thread.run_sync(_communicate, proc))
            except subprocess.TimeoutExpired:
                proc.kill()
                results.append(proc.communicate())
        await inspect.aclose()

    stderr = [err for _, err in results]
    assert [p.returncode for p in procs[1:]] == [0] * (WORKERS - 1), [e[-2000:] for e in stderr]
    assert states == {"succeeded": TASKS}, states
    runs = _runs(_read(tmp_path))
    assert set(runs) == set(range(TASKS)), "a task never ran"
    # Exactly one attempt per task is recorded as its success, and it is the latest claim's.
    successes = Counter(entry.task_id for entry in history if entry.outcome == "succeeded")
    assert set(successes) == set(ids)
    assert set(successes.values()) == {1}, "a success was recorded twice"
    latest = _latest_attempts(tmp_path)
    success_attempt = {e.task_id: e.attempt for e in history if e.outcome == "succeeded"}
    stale = {n: runs[n] for task_id, n in ids.items() if success_attempt[task_id] != latest[n]}
    assert not stale, stale
    killed_pid = procs[0].pid
    assert killed_pid in {pid for r in runs.values() for pid, _, _ in r}, "w0 never worked"
    done_twice = {n: r for n, r in runs.items() if sum(end is not None for _, _, end in r) > 1}
    by_killed = {n for n, r in done_twice.items() if killed_pid in {pid for pid, _, _ in r}}
    others = {n: done_twice[n] for n in set(done_twice) - by_killed}
    # Work done twice:
    # - by the SIGKILLed worker: at most CONCURRENCY running tasks (their handlers may have
    #   finished) plus as many whose outcomes it was recording; others claim them once
    #   their leases expire.
    assert len(by_killed) <= 2 * CONCURRENCY, sorted(by_killed)
    # - CLIENT KILL adds none: the handlers write nothing to Redis, so a lost reply never
    #   hides work that was done. A claim whose reply was lost leaves tasks leased to a
    #   worker that never ran them (they run once, after the lease); a finish whose reply
    #   was lost is sent again and the script ignores an outcome already recorded.
    # - The restart: the server's clock runs on through the outage, so a lease whose last
    #   renewal (every lease / 3) came more than a lease before the first heartbeat after
    #   the restart has expired, and another worker's claim may take the task while its
    #   owner still runs or records it (the owner's outcome is then refused). The outage is
    #   shorter than the lease, so that needs a slow restart; at most CONCURRENCY running
    #   plus CONCURRENCY recording per surviving worker.
    assert len(others) <= (WORKERS - 1) * 2 * CONCURRENCY, others
    # Two runs of one task at the same time: only the killed worker's, which has no end (it
    # did nothing after its kill), or a survivor's that lost its lease and said so.
    lost = {p.pid for p, err in zip(procs, stderr, strict=True) if "the lease on task" in err}
    overlapping = []
    for n, task_runs in runs.items():
        for i, (pid_a, start_a, end_a) in enumerate(task_runs):
            for pid_b, start_b, end_b in task_runs[i + 1 :]:
                if killed_pid in (pid_a, pid_b):
                    continue
                a_end = end_a if end_a is not None else float("inf")
                b_end = end_b if end_b is not None else float("inf")
                if start_a < b_end and start_b < a_end:
                    overlapping.append(n)
                    assert lost & {pid_a, pid_b}, (n, task_runs)
    # Each outage is logged once by each part of a worker that met it, and its end once:
    # the claim loop ("backend unavailable") and the recording of outcomes ("cannot record
    # ... yet"). w1 met two (its connections ended, and the restart), the others one.
    for name, err in zip(names[1:], stderr[1:], strict=True):
        outages = 2 if name == "w1" else 1
        for began_text, ended_text in [
            ("backend unavailable", "backend reachable again"),
            ("cannot record", "recorded the outcomes held back"),
        ]:
            assert err.count(began_text) == err.count(ended_text), (name, err[-3000:])
            assert err.count(began_text) <= outages, (name, err[-3000:])
    figures.update(
        {
            "tasks": TASKS,
            "done twice (killed worker)": len(by_killed),
            "done twice (others)": len(others),
            "overlapping runs": len(overlapping),
            "redelivered": sum(1 for e in history if e.attempt > 1 and e.outcome == "succeeded"),
            "claim outage warnings": [e.count("backend unavailable") for e in stderr[1:]],
            "recording outage warnings": [e.count("cannot record") for e in stderr[1:]],
            "heartbeat warnings": [e.count("heartbeat failed") for e in stderr[1:]],
            "lease warnings": [e.count("the lease on task") for e in stderr[1:]],
        }
    )
    print(json.dumps(figures))  # the figures for the closing note (pytest -s)


# -- a blocked wait_for_work through a restart and a CLIENT KILL ---------------------------


@pytest.fixture
def collect_garbage() -> Iterator[None]:
    """Collect garbage once the test is done, while its warning filters still apply."""
    yield
    gc.collect()


# coredis 6.9 leaves the memory streams of a connection it could not open unclosed (its
# Connection makes them in __init__ and closes them only in run() once connected): each
# claim while the server is down warns when the garbage collector gets to it. The test
# collects in its teardown, under this filter, so that no later test meets the warnings.
@pytest.mark.parametrize("anyio_backend", ["asyncio", "trio"])
@pytest.mark.usefixtures("collect_garbage")
async def test_a_blocked_wait_survives_restart_and_client_kill(
    private_redis: PrivateRedis, caplog: pytest.LogCaptureFixture
) -> None:
    """An idle worker blocked in ``XREAD`` through a restart (2 s down) and through a
    ``CLIENT KILL`` of its connections: it claims the next task each time and blocks
    again; the outage is logged once (and its end once), the ended connections not at all."""
    caplog.set_level(logging.WARNING, logger="tasker")
    url = private_redis.url
    name = _client_name("idle")
    queue = Queue(RedisQueueBackend(_worker_url(url, "idle"), namespace=NAMESPACE))
    ran: list[int] = []
    seconds: dict[str, float] = {}

    @queue.task("touch")
    async def touch(ctx: tasker.Context, n: int) -> None:
        ran.append(n)

    async def until_ran(count: int, timeout: float) -> None:
        with anyio.fail_after(timeout):
            while len(ran) < count:  # noqa: ASYNC110 - the worker appends
                await anyio.sleep(0.01)

    async def faults() -> None:
        await until_blocked(url, {name})
        await anyio.to_thread.run_sync(private_redis.stop)
        await anyio.sleep(2.0)
        await anyio.to_thread.run_sync(private_redis.start)
        # A producer of its own, made after the restart (a pool made before it would
        # first meet its dead connection: commands are not retried by the driver).
        producer = Queue(RedisQueueBackend(url, namespace=NAMESPACE))
        producer.register("touch", touch)
        try:
            sent = time.monotonic()
            await producer.enqueue("touch", 1)
            await until_ran(1, 10)
            seconds["enqueue to run after the restart"] = time.monotonic() - sent
            await until_blocked(url, {name})
            assert await kill_clients(url, name) >= 1
            sent = time.monotonic()
            await producer.enqueue("touch", 2)
            await until_ran(2, 5)
            seconds["enqueue to run after CLIENT KILL"] = time.monotonic() - sent
            await until_blocked(url, {name})
        finally:
            await producer.backend.aclose()

    # poll 30 s: the worker comes back because its blocked read failed, not by a timeout.
    worker = queue.worker(poll=30.0, lease=2.0)
    try:
        await tasker.run(worker, shutdown_trigger=faults, grace=2)
    finally:
        await queue.backend.aclose()
    assert ran == [1, 2]
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    # The records hold the connection errors, and through them the leaked connections:
    # dropped here, so that the teardown can collect them (see the filter above).
    caplog.clear()
    assert len([m for m in warnings if "backend unavailable" in m]) == 1, warnings
    assert len([m for m in warnings if "backend reachable again" in m]) == 1, warnings
    assert len(warnings) == 2, warnings
    # Back within the claim backoff (0.2 s doubling) of the server's return.
    assert seconds["enqueue to run after the restart"] < 5, seconds
    # The failed read costs one pause (at most a second) before the next claim.
    assert seconds["enqueue to run after CLIENT KILL"] < 2.5, seconds


# -- fail fast -----------------------------------------------------------------------------

SECRET = f"right-{uuid.uuid4().hex[:8]}"
WRONG = f"wrong-{uuid.uuid4().hex[:8]}"
ACL_SECRET = f"acl-{uuid.uuid4().hex[:8]}"


async def _lock(url: str) -> None:
    client: coredis.Redis[bytes] = coredis.Redis.from_url(url)
    async with client:
        await client.acl_setuser("limited", "on", f">{ACL_SECRET}", "~other:*", "+@all")
        await client.config_set({"requirepass": SECRET})


@pytest.fixture
def locked_redis(private_redis: PrivateRedis) -> PrivateRedis:
    """``private_redis`` with the password ``SECRET``, and a user ``limited`` (password
    ``ACL_SECRET``) whose keys are only ``other:*``."""
    anyio.run(_lock, private_redis.url)
    return private_redis


def _login_url(server: PrivateRedis, case: str) -> str:
    where = f"127.0.0.1:{server.port}/0"
    return {
        "wrong password": f"redis://:{WRONG}@{where}",
        "no password": f"redis://{where}",
        "no permission": f"redis://limited:{ACL_SECRET}@{where}",
    }[case]


LOGIN_CASES = {
    "wrong password": ("refused the login", "check the user name and password"),
    "no password": ("refused the login", "check the user name and password"),
    "no permission": ("lacks a permission", "ACL SETUSER"),
}


@pytest.mark.parametrize("case", sorted(LOGIN_CASES))
def test_a_refused_login_or_permission_stops_the_worker_process(
    locked_redis: PrivateRedis, tmp_path: Path, case: str
) -> None:
    """``tasker.main`` running a worker exits 1 within 20 s, naming the fix; its stderr shows
    no password (neither the one sent nor the server's)."""
    started = time.monotonic()
    proc = python_process(
        [
            "tests/queue_fault_worker.py",
            "--backend",
            f"redis:{_login_url(locked_redis, case)}",
            "--namespace",
            NAMESPACE,
            "--out",
            str(tmp_path / "out.txt"),
        ]
    )
    try:
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    elapsed = time.monotonic() - started
    problem, fix = LOGIN_CASES[case]
    assert proc.returncode == 1, err
    assert elapsed < 20
    assert "BackendConfigurationError" in err, err
    assert "retrying cannot help" in err, err
    assert problem in err, err
    assert fix in err, err
    for secret in (SECRET, WRONG, ACL_SECRET):
        assert secret not in err, err


@pytest.mark.parametrize("anyio_backend", ["asyncio", "trio"])
@pytest.mark.parametrize("case", sorted(LOGIN_CASES))
async def test_a_refused_login_or_permission_raises_without_the_password(
    locked_redis: PrivateRedis, caplog: pytest.LogCaptureFixture, case: str
) -> None:
    """In process: the worker raises :class:`tasker.BackendConfigurationError` (not retried);
    no password in its message, its chain, a repr or a log line."""
    caplog.set_level(logging.DEBUG)
    backend = RedisQueueBackend(_login_url(locked_redis, case), namespace=NAMESPACE)
    queue = Queue(backend)
    raised: list[BaseException] = []
    try:
        with anyio.fail_after(20):
            await tasker.run(queue.worker(poll=1.0))
    except* BackendConfigurationError as group:  # the worker's task group wraps it
        raised += group.exceptions
    finally:
        await backend.aclose()
    problem, fix = LOGIN_CASES[case]
    assert len(raised) == 1, raised
    error = raised[0]
    assert isinstance(error, BackendConfigurationError), error
    assert problem in error.problem, error
    assert fix in error.fix, error
    texts = [str(error), repr(error), repr(backend), caplog.text]
    cause: BaseException | None = error.__cause__
    while cause is not None:
        texts += [str(cause), repr(cause)]
        cause = cause.__cause__ or cause.__context__
    for text in texts:
        for secret in (SECRET, WRONG, ACL_SECRET):
            assert secret not in text, text


# -- injection-shaped names ----------------------------------------------------------------

#: Queue names, task names, unique keys, ids and a worker id that would do harm if they
#: reached Lua source or a key pattern: quotes, spaces, glob characters, hash-tag braces,
#: the key separator, Lua that flushes the server, text shaped like the scripts' packed
#: arguments (``<length>:<bytes>``), and characters of several bytes in UTF-8.
NASTY = [
    "it's",
    'say "hi"',
    "two words",
    "*",
    "?[a-z]",
    "{tag}",
    "}{",
    "a:b:c",
    "t:0",
    "'); redis.call('FLUSHALL') --",
    "]]; redis.call('FLUSHALL'); --[[",
    "\\'; return redis.call('DEL', KEYS[1]) --",
    "%s %d ${x} $(rm -rf /)",
    "ARGV[1] .. KEYS[1]",
    "3:abc",
    "0:",
    "9:x",
    "ünï cødé ✓ 🚀",
]

#: What a key of the namespace may look like after the prefix (see queue.lua's key list).
_KEY_SHAPE = re.compile(
    r"(n|all|exp|dead|hist|wk|wx|(t|p|l|hp|th|w|u|g|gm):.+|(r|h):-?\d+:.+)", re.S
)


async def _keyspace(client: coredis.Redis[bytes]) -> dict[bytes, bytes | None]:
    """Every key of the server, with its ``DUMP`` (its type and value, serialised)."""
    keys = [key async for key in client.scan_iter(match="*", count=1000)]
    return {key: await client.dump(key) for key in keys}


async def test_injection_shaped_names_are_keys_not_code(private_redis: PrivateRedis) -> None:
    """Names that look like Lua or key patterns round-trip through enqueue, dispatch, claim,
    finish, get, listings, counts and history, each key is the fixed prefix plus the name
    as given, and nothing outside the namespace changes (nor is the server flushed)."""
    url = private_redis.url
    admin: coredis.Redis[bytes] = coredis.Redis.from_url(url)
    other = Queue(RedisQueueBackend(url, namespace="other"))
    backend = RedisQueueBackend(url, namespace="inj")
    queue = Queue(backend)
    prefix = b"{inj}:"
    worker_id = NASTY[9]
    async with admin:
        await admin.set("canary", "alive")
        other.register("plain", _echo)
        await other.enqueue("plain", "left alone", unique_key="it's")
        await other.backend.aclose()
        before = await _keyspace(admin)
        try:
            for name in NASTY:
                queue.register(name, _echo, queue=name)
            ids: dict[str, str] = {}  # id -> name
            for name in NASTY:
                first = await queue.enqueue(name, name, unique_key=name, unique_for=60)
                again = await queue.enqueue(name, "again", unique_key=name, unique_for=60)
                assert (again.id, again.deduplicated) == (first.id, True), name
                held = await queue.enqueue(name, name, held=True)
                assert await queue.dispatch(name, name=name) == 1, name
                ids[first.id] = ids[held.id] = name

            async def until_done() -> None:
                with anyio.fail_after(20):
                    while True:
                        counts = await backend.counts()
                        done = sum(c.get(TaskState.SUCCEEDED, 0) for c in counts.values())
                        if done >= len(ids):
                            return
                        await anyio.sleep(0.05)

            worker = queue.worker(NASTY, worker_id=worker_id, poll=1.0, lease=5.0)
            await tasker.run(worker, shutdown_trigger=until_done, grace=2)

            counts = await backend.counts()
            assert counts == {name: {TaskState.SUCCEEDED: 2} for name in NASTY}, counts
            for task_id, name in ids.items():
                record = await backend.get(task_id)
                assert record is not None, name
                assert (record.name, record.queue, record.state) == (
                    name,
                    name,
                    TaskState.SUCCEEDED,
                )
                assert record.result is not None
                assert json.loads(record.result) == name
                (entry,) = await backend.history(task_id=task_id)
                assert (entry.name, entry.queue, entry.worker, entry.outcome) == (
                    name,
                    name,
                    worker_id,
                    "succeeded",
                )
            for name in NASTY:
                listed = await backend.tasks(queue=name, state=TaskState.SUCCEEDED)
                assert {r.id for r in listed} == {i for i, n in ids.items() if n == name}
                assert {r.unique_key for r in listed} == {name, None}
                # The key is the prefix and the name as given: no escaping, no pattern.
                holder = await admin.get(prefix + b"u:" + name.encode())
                assert holder is not None, name
                assert ids[holder.decode()] == name
            # Ids are the backend's to choose (a caller's own backend may pass any):
            # injection-shaped ones round-trip too, and so do the names of the claimer.
            await _nasty_ids(backend)
            after = await _keyspace(admin)
        finally:
            await backend.aclose()
    assert after.get(b"canary") is not None, "the server was flushed"
    outside = {key: dump for key, dump in after.items() if not key.startswith(prefix)}
    assert outside == before, "a key outside the namespace changed"
    for key in after:
        if key.startswith(prefix):
            assert _KEY_SHAPE.fullmatch(key[len(prefix) :].decode()), key
    for task_id in ids:
        assert prefix + b"t:" + task_id.encode() in after


async def _echo(ctx: tasker.Context, payload: str) -> str:
    return payload


async def _nasty_ids(backend: RedisQueueBackend) -> None:
    now = await backend.time()
    queue_name = "ids: {*}"
    tasks = [
        NewTask(
            id=task_id,
            name=task_id,
            queue=queue_name,
            payload=json.dumps(task_id).encode(),
            run_at=now,
            created_at=now,
            max_attempts=3,
            unique_key=f"id {task_id}",
        )
        for task_id in NASTY
    ]
    results = await backend.enqueue(tasks, now=now)
    assert [(r.id, r.deduplicated) for r in results] == [(t, False) for t in NASTY]
    claimer = NASTY[10]
    claimed = await backend.claim([queue_name], 100, worker=claimer, lease=30, now=now)
    assert sorted(r.id for r in claimed) == sorted(NASTY)
    assert {r.lease_owner for r in claimed} == {claimer}
    assert await backend.heartbeat(claimer, NASTY, lease=30, now=now) == set(NASTY)
    outcomes = [
        Outcome(
            id=task_id,
            worker=claimer,
            kind=OutcomeKind.SUCCEEDED,
            started_at=now,
            finished_at=now,
            result=json.dumps(task_id).encode(),
        )
        for task_id in NASTY
    ]
    await backend.finish(outcomes, now=now)
    for task_id in NASTY:
        record = await backend.get(task_id)
        assert record is not None, task_id
        assert (record.id, record.name, record.state) == (task_id, task_id, TaskState.SUCCEEDED)
        assert record.unique_key == f"id {task_id}"
        assert record.payload == json.dumps(task_id).encode()
        (entry,) = await backend.history(task_id=task_id)
        assert (entry.task_id, entry.worker) == (task_id, claimer)


async def test_a_server_without_a_command_the_scripts_use_stops_the_worker() -> None:
    """A server whose ``EVALSHA`` is renamed away (as a managed Redis may disable commands;
    a server older than 6.2 cannot be had here): the worker raises
    :class:`tasker.BackendConfigurationError` naming the missing command."""
    server = PrivateRedis("--rename-command", "EVALSHA", "")
    try:
        server.start()
        backend = RedisQueueBackend(server.url, namespace=NAMESPACE)
        raised: list[BaseException] = []
        try:
            with anyio.fail_after(20):
                await tasker.run(Queue(backend).worker(poll=1.0))
        except* BackendConfigurationError as group:  # the worker's task group wraps it
            raised += group.exceptions
        finally:
            await backend.aclose()
    finally:
        server.cleanup()
    assert len(raised) == 1, raised
    error = raised[0]
    assert isinstance(error, BackendConfigurationError), error
    assert "lacks a command" in error.problem, error
    assert "EVALSHA" in error.problem, error


async def test_a_user_without_xread_stops_the_worker(private_redis: PrivateRedis) -> None:
    """A user whose ACL lacks ``XREAD`` (the idle worker's blocking read): NOPERM is
    permanent, so the worker raises :class:`tasker.BackendConfigurationError`."""
    client: coredis.Redis[bytes] = coredis.Redis.from_url(private_redis.url)
    async with client:
        await client.acl_setuser("noxread", "on", f">{ACL_SECRET}", "~*", "+@all", "-xread")
    url = f"redis://noxread:{ACL_SECRET}@127.0.0.1:{private_redis.port}/0"
    backend = RedisQueueBackend(url, namespace=NAMESPACE)
    raised: list[BaseException] = []
    try:
        with anyio.move_on_after(3):
            await tasker.run(Queue(backend).worker(poll=1.0))
    except* BackendConfigurationError as group:  # the worker's task group wraps it
        raised += group.exceptions
    finally:
        await backend.aclose()
    assert len(raised) == 1, "the worker ran on without its blocking read"
    assert "lacks a permission" in str(raised[0]), raised
