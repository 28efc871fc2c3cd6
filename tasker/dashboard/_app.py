"""``app()``: the dashboard as an ASGI application (Starlette routes, Jinja2 pages).

Design notes:

- **Server-rendered, no script.** Every page is HTML from Jinja2 templates with
  autoescaping on for every variable, a stylesheet packaged beside them, and plots drawn as
  inline SVG; nothing is fetched from another origin, so it works offline and behind a
  locked-down proxy. The Content Security Policy allows no script at all and styles from
  the dashboard only: a payload that escapes escaping still could not run.
- **Relative to the mount.** Every link and form action starts with the request's ASGI
  ``root_path``, so the app works at ``/`` (``tasker dashboard``, :func:`tasker.serve_asgi`)
  and mounted under a prefix of the user's Starlette or FastAPI app alike.
- **Actions are opt-in.** Without ``authorize`` no form is rendered and every POST is
  refused (403). With it, a form is shown and accepted only when ``authorize(request)``
  returns True for that request, and only with a valid token (:mod:`._csrf`).
- **Errors.** A backend that fails while a page is gathered gives a 503 page with the error
  (DSN passwords redacted) and a warning on the ``tasker.dashboard`` logger; the app keeps
  serving.
- Forms are parsed with the standard library (``application/x-www-form-urlencoded``, a few
  fields, capped in size) rather than Starlette's ``request.form()``, which would add
  ``python-multipart`` as a dependency for no gain.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Awaitable, Callable, Mapping
from contextlib import aclosing
from importlib import resources
from typing import Any
from urllib.parse import parse_qs, quote

from .._redact import redact_dsn
from ..abc import QueueCapability
from ..queue import Queue, TaskState
from ..scheduler import Scheduler
from ._csrf import COOKIE, FIELD, Csrf
from ._format import moment, stamp
from ._views import (
    backend_name,
    error_text,
    gather_queues,
    gather_schedules,
    gather_task,
    gather_workers,
    missing,
    search_tasks,
)

try:
    import jinja2
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import HTMLResponse, RedirectResponse, Response
    from starlette.routing import Route
except ImportError as exc:  # pragma: no cover - the extra is installed in development
    raise ImportError(
        "tasker.dashboard needs Starlette and Jinja2: pip install 'tasker-jobs[dashboard]'"
    ) from exc

__all__ = ["Authorize", "app"]

logger = logging.getLogger("tasker.dashboard")

#: Decides whether a request may act (requeue, dispatch, cancel): True allows it.
Authorize = Callable[[Request], bool | Awaitable[bool]]

#: The largest action form accepted, in bytes (three short fields and a token).
_MAX_FORM = 16 * 1024
_ACTIONS = ("requeue", "cancel", "dispatch")
_NAV = (
    ("queues", "Queues", "/"),
    ("schedules", "Schedules", "/schedules"),
    ("workers", "Workers", "/workers"),
    ("tasks", "Tasks", "/tasks"),
)
#: What a redirect after an action says, by the ``notice`` it carries: a fixed text, so a
#: crafted link cannot put words on the page.
_NOTICES = {
    "requeued": ("good", "Requeued: the task is queued again, with fresh attempts."),
    "not-requeued": (
        "bad",
        "Not requeued: the task is not dead, or a newer live task holds its unique key.",
    ),
    "dispatched": ("good", "Dispatched {n} held task(s)."),
    "cancel-cancelled": ("good", "Cancelled: the task will not run."),
    "cancel-requested": (
        "good",
        "Cancel requested: the worker running the task stops it at its next heartbeat.",
    ),
    "cancel-finished": ("info", "Nothing to cancel: the task had finished."),
    "cancel-unknown": ("bad", "Nothing to cancel: no task has this id."),
}
_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; style-src 'self'; img-src 'self' data:; form-action 'self';"
        " frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}

_ENV = jinja2.Environment(
    loader=jinja2.PackageLoader("tasker.dashboard", "templates"),
    autoescape=True,  # every template, whatever its name: the pages print stored data
    undefined=jinja2.StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
)
_ENV.filters["q"] = lambda value: quote(str(value), safe="")
# Stored errors and tracebacks are redacted already when tasker wrote them; a backend or a
# handler of one's own may not have, so the page redacts again (payloads are shown as they are).
_ENV.filters["redact"] = redact_dsn


def _stylesheet() -> bytes:
    return resources.files("tasker.dashboard").joinpath("static/dashboard.css").read_bytes()


def app(
    *,
    queue: Queue | None = None,
    scheduler: Scheduler | None = None,
    authorize: Authorize | None = None,
    secret: str | bytes | None = None,
    title: str = "tasker",
    payload_limit: int = 8192,
) -> Starlette:
    """Return the dashboard of ``queue`` and ``scheduler``: an ASGI application.

    Pages: **Queues** (depth per state, oldest waiting task, the last hour's throughput,
    failures and wait from due to start, per minute), **Schedules** (each schedule in
    words, its next and last slot, the last outcome and error, its catch-up policy and
    whether its lock is held now), **Workers** (alive, slots in use, leases held, last
    heartbeat) and **Tasks** (search by id, name, state and queue; a task's payload,
    result, traceback, attempts and timeline). What the backend cannot show (a capability
    it does not declare, :class:`tasker.abc.QueueCapability`) is said on the page.

    Mount it in a Starlette or FastAPI application (``Mount("/tasks", app=...)``: links
    follow the mount's ``root_path``), serve it with :func:`tasker.serve_asgi`, or run
    ``tasker dashboard module:queue``. It needs the ``dashboard`` extra
    (``pip install 'tasker-jobs[dashboard]'``).

    **Actions** (requeue a dead task, dispatch held tasks, cancel a task where the backend
    declares ``CANCEL``) are off unless ``authorize`` is given: then a request may act
    only if ``authorize(request)`` returns (or awaits to) ``True``; anything else hides the
    forms and refuses the POST with 403, as does a missing, expired or forged form token.
    The read-only pages show payloads, results and errors (escaped and cut at
    ``payload_limit``) but never a backend's DSN or password: protect the dashboard as you
    would any page that shows your tasks' data.

    Args:
        queue: the :class:`tasker.queue.Queue` to show (its backend should declare
            ``INSPECTION``).
        scheduler: the :class:`tasker.Scheduler` whose schedules to show. Probing a lock
            takes it for an instant; a replica due at that instant retries after its
            ``lock_retry``.
        authorize: called with the Starlette ``Request`` of each page and action, sync or
            async; ``True`` allows actions.
        secret: the key that signs the forms' tokens, at least 16 bytes (default: random
            per app). Give every replica behind one address the same secret, or a form
            served by one is refused by another.
        title: the name in the page header.
        payload_limit: the most characters of a payload or result shown.

    Raises:
        ValueError: for neither ``queue`` nor ``scheduler``, a ``payload_limit`` below 1,
            or a secret shorter than 16 bytes.
        TypeError: for a ``queue`` that is not a Queue, a ``scheduler`` that is not a
            Scheduler, or an ``authorize`` that is not callable.
    """
    if queue is not None and not isinstance(queue, Queue):
        raise TypeError(
            f"tasker.dashboard.app(): queue must be a tasker.queue.Queue, got {queue!r}"
        )
    if scheduler is not None and not isinstance(scheduler, Scheduler):
        raise TypeError(
            f"tasker.dashboard.app(): scheduler must be a tasker.Scheduler, got {scheduler!r}"
        )
    if queue is None and scheduler is None:
        raise ValueError("tasker.dashboard.app(): give a queue, a scheduler, or both")
    if authorize is not None and not callable(authorize):
        raise TypeError(
            f"tasker.dashboard.app(): authorize must be callable or None, got {authorize!r}"
        )
    if isinstance(payload_limit, bool) or not isinstance(payload_limit, int) or payload_limit < 1:
        raise ValueError(
            f"tasker.dashboard.app(): payload_limit must be an integer of at least 1,"
            f" got {payload_limit!r}"
        )
    if not isinstance(title, str):
        raise TypeError(f"tasker.dashboard.app(): title must be a str, got {title!r}")
    dashboard = _Dashboard(
        queue=queue,
        scheduler=scheduler,
        authorize=authorize,
        csrf=Csrf(secret),
        title=title,
        payload_limit=payload_limit,
    )
    return Starlette(
        routes=[
            Route("/", dashboard.queues, methods=["GET"]),
            Route("/schedules", dashboard.schedules, methods=["GET"]),
            Route("/workers", dashboard.workers, methods=["GET"]),
            Route("/tasks", dashboard.tasks, methods=["GET"]),
            Route("/task", dashboard.task, methods=["GET"]),
            Route("/actions/{action}", dashboard.action, methods=["POST"]),
            Route("/static/dashboard.css", dashboard.stylesheet, methods=["GET"]),
        ]
    )


def _root(request: Request) -> str:
    return str(request.scope.get("root_path", "")).rstrip("/")


def _secure(response: Response) -> Response:
    response.headers.update(_HEADERS)
    return response


class _Dashboard:
    """The endpoints of one app, and what they share."""

    def __init__(
        self,
        *,
        queue: Queue | None,
        scheduler: Scheduler | None,
        authorize: Authorize | None,
        csrf: Csrf,
        title: str,
        payload_limit: int,
    ) -> None:
        self._queue = queue
        self._scheduler = scheduler
        self._authorize = authorize
        self._csrf = csrf
        self._title = title
        self._payload_limit = payload_limit
        self._css = _stylesheet()

    # -- shared ----------------------------------------------------------------------

    async def _allowed(self, request: Request) -> bool:
        if self._authorize is None:
            return False
        answer: Any = self._authorize(request)
        if inspect.isawaitable(answer):
            answer = await answer
        return answer is True

    def _can(self, capability: QueueCapability) -> bool:
        return self._queue is not None and capability in self._queue.backend.capabilities

    async def _page(
        self,
        request: Request,
        template: str,
        active: str,
        heading: str,
        gather: Callable[[], Awaitable[Mapping[str, Any]]],
    ) -> Response:
        allowed = await self._allowed(request)
        session = request.cookies.get(COOKIE)
        fresh = None
        if allowed and not _plausible(session):
            session = fresh = Csrf.new_session()

        def form_token(action: str, target: str) -> str:
            assert session is not None  # forms are only rendered when actions are allowed
            return self._csrf.token(session, action, target)

        try:
            data = dict(await gather())
            status = int(data.pop("status", 200))
        except Exception as exc:
            logger.warning("dashboard: %s failed: %s", request.url.path, error_text(exc))
            template, status, data = "error.html", 503, {"error": error_text(exc)}
        now_text = "-"
        if self._queue is not None:
            try:
                now_text = stamp(await self._queue.backend.time())
            except Exception:  # the page already says what failed, if anything did
                now_text = "unknown"
        notice = _notice(request)
        html = _ENV.get_template(template).render(
            root=_root(request),
            title=self._title,
            heading=heading,
            nav=_NAV,
            active=active,
            backend=None if self._queue is None else backend_name(self._queue),
            capabilities=(
                []
                if self._queue is None
                else sorted(c.name for c in self._queue.backend.capabilities)
            ),
            actions=allowed,
            actions_configured=self._authorize is not None,
            can=self._can,
            Capability=QueueCapability,
            missing=missing,
            form_token=form_token,
            csrf_field=FIELD,
            notice=notice,
            now_text=now_text,
            **data,
        )
        response = HTMLResponse(html, status_code=status)
        if fresh is not None:
            response.set_cookie(
                COOKIE,
                fresh,
                path=f"{_root(request)}/",
                httponly=True,
                samesite="strict",
                secure=request.url.scheme == "https",
            )
        return _secure(response)

    def _no_queue(self) -> dict[str, Any]:
        return {"no_queue": "no Queue was given to this dashboard (app(queue=...))"}

    # -- pages -----------------------------------------------------------------------

    async def queues(self, request: Request) -> Response:
        """``/``: every queue's depth, oldest wait, plots and held tasks."""
        queue = self._queue

        async def gather() -> Mapping[str, Any]:
            if queue is None:
                return self._no_queue()
            return {"view": await gather_queues(queue)}

        return await self._page(request, "queues.html", "queues", "Queues", gather)

    async def schedules(self, request: Request) -> Response:
        """``/schedules``: each schedule, its state and its lock."""

        async def gather() -> Mapping[str, Any]:
            return {"view": await gather_schedules(self._scheduler)}

        return await self._page(request, "schedules.html", "schedules", "Schedules", gather)

    async def workers(self, request: Request) -> Response:
        """``/workers``: the registry's workers and the lease owners."""
        queue = self._queue

        async def gather() -> Mapping[str, Any]:
            if queue is None:
                return self._no_queue()
            return {"view": await gather_workers(queue)}

        return await self._page(request, "workers.html", "workers", "Workers", gather)

    async def tasks(self, request: Request) -> Response:
        """``/tasks``: the search form and its matches."""
        queue = self._queue
        params = request.query_params
        query = {key: params.get(key, "").strip() for key in ("id", "name", "state", "queue")}
        problems = []
        state = None
        if query["state"]:
            try:
                state = TaskState(query["state"])
            except ValueError:
                problems.append(f"unknown state {query['state']!r}: showing every state")
        limit = _int(params.get("limit"), default=50, low=1, high=500)

        async def gather() -> Mapping[str, Any]:
            if queue is None:
                return self._no_queue()
            view = await search_tasks(
                queue,
                task_id=query["id"] or None,
                name=query["name"] or None,
                state=state,
                queue_name=query["queue"] or None,
                limit=limit,
                scan=max(1000, limit),
            )
            return {
                "view": view,
                "query": query,
                "limit": limit,
                "problems": problems,
                "states": [s.value for s in TaskState],
                "moment": moment,
            }

        return await self._page(request, "tasks.html", "tasks", "Tasks", gather)

    async def task(self, request: Request) -> Response:
        """``/task?id=...``: one task, everything known about it, and its actions."""
        queue = self._queue
        task_id = request.query_params.get("id", "")

        async def gather() -> Mapping[str, Any]:
            if queue is None:
                return self._no_queue()
            view = None
            if task_id:
                view = await gather_task(queue, task_id, payload_limit=self._payload_limit)
            return {
                "view": view,
                "task_id": task_id,
                "moment": moment,
                "status": 200 if view is not None else 404,
            }

        return await self._page(request, "task.html", "tasks", "Task", gather)

    async def stylesheet(self, request: Request) -> Response:
        """The packaged stylesheet (cached for an hour)."""
        response = Response(
            self._css,
            media_type="text/css",
            headers={"Cache-Control": "public, max-age=3600"},
        )
        response.headers["X-Content-Type-Options"] = "nosniff"
        return response

    # -- actions ---------------------------------------------------------------------

    async def action(self, request: Request) -> Response:
        """``POST /actions/{requeue,cancel,dispatch}``: checked, done, redirected (303)."""
        action = request.path_params["action"]
        if action not in _ACTIONS:
            return _refusal(request, 404, f"no action {action!r}")
        if self._authorize is None or self._queue is None:
            return _refusal(
                request, 403, "actions are off: this dashboard was built without authorize="
            )
        if request.headers.get("sec-fetch-site") == "cross-site":
            return _refusal(request, 403, "a cross-site form was refused")
        form = await _form(request)
        if form is None:
            return _refusal(request, 400, "expected a small application/x-www-form-urlencoded form")
        target = form.get("queue", "") if action == "dispatch" else form.get("task_id", "")
        if not target:
            return _refusal(request, 400, "the form names no task or queue")
        if not self._csrf.check(request.cookies.get(COOKIE), action, target, form.get(FIELD)):
            return _refusal(
                request,
                403,
                "the form's token is missing, expired or not this browser's: reload the page",
            )
        if not await self._allowed(request):
            return _refusal(request, 403, "not authorised to act on this dashboard")
        try:
            return await self._act(request, action, target, form)
        except Exception as exc:
            logger.warning("dashboard: %s of %r failed: %s", action, target, error_text(exc))
            return _refusal(request, 503, f"the backend failed: {error_text(exc)}")

    async def _act(
        self, request: Request, action: str, target: str, form: Mapping[str, str]
    ) -> Response:
        queue = self._queue
        assert queue is not None  # action() refuses first
        root = _root(request)
        client = request.client.host if request.client else "?"
        needed = QueueCapability.CANCEL if action == "cancel" else QueueCapability.ADMINISTRATION
        if not self._can(needed):
            return _refusal(request, 409, missing(needed))
        if action == "requeue":
            done = await queue.requeue(target)
            logger.info("dashboard: requeue of task %r by %s: %s", target, client, done)
            notice = "requeued" if done else "not-requeued"
            return _redirect(f"{root}/task?id={quote(target, safe='')}&notice={notice}")
        if action == "cancel":
            result = await queue.cancel(target)
            logger.info("dashboard: cancel of task %r by %s: %s", target, client, result.status)
            notice = f"cancel-{result.status.value}"
            return _redirect(f"{root}/task?id={quote(target, safe='')}&notice={notice}")
        name = form.get("name") or None
        limit = _int(form.get("limit"), default=None, low=1, high=10**9)
        count = await queue.dispatch(target, name=name, limit=limit)
        logger.info("dashboard: dispatch of %d held task(s) in %r by %s", count, target, client)
        return _redirect(f"{root}/?notice=dispatched&n={count}")


def _plausible(session: str | None) -> bool:
    return (
        session is not None
        and 16 <= len(session) <= 64
        and all(c.isalnum() or c in "-_" for c in session)
    )


def _int(text: str | None, *, default: Any, low: int, high: int) -> Any:
    if text is None or not text.strip():
        return default
    try:
        value = int(text.strip(), 10)
    except ValueError:
        return default
    return min(max(value, low), high)


def _notice(request: Request) -> dict[str, str] | None:
    key = request.query_params.get("notice")
    if key not in _NOTICES:
        return None
    kind, text = _NOTICES[key]
    if "{n}" in text:
        text = text.format(n=_int(request.query_params.get("n"), default=0, low=0, high=10**9))
    return {"kind": kind, "text": text}


async def _form(request: Request) -> dict[str, str] | None:
    """The POSTed fields (the first value of each), or None for a body that is not a
    small urlencoded form."""
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind != "application/x-www-form-urlencoded":
        return None
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > _MAX_FORM:
        return None  # refused unread
    body = b""
    # Closed explicitly: an async generator left behind at the early return would be
    # finalised by the garbage collector, outside the event loop (trio warns).
    async with aclosing(request.stream()) as chunks:
        async for chunk in chunks:
            body += chunk
            if len(body) > _MAX_FORM:
                return None
    try:
        fields = parse_qs(body.decode("utf-8"), keep_blank_values=True, max_num_fields=20)
    except (UnicodeDecodeError, ValueError):
        return None
    return {key: values[0] for key, values in fields.items()}


def _redirect(url: str) -> Response:
    return _secure(RedirectResponse(url, status_code=303))


def _refusal(request: Request, status: int, reason: str) -> Response:
    html = _ENV.get_template("refused.html").render(
        root=_root(request), status=status, reason=redact_dsn(reason)
    )
    return _secure(HTMLResponse(html, status_code=status))
