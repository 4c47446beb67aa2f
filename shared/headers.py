"""The headers taskgate adds to Celery's task messages, read by the gateway, the producer and
the workers.

``taskgate_user`` names who owns a message that has no record yet (``worker.adopt``);
``taskgate_record`` says its record was written before it was published, so a worker never
adopts it (``gateway.broker.message``, ``shared.producer``); ``taskgate_parent`` names the task
whose code started it (``shared.producer``'s signatures, read by the runner). ``traceparent``
is W3C's (``shared.tracing``), under the name OpenTelemetry's Celery instrumentation uses: the
task's trace, and its publish span as the parent.
"""

from __future__ import annotations

HEADER_USER = "taskgate_user"
RECORDED_HEADER = "taskgate_record"
PARENT_HEADER = "taskgate_parent"
TRACE_HEADER = "traceparent"
# The longest user id ``taskgate_user`` (or a producer's ``user=``) may name.
MAX_OWNER_LEN = 256
