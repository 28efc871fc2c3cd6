"""``tasker status --amqp``: RabbitMQ's queues from the command line (a real process), by
passive declares, and with the management API (the broker's plugin, enabled for the test
and disabled again if it was off) unacknowledged counts too."""

from __future__ import annotations

import dataclasses
import json
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import anyio
import pytest

from tasker.queue import NewTask
from tasker_amqp import AmqpQueueBackend, broker_stats

from ..test_cli import completed, tasker_cmd
from .broker import amqp_url, delete_queues

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

_PLUGIN = "rabbitmq_management"


def _management_url() -> str:
    broker = urlsplit(amqp_url())
    return f"http://guest:guest@{broker.hostname}:15672"


def _answers(url: str) -> bool:
    request = urllib.request.Request(  # noqa: S310 - a local http URL
        url.replace("guest:guest@", "") + "/api/overview"
    )
    request.add_header("Authorization", "Basic Z3Vlc3Q6Z3Vlc3Q=")  # guest:guest
    try:
        with urllib.request.urlopen(request, timeout=2):  # noqa: S310 - a local http URL
            return True
    except urllib.error.HTTPError as exc:  # starting: it answers, not yet with the API
        exc.close()
        return False
    except OSError:
        return False


@pytest.fixture(scope="module")
def management() -> Iterator[str]:
    """The management API's URL, the plugin enabled for the module (and disabled after
    if it was off)."""
    if shutil.which("rabbitmq-plugins") is None:
        pytest.fail(
            "rabbitmq-plugins is not installed: start RabbitMQ (`rabbitmq-server -detached`)"
        )
    listed = subprocess.run(
        ["rabbitmq-plugins", "list", "-e", "-m"], capture_output=True, text=True, check=False
    ).stdout.split()
    was_on = _PLUGIN in listed
    url = _management_url()
    if not was_on:
        subprocess.run(
            ["rabbitmq-plugins", "enable", _PLUGIN], capture_output=True, check=True, timeout=120
        )
    try:
        deadline = time.monotonic() + 60
        while not _answers(url):
            if time.monotonic() > deadline:
                pytest.fail("the management plugin did not answer within 60 s")
            time.sleep(0.2)
        yield url
    finally:
        if not was_on:
            subprocess.run(
                ["rabbitmq-plugins", "disable", _PLUGIN], capture_output=True, timeout=120
            )


async def _status(*args: str, state: Path) -> subprocess.CompletedProcess[str]:
    """``tasker status ARGS``, a real process, run in a thread."""
    return await anyio.to_thread.run_sync(
        lambda: completed(tasker_cmd("status", *args, state=state))
    )


async def _loaded(names: str) -> AmqpQueueBackend:
    """Three tasks on ``names.q``; a consumer (prefetch 1) holding one of them."""
    backend = AmqpQueueBackend(
        amqp_url(), exchange=names, namespace=names, dead_queue=f"{names}.dead", prefetch=1
    )
    now = await backend.time()
    tasks = [
        NewTask(id=f"t{i}", name="job", queue="q", payload=b"1", run_at=now, created_at=now)
        for i in range(3)
    ]
    await backend.enqueue(tasks, now=now)
    with anyio.fail_after(20):
        while not await backend.claim(["q"], 1, worker="w", lease=60, now=now):  # noqa: ASYNC110
            await anyio.sleep(0.02)
    return backend


async def test_status_shows_ready_messages_and_consumers(names: str, tmp_path: Path) -> None:
    backend = await _loaded(names)
    try:
        url, queue = amqp_url(), f"{names}.q"
        missing = f"{names}.missing"
        # A missing queue closes the channel of its passive declare: the next one reopens it.
        asked = [missing, queue, f"{missing}2", f"{names}.dead"]
        args = [arg for name in asked for arg in ("--amqp-queue", name)]
        result = await _status("--amqp", url, *args, "--json", state=tmp_path)
        assert result.returncode == 0, result.stderr
        rows = json.loads(result.stdout)["broker"]
        # The missing queues are left out; one of three is delivered (not ready).
        assert rows == [
            {"name": f"{names}.q", "ready": 2, "unacked": None, "consumers": 1},
            {"name": f"{names}.dead", "ready": 0, "unacked": None, "consumers": 0},
        ]
        table = await _status("--amqp", url, "--amqp-queue", queue, state=tmp_path)
        assert f"{names}.q" in table.stdout
        assert "--amqp-management" in table.stdout  # says how to see unacked counts
        assert "guest:guest" not in table.stdout + table.stderr
    finally:
        await backend.aclose()
        await delete_queues(amqp_url(), f"{names}.q", f"{names}.dead")


def test_status_without_queues_or_management_is_a_usage_error(tmp_path: Path) -> None:
    result = completed(tasker_cmd("status", "--amqp", "amqp://127.0.0.1/", state=tmp_path))
    assert result.returncode == 2
    assert "--amqp-queue" in result.stderr
    assert "cannot list" in result.stderr
    lone = completed(tasker_cmd("status", "--amqp-queue", "x", state=tmp_path))
    assert lone.returncode == 2
    assert "need --amqp" in lone.stderr


async def test_the_management_api_counts_unacked_messages(
    names: str, management: str, tmp_path: Path
) -> None:
    """The API's figures are refreshed every few seconds: polled until they show."""
    backend = await _loaded(names)
    try:
        want = {"name": f"{names}.q", "ready": 2, "unacked": 1, "consumers": 1}
        with anyio.fail_after(60):
            while True:
                stats = await broker_stats(
                    backend.source, [f"{names}.q"], management_url=management
                )
                if [dataclasses.asdict(s) for s in stats] == [want]:
                    break
                await anyio.sleep(0.5)
        result = await _status(
            "--amqp", amqp_url(), "--amqp-management", management, "--json", state=tmp_path
        )
        assert result.returncode == 0, result.stderr
        rows = json.loads(result.stdout)["broker"]
        assert want in rows  # every queue of the virtual host is listed
        assert {f"{names}.dead"} <= {row["name"] for row in rows}
    finally:
        await backend.aclose()
        await delete_queues(amqp_url(), f"{names}.q", f"{names}.dead")


async def test_a_management_api_that_refuses_says_why(names: str, management: str) -> None:
    wrong = management.replace("guest:guest@", "guest:wrong@")
    with pytest.raises(ConnectionError, match="401") as caught:
        await broker_stats(amqp_url(), management_url=wrong)
    assert "wrong" not in str(caught.value)
    closed = "http://guest:guest@127.0.0.1:1"
    with pytest.raises(ConnectionError, match="rabbitmq-plugins enable"):
        await broker_stats(amqp_url(), management_url=closed)
