"""Prometheus metrics of a queue, its workers and a Scheduler (the ``metrics`` extra).

``metrics = tasker.metrics.instrument(queue=queue, scheduler=scheduler)`` starts counting;
serve ``metrics.asgi_app()`` (mount it at ``/metrics``, or give it to
:func:`tasker.serve_health` as ``metrics=``) and compose ``metrics.job()`` to keep the queue
depth current. See the metrics guide for every name and label.
"""

from __future__ import annotations

from ._prometheus import DEFAULT_BUCKETS, Metrics, instrument

__all__ = ["DEFAULT_BUCKETS", "Metrics", "instrument"]

for _name in ("Metrics", "instrument"):
    globals()[_name].__module__ = __name__
del _name
