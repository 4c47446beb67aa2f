"""The in-process API: ``TaskManager``, the methods teams know from hand-written Celery managers.

For any asyncio program beside the Redis (no HTTP server needed): ``await TaskManager.connect()``
opens the same resources as the server (``gateway.resources``) and the same ``TaskService``, and
listens for updates so ``execute_task`` returns as soon as the task ends. ``close()`` when done.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Mapping, Sequence
from typing import Any

from gateway import resources
from gateway.inprocess_config import ManagerConfig
from gateway.live.router import UpdateRouter
from gateway.tasks.health import system_health
from gateway.tasks.service import TaskService
from gateway.tasks.submission import batch_body, field_error
from shared.errors import RateLimited, TaskgateError
from shared.records import AsyncRecords
from shared.schema import Snapshot
from shared.settings import Settings


class TaskManager:
    """Submit tasks and wait for them, on behalf of ``context["user_id"]`` (else the config's
    ``default_user``)."""

    def __init__(
        self,
        service: TaskService,
        config: ManagerConfig,
        stack: contextlib.AsyncExitStack,
        relay_connected: asyncio.Event | None = None,
    ) -> None:
        self.service = service
        self.config = config
        self._stack = stack
        self._relay_connected = relay_connected

    @classmethod
    async def connect(
        cls,
        settings: Settings | None = None,
        config: ManagerConfig | Mapping[str, Any] | None = None,
    ) -> TaskManager:
        """A manager with its own Redis and broker connections and its own relay."""
        settings = settings or Settings.from_env()
        if isinstance(config, Mapping):
            config = ManagerConfig.from_mapping(config)
        config = config or ManagerConfig.from_env()
        async with contextlib.AsyncExitStack() as stack:
            records = await stack.enter_async_context(resources.open_records(settings))
            broker = await stack.enter_async_context(resources.open_broker(settings))
            service = await stack.enter_async_context(
                resources.open_service(settings, records, broker)
            )
            relay = resources.make_relay(settings, UpdateRouter(service))
            jobs = [("taskgate-manager-relay", relay.run())]
            await stack.enter_async_context(
                resources.running(*jobs, *resources.maintenance_jobs(settings, records, broker))
            )
            return cls(service, config, stack.pop_all(), relay.connected)
        raise AssertionError("unreachable")  # pragma: no cover

    async def close(self) -> None:
        await self._stack.aclose()

    @property
    def settings(self) -> Settings:
        return self.service.settings

    @property
    def records(self) -> AsyncRecords:
        return self.service.records

    def _user(self, context: Mapping[str, Any] | None) -> str:
        user = (context or {}).get("user_id") or (context or {}).get("user")
        return str(user) if user else self.config.default_user

    # -- The service's own calls, for a given user --------------------------------------------

    async def submit(self, user: str, body: Any) -> Snapshot:
        return await self.service.submit(user, body)

    async def submit_many(self, user: str, bodies: Any) -> list[Snapshot | TaskgateError]:
        return await self.service.submit_many(user, bodies)

    async def get(self, user: str, task_id: object) -> Snapshot:
        return await self.service.get(user, task_id)

    # -- The managers' API --------------------------------------------------------------------

    async def execute_task(
        self,
        task_name: str,
        input_data: Mapping[str, Any] | None = None,
        context: Mapping[str, Any] | None = None,
        *,
        queue: str | None = None,
        priority: int | None = None,
    ) -> Snapshot:
        """Submit, then wait for the end: the terminal snapshot (``status``, ``result``,
        ``error``). Raises ``ResultTimeout`` after ``task_timeout_seconds``; the task keeps
        running (cancel it with ``cancel_task`` if that is what you want)."""
        body: dict[str, Any] = {"task": task_name, "input": dict(input_data or {})}
        if queue is not None:
            body["queue"] = queue
        if priority is not None:
            body["priority"] = priority
        user = self._user(context)
        snap = await self.service.submit(user, body)
        return await self.service.wait_result(
            user, snap["task_id"], self.config.task_timeout_seconds
        )

    async def execute_heavy_task(
        self,
        task_name: str,
        input_data: Mapping[str, Any] | None = None,
        context: Mapping[str, Any] | None = None,
    ) -> Snapshot:
        """``execute_task`` on the ``heavy`` queue (the task must allow it)."""
        return await self.execute_task(task_name, input_data, context, queue="heavy")

    async def execute_dsl_task_step(
        self,
        step: Mapping[str, Any],
        input_data: Mapping[str, Any] | None = None,
        context: Mapping[str, Any] | None = None,
    ) -> Snapshot:
        """Run one DSL step ``{"task": name, "parameters": {...}}``: its parameters, overlaid
        with ``input_data``, are the task's input."""
        if not isinstance(step, Mapping) or not isinstance(step.get("task"), str):
            raise field_error("step.task", "must name a task")
        params = step.get("parameters") or {}
        if not isinstance(params, Mapping):
            raise field_error("step.parameters", "must be an object")
        extra = set(step) - {"task", "parameters", "queue", "priority"}
        if extra:
            raise field_error(f"step.{sorted(extra)[0]}", "is not an accepted option")
        return await self.execute_task(
            step["task"],
            {**params, **(input_data or {})},
            context,
            queue=step.get("queue"),
            priority=step.get("priority"),
        )

    async def batch_execute_tasks(
        self, tasks: Sequence[Mapping[str, Any]], context: Mapping[str, Any] | None = None
    ) -> list[dict[str, Any]]:
        """Run many tasks and wait for all: one entry per task, in order, each the terminal
        snapshot or ``{"error": {...}}``. Submitted ``batch_size`` at a time, at most
        ``rate_limit_requests_per_second``; an item refused with ``rate_limited`` (the user's
        submit rate or active-task quota) is submitted again after its ``retry_after``, for up
        to ``task_timeout_seconds``, so none is lost to the limits. One failure does not sink
        the rest."""
        user = self._user(context)
        loop = asyncio.get_running_loop()
        out: list[dict[str, Any]] = [{} for _ in tasks]
        waits: list[tuple[int, asyncio.Task[Snapshot]]] = []
        size = self.config.batch_size
        rate = self.config.rate_limit_requests_per_second
        if self.settings.submit_rate > 0:
            # A chunk never asks for more than the user's bucket can hold (that would be a 422).
            size = max(1, min(size, int(self.settings.effective_submit_burst)))
            rate = min(rate, self.settings.submit_rate)
        give_up = loop.time() + self.config.task_timeout_seconds
        for start in range(0, len(tasks), size):
            began = loop.time()
            todo = list(range(start, min(start + size, len(tasks))))
            while todo:
                answers = await self._submit_chunk(user, [batch_body(tasks[i]) for i in todo])
                limited: list[int] = []
                wait_s = 0.0
                for i, answer in zip(todo, answers, strict=True):
                    if isinstance(answer, RateLimited) and loop.time() < give_up:
                        limited.append(i)
                        wait_s = max(wait_s, answer.retry_after)
                    elif isinstance(answer, TaskgateError):
                        out[i] = answer.to_dict()
                    else:
                        wait = self.service.wait_result(
                            user, answer["task_id"], self.config.task_timeout_seconds
                        )
                        waits.append((i, asyncio.ensure_future(wait)))
                todo = limited
                if todo:
                    await asyncio.sleep(min(wait_s, max(0.0, give_up - loop.time())))
            # Pace: a chunk of n may start only n / rate seconds after the previous one.
            pause = size / rate - (loop.time() - began)
            if pause > 0 and start + size < len(tasks):
                await asyncio.sleep(pause)
        for i, waiter in waits:
            try:
                out[i] = dict(await waiter)
            except TaskgateError as exc:
                out[i] = exc.to_dict()
        return out

    async def _submit_chunk(self, user: str, bodies: list[Any]) -> list[Snapshot | TaskgateError]:
        """``submit_many``, with an error for the whole chunk given to each of its items."""
        try:
            return await self.service.submit_many(user, bodies)
        except TaskgateError as exc:
            return [exc] * len(bodies)

    async def get_task_result(
        self, task_id: str, context: Mapping[str, Any] | None = None, wait: float = 0.0
    ) -> Snapshot:
        """The task's snapshot now, or (``wait`` > 0) once it ended, up to ``wait`` seconds."""
        user = self._user(context)
        if wait > 0:
            return await self.service.wait_result(user, task_id, wait)
        return await self.service.get(user, task_id)

    async def cancel_task(self, task_id: str, context: Mapping[str, Any] | None = None) -> Snapshot:
        return await self.service.cancel(self._user(context), task_id)

    async def get_queue_info(self) -> dict[str, Any]:
        """Depth of every configured queue (messages waiting in the broker)."""
        return await self.service.queue_info()

    async def get_worker_stats(self) -> dict[str, Any]:
        """Workers that answered a Celery inspect, with queues, active task ids and counters."""
        return await self.service.worker_stats()

    async def get_system_health(self) -> dict[str, Any]:
        """Redis, broker, relay and workers, each ``ok`` or what is wrong."""
        relay = None
        if self._relay_connected is not None:
            relay = "ok" if self._relay_connected.is_set() else "reconnecting"
        return await system_health(
            self.service.records.client, self.service.broker, relay, self.service.control
        )
