"""tasker_nats' connections: every kind of credential, TLS, fail-fast faults and outages,
reconnecting after a restart, and no secret in a repr, a log line or an exception."""

from __future__ import annotations

import logging
import shutil
import socket
import ssl
import subprocess
import time
from pathlib import Path

import anyio
import pytest

import tasker
import tasker_nats
from tasker.backends import permanent_fault
from tasker_nats import NatsSetupError, NatsSource, NatsStateRepository

from .servers import (
    OperatorSetup,
    PrivateNats,
    TlsFiles,
    free_port,
    make_operator_setup,
    make_tls_files,
    new_user_nkey,
)

pytestmark = pytest.mark.anyio

SECRET = "wrong-horse-$#-battery"  # noqa: S105 - a test password


def _answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
            return sock.recv(4) == b"INFO"
    except OSError:
        return False


async def _now(source: NatsSource, namespace: str = "conn") -> float:
    repository = NatsStateRepository(source, namespace=namespace)
    try:
        return (await repository.now()).timestamp()
    finally:
        await repository.aclose()


@pytest.fixture(scope="module")
def operator_setup(tmp_path_factory: pytest.TempPathFactory) -> OperatorSetup:
    return make_operator_setup(tmp_path_factory.mktemp("operator"))


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    return make_tls_files(tmp_path_factory.mktemp("tls"))


async def test_user_and_password_in_the_url() -> None:
    with PrivateNats(users=[("app", SECRET)]) as server:
        good = NatsSource(server.url.replace("://", f"://app:{SECRET}@"))
        assert abs(await _now(good) - time.time()) < 5
        await good.aclose()
        bad = NatsSource(server.url.replace("://", "://app:nope@"))
        started = time.monotonic()
        with pytest.raises(NatsSetupError) as caught:
            await _now(bad)
        assert time.monotonic() - started < 5  # failed fast, not retried for ever
        assert "refused the login" in str(caught.value)
        assert "nope" not in str(caught.value)
        assert permanent_fault(caught.value) is not None
        assert SECRET not in repr(good)
        assert "nope" not in repr(bad)


async def test_token_option_and_token_in_the_url() -> None:
    with PrivateNats(token=SECRET) as server:
        assert abs(await _now(NatsSource(server.url, token=SECRET)) - time.time()) < 5
        in_url = NatsSource(server.url.replace("://", f"://{SECRET}@"))
        assert abs(await _now(in_url) - time.time()) < 5
        assert SECRET not in repr(in_url)
        assert SECRET not in in_url.url
        with pytest.raises(NatsSetupError, match="refused the login"):
            await _now(NatsSource(server.url, token="other"))  # noqa: S106


async def test_nkey_seed_file(tmp_path: Path) -> None:
    seed, public = new_user_nkey()
    seed_file = tmp_path / "user.nk"
    seed_file.write_text(seed)
    with PrivateNats(nkey_users=[public]) as server:
        assert abs(await _now(NatsSource(server.url, nkey_seed=seed_file)) - time.time()) < 5
        other, _ = new_user_nkey()
        other_file = tmp_path / "other.nk"
        other_file.write_text(other)
        with pytest.raises(NatsSetupError, match="refused the login"):
            await _now(NatsSource(server.url, nkey_seed=other_file))


async def test_creds_file(operator_setup: OperatorSetup) -> None:
    with PrivateNats(operator_mode=operator_setup) as server:
        source = NatsSource(server.url, credentials=operator_setup.creds)
        assert abs(await _now(source) - time.time()) < 5
        await source.aclose()
        with pytest.raises(NatsSetupError, match="refused the login"):
            await _now(NatsSource(server.url))  # no credentials at all


async def test_tls(tls_files: TlsFiles) -> None:
    with PrivateNats(tls=tls_files) as server:
        trusting = ssl.create_default_context(cafile=str(tls_files.ca))
        assert abs(await _now(NatsSource(server.url, tls=trusting)) - time.time()) < 5
        with pytest.raises(ssl.SSLCertVerificationError) as caught:
            await _now(NatsSource(server.url, tls=ssl.create_default_context()))
        fault = permanent_fault(caught.value)
        assert fault is not None
        assert "certificate" in fault.problem.lower()


async def test_a_server_without_jetstream_fails_fast() -> None:
    with PrivateNats(jetstream=False) as server:
        with pytest.raises(NatsSetupError) as caught:
            await _now(NatsSource(server.url))
        assert "JetStream is not enabled" in str(caught.value)
        assert "-js" in str(caught.value)  # the fix


async def test_a_server_older_than_min_version_fails_fast(tmp_path: Path) -> None:
    """The machine's Debian server (2.9) is older than MIN_VERSION: run a private one of it."""
    binary = shutil.which("nats-server", path="/usr/sbin:/usr/bin")
    if binary is None:
        pytest.fail("this test needs Debian's nats-server 2.9 (apt-get install nats-server)")
    version = (await anyio.run_process([binary, "--version"])).stdout.decode()
    assert "v2.9" in version or "v2.10" in version, version
    port = free_port()
    process = subprocess.Popen(  # noqa: ASYNC220 - a server for the whole test
        [binary, "-a", "127.0.0.1", "-p", str(port), "-js", "-sd", str(tmp_path)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        source = NatsSource(f"nats://127.0.0.1:{port}")
        with anyio.fail_after(10):
            while not _answers(port):  # noqa: ASYNC110 - polling another process's port
                await anyio.sleep(0.05)
        with pytest.raises(NatsSetupError) as caught:
            await _now(source)
        assert "older than 2.11" in str(caught.value)
        assert "upgrade the server" in str(caught.value)
    finally:
        process.terminate()
        process.wait()


async def test_nothing_listening_is_an_outage_not_a_fault() -> None:
    source = NatsSource(f"nats://app:{SECRET}@127.0.0.1:{free_port()}")
    started = time.monotonic()
    with pytest.raises(ConnectionError) as caught:
        await _now(source)
    assert time.monotonic() - started < 10
    assert permanent_fault(caught.value) is None
    assert SECRET not in str(caught.value)


async def test_reconnects_after_a_restart(private_nats: PrivateNats) -> None:
    source = NatsSource(private_nats.url)
    repository = NatsStateRepository(source, namespace="restart", clock_resync=0)
    before = await repository.now()
    private_nats.restart()
    with anyio.fail_after(20):
        while True:
            try:
                after = await repository.now()
                break
            except Exception:
                await anyio.sleep(0.1)
    assert after > before
    await repository.aclose()


async def test_outage_is_logged_once_and_its_end_too(
    private_nats: PrivateNats, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="tasker_nats")
    source = NatsSource(private_nats.url)
    repository = NatsStateRepository(source, namespace="outage", clock_resync=0)
    await repository.now()
    private_nats.stop()
    await anyio.sleep(1.5)  # nats-py retries every 0.25 s meanwhile
    private_nats.start()
    with anyio.fail_after(20):
        while True:
            try:
                await repository.now()
                break
            except Exception:
                await anyio.sleep(0.1)
    lost = [r for r in caplog.records if "lost the connection" in r.getMessage()]
    back = [r for r in caplog.records if "reconnected" in r.getMessage()]
    messages = [r.getMessage() for r in caplog.records]
    assert len(lost) == 1, messages
    assert len(back) == 1, messages
    await repository.aclose()


def test_bad_options_name_the_problem(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="nats://"):
        NatsSource("redis://localhost")
    with pytest.raises(ValueError, match="no server"):
        NatsSource("")
    with pytest.raises(TypeError, match="url"):
        NatsSource(4222)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="credentials: no such file"):
        NatsSource("nats://localhost", credentials=tmp_path / "missing.creds")
    with pytest.raises(ValueError, match="nkey_seed: no such file"):
        NatsSource("nats://localhost", nkey_seed=tmp_path / "missing.nk")
    with pytest.raises(TypeError, match="tls"):
        NatsSource("tls://localhost", tls="yes")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="connect_timeout"):
        NatsSource("nats://localhost", connect_timeout=0)
    # A password never shows in the message of a rejected URL.
    with pytest.raises(ValueError, match="each server must be") as caught:
        NatsSource(f"nats://app:{SECRET}@h, http://app:{SECRET}@h")
    assert SECRET not in str(caught.value)


def test_several_servers_and_their_repr() -> None:
    source = NatsSource([f"nats://a:{SECRET}@h1:4222", "nats://h2:4222"])
    assert SECRET not in repr(source)
    assert "h1:4222" in repr(source)
    assert "h2" in repr(source)
    assert NatsSource("nats://h1, nats://h2").url == "nats://h1,nats://h2"


def test_trio_is_refused_with_the_reason() -> None:
    async def main() -> None:
        await NatsSource("nats://127.0.0.1:1").jetstream()

    with pytest.raises(tasker_nats.AsyncioRequiredError, match="asyncio-only") as caught:
        anyio.run(main, backend="trio")
    assert "trio" in str(caught.value)
    assert permanent_fault(caught.value) is not None
    assert isinstance(caught.value, tasker.TaskerError)


async def test_a_missing_permission_fails_fast_with_the_fix() -> None:
    """A user who may not touch the lock bucket: the refused subject would only time out
    (nats-py hears the reason in its error callback alone); the next call raises it."""
    config = """
authorization {
  users: [
    {user: app, password: "pa55-w0rd", permissions: {
      publish: {allow: ["$JS.API.>", "$KV.allowed_schedules.>"]},
      subscribe: {allow: ["_INBOX.>"]}}}
  ]
}
"""
    with PrivateNats(extra_config=config) as server:
        lockers = tasker_nats.NatsLockerFactory(
            server.url.replace("://", "://app:pa55-w0rd@"), namespace="denied"
        )
        locker = lockers.locker("nightly")
        started = time.monotonic()
        first = None
        try:
            await locker.try_lock()
        except Exception as exc:  # the first refused publish times out: an outage
            first = exc
        assert first is not None
        assert permanent_fault(first) is None
        with pytest.raises(NatsSetupError) as caught:
            await locker.try_lock()  # the next one knows why
        assert time.monotonic() - started < 15
        assert "lacks a permission" in str(caught.value)
        assert "$KV.<namespace>_*.>" in str(caught.value)
        assert "pa55-w0rd" not in str(caught.value)
        assert permanent_fault(caught.value) is not None
        await lockers.aclose()
