"""The server examples in-process: their "listening on" line is a promise a client can rely on."""

from __future__ import annotations

import importlib.util
import io
import socket
import sys
from types import ModuleType

import anyio
import pytest

import tasker

from .helpers import ROOT, free_port


def load_example(name: str = "http_server") -> ModuleType:
    """Import examples/<name>.py as a module (examples are scripts, not a package)."""
    spec = importlib.util.spec_from_file_location(
        f"example_{name}", ROOT / "examples" / f"{name}.py"
    )
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class ConnectOnAnnouncement(io.StringIO):
    """A stdout that, the moment "listening on" is written, connects to the port once.

    The connection is made synchronously inside ``write``, so the server has had no chance to
    progress between the announcement and the attempt: it succeeds only if the socket was
    already listening when the line was printed.
    """

    def __init__(self, port: int) -> None:
        super().__init__()
        self.port = port
        self.outcome: str | OSError | None = None
        self.announced = anyio.Event()

    def write(self, text: str, /) -> int:
        if "listening on" in text and self.outcome is None:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=2).close()
            except OSError as exc:
                self.outcome = exc
            else:
                self.outcome = "accepted"
            self.announced.set()
        return super().write(text)


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])  # the example runs uvicorn
async def test_listening_line_is_printed_once_connections_are_accepted(
    anyio_backend: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A client that connects as soon as it reads "listening on" is accepted, not refused."""
    example = load_example()
    port = free_port()
    probe = ConnectOnAnnouncement(port)
    monkeypatch.setattr(sys, "stdout", probe)
    with anyio.fail_after(20):
        await tasker.run(example.http_job(port), shutdown_trigger=probe.announced.wait)
    assert probe.outcome == "accepted"
    assert f"listening on http://127.0.0.1:{port}\n" in probe.getvalue()


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["trio"])  # the example runs hypercorn on trio
async def test_trio_example_announces_only_a_listening_server(
    anyio_backend: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """examples/trio_server.py too: the line comes once hypercorn's sockets listen."""
    example = load_example("trio_server")
    port = free_port()
    probe = ConnectOnAnnouncement(port)
    monkeypatch.setattr(sys, "stdout", probe)
    with anyio.fail_after(20):
        await tasker.run(example.http_job(port), shutdown_trigger=probe.announced.wait)
    assert probe.outcome == "accepted"
    assert f"listening on http://127.0.0.1:{port}\n" in probe.getvalue()
