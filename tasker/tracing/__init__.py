"""OpenTelemetry traces of a queue, its workers and a Scheduler (the ``tracing`` extra).

``tasker.tracing.instrument(queue=queue, scheduler=scheduler)`` makes a PRODUCER span for
each enqueue, a CONSUMER span for each attempt (a child of its enqueue's span, through the
trace context carried in the task) and an INTERNAL span for each scheduled run. See the
tracing guide for every span and attribute.
"""

from __future__ import annotations

from ._otel import Tracing, instrument

__all__ = ["Tracing", "instrument"]

for _name in __all__:
    globals()[_name].__module__ = __name__
del _name
