"""The dashboard in a real browser: Debian's Chromium driven by Playwright, against a real
HTTP server (uvicorn through ``serve_asgi``) over a SQLite queue and a Postgres one.

Each run seeds real tasks (succeeded ones, a dead one with a traceback, a held one, one
whose payload is ``<script>alert(1)</script>``) and a Scheduler with a lock held and a
failed run, serves two dashboards of them from one Starlette app (``/ops``, with actions
authorised, and ``/view``, read-only), runs a worker beside them, and then in the browser:
finds the dead task by search, checks that the read-only dashboard shows no form and
refuses a forged POST (403), as the authorised one refuses a forged token, checks the script
payload is shown as text (no script element, no dialog), requeues the dead task and sees it
succeed. A screenshot of each page goes to the test's temp dir (a CI artefact); with
``TASKER_UPDATE_SCREENSHOTS=1`` the SQLite run also refreshes the pictures the docs show
(``docs/images/dashboard*.png``).

No skip: without Playwright or Chromium the tests fail and say how to install them.
"""

from __future__ import annotations

import os
import shutil
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
import httpx
import pytest
from starlette.applications import Starlette
from starlette.routing import Mount

import tasker
import tasker.dashboard
from tasker.queue import Queue, SQLiteQueueBackend, TaskState, current_task
from tasker.schedule import Daily, Interval

from .helpers import ROOT, free_port
from .pg.conftest import pg_dsn  # noqa: F401 - the Postgres tests' way of finding a server

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Dialog, Page

pytestmark = pytest.mark.slow

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
SCRIPT = "<script>alert(1)</script>"
IMAGES = ROOT / "docs" / "images"


@pytest.fixture
def browser() -> Iterator[Browser]:
    """Debian's Chromium under Playwright; a clear failure if either is missing.

    One per test: Playwright's sync API runs an event loop in this thread while it is
    open, and the Postgres fixture (``pg_dsn``, set up before this one) runs its own.
    """
    try:
        from playwright.sync_api import sync_playwright
    except ImportError as exc:
        pytest.fail(
            f"Playwright for Python is not installed ({exc}): .venv/bin/python -m pip install"
            " playwright (it is in the dev extra). The browser is Debian's, not Playwright's"
            " download: apt-get install -y chromium"
        )
    if not Path(CHROMIUM).exists():
        pytest.fail(
            f"no Chromium at {CHROMIUM}: apt-get install -y chromium (Playwright's own browser"
            " download is not used)"
        )
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield launched
        finally:
            launched.close()


class Deployment:
    """A queue, a Scheduler, two dashboards and a worker, served from a thread of its own
    (its own event loop) until :meth:`stop`."""

    def __init__(self, make: Callable[[], Any], *, cleanup: Callable[[], Any] | None = None):
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.ids: dict[str, str] = {}
        self._make = make
        self._cleanup = cleanup
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._main, name="dashboard-server", daemon=True)

    def start(self) -> None:
        self._thread.start()
        deadline = time.monotonic() + 60
        while True:
            if self._error is not None:
                raise self._error
            if self._ready.is_set():
                try:
                    if httpx.get(f"{self.base}/view/", timeout=5).status_code == 200:
                        return
                except httpx.TransportError:
                    pass
            assert time.monotonic() < deadline, "the dashboard did not start within 60 s"
            time.sleep(0.1)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=60)
        assert not self._thread.is_alive(), "the server thread did not stop"
        if self._error is not None:
            raise self._error

    def _main(self) -> None:
        try:
            anyio.run(self._serve, backend="asyncio")
        except BaseException as exc:
            self._error = exc
            self._ready.set()

    async def _serve(self) -> None:
        made: tuple[Queue, tasker.Scheduler] = await self._make()
        queue, scheduler = made
        failed: set[str] = set()

        @queue.task("send-report", max_attempts=1)
        async def send_report(ctx: tasker.Context, payload: dict[str, Any]) -> dict[str, Any]:
            running = current_task()
            assert running is not None
            if payload.get("fail") and running.id not in failed:
                failed.add(running.id)  # it dies once, and succeeds once requeued
                raise OSError("disk full while writing <b>report.pdf</b>")
            return {"sent": payload}

        @queue.task("resize-image", queue="images", max_attempts=1)
        async def resize(ctx: tasker.Context, payload: int) -> int:
            return payload * 2

        try:
            for n in range(12):
                await queue.enqueue("send-report", {"customer": n})
            for n in range(20):
                await queue.enqueue("resize-image", n)
            self.ids["script"] = (await queue.enqueue("send-report", {"note": SCRIPT})).id
            self.ids["dead"] = (await queue.enqueue("send-report", {"fail": True})).id
            await _run_until_settled(queue)
            self.ids["held"] = (
                await queue.enqueue("send-report", {"customer": "held"}, held=True)
            ).id
            await queue.enqueue("resize-image", 7, delay=600)
            calls = {"sync": 0}

            async def nightly(ctx: tasker.Context) -> None:
                return None

            async def sync(ctx: tasker.Context) -> None:
                calls["sync"] += 1
                if calls["sync"] > 1:
                    raise ConnectionError("the CRM answered 503 <Service Unavailable>")

            async def export(ctx: tasker.Context) -> None:
                await ctx.wait()  # holds its lock until the shutdown

            jobs = [
                scheduler.with_schedule("nightly-report", Daily(2, tz="Europe/Berlin"), nightly),
                scheduler.with_schedule(
                    "crm-sync", Interval(1), sync, first_run="immediately", retry_delay=60
                ),
                scheduler.with_schedule(
                    "export", Interval(3600), export, first_run="immediately", catch_up="skip"
                ),
            ]

            async def authorize(request: Any) -> bool:
                return True

            outer = Starlette(
                routes=[
                    Mount(
                        "/ops",
                        app=tasker.dashboard.app(
                            queue=queue, scheduler=scheduler, authorize=authorize
                        ),
                    ),
                    Mount("/view", app=tasker.dashboard.app(queue=queue, scheduler=scheduler)),
                ]
            )
            server = tasker.serve_asgi(
                outer, host="127.0.0.1", port=self.port, server="uvicorn", log_level="warning"
            )

            async def stopped() -> None:
                # A threading.Event set by the test's thread: polled, as no anyio event can
                # be set from outside the loop without a portal.
                while not self._stop.is_set():  # noqa: ASYNC110
                    await anyio.sleep(0.05)

            self._ready.set()
            await tasker.run(
                tasker.concurrence(server, queue.worker(["default", "images"], poll=0.2), *jobs),
                shutdown_trigger=stopped,
                grace=5,
            )
        finally:
            await scheduler.aclose()
            await queue.aclose()
            if self._cleanup is not None:
                await self._cleanup()


async def _run_until_settled(queue: Queue) -> None:
    stop = anyio.Event()
    async with anyio.create_task_group() as tg:
        worker = queue.worker(["default", "images"], poll=0.05)
        tg.start_soon(lambda: tasker.run(worker, shutdown_trigger=stop.wait))
        with anyio.fail_after(30):
            while any(  # noqa: ASYNC110 - the backend's state has no event to wait on
                states.get("queued") or states.get("running")
                for states in (await queue.counts()).values()
            ):
                await anyio.sleep(0.05)
        stop.set()


@contextmanager
def deployed(deployment: Deployment) -> Iterator[Deployment]:
    deployment.start()
    try:
        yield deployment
    finally:
        deployment.stop()


def _wait_for(page: Page, url: str, check: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + 30
    page.goto(url)
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.3)
        page.goto(url)


def drive(browser: Browser, site: Deployment, shots: Path, label: str) -> dict[str, Path]:
    """Everything the issue asks of the browser, on one deployment; the screenshots taken."""
    shots.mkdir(parents=True, exist_ok=True)
    taken: dict[str, Path] = {}
    context = browser.new_context(viewport={"width": 1360, "height": 860})
    page = context.new_page()
    dialogs: list[str] = []

    def on_dialog(dialog: Dialog) -> None:
        dialogs.append(dialog.message)
        dialog.dismiss()

    page.on("dialog", on_dialog)
    ops, view = f"{site.base}/ops", f"{site.base}/view"

    def shot(name: str) -> None:
        taken[name] = shots / f"{label}-{name}.png"
        page.screenshot(path=str(taken[name]), full_page=True)

    try:
        # Queues: depth per state, plots, the held task's dispatch form.
        page.goto(f"{ops}/")
        assert "default" in page.locator("table.depth").inner_text()
        assert "images" in page.locator("table.depth").inner_text()
        assert page.locator("svg.plot").count() == 6  # three plots for each of two queues
        shot("queues")

        # Schedules: in words, a busy lock (the export run), a failed run with its error.
        _wait_for(
            page,
            f"{ops}/schedules",
            lambda: "failed" in page.locator("table.schedules").inner_text(),
            "the crm-sync schedule's failed run",
        )
        schedules = page.locator("table.schedules").inner_text()
        assert "daily at 02:00 Europe/Berlin" in schedules
        assert "every second" in schedules
        assert "busy" in schedules
        assert "free" in schedules
        assert "the CRM answered 503 <Service Unavailable>" in schedules
        shot("schedules")

        # Workers: the one running beside the dashboard, alive.
        page.goto(f"{ops}/workers")
        assert "alive" in page.locator("table.workers").inner_text()
        shot("workers")

        # Find the dead task by search: state and part of the name.
        page.goto(f"{ops}/tasks")
        page.select_option("select[name=state]", "dead")
        page.fill("input[name=name]", "report")
        page.click("form.search button[type=submit]")
        links = page.locator("a.task-link")
        assert links.count() == 1
        assert links.inner_text() == site.ids["dead"]
        shot("search")
        links.click()
        assert page.locator("#task-id").inner_text() == site.ids["dead"]
        assert "OSError: disk full while writing <b>report.pdf</b>" in page.inner_text(
            "pre.traceback"
        )
        assert page.locator("#requeue").count() == 1
        shot("task-dead")

        # Read-only: no form at all; a forged POST, even with the browser's cookies, is 403.
        page.goto(f"{view}/task?id={site.ids['dead']}")
        assert page.locator("form[method=post]").count() == 0
        assert "read-only" in page.inner_text("p.meta")
        forged = context.request.post(
            f"{view}/actions/requeue", form={"task_id": site.ids["dead"], "csrf_token": "1.x"}
        )
        assert forged.status == 403
        # Authorised, but a forged token: refused too.
        page.goto(f"{ops}/task?id={site.ids['dead']}")
        forged = context.request.post(
            f"{ops}/actions/requeue", form={"task_id": site.ids["dead"], "csrf_token": "1.x"}
        )
        assert forged.status == 403
        page.reload()
        assert page.inner_text("#task-state").startswith("dead")

        # The script payload is text: visible, no script element, no dialog.
        page.goto(f"{ops}/tasks")
        page.fill("form.search input[name=id]", site.ids["script"])
        page.click("form.search button[type=submit]")
        page.locator("a.task-link").click()
        assert SCRIPT in page.locator("pre.data").first.inner_text()
        assert page.locator("script").count() == 0
        shot("task-escaped")

        # Requeue with the action enabled, and see the worker run it to success.
        page.goto(f"{ops}/task?id={site.ids['dead']}")
        page.click("#requeue")
        assert "Requeued" in page.inner_text("p.notice")
        _wait_for(
            page,
            f"{ops}/task?id={site.ids['dead']}",
            lambda: page.inner_text("#task-state").startswith(TaskState.SUCCEEDED.value),
            "the requeued task to succeed",
        )
        assert page.locator("#requeue").count() == 0
        shot("task-requeued")
        assert dialogs == []
    finally:
        context.close()
    return taken


def _sqlite(tmp: Path) -> Callable[[], Any]:
    async def make() -> tuple[Queue, tasker.Scheduler]:
        return (
            Queue(SQLiteQueueBackend(tmp / "queue.sqlite3")),
            tasker.Scheduler(state_dir=tmp / "state"),
        )

    return make


def test_the_dashboard_in_a_browser_on_sqlite(browser: Browser, tmp_path: Path) -> None:
    """Search, escaping, refusal without authorisation and a requeue that succeeds, in
    Chromium, over the embedded SQLite queue."""
    with deployed(Deployment(_sqlite(tmp_path))) as site:
        taken = drive(browser, site, tmp_path / "screenshots", "sqlite")
    assert all(path.stat().st_size > 10_000 for path in taken.values())
    if os.environ.get("TASKER_UPDATE_SCREENSHOTS"):
        IMAGES.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(taken["queues"], IMAGES / "dashboard.png")
        shutil.copyfile(taken["task-dead"], IMAGES / "dashboard-task.png")
        shutil.copyfile(taken["schedules"], IMAGES / "dashboard-schedules.png")


def test_the_dashboard_in_a_browser_on_postgres(
    browser: Browser,
    tmp_path: Path,
    pg_dsn: str,  # noqa: F811
) -> None:
    """The same, over a Postgres queue and Scheduler in a schema of their own."""
    import asyncpg

    import tasker_pg

    schema = f"t_{uuid.uuid4().hex[:12]}"

    async def make() -> tuple[Queue, tasker.Scheduler]:
        backend = tasker_pg.PostgresQueueBackend(pg_dsn, schema=schema)
        await backend.migrate()
        return Queue(backend), tasker_pg.scheduler(pg_dsn, schema=schema, namespace=schema)

    async def drop() -> None:
        conn = await asyncpg.connect(pg_dsn)
        try:
            await conn.execute(f'drop schema if exists "{schema}" cascade')
        finally:
            await conn.close()

    with deployed(Deployment(make, cleanup=drop)) as site:
        taken = drive(browser, site, tmp_path / "screenshots", "postgres")
    assert all(path.stat().st_size > 10_000 for path in taken.values())
