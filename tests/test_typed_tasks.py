"""Typed tasks: ``@queue.task`` returns a ``Task[P, R]`` that enqueues, steps, runs and reads
results with the handler's types, checked by mypy at the call site."""

from __future__ import annotations

import inspect
import os
import re
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypedDict

import anyio
import pytest

import tasker
from tasker import Context
from tasker.queue import (
    Enqueued,
    MemoryQueueBackend,
    PayloadError,
    Queue,
    QueueBackend,
    SQLiteQueueBackend,
    Task,
    TaskInfo,
    TaskState,
)

from .helpers import ROOT


class Email(TypedDict):
    """The payload of the e-mail task in these tests."""

    to: str
    subject: str


@pytest.fixture(params=["memory", "sqlite"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> QueueBackend:
    """Each test that runs tasks runs on both embedded backends."""
    if request.param == "memory":
        return MemoryQueueBackend()
    return SQLiteQueueBackend(tmp_path / "queue.sqlite3")


@asynccontextmanager
async def running(queue: Queue, queues: str = "default") -> AsyncIterator[None]:
    """Runs a worker of the queue in the background for the duration of the block."""
    stop = anyio.Event()
    async with anyio.create_task_group() as tg:
        worker = queue.worker(queues, poll=0.05)
        tg.start_soon(lambda: tasker.run(worker, shutdown_trigger=stop.wait, grace=2))
        try:
            yield
        finally:
            stop.set()


async def finished(task: Task[Any, Any], enqueued: Enqueued[Any]) -> TaskInfo[Any]:
    """The task's info once it succeeded or died (polling, at most ten seconds)."""
    with anyio.fail_after(10):
        while True:
            info = await task.get(enqueued)
            if info is not None and info.state in (TaskState.SUCCEEDED, TaskState.DEAD):
                return info
            await anyio.sleep(0.01)


async def in_context(call: Any) -> Any:
    """``await call(ctx)`` with a real tasker context, and what it returned."""
    results: list[Any] = []

    async def job(ctx: Context) -> None:
        results.append(await call(ctx))

    await tasker.run(job)
    return results[0]


def test_bare_decorator_registers_and_returns_a_task() -> None:
    """``@queue.task`` without parentheses registers the handler under its qualified name."""
    queue = Queue(MemoryQueueBackend())

    @queue.task
    async def send_email(ctx: Context, payload: Email) -> int:
        """Send one e-mail."""
        return 1

    assert isinstance(send_email, Task)
    assert send_email.name == send_email.__qualname__
    assert send_email.name.endswith("<locals>.send_email")
    assert queue.task_names == [send_email.name]
    assert send_email.queue == "default"
    assert repr(send_email) == (
        f"<tasker.queue.Task {send_email.name!r} queue='default' handler={send_email.name}>"
    )


def test_decorator_with_arguments_registers_with_its_options() -> None:
    """``@queue.task(name, queue=...)`` and ``@queue.task()`` both register and return tasks."""
    queue = Queue(MemoryQueueBackend())

    @queue.task("resize", queue="images", max_attempts=5, priority=3)
    async def resize(ctx: Context, payload: str) -> list[int]:
        return [len(payload)]

    @queue.task()
    async def ping(ctx: Context) -> str:
        return "pong"

    assert (resize.name, resize.queue) == ("resize", "images")
    assert ping.name == ping.__qualname__
    assert queue.task_names == sorted(["resize", ping.name])


@pytest.mark.anyio
async def test_enqueue_through_the_task_runs_it_and_get_returns_the_result(
    backend: QueueBackend,
) -> None:
    """An enqueue through the task runs the handler with the payload; ``get`` has its result."""
    queue = Queue(backend)
    seen: list[Email] = []

    @queue.task("send-email", queue="mail", max_attempts=2)
    async def send_email(ctx: Context, payload: Email) -> dict[str, int]:
        seen.append(payload)
        return {"sent": len(payload["to"])}

    enqueued = await send_email.enqueue({"to": "a@example.com", "subject": "hi"}, priority=1)
    assert not enqueued.deduplicated
    pending = await send_email.get(enqueued.id)
    assert pending is not None
    assert (pending.state, pending.result) == (TaskState.QUEUED, None)
    async with running(queue, "mail"):
        info = await finished(send_email, enqueued)
    assert seen == [{"to": "a@example.com", "subject": "hi"}]
    assert (info.state, info.result, info.queue, info.max_attempts) == (
        TaskState.SUCCEEDED,
        {"sent": 13},
        "mail",
        2,
    )


@pytest.mark.anyio
async def test_a_task_without_payload(backend: QueueBackend) -> None:
    """A ctx-only handler is a task without a payload: enqueued bare, called with ctx only."""
    queue = Queue(backend)
    runs: list[str] = []

    @queue.task
    async def ping(ctx: Context) -> str:
        runs.append("ping")
        return "pong"

    enqueued = await ping.enqueue()
    async with running(queue):
        info = await finished(ping, enqueued)
    assert (info.state, info.result) == (TaskState.SUCCEEDED, "pong")
    assert await in_context(ping) == "pong"
    assert runs == ["ping", "ping"]
    # By name, a payload for it is refused at once (the type only in the message).
    with pytest.raises(TypeError, match=r"takes no payload .* got a dict$"):
        await queue.enqueue(ping.name, {"secret": "hunter2"})


@pytest.mark.anyio
async def test_enqueue_by_name_and_the_task_share_validation_and_results() -> None:
    """The task enqueues by name: the same errors, and a result readable either way."""
    queue = Queue(MemoryQueueBackend())

    @queue.task("double")
    async def double(ctx: Context, payload: float) -> float:
        return payload * 2

    with pytest.raises(PayloadError, match="double"):
        await double.enqueue(float("nan"))
    with pytest.raises(ValueError, match="delay"):
        await double.enqueue(1, delay=-1)
    with pytest.raises(ValueError, match="give delay or at"):
        await double.enqueue(1, delay=1, at=datetime.now(UTC))
    by_name = await queue.enqueue("double", 4)
    by_task = await double.enqueue(5)
    async with running(queue):
        assert (await finished(double, by_name)).result == 8
        assert (await finished(double, by_task)).result == 10
    info = await queue.get(by_task.id)
    assert info is not None
    assert info.result == 10


@pytest.mark.anyio
async def test_steps_from_tasks_make_a_chain() -> None:
    """``task.step(payload)`` and ``task.step()`` are steps of chains, like ``queue.step``."""
    queue = Queue(MemoryQueueBackend())
    stored: list[str] = []
    done = anyio.Event()

    @queue.task("double")
    async def double(ctx: Context, payload: int) -> int:
        return payload * 2

    @queue.task("store")
    async def store(ctx: Context, payload: int) -> None:
        stored.append(f"stored {payload}")
        done.set()

    assert double.step(3, priority=2) == queue.step("double", 3, priority=2)
    await queue.enqueue_chain(double.step(3), double.step(), store.step())
    async with running(queue):
        with anyio.fail_after(10):
            await done.wait()
    assert stored == ["stored 12"]


@pytest.mark.anyio
async def test_calling_the_task_runs_the_handler() -> None:
    """A task is callable like its handler and carries its metadata, for unit tests."""
    queue = Queue(MemoryQueueBackend())

    async def send_email(ctx: Context, payload: Email) -> int:
        """Send one e-mail; return how many were sent."""
        assert not ctx.done
        return len(payload["subject"])

    task = queue.register("send-email", send_email)
    assert await in_context(lambda ctx: task(ctx, {"to": "a", "subject": "hello"})) == 5
    assert task.__wrapped__ is send_email
    assert (task.__name__, task.__qualname__, task.__module__, task.__doc__) == (
        send_email.__name__,
        send_email.__qualname__,
        send_email.__module__,
        send_email.__doc__,
    )
    assert inspect.signature(task) == inspect.signature(send_email)
    assert inspect.getdoc(Task), "the class keeps its own docstring"


def test_registered_names_stay_unique_and_a_task_can_be_registered_again() -> None:
    """A name used twice still raises; a task registers under a second name as its handler."""
    queue = Queue(MemoryQueueBackend())

    @queue.task("t")
    async def t(ctx: Context, payload: int) -> int:
        return payload

    with pytest.raises(ValueError, match="already registered"):

        @queue.task("t")
        async def other(ctx: Context, payload: int) -> int:
            return payload

    with pytest.raises(ValueError, match="already registered"):
        queue.register("t", t)

    @queue.task
    async def bare(ctx: Context, payload: int) -> int:
        return payload

    with pytest.raises(ValueError, match="already registered"):
        queue.task(bare.__wrapped__)
    again = queue.register("t2", t, max_attempts=1)
    assert again.__wrapped__ is t.__wrapped__
    assert (again.name, queue.task_names) == ("t2", sorted(["t", "t2", bare.name]))


def test_bad_handlers_and_constructors_are_refused() -> None:
    """A handler without a ctx is refused at registration; a Task is never built by hand."""
    queue = Queue(MemoryQueueBackend())

    async def no_arguments() -> None:
        pass

    with pytest.raises(TypeError, match=r"must take \(ctx, payload\) or \(ctx\)"):
        queue.register("none", no_arguments)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="no public constructor"):
        Task()
    assert queue.task_names == []


@pytest.mark.anyio
async def test_a_handler_without_a_readable_signature_gets_a_payload() -> None:
    """An async callable whose signature cannot be read is called as (ctx, payload), as before."""
    queue = Queue(MemoryQueueBackend())

    class Opaque:
        __signature__ = "unreadable"  # inspect.signature() raises TypeError

        async def __call__(self, ctx: Context, payload: int) -> int:
            return payload + 1

    task = queue.register("opaque", Opaque())
    assert await in_context(lambda ctx: task(ctx, 1)) == 2


@pytest.mark.anyio
async def test_get_refuses_the_id_of_another_task() -> None:
    """``task.get(id)`` of another task's id raises: its result would not have the type."""
    queue = Queue(MemoryQueueBackend())

    @queue.task("a")
    async def a(ctx: Context, payload: int) -> int:
        return payload

    @queue.task("b")
    async def b(ctx: Context, payload: str) -> str:
        return payload

    enqueued = await a.enqueue(1)
    with pytest.raises(ValueError, match="is a 'a' task, not 'b'"):
        await b.get(enqueued.id)
    assert await b.get("no-such-id") is None


# -- static typing ----------------------------------------------------------------------

#: Checked by mypy --strict in one run. A line ending in ``# E: text`` must have an error
#: containing ``text``; ``# N: text`` a note (``reveal_type``); every other line none.
_TYPED_SNIPPETS = """
from __future__ import annotations

from typing import TypedDict

from tasker import Context
from tasker.queue import Enqueued, MemoryQueueBackend, Queue, Task

queue = Queue(MemoryQueueBackend())


class Email(TypedDict):
    to: str
    subject: str


@queue.task
async def send_email(ctx: Context, payload: Email) -> int:
    return 1


@queue.task("resize", queue="images", max_attempts=5)
async def resize(ctx: Context, payload: str) -> list[int]:
    return [1]


@queue.task
async def ping(ctx: Context) -> str:
    return "pong"


async def correct(ctx: Context) -> None:
    typed: tuple[Task[Email, int], Task[str, list[int]], Task[None, str]] = (
        send_email,
        resize,
        ping,
    )
    enqueued: Enqueued[int] = await send_email.enqueue({"to": "a", "subject": "b"}, delay=1.0)
    await resize.enqueue("cat.png", priority=2, unique_key="cat")
    await ping.enqueue(held=True)
    info = await send_email.get(enqueued)
    if info is not None:
        result: int | None = info.result
        reveal_type(info.result)  # N: Revealed type is "int | None"
    sent: int = await send_email(ctx, {"to": "a", "subject": "b"})
    pong: str = await ping(ctx)
    queue.step("resize", 1), resize.step("x"), resize.step(queue="slow")
    await queue.enqueue("send-emial", {"too": 42})  # by name: untyped, so accepted
    registered: Task[str, list[int]] = queue.register("resize-2", resize)


async def wrong(ctx: Context) -> None:
    await send_email.enqueue({"too": 42})  # E: Extra key "too" for TypedDict "Email"
    await resize.enqueue(42)  # E: Argument 1 to "enqueue" of "Task" has incompatible type "int"
    await resize.enqueue()  # E: Missing positional argument "payload" in call to "enqueue"
    await ping.enqueue("x")  # E: No overload variant of "enqueue" of "Task" matches argument
    await resize.enqueue("x", delay="soon")  # E: Argument "delay" to "enqueue" of "Task"
    info = await send_email.get("some-id")
    if info is not None:
        wrong: str = info.result  # E: (expression has type "int | None", variable has type "str")
    sent: str = await send_email(ctx, {"to": "a", "subject": "b"})  # E: expression has type "int"
    resize.step(42)  # E: No overload variant of "step" of "Task" matches argument type "int"
    await ping(ctx, 1)  # E: No overload variant of "__call__" of "Task" matches argument
"""


def test_mypy_checks_payloads_and_results_at_the_call_site(tmp_path: Path) -> None:
    """mypy --strict accepts correct uses of a task and rejects a wrong payload or result type."""
    source = tmp_path / "typed_tasks_snippets.py"
    source.write_text(_TYPED_SNIPPETS.lstrip())
    expected: dict[int, tuple[str, str]] = {}
    for number, line in enumerate(source.read_text().splitlines(), start=1):
        marked = re.search(r"# ([EN]): (.+)$", line)
        if marked:
            expected[number] = ("error" if marked[1] == "E" else "note", marked[2])
    # Outside the repository (no pyproject.toml), tasker found on MYPYPATH and its own
    # modules not reported on (they have their own mypy run), a cache that starts empty.
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "mypy",
            "--strict",
            "--follow-imports=silent",
            "--no-error-summary",
            "--show-error-codes",
            "--cache-dir",
            str(tmp_path / ".mypy_cache"),
            source.name,
        ],
        cwd=tmp_path,
        env={**os.environ, "MYPYPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=100,
        check=False,
    )
    assert proc.returncode == 1, proc.stdout + proc.stderr
    found: dict[int, list[tuple[str, str]]] = {}
    for report in proc.stdout.splitlines():
        parsed = re.match(rf"{re.escape(source.name)}:(\d+): (error|note): (.*)$", report)
        assert parsed, f"unexpected mypy output: {report!r}\n{proc.stdout}"
        found.setdefault(int(parsed[1]), []).append((parsed[2], parsed[3]))
    for number, (kind, text) in expected.items():
        assert any(k == kind and text in message for k, message in found.get(number, [])), (
            f"line {number}: no {kind} containing {text!r}\n{proc.stdout}"
        )
    unexpected = {
        number: reports
        for number, reports in found.items()
        if number not in expected and any(kind == "error" for kind, _ in reports)
    }
    assert not unexpected, f"errors on lines that are correct: {unexpected}\n{proc.stdout}"
