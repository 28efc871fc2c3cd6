"""The web dashboard (``tasker.dashboard.app``) through an ASGI client, on asyncio and trio:
its pages, its escaping, its forms' CSRF and authorisation checks, its mount prefix, what it
says a backend cannot show, and what it never shows (a DSN's password)."""

from __future__ import annotations

import html
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio
import anyio.lowlevel
import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.routing import Mount

import tasker
import tasker.dashboard
from tasker import MemoryLockerFactory, MemoryStateRepository, Scheduler, ScheduleState
from tasker.abc import QueueCapability
from tasker.dashboard._csrf import COOKIE, Csrf
from tasker.dashboard._describe import describe_schedule
from tasker.queue import MemoryQueueBackend, Queue, TaskState, current_task
from tasker.schedule import Cron, Daily, Interval, Monthly, Schedule, Weekly

from .helpers import ROOT, free_port

pytestmark = pytest.mark.anyio

SECRET = "a test secret of more than sixteen bytes"  # noqa: S105 - a test key
SCRIPT = "<script>alert(1)</script>"
PAGES = ["/", "/schedules", "/workers", "/tasks", "/tasks?state=dead&name=flaky"]


class Seeded:
    """A memory queue with a succeeded, a dead, a held and a queued task, and a Scheduler
    with two schedules (one with a stored failure)."""

    def __init__(self, backend: MemoryQueueBackend | None = None) -> None:
        self.queue = Queue(backend or MemoryQueueBackend())
        self.failed: set[str] = set()

        @self.queue.task("flaky", max_attempts=1)
        async def flaky(ctx: tasker.Context, payload: Any) -> Any:
            running = current_task()
            assert running is not None
            if isinstance(payload, dict) and payload.get("fail") and running.id not in self.failed:
                self.failed.add(running.id)  # fails once: it dies, and succeeds once requeued
                raise RuntimeError("first attempt fails: <b>bold</b>")
            return {"echo": payload}

        self.lockers = MemoryLockerFactory()
        self.repository = MemoryStateRepository()
        self.scheduler = Scheduler(locker_factory=self.lockers, repository=self.repository)

        async def nothing(ctx: tasker.Context) -> None:
            return None

        self.scheduler.with_schedule("nightly", Daily(9, tz="Europe/Berlin"), nothing)
        self.scheduler.with_schedule("often", Interval(300), nothing, catch_up="skip")
        self.ids: dict[str, str] = {}

    async def fill(self) -> Seeded:
        """Enqueue the tasks and run a worker until the runnable ones have finished."""
        self.ids["script"] = (await self.queue.enqueue("flaky", {"text": SCRIPT})).id
        self.ids["dead"] = (await self.queue.enqueue("flaky", {"fail": True})).id
        await run_until_settled(self.queue)
        self.ids["held"] = (await self.queue.enqueue("flaky", {"held": 1}, held=True)).id
        self.ids["queued"] = (await self.queue.enqueue("flaky", {"later": 1}, delay=3600)).id
        await self.repository.save(
            ScheduleState(
                name="often",
                last_slot=datetime(2026, 1, 1, tzinfo=UTC),
                last_finished=datetime(2026, 1, 1, 0, 0, 1, tzinfo=UTC),
                last_error="ValueError: the report <i>failed</i>",
                failure_count=1,
            )
        )
        return self


async def run_until_settled(queue: Queue) -> None:
    """Run a worker until no task is queued or running."""
    stop = anyio.Event()
    async with anyio.create_task_group() as tg:
        tg.start_soon(lambda: tasker.run(queue.worker(poll=0.05), shutdown_trigger=stop.wait))
        with anyio.fail_after(10):
            while True:
                counts = await queue.counts()
                if not any(s.get("queued") or s.get("running") for s in counts.values()):
                    break
                await anyio.sleep(0.02)
        stop.set()


def client(app: Any, base: str = "http://dashboard.test") -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=base)


def allow(request: Request) -> bool:
    return True


async def allow_async(request: Request) -> bool:
    await anyio.lowlevel.checkpoint()
    return True


def token_of(page: str, action: str) -> str:
    """The CSRF token of the ``action`` form on ``page``."""
    form = re.search(rf'action="[^"]*/actions/{action}">(.*?)</form>', page, re.S)
    assert form, f"no {action} form on the page"
    found = re.search(r'name="csrf_token" value="([^"]+)"', form.group(1))
    assert found
    return html.unescape(found.group(1))


@pytest.fixture
async def seeded() -> Seeded:
    return await Seeded().fill()


# -- the public surface --------------------------------------------------------------------


def test_exports_are_documented_under_the_public_path() -> None:
    """``tasker.dashboard`` exports ``app`` only, documented, under its public module."""
    assert tasker.dashboard.__all__ == ["app"]
    assert tasker.dashboard.app.__module__ == "tasker.dashboard"
    assert tasker.dashboard.app.__doc__
    assert "authorize" in tasker.dashboard.app.__doc__


@pytest.mark.parametrize(
    ("schedule", "words"),
    [
        (Interval(300), "every 5 minutes"),
        (Interval(1), "every second"),
        (Interval(3600), "every hour"),
        (Interval(90), "every 90 seconds"),
        (Interval(0.5), "every 0.5 seconds"),
        (Daily(9, tz="Europe/Berlin"), "daily at 09:00 Europe/Berlin"),
        (Daily(9, 30, 15), "daily at 09:30:15 UTC"),
        (Weekly("mon", 8), "weekly on Monday at 08:00 UTC"),
        (Weekly(6, 23, 5), "weekly on Sunday at 23:05 UTC"),
        (Monthly(31), "monthly on day 31 (or the month's last day) at 00:00 UTC"),
        (Cron("*/5 * * * *"), "every 5 minutes"),
        (Cron("15 * * * *"), "hourly at minute 15"),
        (Cron("0 9 * * 1-5", tz="Europe/Berlin"), "weekdays at 09:00 Europe/Berlin"),
        (Cron("30 2 * * 0"), "weekly on Sunday at 02:30 UTC"),
        (Cron("@daily"), "daily at 00:00 UTC"),
        (Cron("0 0 1 1 *"), "cron '0 0 1 1 *' UTC"),
    ],
)
def test_schedules_are_described_in_words(schedule: Schedule, words: str) -> None:
    """Interval, Daily, Weekly, Monthly and the common cron shapes read as words; other
    cron expressions are shown as written."""
    assert describe_schedule(schedule) == words


def test_an_unknown_schedule_is_shown_by_its_repr() -> None:
    """A user's own schedule class is described by its repr."""

    class Fortnightly:
        def next_after(self, moment: datetime, /) -> datetime:
            return moment

        def __repr__(self) -> str:
            return "Fortnightly()"

    assert describe_schedule(Fortnightly()) == "Fortnightly()"


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({}, ValueError, "give a queue, a scheduler, or both"),
        ({"queue": "q"}, TypeError, "queue must be a tasker.queue.Queue, got 'q'"),
        ({"scheduler": 3}, TypeError, "scheduler must be a tasker.Scheduler, got 3"),
        ({"authorize": "yes"}, TypeError, "authorize must be callable or None, got 'yes'"),
        ({"payload_limit": 0}, ValueError, "payload_limit must be an integer of at least 1, got 0"),
        ({"secret": "short"}, ValueError, "secret must be at least 16 bytes long, got 5"),
        ({"secret": 12345}, TypeError, "secret must be str or bytes, got a int"),
    ],
)
def test_bad_arguments_name_the_parameter(
    kwargs: dict[str, Any], error: type[Exception], message: str
) -> None:
    """Each bad argument fails at construction with a message naming it (a secret by its
    length, never its value)."""
    if "queue" not in kwargs and kwargs:
        kwargs = {"queue": Queue(MemoryQueueBackend()), **kwargs}
    with pytest.raises(error, match=re.escape(message)):
        tasker.dashboard.app(**kwargs)


# -- pages ---------------------------------------------------------------------------------


async def test_every_page_renders_with_its_security_headers(seeded: Seeded) -> None:
    """Each page answers 200 with a strict Content Security Policy, no caching and no
    framing; the stylesheet is served from the app."""
    app = tasker.dashboard.app(queue=seeded.queue, scheduler=seeded.scheduler)
    async with client(app) as http:
        for path in PAGES:
            response = await http.get(path)
            assert response.status_code == 200, (path, response.text)
            assert "default-src 'none'" in response.headers["content-security-policy"]
            assert response.headers["x-frame-options"] == "DENY"
            assert response.headers["cache-control"] == "no-store"
            assert "<script" not in response.text.lower()
        css = await http.get("/static/dashboard.css")
        assert css.status_code == 200
        assert css.headers["content-type"].startswith("text/css")


async def test_the_queues_page_shows_depths_plots_and_the_oldest_wait(seeded: Seeded) -> None:
    """Depth per state, one SVG plot each for throughput, failures and wait, and the
    delayed task counted as delayed."""
    app = tasker.dashboard.app(queue=seeded.queue)
    async with client(app) as http:
        page = (await http.get("/")).text
    assert page.count("<svg") == 3
    assert "1 in the hour" in page  # one success (the script payload), one failure
    assert re.search(r"state=succeeded\">1<", page)
    assert re.search(r"state=dead\">1<", page)
    assert re.search(r"state=held\">1<", page)
    assert "no Scheduler" not in page  # the Queues page does not mention schedules


async def test_the_schedules_page_shows_words_state_and_a_live_lock(seeded: Seeded) -> None:
    """Each schedule in words, its catch-up policy, its last error (escaped), and its lock
    as busy while another holder has it, free otherwise; the probe leaves it free."""
    app = tasker.dashboard.app(queue=seeded.queue, scheduler=seeded.scheduler)
    holder = seeded.lockers.locker("nightly")
    assert await holder.try_lock()
    async with client(app) as http:
        page = (await http.get("/schedules")).text
        assert "daily at 09:00 Europe/Berlin" in page
        assert "every 5 minutes" in page
        rows = dict(re.findall(r"<td><b>(\w+)</b></td>.*?class=\"lock (\w+)\"", page, re.S))
        assert rows == {"nightly": "busy", "often": "free"}
        assert "skip" in page
        assert "once" in page
        assert "ValueError: the report &lt;i&gt;failed&lt;/i&gt;" in page
        assert "<i>failed</i>" not in page
        await holder.unlock()
        page = (await http.get("/schedules")).text
        assert re.findall(r'class="lock (\w+)"', page) == ["free", "free"]
    probe = seeded.lockers.locker("often")
    assert await probe.try_lock()  # the dashboard released what it probed
    await probe.unlock()


async def test_payloads_names_and_errors_are_escaped(seeded: Seeded) -> None:
    """A payload holding a script tag and an error holding markup are shown as text."""
    app = tasker.dashboard.app(queue=seeded.queue, authorize=allow)
    async with client(app) as http:
        page = (await http.get(f"/task?id={seeded.ids['script']}")).text
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
        assert SCRIPT not in page
        dead = (await http.get(f"/task?id={seeded.ids['dead']}")).text
        assert "first attempt fails: &lt;b&gt;bold&lt;/b&gt;" in dead
        assert "<b>bold</b>" not in dead
        assert "Traceback (most recent call last)" in dead
        assert "attempt 1: dead" in dead


async def test_a_payload_is_cut_at_the_limit(seeded: Seeded) -> None:
    """A payload longer than ``payload_limit`` is cut, and the page says so."""
    big = (await seeded.queue.enqueue("flaky", {"blob": "x" * 5000}, held=True)).id
    app = tasker.dashboard.app(queue=seeded.queue, payload_limit=100)
    async with client(app) as http:
        page = (await http.get(f"/task?id={big}")).text
    assert "x" * 200 not in page
    assert "<b>cut</b> at the dashboard's payload_limit" in page


async def test_tasks_are_found_by_id_name_state_and_queue(seeded: Seeded) -> None:
    """The search finds a task by exact id, by part of its name with its state, and says
    when nothing matches; an unknown task's page is a 404."""
    app = tasker.dashboard.app(queue=seeded.queue)
    dead = seeded.ids["dead"]
    async with client(app) as http:
        by_id = (await http.get(f"/tasks?id={dead}")).text
        assert by_id.count('class="task-link"') == 1
        assert dead in by_id
        by_name = (await http.get("/tasks?name=FLA&state=dead&queue=default")).text
        assert by_name.count('class="task-link"') == 1
        assert dead in by_name
        held = (await http.get("/tasks?state=held")).text
        assert seeded.ids["held"] in held
        assert dead not in held
        none = (await http.get("/tasks?queue=elsewhere")).text
        assert "No task matches." in none
        bad_state = (await http.get("/tasks?state=nonsense")).text
        assert "unknown state &#39;nonsense&#39;" in bad_state
        missing = await http.get("/task?id=no-such-task")
        assert missing.status_code == 404
        assert "No task has the id" in missing.text


# -- actions -------------------------------------------------------------------------------


async def test_without_authorize_there_is_no_form_and_posts_are_refused(seeded: Seeded) -> None:
    """A read-only dashboard renders no form, and refuses every POST with 403, even one
    carrying a token signed with its own secret."""
    app = tasker.dashboard.app(queue=seeded.queue, secret=SECRET)
    dead = seeded.ids["dead"]
    async with client(app) as http:
        for path in [f"/task?id={dead}", f"/task?id={seeded.ids['held']}", "/"]:
            page = (await http.get(path)).text
            assert 'method="post"' not in page
            assert COOKIE not in (await http.get(path)).headers.get("set-cookie", "")
        http.cookies.set(COOKIE, "s" * 32)
        token = Csrf(SECRET).token("s" * 32, "requeue", dead)
        refused = await http.post("/actions/requeue", data={"task_id": dead, "csrf_token": token})
        assert refused.status_code == 403
        assert "actions are off" in refused.text
    info = await seeded.queue.get(dead)
    assert info is not None
    assert info.state is TaskState.DEAD


@pytest.mark.parametrize("decide", [allow, allow_async], ids=["sync", "async"])
async def test_requeue_with_a_valid_token_works(
    seeded: Seeded, decide: Callable[[Request], bool | Awaitable[bool]]
) -> None:
    """An authorised POST with the form's token requeues the dead task (sync or async
    ``authorize``), redirects (303) to the task page, which says so."""
    app = tasker.dashboard.app(queue=seeded.queue, authorize=decide)
    dead = seeded.ids["dead"]
    async with client(app) as http:
        page = await http.get(f"/task?id={dead}")
        assert COOKIE in page.headers["set-cookie"]
        assert "samesite=strict" in page.headers["set-cookie"].lower()
        assert "httponly" in page.headers["set-cookie"].lower()
        token = token_of(page.text, "requeue")
        done = await http.post("/actions/requeue", data={"task_id": dead, "csrf_token": token})
        assert done.status_code == 303
        assert done.headers["location"] == f"/task?id={dead}&notice=requeued"
        after = await http.get(done.headers["location"])
        assert "Requeued: the task is queued again" in after.text
    info = await seeded.queue.get(dead)
    assert info is not None
    assert info.state is TaskState.QUEUED


async def test_missing_forged_and_misused_tokens_are_refused(seeded: Seeded) -> None:
    """No token, a forged one, one for another task or action, one from another browser's
    session, and a cross-site POST: each is refused with 403 and changes nothing."""
    app = tasker.dashboard.app(queue=seeded.queue, authorize=allow, secret=SECRET)
    dead, held = seeded.ids["dead"], seeded.ids["held"]
    async with client(app) as http:
        page = (await http.get(f"/task?id={dead}")).text
        token = token_of(page, "requeue")
        other = Csrf("another secret, sixteen bytes or more").token(
            http.cookies[COOKIE], "requeue", dead
        )
        attempts = [
            {"task_id": dead},
            {"task_id": dead, "csrf_token": ""},
            {"task_id": dead, "csrf_token": "1700000000.forged"},
            {"task_id": dead, "csrf_token": other},
            {"task_id": held, "csrf_token": token},
        ]
        for data in attempts:
            refused = await http.post("/actions/requeue", data=data)
            assert refused.status_code == 403, data
        refused = await http.post("/actions/cancel", data={"task_id": dead, "csrf_token": token})
        assert refused.status_code == 403
        cross = await http.post(
            "/actions/requeue",
            data={"task_id": dead, "csrf_token": token},
            headers={"sec-fetch-site": "cross-site"},
        )
        assert cross.status_code == 403
        session = http.cookies[COOKIE]
    async with client(app) as stranger:  # another browser: its own cookie, the old token
        await stranger.get("/")
        stranger.cookies.set(COOKIE, "t" * 32)
        refused = await stranger.post(
            "/actions/requeue", data={"task_id": dead, "csrf_token": token}
        )
        assert refused.status_code == 403
        assert session != "t" * 32
    expired = Csrf(SECRET).token(session, "requeue", dead, now=time.time() - 13 * 3600)
    async with client(app) as http:
        http.cookies.set(COOKIE, session)
        refused = await http.post("/actions/requeue", data={"task_id": dead, "csrf_token": expired})
        assert refused.status_code == 403
    info = await seeded.queue.get(dead)
    assert info is not None
    assert info.state is TaskState.DEAD


async def test_authorize_false_hides_forms_and_refuses_a_valid_token(seeded: Seeded) -> None:
    """With ``authorize`` answering False (or anything but True) for a request, the page
    has no form and a POST with a correctly signed token is refused with 403."""
    verdicts: list[object] = [False, None, 1, "yes"]

    def deny(request: Request) -> Any:
        return verdicts[0]

    app = tasker.dashboard.app(queue=seeded.queue, authorize=deny, secret=SECRET)
    dead = seeded.ids["dead"]
    async with client(app) as http:
        while verdicts:
            page = (await http.get(f"/task?id={dead}")).text
            assert 'method="post"' not in page
            assert "not authorised to act" in page
            http.cookies.set(COOKIE, "s" * 32)
            token = Csrf(SECRET).token("s" * 32, "requeue", dead)
            refused = await http.post(
                "/actions/requeue", data={"task_id": dead, "csrf_token": token}
            )
            assert refused.status_code == 403
            assert "not authorised" in refused.text
            verdicts.pop(0)
    info = await seeded.queue.get(dead)
    assert info is not None
    assert info.state is TaskState.DEAD


async def test_dispatch_and_cancel(seeded: Seeded) -> None:
    """The dispatch form releases the held task; the cancel form cancels the delayed one."""
    app = tasker.dashboard.app(queue=seeded.queue, authorize=allow)
    async with client(app) as http:
        page = (await http.get("/")).text
        token = token_of(page, "dispatch")
        done = await http.post(
            "/actions/dispatch",
            data={"queue": "default", "name": "flaky", "limit": "", "csrf_token": token},
        )
        assert done.status_code == 303
        assert "Dispatched 1 held task(s)." in (await http.get(done.headers["location"])).text
        queued = seeded.ids["queued"]
        token = token_of((await http.get(f"/task?id={queued}")).text, "cancel")
        done = await http.post("/actions/cancel", data={"task_id": queued, "csrf_token": token})
        assert done.status_code == 303
        assert (
            "Cancelled: the task will not run." in (await http.get(done.headers["location"])).text
        )
    held = await seeded.queue.get(seeded.ids["held"])
    cancelled = await seeded.queue.get(seeded.ids["queued"])
    assert held is not None
    assert held.state is TaskState.QUEUED
    assert cancelled is not None
    assert cancelled.state is TaskState.CANCELLED


async def test_a_bad_form_is_refused(seeded: Seeded) -> None:
    """A JSON body, an oversized form and an unknown action are refused before any check
    passes."""
    app = tasker.dashboard.app(queue=seeded.queue, authorize=allow)
    async with client(app) as http:
        assert (await http.post("/actions/requeue", json={"task_id": "x"})).status_code == 400
        big = await http.post("/actions/requeue", data={"task_id": "x" * 20000})
        assert big.status_code == 400
        assert (await http.post("/actions/delete", data={"task_id": "x"})).status_code == 404


# -- mounting, capabilities, secrets -------------------------------------------------------


async def test_every_link_and_form_follows_the_mount_prefix(seeded: Seeded) -> None:
    """Mounted under ``/ops/tasks`` of a Starlette app, every link, form action and the
    stylesheet start with the prefix, the cookie is scoped to it, and an action works and
    redirects under it."""
    dashboard = tasker.dashboard.app(
        queue=seeded.queue, scheduler=seeded.scheduler, authorize=allow
    )
    outer = Starlette(routes=[Mount("/ops/tasks", app=dashboard)])
    dead = seeded.ids["dead"]
    async with client(outer) as http:
        for path in [*PAGES, f"/task?id={dead}"]:
            response = await http.get(f"/ops/tasks{path}")
            assert response.status_code == 200, path
            targets = re.findall(r'(?:href|action|src)="([^"]*)"', response.text)
            assert targets
            for target in targets:
                if target.startswith("data:"):
                    continue
                assert target.startswith("/ops/tasks/") or target.startswith("/ops/tasks?"), (
                    path,
                    target,
                )
        css = await http.get("/ops/tasks/static/dashboard.css")
        assert css.status_code == 200
        page = await http.get(f"/ops/tasks/task?id={dead}")
        cookie = page.headers.get("set-cookie", "") or ""
        assert "Path=/ops/tasks/" in cookie or not cookie  # set on the first page already
        token = token_of(page.text, "requeue")
        done = await http.post(
            "/ops/tasks/actions/requeue", data={"task_id": dead, "csrf_token": token}
        )
        assert done.status_code == 303
        assert done.headers["location"].startswith("/ops/tasks/task?id=")


class NoWorkersBackend(MemoryQueueBackend):
    """A memory backend that declares no worker registry."""

    capabilities = MemoryQueueBackend.capabilities - {QueueCapability.WORKERS}


class NoInspectionBackend(MemoryQueueBackend):
    """A memory backend that declares only the core (like a bare message broker)."""

    capabilities: frozenset[QueueCapability] = frozenset()


async def test_a_backend_without_workers_says_so() -> None:
    """The workers page of a backend without ``WORKERS`` says what it cannot show, and
    still lists the owner of a running task's lease."""
    seeded = await Seeded(NoWorkersBackend()).fill()
    app = tasker.dashboard.app(queue=seeded.queue)
    async with client(app) as http:
        page = (await http.get("/workers")).text
    assert "this backend has no worker registry (QueueCapability.WORKERS)" in page


async def test_a_backend_without_inspection_says_so() -> None:
    """Every queue page of a backend without ``INSPECTION`` answers, saying it cannot list
    tasks; the schedules page works as usual."""
    queue = Queue(NoInspectionBackend(), retention=None)
    seeded = Seeded()
    app = tasker.dashboard.app(queue=queue, scheduler=seeded.scheduler)
    async with client(app) as http:
        for path in ["/", "/workers", "/tasks", "/task?id=x"]:
            response = await http.get(path)
            assert response.status_code in (200, 404), path
            assert "QueueCapability.INSPECTION" in response.text, path
        assert "daily at 09:00" in (await http.get("/schedules")).text


class SecretReprBackend(MemoryQueueBackend):
    """A backend whose repr holds a DSN with a password, as some backends' reprs do."""

    def __repr__(self) -> str:
        return "SecretReprBackend('postgresql://admin:hunter2@db.internal/prod')"


class FailingBackend(MemoryQueueBackend):
    """A backend whose counts fail with an error naming its DSN, password included."""

    async def counts(self) -> dict[str, dict[TaskState, int]]:
        raise ConnectionError("cannot reach postgresql://admin:hunter2@db.internal/prod")


async def test_no_page_shows_a_password(seeded: Seeded) -> None:
    """Neither a backend's repr nor an error naming its DSN puts the password on a page;
    a failing backend gives a 503 page with the error redacted."""
    secret_seeded = await Seeded(SecretReprBackend()).fill()
    failing = Queue(FailingBackend())
    for queue in (secret_seeded.queue, failing):
        app = tasker.dashboard.app(queue=queue, scheduler=secret_seeded.scheduler, authorize=allow)
        async with client(app) as http:
            for path in [*PAGES, f"/task?id={secret_seeded.ids['dead']}"]:
                response = await http.get(path)
                assert "hunter2" not in response.text, path
    app = tasker.dashboard.app(queue=failing)
    async with client(app) as http:
        response = await http.get("/")
    assert response.status_code == 503
    assert "ConnectionError: cannot reach postgresql://admin:***@db.internal/prod" in response.text


@pytest.mark.slow
def test_the_command_serves_the_dashboard_until_sigterm(tmp_path: Path) -> None:
    """``tasker dashboard module:queue --scheduler module:scheduler`` serves the pages on
    its port and exits 0 on SIGTERM; a TARGET that is not a Queue is refused."""
    port = free_port()
    env = dict(os.environ, PYTHONPATH=str(ROOT), TASKER_STATE_DIR=str(tmp_path))
    command = [sys.executable, "-m", "tasker", "dashboard", "tests.cli_app:queue"]
    command += ["--scheduler", "tests.cli_app:scheduler", "--port", str(port), "--grace", "3"]
    proc = subprocess.Popen(
        command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                pages = [httpx.get(f"http://127.0.0.1:{port}{p}", timeout=5) for p in PAGES]
                break
            except httpx.TransportError:
                assert proc.poll() is None, proc.communicate()
                assert time.monotonic() < deadline, "the dashboard did not start"
                time.sleep(0.1)
        assert [page.status_code for page in pages] == [200] * len(PAGES)
        assert "nightly" in pages[1].text
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    bad = subprocess.run(
        [sys.executable, "-m", "tasker", "dashboard", "tests.cli_app:slow"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert bad.returncode == 2
    assert "not a tasker.queue.Queue or a tasker.Scheduler" in bad.stderr
