"""A task API in the style of Celery or Dramatiq, on paxq queues:

    tasks = Tasks()

    @tasks.task(queue="emails")
    async def send_email(to: str, subject: str) -> None: ...

    await send_email.enqueue(client, "ada@example.com", subject="hi")   # a producer
    await send_email.with_options(delay_s=60, key="ada").enqueue(client, "ada@example.com")
    blocking_client.enqueue(send_email, "ada@example.com", subject="hi") # from sync code
    await tasks.work(client, concurrency=8)                              # a worker process

Options of one call (`with_options`: delay_s, key, headers, message_id) are kept apart from
the task's own arguments, which all go to the function.
A task message is JSON: {"task": name, "args": [...], "kwargs": {...}}. A worker runs the
registered function (a plain function runs in a thread); returning acks, raising nacks with
backoff, and after the queue's `max_deliveries` the message is in its dead-letter queue.
`paxq worker module:tasks` runs one from the command line.
"""

from __future__ import annotations

import inspect
import json
import sys
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import anyio

from .client import Client
from .errors import InvalidArgument, RequestError
from .messages import Delivery
from .worker import WorkerPool


class UnknownTask(RequestError):
    """A task message this worker cannot run: not a task's JSON, or a task it has not
    registered (the message names it and those it knows)."""


#: the publish options a task (or one call of it) may set
OPTIONS = frozenset({"delay_s", "key", "headers", "message_id"})


@dataclass
class Task:
    name: str
    queue: str
    function: Callable[..., object]
    options: dict = field(default_factory=dict)  # publish options: delay_s, key, headers

    def with_options(self, **options: object) -> Task:
        """The same task with these publish options for the calls made through it:
        `send.with_options(delay_s=60, key=user).enqueue(client, *args, **kwargs)`."""
        return replace(self, options={**self.options, **_checked(options)})

    def message(self, *args: object, **kwargs: object) -> bytes:
        """The message that runs this task with these arguments (JSON-serializable)."""
        return json.dumps({"task": self.name, "args": list(args), "kwargs": kwargs}).encode()

    async def enqueue(self, client: Client, *args: object, **kwargs: object) -> int:
        """Queue one run; returns the message's offset."""
        return await client.publish(self.queue, self.message(*args, **kwargs), **self.options)

    def __call__(self, *args: object, **kwargs: object) -> object:
        return self.function(*args, **kwargs)  # calling it directly runs it here


class Tasks:
    """A registry of tasks and the worker that runs them."""

    def __init__(self, default_queue: str = "tasks") -> None:
        self.default_queue = default_queue
        self.tasks: dict[str, Task] = {}

    def task(
        self,
        function: Callable[..., object] | None = None,
        *,
        queue: str | None = None,
        name: str | None = None,
        **options: object,
    ):
        """Register a function as a task (as `@tasks.task` or `@tasks.task(queue=...)`)."""

        def register(f: Callable[..., object]) -> Task:
            task = Task(name or _task_name(f), queue or self.default_queue, f)
            if "message_id" in options:  # every call would be a duplicate of the first
                raise InvalidArgument("message_id", "one call's option: use with_options")
            task.options = _checked(options)
            if task.name in self.tasks:
                raise ValueError(f"a task named {task.name!r} is registered already")
            self.tasks[task.name] = task
            return task

        return register(function) if function is not None else register

    @property
    def queues(self) -> list[str]:
        return sorted({task.queue for task in self.tasks.values()})

    async def run(self, delivery: Delivery) -> object:
        """Run the task a delivery names (raises UnknownTask, or what the task raises)."""
        where = f"{delivery.topic}@{delivery.offset}"
        try:
            call = json.loads(delivery.body)
            name = call["task"]
            args, kwargs = call.get("args", []), call.get("kwargs", {})
        except (ValueError, KeyError, TypeError, AttributeError) as error:
            raise UnknownTask(f"{where}: not a task message ({error!r})") from error
        task = self.tasks.get(name) if isinstance(name, str) else None
        if task is None:
            known = ", ".join(sorted(self.tasks)) or "none"
            raise UnknownTask(f"{where}: no task {name!r} registered here (known: {known})")
        if inspect.iscoroutinefunction(task.function):
            return await task.function(*args, **kwargs)
        return await anyio.to_thread.run_sync(lambda: task.function(*args, **kwargs))

    def pools(self, client: Client, queues: list[str] | None = None, **options) -> list[WorkerPool]:
        return [WorkerPool(client, queue, self.run, **options) for queue in (queues or self.queues)]

    async def work(
        self,
        client: Client,
        queues: list[str] | None = None,
        *,
        create: bool = True,
        **options: object,
    ) -> None:
        """Run workers on these queues (default: every queue a task uses) until cancelled;
        `options` go to each WorkerPool (concurrency, lease_s, grace_s, ...)."""
        pools = self.pools(client, queues, **options)
        if create:
            for pool in pools:
                await client.create_queue(pool.topic, exist_ok=True)
        async with anyio.create_task_group() as group:
            for pool in pools:
                group.start_soon(pool.run)


def _checked(options: dict) -> dict:
    unknown = sorted(set(options) - OPTIONS)
    if unknown:
        raise InvalidArgument(
            unknown[0], f"not a task option (those are {', '.join(sorted(OPTIONS))})"
        )
    return dict(options)


def _task_name(function: Callable[..., object]) -> str:
    """module.qualname, where a script's module is named as a worker imports it: a task
    defined in `python jobs.py` is `jobs.send`, not `__main__.send` (which no worker that
    imports `jobs` would know)."""
    module = function.__module__
    if module == "__main__":
        main = sys.modules.get("__main__")
        spec = getattr(main, "__spec__", None)
        if spec is not None and spec.name:  # python -m package.jobs
            module = spec.name
        elif getattr(main, "__file__", None):
            module = Path(main.__file__).stem
    return f"{module}.{function.__qualname__}"
