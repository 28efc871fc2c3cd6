"""Every ```python block of README.md and docs/**/*.md runs as written, in a real process.

Each block is saved to a file in a fresh directory and run with this interpreter; it must
exit 0. An HTML comment on the line before the fence (invisible on GitHub and on the site)
says how, when a block is more than a program that runs and ends by itself:

- ``<!-- test: sigterm-after=N -->``: the program runs until it is stopped (a server, a
  worker). N seconds after it has installed its SIGTERM handler (``tasker.main`` is up),
  the test sends SIGTERM, as a deployment would, and expects exit 0.
- ``<!-- test: exit=N -->``: the exit status to expect instead of 0 (1 for a program whose
  job fails, 143 for one stopped hard after SIGTERM).
- ``<!-- test: postgres -->``: ``DATABASE_URL`` names a fresh database on the tests'
  Postgres server (found as ``tests/pg/conftest.py`` finds it), dropped afterwards.
- ``<!-- test: redis -->``: ``REDIS_URL`` names a database of its own (10 to 14, flushed
  before and after) on the tests' Redis server (found as ``tests/redis/conftest.py`` finds
  it).
- ``<!-- test: nats -->``: ``NATS_URL`` names a NATS server of the block's own (a private
  ``nats-server`` with JetStream, as ``tests/nats/servers.py`` starts them), stopped
  afterwards.
- ``<!-- test: amqp -->``: ``AMQP_URL`` names a RabbitMQ virtual host of the block's own on
  the machine's broker (as ``tests/amqp/broker.py`` makes them), deleted afterwards.
- ``<!-- test: pytest -->``: the block is a test module, run with ``python -m pytest``.
- ``<!-- test: timeout=N -->``: seconds the block may take (default 60).
- ``<!-- test: skip reason="..." -->``: not run; only for a block that cannot run at all.

Options combine (``<!-- test: sigterm-after=1 postgres -->``). A ```text block marked
``<!-- test: output -->`` after a python block is what that program prints: each of its
lines must appear in the program's standard output, in that order (other lines may come in
between). Every process also gets a free ``PORT``, and runs in its own working directory, so
the embedded defaults (``./.tasker``) start empty.

The blocks run in parallel threads (one process each), started together when the first of
them is needed, so the whole file takes about as long as its slowest block.
"""

from __future__ import annotations

import dataclasses
import os
import re
import shlex
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest

from .amqp.broker import fresh_vhost_url
from .helpers import ROOT, free_port
from .nats.servers import PrivateNats

# The Postgres tests' way of finding a server (TASKER_TEST_DSN, 127.0.0.1:5432, pgserver), as
# a fixture of this module too; asked for only when a postgres block runs.
from .pg.conftest import pg_dsn  # noqa: F401
from .redis.conftest import redis_url  # noqa: F401

#: Where the blocks are: the README and every page of the docs site.
SOURCES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]

_FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>`{3,}|~{3,})[ \t]*(?P<lang>[\w+-]*)")
_MARKER = re.compile(r"^\s*<!--\s*test:(?P<options>.*?)-->\s*$")
_OPTIONS = {
    "sigterm-after",
    "exit",
    "postgres",
    "redis",
    "nats",
    "amqp",
    "pytest",
    "timeout",
    "skip",
    "reason",
    "output",
}
#: The Redis databases the blocks marked ``redis`` get, one each.
_REDIS_DATABASES = range(10, 15)


@dataclass(frozen=True)
class Block:
    """A fenced code block and the options of the marker before it."""

    source: Path
    line: int  # of the opening fence, 1-based
    lang: str
    code: str
    options: dict[str, str]
    #: The lines of the ```text block marked ``output`` that follows it, if any.
    expected: tuple[str, ...] = ()

    @property
    def id(self) -> str:
        return f"{self.source.relative_to(ROOT)}:{self.line}"

    @property
    def slow(self) -> bool:
        return any(
            key in self.options
            for key in ("sigterm-after", "postgres", "redis", "nats", "amqp", "pytest")
        )


def _parse_marker(text: str, where: str) -> dict[str, str]:
    options: dict[str, str] = {}
    for word in shlex.split(text):
        key, _, value = word.partition("=")
        if key not in _OPTIONS:
            raise ValueError(f"{where}: unknown snippet option {key!r} in <!-- test:{text}-->")
        options[key] = value
    if "skip" in options and not options.get("reason"):
        raise ValueError(f'{where}: a skipped block needs reason="..."')
    return options


def blocks_of(source: Path) -> list[Block]:
    """The fenced blocks of one Markdown file, with their markers, in order."""
    lines = source.read_text(encoding="utf-8").splitlines()
    found: list[Block] = []
    index = 0
    while index < len(lines):
        opening = _FENCE.match(lines[index])
        if opening is None:
            index += 1
            continue
        indent, fence = opening["indent"], opening["fence"]
        body: list[str] = []
        end = index + 1
        while end < len(lines) and not lines[end].strip().startswith(fence):
            body.append(lines[end][len(indent) :] if lines[end].startswith(indent) else lines[end])
            end += 1
        marker_line = index - 1
        while marker_line >= 0 and not lines[marker_line].strip():
            marker_line -= 1
        where = f"{source.relative_to(ROOT)}:{index + 1}"
        marker = _MARKER.match(lines[marker_line]) if marker_line >= 0 else None
        options = _parse_marker(marker["options"], where) if marker else {}
        found.append(Block(source, index + 1, opening["lang"], "\n".join(body) + "\n", options))
        index = end + 1
    return found


def python_blocks() -> list[Block]:
    """Every python block of the sources, each with the expected output that follows it."""
    result: list[Block] = []
    for source in SOURCES:
        pending: Block | None = None
        for block in blocks_of(source):
            if block.lang == "python":
                if "output" in block.options:
                    raise ValueError(f"{block.id}: output marks the text block after a program")
                if pending is not None:
                    result.append(pending)
                pending = block
            elif block.options == {"output": ""} and block.lang == "text":
                if pending is None:
                    raise ValueError(f"{block.id}: an output block with no program before it")
                expected = tuple(line.rstrip() for line in block.code.splitlines() if line.strip())
                result.append(dataclasses.replace(pending, expected=expected))
                pending = None
            elif block.options:
                raise ValueError(f"{block.id}: only python blocks and text outputs take markers")
        if pending is not None:
            result.append(pending)
    return result


BLOCKS = python_blocks()


# -- running ---------------------------------------------------------------------------------


@dataclass
class Run:
    """How one block's process ended."""

    returncode: int | None
    stdout: str
    stderr: str
    elapsed: float
    problems: list[str] = field(default_factory=list)

    def report(self) -> str:
        return "\n".join(
            [
                *self.problems,
                f"exit status {self.returncode} after {self.elapsed:.1f}s",
                f"--- stdout\n{self.stdout}",
                f"--- stderr\n{self.stderr}",
            ]
        )


def _catches_sigterm(pid: int) -> bool | None:
    """Whether process ``pid`` has a SIGTERM handler (None where /proc cannot tell)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    match = re.search(r"^SigCgt:\s*([0-9a-f]+)$", status, re.MULTILINE)
    if match is None:
        return None
    return bool(int(match[1], 16) >> (signal.SIGTERM - 1) & 1)


def run_block(
    block: Block,
    directory: Path,
    database_url: str | None,
    redis: str | None = None,
    nats: str | None = None,
    amqp: str | None = None,
) -> Run:
    """Run ``block`` in ``directory`` as its options say; never raises for the block's sake."""
    script = directory / ("test_snippet.py" if "pytest" in block.options else "snippet.py")
    script.write_text(block.code, encoding="utf-8")
    env = dict(os.environ)
    env.pop("TASKER_STATE_DIR", None)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [env.get("PYTHONPATH")])])
    env["PYTHONUNBUFFERED"] = "1"
    env["PORT"] = str(free_port())
    if database_url is not None:
        env["DATABASE_URL"] = database_url
    if redis is not None:
        env["REDIS_URL"] = redis
    if nats is not None:
        env["NATS_URL"] = nats
    if amqp is not None:
        env["AMQP_URL"] = amqp
    args = [sys.executable, script.name]
    if "pytest" in block.options:
        args = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", script.name]
    timeout = float(block.options.get("timeout") or 60)
    started = time.monotonic()
    proc = subprocess.Popen(
        args, cwd=directory, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    problems: list[str] = []
    stopper = None
    if "sigterm-after" in block.options:
        seconds = float(block.options["sigterm-after"] or 1)
        stopper = _stop_later(proc, seconds, started + timeout, problems)
    try:
        out, err = proc.communicate(timeout=max(0.1, started + timeout - time.monotonic()))
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        problems.append(f"still running after {timeout:g}s: killed")
    if stopper is not None:
        stopper.join()
    return Run(proc.returncode, out, err, time.monotonic() - started, problems)


def _stop_later(
    proc: subprocess.Popen[str], seconds: float, deadline: float, problems: list[str]
) -> threading.Thread:
    """SIGTERM ``proc`` ``seconds`` after it installed its SIGTERM handler (in a thread)."""

    def stop() -> None:
        while proc.poll() is None and time.monotonic() < deadline:
            ready = _catches_sigterm(proc.pid)
            if ready is None:  # no /proc: give the program a second to start instead
                time.sleep(1.0)
                break
            if ready:
                break
            time.sleep(0.02)
        else:
            if proc.poll() is not None:
                problems.append("exited before it was sent SIGTERM")
            return
        time.sleep(seconds)
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        else:
            problems.append("exited before it was sent SIGTERM")

    thread = threading.Thread(target=stop, daemon=True)
    thread.start()
    return thread


def check(block: Block, run: Run) -> list[str]:
    """What is wrong with ``run`` for ``block`` (nothing when it did as documented)."""
    problems = list(run.problems)
    expected_status = int(block.options.get("exit") or 0)
    if run.returncode != expected_status:
        problems.append(f"expected exit status {expected_status}, got {run.returncode}")
    lines = [line.rstrip() for line in run.stdout.splitlines()]
    position = 0
    for wanted in block.expected:
        try:
            position = lines.index(wanted, position) + 1
        except ValueError:
            problems.append(f"expected output line missing (or out of order): {wanted!r}")
            break
    return problems


def _flush(url: str) -> None:
    """Empty the Redis database ``url`` names."""
    import anyio
    import coredis

    async def flush() -> None:
        client: coredis.Redis[bytes] = coredis.Redis.from_url(url)
        async with client:
            await client.flushdb()

    anyio.run(flush)


class Runner:
    """Starts the selected blocks together in threads; hands out each one's result."""

    def __init__(self, request: pytest.FixtureRequest, tmp: pytest.TempPathFactory) -> None:
        self._request = request
        self._tmp = tmp
        self._pool = ThreadPoolExecutor(max_workers=16, thread_name_prefix="snippet")
        self._futures: dict[str, Future[Run]] = {}
        self._admin_dsn: str | None = None
        self._databases: list[str] = []
        self._redis_urls: list[str] = []
        self._nats_servers: list[PrivateNats] = []
        wanted = set()
        for item in request.session.items:
            callspec = getattr(item, "callspec", None)
            if callspec is not None and getattr(item, "module", None) is request.module:
                block = callspec.params.get("block")
                if isinstance(block, Block):
                    wanted.add(block.id)
        for block in BLOCKS:
            if block.id in wanted and "skip" not in block.options:
                self._start(block)

    def _start(self, block: Block) -> None:
        directory = self._tmp.mktemp(re.sub(r"\W+", "-", block.id))
        admin_dsn = None
        if "postgres" in block.options:
            if self._admin_dsn is None:  # here, not in a thread: fixtures belong to pytest
                self._admin_dsn = str(self._request.getfixturevalue("pg_dsn"))
            admin_dsn = self._admin_dsn
        redis = None
        if "redis" in block.options:
            base = str(self._request.getfixturevalue("redis_url"))
            taken = len(self._redis_urls)
            if taken >= len(_REDIS_DATABASES):
                raise ValueError(f"more than {len(_REDIS_DATABASES)} blocks marked redis")
            redis = urlunsplit(urlsplit(base)._replace(path=f"/{_REDIS_DATABASES[taken]}"))
            self._redis_urls.append(redis)
            _flush(redis)
        nats = None
        if "nats" in block.options:
            server = PrivateNats()
            self._nats_servers.append(server)
            server.start()
            nats = server.url
        amqp = fresh_vhost_url() if "amqp" in block.options else None
        self._futures[block.id] = self._pool.submit(
            self._run, block, directory, admin_dsn, redis, nats, amqp
        )

    def _run(
        self,
        block: Block,
        directory: Path,
        admin_dsn: str | None,
        redis: str | None,
        nats: str | None,
        amqp: str | None,
    ) -> Run:
        database_url = None if admin_dsn is None else self._database(admin_dsn)
        return run_block(block, directory, database_url, redis, nats, amqp)

    def _database(self, admin_dsn: str) -> str:
        """A fresh database on the tests' Postgres server, for one block."""
        import asyncio

        import asyncpg

        name = f"tasker_docs_{uuid.uuid4().hex[:12]}"

        async def create() -> None:
            conn = await asyncpg.connect(admin_dsn)
            try:
                await conn.execute(f'create database "{name}"')
            finally:
                await conn.close()

        asyncio.run(create())
        self._databases.append(name)  # list.append is atomic: threads may add at once
        return urlunsplit(urlsplit(admin_dsn)._replace(path=f"/{name}"))

    def result(self, block: Block) -> Run:
        if block.id not in self._futures:  # selected after the fixture started (reruns)
            self._start(block)
        return self._futures[block.id].result()

    def close(self) -> None:
        self._pool.shutdown(wait=True)
        for url in self._redis_urls:
            _flush(url)
        for server in self._nats_servers:
            server.close()
        if not self._databases or self._admin_dsn is None:
            return
        import asyncio

        import asyncpg

        async def drop() -> None:
            conn = await asyncpg.connect(self._admin_dsn)
            try:
                for name in self._databases:
                    await conn.execute(f'drop database if exists "{name}" with (force)')
            finally:
                await conn.close()

        asyncio.run(drop())


@pytest.fixture(scope="module")
def runner(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Runner]:
    """Every selected block of this module, started at once."""
    started = Runner(request, tmp_path_factory)
    try:
        yield started
    finally:
        started.close()


@pytest.mark.parametrize(
    "block",
    [
        pytest.param(
            block,
            id=block.id,
            marks=[
                *([pytest.mark.slow] if block.slow else []),
                *(
                    [pytest.mark.skip(reason=block.options["reason"])]
                    if "skip" in block.options
                    else []
                ),
            ],
        )
        for block in BLOCKS
    ],
)
def test_block_runs_as_written(block: Block, runner: Runner) -> None:
    """The block, run as its marker says, exits as documented and prints what it shows."""
    run = runner.result(block)
    problems = check(block, run)
    assert not problems, f"{block.id}:\n" + run.report()


def test_the_sources_have_blocks() -> None:
    """The extractor finds the README's blocks and every guide page's (a broken fence
    pattern would make every other test here pass by finding nothing)."""
    readme = [block for block in BLOCKS if block.source.name == "README.md"]
    assert len(readme) >= 8
    pages = {block.source for block in BLOCKS} - {ROOT / "README.md"}
    assert len(pages) >= 8


def test_readme_quick_start_is_what_ci_runs() -> None:
    """The README starts with two commands: the install and demo, then CI's test command."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    first = blocks_of(ROOT / "README.md")[0]
    assert first.lang == "bash"
    before = text.splitlines()[: first.line - 1]
    assert [line for line in before if line.startswith("## ")] == ["## Quick start"]
    commands = first.code.strip().splitlines()
    assert commands == [
        'python3 -m venv .venv && .venv/bin/pip install -e ".[dev]" && .venv/bin/python'
        " examples/demo.py",
        ".venv/bin/python -m pytest",
    ]
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8").splitlines()
    assert commands[1] in ci  # the test command, exactly
    assert any('-e ".[dev]"' in line and "pip install" in line for line in ci)
    assert (ROOT / "examples" / "demo.py").is_file()
