"""The tests, grouped as the source is.

- ``unit/``: pure functions and objects built from settings; no Redis, no process.
- ``tasks/``: submits end to end, grouped submits, the accept pipeline, the in-process manager,
  workflows, webhooks.
- ``live/``: what reaches sockets: the relay, frames written straight or queued, Socket.IO.
- ``http/``: the API, its OpenAPI document, tokens, isolation, limits, origins, hostile inputs
  and fuzzing.
- ``broker/``: RabbitMQ end to end, the outbox, JSON only on the broker.
- ``faults/``: killed and frozen processes (and the opt-in soak).
- ``cli/``, ``worker/`` (beat, Flower), ``web/`` (the page in node and chromium).

Helpers live in ``tests/support.py``; ``tests/conftest.py`` holds only fixtures.
"""
