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
A task message is JSON: {"task": name, "id": run id, "args": [...], "kwargs": {...}}. A worker
runs the registered function (a plain function runs in a thread); returning acks, raising
nacks with backoff, and after the queue's `max_deliveries` the message is in its dead-letter
queue, x-death-error saying what it raised. A task's own retry settings (`max_retries`,
`retry_delay_s`, `no_retry`: error types not worth retrying) and a message that is not a
task's or names a task this worker does not know send it to the dead letters at once.
`store_result=True` keeps its return value (or its final error) for the caller:
`run = await add.enqueue(client, 2, 3); await run.result(timeout_s=10)`.
`paxq worker module:tasks` runs one from the command line.
"""

from __future__ import annotations

import inspect
import json
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import anyio

from .client import Client
from .errors import InvalidArgument, RequestError
from .messages import Delivery
from .results import TaskRun, store
from .worker import Reject, RetryAfter, WorkerPool, check_delay


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
    #: runs after the first that a failure may have before it is dead-lettered (None: as
    #: many as the queue's max_deliveries allows)
    max_retries: int | None = None
    #: how long a failed run waits before it is tried again (None: the queue's backoff)
    retry_delay_s: float | None = None
    #: error types that retrying cannot mend: dead-lettered at the first
    no_retry: tuple[type[BaseException], ...] = ()
    #: keep the return value (or the final error) for `TaskRun.result`
    store_result: bool = False

    def with_options(self, **options: object) -> Task:
        """The same task with these publish options for the calls made through it:
        `send.with_options(delay_s=60, key=user).enqueue(client, *args, **kwargs)`."""
        return replace(self, options={**self.options, **_checked(options)})

    def message(self, *args: object, **kwargs: object) -> bytes:
        """The message that runs this task with these arguments (JSON-serializable)."""
        return json.dumps({"task": self.name, "args": list(args), "kwargs": kwargs}).encode()

    async def enqueue(self, client: Client, *args: object, **kwargs: object) -> TaskRun:
        """Queue one run; its id (the message_id when one is given, so that a duplicate
        names the run it duplicates) and its message's offset."""
        run_id = self.options.get("message_id") or os.urandom(12).hex()
        call = {"task": self.name, "id": run_id, "args": list(args), "kwargs": kwargs}
        results = None
        if self.store_result:
            results = client.results(self.queue)
            await results.open()
        offset = await client.publish(self.queue, json.dumps(call).encode(), **self.options)
        return TaskRun(self.name, run_id, offset, results)

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
        max_retries: int | None = None,
        retry_delay_s: float | None = None,
        no_retry: tuple[type[BaseException], ...] = (),
        store_result: bool = False,
        **options: object,
    ):
        """Register a function as a task (as `@tasks.task` or `@tasks.task(queue=...)`);
        `options` are publish options every call gets (delay_s, key, headers)."""
        if max_retries is not None and (type(max_retries) is not int or max_retries < 0):
            raise InvalidArgument("max_retries", f"{max_retries!r}: an int from 0, or None")
        if retry_delay_s is not None:
            check_delay("retry_delay_s", retry_delay_s)
        if not isinstance(no_retry, tuple) or not all(
            isinstance(t, type) and issubclass(t, BaseException) for t in no_retry
        ):
            raise InvalidArgument("no_retry", f"{no_retry!r}: a tuple of exception types")

        def register(f: Callable[..., object]) -> Task:
            task = Task(
                name or _task_name(f),
                queue or self.default_queue,
                f,
                max_retries=max_retries,
                retry_delay_s=retry_delay_s,
                no_retry=no_retry,
                store_result=store_result,
            )
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
        """Run the task a delivery names. A message that is not a task's, or names one not
        registered here, raises Reject (UnknownTask); the task's own errors follow its
        retry settings."""
        task, call = self._parse(delivery)
        try:
            if inspect.iscoroutinefunction(task.function):
                value = await task.function(*call["args"], **call["kwargs"])
            else:
                value = await anyio.to_thread.run_sync(
                    lambda: task.function(*call["args"], **call["kwargs"])
                )
        except (Reject, RetryAfter):
            raise  # the task's own instruction
        except Exception as error:
            if isinstance(error, task.no_retry):
                raise Reject(f"{type(error).__name__} is not retried") from error
            if task.max_retries is not None and delivery.deliveries > task.max_retries:
                raise Reject(f"{task.max_retries} retries used up") from error
            if task.retry_delay_s is not None:
                raise RetryAfter(task.retry_delay_s) from error
            raise
        if task.store_result and isinstance(call.get("id"), str):
            record = {"id": call["id"], "task": task.name, "ok": True, "value": value}
            await store(delivery.client, task.queue, record, str(delivery.offset))
        return value

    def _parse(self, delivery: Delivery) -> tuple[Task, dict]:
        where = f"{delivery.topic}@{delivery.offset}"
        try:
            call = json.loads(delivery.body)
            name = call["task"]
            args, kwargs = call.get("args", []), call.get("kwargs", {})
            if not isinstance(args, list) or not isinstance(kwargs, dict):
                raise TypeError("args must be a list and kwargs an object")
        except (ValueError, KeyError, TypeError, AttributeError) as error:
            raise Reject("malformed") from UnknownTask(f"{where}: not a task message ({error})")
        task = self.tasks.get(name) if isinstance(name, str) else None
        if task is None:
            known = ", ".join(sorted(self.tasks)) or "none"
            raise Reject("unknown") from UnknownTask(
                f"{where}: no task {name!r} registered here (known: {known})"
            )
        return task, {**call, "args": args, "kwargs": kwargs}

    async def on_dead(self, delivery: Delivery, error: BaseException) -> None:
        """A run failed for good: a task that stores results stores the error."""
        try:
            task, call = self._parse(delivery)
        except Reject:
            return
        if task.store_result and isinstance(call.get("id"), str):
            text = f"{type(error).__name__}: {error}"
            record = {"id": call["id"], "task": task.name, "ok": False, "error": text}
            await store(delivery.client, task.queue, record, str(delivery.offset))

    def pools(self, client: Client, queues: list[str] | None = None, **options) -> list[WorkerPool]:
        return [
            WorkerPool(client, queue, self.run, on_dead=self.on_dead, **options)
            for queue in (queues or self.queues)
        ]

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
