"""Wake-ups across the processes sharing one SQLite queue: a Unix datagram socket each.

A process whose worker waits for work binds a datagram socket in ``<db>.wake/`` (beside the
database file); a process that commits work (an enqueue, a retry, a release) sends one
byte to every socket there, so a worker in another process starts a task within about a
millisecond of its commit instead of at its next ``PRAGMA data_version`` poll (every 20 ms).
No server, no shared memory: the files in that directory are the registry, one per waiting
process, and a socket whose process died refuses the datagram (``ECONNREFUSED``): the sender
removes its file. On Linux the sockets live in the abstract namespace (named after the
directory and the file), so no socket path can be too long; elsewhere the file is the
socket itself, if its path fits the 104 bytes a socket address allows.

Rules that keep it correct rather than merely fast:

- A waiter never drains before it waits: a poke that arrives between its last claim and its
  wait makes the wait return at once (a claim that finds nothing is cheap; a missed commit
  would wait for the fallback poll).
- A socket bound just now may have missed pokes sent with the old list of sockets: the
  first wait after binding returns at once, and the claim after it sees those commits.
- Everything degrades to the poll: no Unix sockets (Windows), a path longer than the
  socket limit, a directory it cannot write, a send the peer's user may not make. Then
  ``PRAGMA data_version`` still wakes the worker, as before, and a poke costs nothing.
- The list of sockets is read again only when the directory changes (its mtime), so a
  commit costs one ``stat`` and one ``sendto`` per waiting process.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import logging
import os
import socket
import sys
import uuid
from pathlib import Path

__all__ = ["WakeChannel"]

logger = logging.getLogger("tasker.queue")

#: The longest path a Unix socket address takes (104 bytes on macOS, 108 on Linux).
_MAX_PATH = 100
#: Linux's abstract namespace: socket names that are no files, so of any directory's length.
_ABSTRACT = sys.platform.startswith("linux")


class WakeChannel:
    """This process's end of the wake-up sockets of one database file."""

    __slots__ = (
        "_directory",
        "_listening",
        "_mtime",
        "_namespace",
        "_out",
        "_path",
        "_peers",
        "_usable",
    )

    def __init__(self, database: Path) -> None:
        self._directory = database.with_name(database.name + ".wake")
        self._listening: socket.socket | None = None
        self._path: str | None = None  # this process's file in the directory
        self._out: socket.socket | None = None
        self._peers: list[tuple[str, str]] = []  # (file, socket address)
        self._mtime: int | None = None
        self._usable = hasattr(socket, "AF_UNIX")
        # What names this directory's sockets in the abstract namespace: its real path.
        self._namespace = hashlib.sha256(
            os.fsencode(os.path.realpath(self._directory))
        ).hexdigest()[:24]

    def _address(self, name: str) -> str:
        if _ABSTRACT:
            return f"\0tasker-wake-{self._namespace}-{name}"
        return str(self._directory / name)

    def listen(self) -> tuple[socket.socket | None, bool]:
        """This process's socket (bound on first use), and whether it was bound just now.
        None when wake-ups cannot work here (the caller polls)."""
        if self._listening is not None or not self._usable:
            return self._listening, False
        name = f"{os.getpid()}-{uuid.uuid4().hex[:8]}.sock"
        path = str(self._directory / name)
        if not _ABSTRACT and len(os.fsencode(path)) > _MAX_PATH:
            self._usable = False
            logger.debug("queue wake-ups: %s is too long a socket path; polling", path)
            return None, False
        try:
            self._directory.mkdir(mode=0o700, exist_ok=True)
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            try:
                sock.setblocking(False)
                sock.bind(self._address(name))
                if _ABSTRACT:  # the file says it listens (a path-bound socket is its file)
                    with open(path, "x"):
                        pass
            except BaseException:
                sock.close()
                raise
        except OSError as exc:
            self._usable = False
            logger.debug("queue wake-ups unavailable (%s); polling", exc)
            return None, False
        self._listening, self._path = sock, path
        return sock, True

    def drain(self) -> None:
        """Read the pokes that woke this process (after a wait returned)."""
        sock = self._listening
        if sock is None:
            return
        with contextlib.suppress(OSError):
            while sock.recv(64):
                pass

    def poke(self) -> None:
        """Tell every waiting process that work may be there (best effort, never raises)."""
        if not self._usable:
            return
        try:
            mtime = os.stat(self._directory).st_mtime_ns
        except OSError:
            return  # nobody ever waited: no directory
        if mtime != self._mtime:
            try:
                names = os.listdir(self._directory)
            except OSError:
                return
            self._mtime = mtime
            self._peers = [
                (str(self._directory / name), self._address(name))
                for name in names
                if name.endswith(".sock")
            ]
        out = self._out
        if out is None:
            try:
                out = self._out = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
                out.setblocking(False)
            except OSError:
                self._usable = False
                return
        for path, address in self._peers:
            try:
                out.sendto(b"!", address)
            except BlockingIOError:
                pass  # its buffer is full of pokes already: it will wake
            except OSError as exc:
                if exc.errno in (errno.ECONNREFUSED, errno.ENOENT) and path != self._path:
                    # Its process died (nothing bound), or it left: forget it.
                    with contextlib.suppress(OSError):
                        os.unlink(path)
                    self._mtime = None

    def close(self) -> None:
        """Close this process's sockets and remove its socket file."""
        sock, self._listening = self._listening, None
        if sock is not None:
            sock.close()
        if self._path is not None:
            with contextlib.suppress(OSError):
                os.unlink(self._path)
            self._path = None
        out, self._out = self._out, None
        if out is not None:
            out.close()
