"""Tasks: the task service (submit, read, list, cancel), submission parsing, idempotency,
result waiters, group commit, the submit rate, workflows, Celery control and the stall watch."""
