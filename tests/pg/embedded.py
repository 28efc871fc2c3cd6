"""A throw-away Postgres server that a test can stop and start (for restart and outage tests).

It uses the binaries shipped by the ``pgserver`` package (or the local installation's
``/usr/lib/postgresql/*/bin``), a data directory in a temp dir, and a free TCP port on
127.0.0.1. Postgres refuses to run as root, so under root the server runs as an unprivileged
user (``pgserver``, created by the pgserver package if needed, else ``postgres``).
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
import warnings
from pathlib import Path

from ..helpers import free_port


def _bin_dir() -> Path:
    try:
        with warnings.catch_warnings():  # platformdirs warns about XDG_RUNTIME_DIR as root
            warnings.simplefilter("ignore")
            from pgserver._commands import POSTGRES_BIN_PATH
    except ImportError:
        pass
    else:
        if (Path(POSTGRES_BIN_PATH) / "pg_ctl").exists():
            return Path(POSTGRES_BIN_PATH)
    installed = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"))
    if not installed:
        raise RuntimeError("no Postgres binaries: install pgserver or a local Postgres")
    return installed[-1].parent


def _unprivileged_user(bin_dir: Path) -> str | None:
    if os.geteuid() != 0:
        return None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from pgserver.utils import (
            ensure_folder_permissions,
            ensure_prefix_permissions,
            ensure_user_exists,
        )

    for user in ("pgserver", "postgres"):
        try:
            pwd.getpwnam(user)
        except KeyError:
            continue
        break
    else:
        user = "pgserver"
        ensure_user_exists(user)
    # The user must be able to read and run the binaries (pgserver does the same).
    ensure_prefix_permissions(bin_dir)
    ensure_folder_permissions(bin_dir, 0o555)
    ensure_folder_permissions(bin_dir.parent / "lib", 0o444)
    return user


class EmbeddedPostgres:
    """A private Postgres on 127.0.0.1:<free port>, user and database postgres.

    Trust auth, unless a ``password`` is given: then the server asks for it (scram-sha-256).
    """

    def __init__(self, password: str | None = None) -> None:
        self.password = password
        self.bin_dir = _bin_dir()
        self.user = _unprivileged_user(self.bin_dir)
        self.directory = Path(tempfile.mkdtemp(prefix="tasker-pg-restart-"))
        self.data = self.directory / "data"
        self.port = free_port()
        self.data.mkdir()
        if self.user is not None:
            info = pwd.getpwnam(self.user)
            for path in (self.directory, self.data):
                os.chown(path, info.pw_uid, info.pw_gid)
        auth = ["--auth=trust"]
        if password is not None:
            secret = self.directory / "pwfile"
            secret.write_text(password + "\n")
            if self.user is not None:
                info = pwd.getpwnam(self.user)
                os.chown(secret, info.pw_uid, info.pw_gid)
            auth = ["--auth=scram-sha-256", f"--pwfile={secret}"]
        self._run(
            "initdb",
            "-D",
            str(self.data),
            *auth,
            "-U",
            "postgres",
            "--encoding=utf8",
            "--no-sync",
        )

    @property
    def dsn(self) -> str:
        """The server's DSN (database ``postgres``; with the password, if there is one)."""
        login = "postgres" if self.password is None else f"postgres:{self.password}"
        return f"postgresql://{login}@127.0.0.1:{self.port}/postgres"

    def _run(self, program: str, *args: str) -> None:
        result = subprocess.run(
            [str(self.bin_dir / program), *args],
            user=self.user,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
            cwd=self.directory,
        )
        if result.returncode != 0:
            log = self.directory / "log"
            raise RuntimeError(
                f"{program} failed ({result.returncode}): {result.stderr[-2000:]}"
                f"\n{log.read_text()[-2000:] if log.exists() else ''}"
            )

    def start(self) -> None:
        """Start the server and wait until it accepts connections."""
        options = f"-h 127.0.0.1 -p {self.port} -k {self.directory} -c fsync=off"
        self._run(
            "pg_ctl", "-D", str(self.data), "-l", str(self.directory / "log"), "-o", options,
            "-w", "start",
        )  # fmt: skip

    def stop(self, mode: str = "fast") -> None:
        """Stop the server: ``fast`` ends every session (what a restart does)."""
        self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "stop")

    def cleanup(self) -> None:
        """Stop the server if it runs, and delete its directory."""
        if (self.data / "postmaster.pid").exists():
            self.stop("immediate")
        shutil.rmtree(self.directory, ignore_errors=True)
