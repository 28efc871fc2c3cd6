"""A web dashboard for the task queue and the Scheduler: ``tasker.dashboard.app(...)``.

Server-rendered pages (Starlette and Jinja2, the ``dashboard`` extra) with no script and
nothing fetched from elsewhere: queue depths and the last hour's plots, schedules with
their locks, workers, task search and task pages, and, when built with ``authorize``,
actions (requeue, dispatch, cancel) behind CSRF-protected forms. Mount it in a Starlette
or FastAPI application, serve it with :func:`tasker.serve_asgi`, or run
``tasker dashboard module:queue``.
"""

from __future__ import annotations

from ._app import app

__all__ = ["app"]

app.__module__ = __name__
