"""tasker_amqp's connections: fail-fast faults, giving up after the retries, a connection
the broker drops, TLS, and no secret in a repr, a log line or an exception."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import quote, urlsplit

import anyio
import pytest

import tasker
import tasker_amqp
from tasker.backends import permanent_fault
from tasker.queue import NewTask, Queue
from tasker_amqp import (
    AmqpQueue,
    AmqpQueueBackend,
    AmqpSetupError,
    AmqpSource,
    AmqpUnreachableError,
)

from ..nats.servers import make_tls_files
from .broker import amqp_url, close_connections, delete_queues

pytestmark = pytest.mark.anyio

SECRET = "wrong-horse-$#-battery"  # noqa: S105 - a test password


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _task(task_id: str, queue: str, now: float, **changes: object) -> NewTask:
    fields: dict[str, object] = {
        "id": task_id,
        "name": "job",
        "queue": queue,
        "payload": b"{}",
        "run_at": now,
        "created_at": now,
    }
    fields.update(changes)
    return NewTask(**fields)  # type: ignore[arg-type]


def _with_vhost(url: str, vhost: str) -> str:
    parts = urlsplit(url)
    return parts._replace(path="/" + quote(vhost, safe="")).geturl()


def test_the_aiormq_lines_turned_down_are_still_aiormq_s() -> None:
    """tasker_amqp turns aiormq's outage lines down to DEBUG by their first words (it logs
    an outage once itself): should aiormq reword one, this says so, rather than the logs
    filling up with tracebacks at ERROR again."""
    import inspect

    import aiormq.connection

    from tasker_amqp._connection import _Quieter

    source = inspect.getsource(aiormq.connection)
    assert [p for p in _Quieter._OUTAGE if p not in source] == []


def test_trio_is_refused_with_the_reason() -> None:
    async def connect() -> None:
        await AmqpSource("amqp://127.0.0.1:1/").connection()

    async def claim() -> None:
        backend = AmqpQueueBackend("amqp://127.0.0.1:1/")
        await backend.claim(["default"], 1, worker="w", lease=30, now=0)

    for entry in (connect, claim):
        with pytest.raises(tasker_amqp.AsyncioRequiredError, match="asyncio-only") as caught:
            anyio.run(entry, backend="trio")
        assert "trio" in str(caught.value)
        assert permanent_fault(caught.value) is not None
        assert isinstance(caught.value, tasker.TaskerError)


def test_options_are_checked_when_built() -> None:
    with pytest.raises(ValueError, match="amqp:// or amqps://"):
        AmqpSource(f"http://guest:{SECRET}@host/")
    with pytest.raises(ValueError, match="percent-encoded") as caught:
        AmqpSource(f"amqp://guest:{SECRET}@host/")
    assert SECRET not in str(caught.value)
    with pytest.raises(ValueError, match="needs an amqps:// URL"):
        AmqpSource("amqp://host/", ssl_context=ssl.create_default_context())
    with pytest.raises(ValueError, match="reconnect_retries"):
        AmqpSource("amqp://host/", reconnect_retries=-1)
    with pytest.raises(ValueError, match="prefetch"):
        AmqpQueueBackend("amqp://host/", prefetch=0)
    with pytest.raises(ValueError, match="reserved"):
        AmqpQueueBackend("amqp://host/", headers={"job": {"x-match": "all"}})
    with pytest.raises(ValueError, match="declared twice"):
        AmqpQueueBackend("amqp://host/", queues=["a", AmqpQueue("a")])
    with pytest.raises(ValueError, match="also the dead_queue"):
        AmqpQueueBackend("amqp://host/", queues=["tasker.dead"])
    with pytest.raises(ValueError, match="amq"):
        AmqpQueueBackend("amqp://host/", exchange="amq.mine")
    with pytest.raises(TypeError, match="not one str"):
        AmqpQueue("a", binding_keys="a.#")  # type: ignore[arg-type]


def test_the_password_is_never_shown() -> None:
    url = f"amqp://guest:{quote(SECRET, safe='')}@127.0.0.1:1/"
    source = AmqpSource(url)
    backend = AmqpQueueBackend(source)
    for text in (repr(source), source.url, repr(backend)):
        assert SECRET not in text
        assert quote(SECRET, safe="") not in text
        assert "127.0.0.1:1" in text


async def test_a_refused_login_fails_fast_without_the_password(
    caplog: pytest.LogCaptureFixture,
) -> None:
    url = urlsplit(amqp_url())
    wrong = url._replace(netloc=f"guest:{quote(SECRET, safe='')}@{url.hostname}:{url.port}")
    backend = AmqpQueueBackend(wrong.geturl(), reconnect_retries=None)
    caplog.set_level(logging.DEBUG)
    try:
        with anyio.fail_after(30):  # no retry loop: it fails at once, retries unlimited
            with pytest.raises(AmqpSetupError) as caught:
                await backend.claim(["default"], 1, worker="w", lease=30, now=0)
    finally:
        await backend.aclose()
    message = str(caught.value)
    assert "refused the login" in message
    assert "password" in caught.value.fix
    fault = permanent_fault(caught.value)
    assert fault is not None
    for text in (message, repr(caught.value), caplog.text):
        assert SECRET not in text
        assert quote(SECRET, safe="") not in text


async def test_a_missing_vhost_fails_fast_with_the_fix() -> None:
    vhost = f"tasker-missing-{uuid.uuid4().hex[:6]}"
    source = AmqpSource(_with_vhost(amqp_url(), vhost))
    try:
        with anyio.fail_after(30), pytest.raises(AmqpSetupError) as caught:
            await source.connection()
    finally:
        await source.aclose()
    assert vhost in caught.value.problem
    assert "rabbitmqctl add_vhost" in caught.value.fix
    assert permanent_fault(caught.value) is not None


async def test_an_unreachable_broker_is_given_up_after_the_retries(
    caplog: pytest.LogCaptureFixture,
) -> None:
    port = _free_port()
    source = AmqpSource(
        f"amqp://guest:{quote(SECRET, safe='')}@127.0.0.1:{port}/",
        reconnect_retries=3,
        reconnect_interval=0.01,
    )
    caplog.set_level(logging.DEBUG)
    try:
        with anyio.fail_after(30), pytest.raises(AmqpUnreachableError) as caught:
            await source.connection()
    finally:
        await source.aclose()
    assert caught.value.attempts == 4  # the first try and three retries
    assert f"127.0.0.1:{port}" in str(caught.value)
    assert quote(SECRET, safe="") not in str(caught.value)
    fault = permanent_fault(caught.value)
    assert fault is not None
    assert "reconnect_retries" in fault.fix
    # The outage is logged once, not once per attempt.
    unreachable = [r for r in caplog.records if "unreachable" in r.getMessage()]
    assert len(unreachable) == 1
    # aiormq's own line per attempt is kept at DEBUG.
    assert not [
        r for r in caplog.records if r.levelno > logging.DEBUG and r.name == "aiormq.connection"
    ]
    assert quote(SECRET, safe="") not in caplog.text


def test_a_worker_whose_retries_run_out_makes_main_exit_non_zero() -> None:
    """gofort's dispatcher closes its workers when the retries run out; here the worker job
    fails with AmqpUnreachableError, and ``tasker.main`` exits 1."""
    backend = AmqpQueueBackend(
        f"amqp://127.0.0.1:{_free_port()}/", reconnect_retries=1, reconnect_interval=0.01
    )
    queue = Queue(backend)

    @queue.task
    async def job(payload: object) -> None:
        pass

    with pytest.raises(SystemExit) as exited:
        # No log_level: it would stay set on the tasker loggers for the tests after this.
        tasker.main(queue.worker(), grace=5)
    assert exited.value.code == 1


async def test_a_dropped_connection_loses_the_lease_and_the_task_comes_back(
    names: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The broker closes the connection under a running task: the heartbeat reports the
    lease lost, the backend reconnects by itself (topology and consumer restored, the
    outage logged once), and the task is delivered again with the attempt counted."""
    url = amqp_url()
    name = f"tasker-test-{names}"
    backend = AmqpQueueBackend(
        AmqpSource(url, name=name, reconnect_interval=0.05),
        exchange=names,
        namespace=names,
        dead_queue=f"{names}.dead",
    )
    caplog.set_level(logging.WARNING, logger="tasker_amqp")
    try:
        now = await backend.time()
        await backend.enqueue([_task("t1", "q", now, max_attempts=3)], now=now)
        assert await backend.wait_delivered(10)
        [first] = await backend.claim(["q"], 1, worker="w", lease=30, now=now)
        assert first.attempts == 1
        assert close_connections(name) == 1
        with anyio.fail_after(20):
            while await backend.heartbeat("w", ["t1"], lease=30, now=now):  # noqa: ASYNC110
                await anyio.sleep(0.02)
        with anyio.fail_after(20):
            again: list[object] = []
            while not again:
                again = list(await backend.claim(["q"], 1, worker="w2", lease=30, now=now))
                await anyio.sleep(0.02)
        [second] = again
        assert second.id == "t1"  # type: ignore[attr-defined]
        assert second.attempts == 2  # type: ignore[attr-defined]
        assert backend.source.generation == 2  # reconnected, once
        dropped = [r for r in caplog.records if "1 tasks running here lost" in r.getMessage()]
        assert len(dropped) == 1
    finally:
        await backend.aclose()
        await delete_queues(url, f"{names}.q", f"{names}.dead")


# -- TLS: a TLS-terminating proxy in front of the broker ----------------------------------


@contextlib.asynccontextmanager
async def _tls_proxy(directory: Path) -> AsyncIterator[tuple[int, Path]]:
    """A TLS listener on a free port that forwards to the broker's plain port: its port,
    and the CA that signed its certificate."""
    files = make_tls_files(directory)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(str(files.cert), str(files.key))
    broker = urlsplit(amqp_url())
    pipes: set[asyncio.Task[None]] = set()

    async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except (ConnectionError, ssl.SSLError):
            pass
        finally:
            writer.close()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(broker.hostname, broker.port)
        for task in (
            asyncio.ensure_future(pipe(reader, up_writer)),
            asyncio.ensure_future(pipe(up_reader, writer)),
        ):
            pipes.add(task)
            task.add_done_callback(pipes.discard)

    server = await asyncio.start_server(serve, "127.0.0.1", 0, ssl=context)
    try:
        yield server.sockets[0].getsockname()[1], files.ca
    finally:
        server.close()
        for task in list(pipes):
            task.cancel()
        await asyncio.gather(*pipes, return_exceptions=True)


async def test_a_queue_over_tls(tmp_path: Path, names: str) -> None:
    async with _tls_proxy(tmp_path) as (port, ca):
        broker = urlsplit(amqp_url())
        url = broker._replace(scheme="amqps", netloc=f"guest:guest@127.0.0.1:{port}").geturl()
        backend = AmqpQueueBackend(
            url,
            ssl_context=ssl.create_default_context(cafile=str(ca)),
            exchange=names,
            namespace=names,
            dead_queue=f"{names}.dead",
        )
        try:
            now = await backend.time()
            await backend.enqueue([_task("tls-1", "q", now)], now=now)
            assert await backend.wait_delivered(10)
            claimed = await backend.claim(["q"], 1, worker="w", lease=30, now=now)
            assert [t.id for t in claimed] == ["tls-1"]
            assert backend.source.server_version is not None
        finally:
            await backend.aclose()
            await delete_queues(amqp_url(), f"{names}.q", f"{names}.dead")


async def test_an_untrusted_certificate_fails_fast_naming_ssl_context(tmp_path: Path) -> None:
    async with _tls_proxy(tmp_path) as (port, _):
        source = AmqpSource(f"amqps://guest:guest@127.0.0.1:{port}/", reconnect_retries=None)
        try:
            with anyio.fail_after(30), pytest.raises(AmqpSetupError) as caught:
                await source.connection()
        finally:
            await source.aclose()
    assert "certificate" in caught.value.problem
    assert "ssl_context" in caught.value.fix
