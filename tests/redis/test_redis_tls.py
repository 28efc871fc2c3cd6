"""``rediss://``: a private redis-server that speaks only TLS, with a CA of the test's own."""

from __future__ import annotations

import gc
import shutil
import ssl
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tasker import BackendConfigurationError
from tasker.backends import permanent_fault
from tasker.queue import NewTask
from tasker_redis import RedisQueueBackend

from .servers import free_port

pytestmark = pytest.mark.anyio


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


@pytest.fixture
def tls_server(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A redis-server with TLS only on a free port: its ``rediss://`` URL and CA file."""
    if shutil.which("openssl") is None or shutil.which("redis-server") is None:
        pytest.fail("the TLS test needs openssl and redis-server on PATH")
    _openssl(
        "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.crt",
        "-days", "2", "-subj", "/CN=tasker test CA", cwd=tmp_path,
    )  # fmt: skip
    _openssl(
        "req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key", "-out", "server.csr",
        "-subj", "/CN=127.0.0.1", cwd=tmp_path,
    )  # fmt: skip
    (tmp_path / "ext.cnf").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    _openssl(
        "x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
        "-CAcreateserial", "-out", "server.crt", "-days", "2", "-extfile", "ext.cnf",
        cwd=tmp_path,
    )  # fmt: skip
    port = free_port()
    server = subprocess.Popen(
        [
            "redis-server", "--port", "0", "--tls-port", str(port), "--bind", "127.0.0.1",
            "--tls-cert-file", "server.crt", "--tls-key-file", "server.key",
            "--tls-ca-cert-file", "ca.crt", "--tls-auth-clients", "no", "--save", "",
            "--dir", str(tmp_path),
        ],
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 20
        while (
            subprocess.run(
                ["redis-cli", "--tls", "--cacert", "ca.crt", "-p", str(port), "ping"],
                cwd=tmp_path,
                capture_output=True,
                check=False,
            ).stdout.strip()
            != b"PONG"
        ):
            if server.poll() is not None or time.monotonic() > deadline:
                pytest.fail("the TLS redis-server did not start")
            time.sleep(0.05)
        yield f"rediss://127.0.0.1:{port}/0", tmp_path / "ca.crt"
    finally:
        server.kill()
        server.wait()


async def test_a_queue_over_tls(tls_server: tuple[str, Path]) -> None:
    url, ca = tls_server
    backend = RedisQueueBackend(url, ssl_context=ssl.create_default_context(cafile=str(ca)))
    try:
        now = await backend.time()
        task = NewTask(
            id="tls-1", name="t", queue="default", payload=b"1", run_at=now, created_at=now
        )
        await backend.enqueue([task], now=now)
        claimed = await backend.claim(["default"], 1, worker="w", lease=30, now=now)
        assert [t.id for t in claimed] == ["tls-1"]
    finally:
        await backend.aclose()


async def test_an_untrusted_certificate_is_a_permanent_fault(
    tls_server: tuple[str, Path],
) -> None:
    """Without the CA (the system's store does not know it) the connection is refused, and
    retrying cannot help: the fix names ``ssl_context``."""
    url, _ = tls_server
    backend = RedisQueueBackend(url)
    try:
        with pytest.raises(Exception) as caught:  # noqa: PT011 - the driver's error type
            await backend.time()
        fault = permanent_fault(caught.value)
        assert fault is not None, repr(caught.value)
        assert "certificate" in fault.problem
        assert "ssl_context" in fault.fix
        assert not isinstance(caught.value, BackendConfigurationError)
    finally:
        await backend.aclose()
        gc.collect()  # nothing of the driver's left to warn about (see _connection.py)
