"""The async client: one object per application that talks to a whole cluster.

    async with Client(["127.0.0.1:7411", "127.0.0.1:7412", "127.0.0.1:7413"]) as client:
        await client.create_queue("jobs")
        await client.publish("jobs", b"hello")
        async with client.consume("jobs") as deliveries:
            async for delivery in deliveries:
                ...
                await delivery.ack()

It finds the leader (a follower's NOT_LEADER names it), keeps a connection per node it uses,
and retries with exponential backoff and jitter across leader changes until the request's
deadline. Retries never duplicate: publishes, acks, nacks and extends carry this client's
producer id and a per-topic sequence, and the machine answers a resend with the first
result. Concurrent publishes to a topic share requests (the batching publisher), as do acks
to a subscription.

Runs on anyio: trio programs use it natively, asyncio programs just the same.
"""

from __future__ import annotations

import contextlib
import enum
import hashlib
import logging
import os
import random
import socket
from collections.abc import Callable, Iterable, Sequence
from contextlib import AsyncExitStack
from types import TracebackType
from typing import TYPE_CHECKING

import anyio
import anyio.lowlevel
import cbor2
from anyio.abc import TaskGroup
from opentelemetry import trace
from opentelemetry.trace import Tracer

from .batching import Batcher, Job, Sequencer
from .connection import (
    SILENCE_S,
    Address,
    Connection,
    ConnectionLost,
    default_seeds,
    format_address,
    parse_address,
)
from .errors import (
    BadRequest,
    InvalidArgument,
    LeaseLost,
    Overloaded,
    PaxqError,
    SubscriptionExists,
    TooLarge,
    TopicExists,
    Unavailable,
    UnknownOutcome,
    Unreachable,
    error_from_reply,
)
from .messages import Delivery, Headers, Message, Offset
from .results import Results
from .tracing import Caller, RequestTracing, caller, traceparent
from .wire import FRAME_BYTES_MAX, ErrorCode
from .wire.protocol import (
    CLAIM_MAX,
    COMMANDS,
    DELAY_MS_MAX,
    HEADERS_MAX,
    KEY_BYTES_MAX,
    LEASE_MS_MAX,
    LEASES_MAX,
    LIST_TOPICS_MAX,
    MESSAGE_BYTES_MAX,
    MESSAGE_ID_CHARS_MAX,
    NACK_ERROR_CHARS_MAX,
    PRODUCER_WINDOW,
    PUBLISH_MESSAGES_MAX,
    WAIT_MS_MAX,
    message_bytes,
)

if TYPE_CHECKING:
    from .consumer import Consumer
    from .tail import Tail

log = logging.getLogger("paxq.client")

#: acks sent or waiting and not yet answered at most, per queue or subscription: each
#: consumer's prefetch bounds its own, and this bounds them all (past it, ack waits and
#: ack_nowait raises anyio.WouldBlock)
ACKS_PENDING_MAX = 100_000
#: publish_soon takes this many messages without a checkpoint at most while there is room:
#: one per message would cost a pass of the scheduler each, none would starve the tasks
#: that send and answer them
_PUBLISH_CHECKPOINT_EVERY = 32

#: addresses learned from leader hints are added to the seeds, up to this many in all
_ADDRESSES_MAX = 64
#: the longest pause between attempts while no leader is known (an election is under way)
_LEADERLESS_S = 0.1
_EXISTS = (ErrorCode.TOPIC_EXISTS, ErrorCode.SUBSCRIPTION_EXISTS)
_GONE = (ErrorCode.UNKNOWN_TOPIC, ErrorCode.UNKNOWN_SUBSCRIPTION)
#: a node whose connection was just lost is tried last for this long while no leader is
#: known (a paused node still accepts connections, and would hold every request up)
_AVOID_S = 2.0


class Retry(enum.Enum):
    """What a resend of a command whose first attempt may have been applied means."""

    ANSWERED = "answered"  # the machine answers a resend with the first result (sequenced)
    HARMLESS = "harmless"  # applying it twice does no harm (a claim: unacked leases expire)
    EXISTS = "exists"  # create, subscribe: "exists" after a resend means the first one did it
    GONE = "gone"  # delete, unsubscribe: "unknown" after a resend means the first one did it
    NEVER = "never"  # purge: an unknown outcome is reported, not resent


class Client:
    """A connection to a paxq cluster. Use it as an async context manager.

    `seeds`: client addresses of some or all nodes ("host:port" or (host, port), or one
    comma-separated string); by default PAXQ_NODES, else the `paxq dev` cluster.
    `request_timeout_s`: how long one call keeps trying (leader changes included) before
    raising Unavailable (or UnknownOutcome for a command that may have been applied).
    `first_contact_s`: while no node has ever answered this client's hello (wrong addresses,
    a cluster that is down), a call gives up after this long with `Unreachable`, which names
    each address and what happened there; once one has answered, outages are retried for
    the whole `request_timeout_s`.
    `outage_s`: how long the long-lived readers (`consume`, `tail`, `WorkerPool`) keep trying
    through an outage, counted from their last answer, saying so every 10 s in the log, before
    they raise Unavailable; None: for ever.
    """

    def __init__(
        self,
        seeds: Sequence[str | Address] | str | None = None,
        *,
        request_timeout_s: float = 30.0,
        connect_timeout_s: float = 3.0,
        first_contact_s: float = 4.0,
        outage_s: float | None = 300.0,
        silence_s: float | None = SILENCE_S,
        backoff_initial_s: float = 0.02,
        backoff_max_s: float = 1.0,
        publish_linger_s: float = 0.0,
        publish_batch_messages: int = 500,
        publish_batch_bytes: int = 192 << 10,
        publish_in_flight: int = 8,
        publish_pending_max: int = 10_000,
        frame_bytes_max: int = FRAME_BYTES_MAX,
        producer_id: str | None = None,
        tracer: Tracer | None = None,
        trace_sample: float = 1.0,
    ) -> None:
        if seeds is None:
            seeds = default_seeds()
        elif isinstance(seeds, str):
            seeds = [part for part in seeds.split(",") if part.strip()]
        self._addresses: list[Address] = [
            parse_address(seed) if isinstance(seed, str) else (seed[0], int(seed[1]))
            for seed in seeds
        ]
        if not self._addresses:
            raise ValueError("give at least one node address")
        if not 0 < publish_batch_messages <= PUBLISH_MESSAGES_MAX:
            raise ValueError(f"publish_batch_messages is 1 to {PUBLISH_MESSAGES_MAX}")
        if not 1 <= publish_batch_bytes <= MESSAGE_BYTES_MAX:
            # A request holds this much, or one message larger: either way one command.
            raise ValueError(f"publish_batch_bytes is 1 to {MESSAGE_BYTES_MAX:,}")
        self.request_timeout_s = request_timeout_s
        self.connect_timeout_s = connect_timeout_s
        self.first_contact_s = first_contact_s
        if outage_s is not None and outage_s < 0:
            raise ValueError(f"outage_s is {outage_s}: at least 0, or None for no limit")
        self.outage_s = outage_s
        #: some node answered a hello once: from then on an outage is waited through
        self._reached = False
        #: while none has: what happened at each address last
        self._contact: dict[Address, str] = {}
        #: a connection with requests waiting that hears nothing this long is left (None:
        #: never; the node may be paused, cut off or wedged)
        self.silence_s = silence_s
        self.backoff_initial_s = backoff_initial_s
        self.backoff_max_s = backoff_max_s
        self.publish_linger_s = publish_linger_s
        self.publish_batch_messages = publish_batch_messages
        self.publish_batch_bytes = publish_batch_bytes
        self.publish_in_flight = min(publish_in_flight, PRODUCER_WINDOW)
        if publish_pending_max < 1:
            raise ValueError(f"publish_pending_max must be positive, not {publish_pending_max}")
        #: messages published and not yet answered at most, per topic (then publishers wait)
        self.publish_pending_max = publish_pending_max
        self._published_nowait = 0
        self.frame_bytes_max = frame_bytes_max
        #: OpenTelemetry tracer for request spans whose context travels to the nodes (W3C
        #: traceparent); None: no tracing work at all. `trace_sample`: the ratio of requests
        #: traced when none of their callers is inside a sampled span already (the tracer's
        #: own sampler has the last word)
        self.tracer = tracer
        self._tracing = RequestTracing(tracer, trace_sample) if tracer is not None else None
        #: names this client's sequenced commands: a resend with the same id and sequence
        #: is answered, not applied again. A given id is a prefix: each client adds its own
        #: random incarnation, since sequences start from 0 again (a restart, another
        #: process) and must never meet an earlier run's.
        incarnation = os.urandom(8).hex()
        self.producer_id = f"{producer_id}.{incarnation}" if producer_id else incarnation
        self._connections: dict[Address, Connection] = {}
        self._connecting: dict[Address, anyio.Lock] = {}
        self._leader: Address | None = None
        self._turn = 0  # round robin over addresses while no leader is known
        self._avoid: dict[Address, float] = {}  # address -> tried last until then
        self._sequencers: dict[str, Sequencer] = {}
        self._publishers: dict[str, Batcher] = {}
        self._ackers: dict[tuple[str, str | None], Batcher] = {}
        self._results: dict[str, Results] = {}
        self._group: TaskGroup | None = None
        self._stack: AsyncExitStack | None = None
        self.retries = 0  # requests sent again (a leader change, a lost connection, ...)

    # ---------------------------------------------------------------------------- lifetime

    async def __aenter__(self) -> Client:
        stack = AsyncExitStack()
        self._group = await stack.enter_async_context(anyio.create_task_group())
        self._stack = stack
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        await self.aclose()
        return None

    async def aclose(self) -> None:
        """Close every connection; calls still waiting fail."""
        if self._stack is None:
            return
        stack, self._stack = self._stack, None
        if self._group is not None:
            self._group.cancel_scope.cancel()
            self._group = None  # later calls fail at once (task_group), not hang
        try:
            for connection in list(self._connections.values()):
                await connection.aclose()  # shielded: the task group must be left below
            self._connections.clear()
        finally:
            await stack.aclose()

    @property
    def task_group(self) -> TaskGroup:
        if self._group is None:
            raise RuntimeError("use the client inside `async with`")
        return self._group

    @property
    def leader(self) -> str | None:
        """The client address of the node this client takes for the leader, if any."""
        return None if self._leader is None else format_address(self._leader)

    # ------------------------------------------------------------------------- connections

    async def _connect(self, address: Address, timeout_s: float) -> Connection:
        connection = self._connections.get(address)
        if connection is not None and not connection.closed:
            return connection
        lock = self._connecting.setdefault(address, anyio.Lock())
        async with lock:  # one attempt per address at a time; the others share its result
            connection = self._connections.get(address)
            if connection is None or connection.closed:
                try:
                    connection = await Connection.open(
                        address,
                        self.task_group,
                        timeout_s=timeout_s,
                        frame_bytes_max=self.frame_bytes_max,
                        silence_s=self.silence_s,
                    )
                except (OSError, ConnectionLost) as error:  # (TimeoutError is an OSError)
                    self._avoid[address] = anyio.current_time() + _AVOID_S
                    # A later attempt's shorter time out says less than what happened before.
                    known = address in self._contact and isinstance(error, TimeoutError)
                    if not self._reached and not known:
                        self._contact[address] = _contact_failure(address, error, timeout_s)
                    raise
                except PaxqError:  # refused, but answered: it is there (overloaded, ...)
                    self._reached = True
                    raise
                self._reached = True
                connection.on_orphan = self._orphan
                self._connections[address] = connection
                if self._leader is None and connection.leader is not None:
                    with contextlib.suppress(ValueError):
                        self._leader = parse_address(connection.leader)
            return connection

    async def _orphan(self, op: str, fields: dict, reply: dict) -> None:
        """A claim answered after its caller gave up: give its messages back at once
        rather than leave them leased to nobody until the lease ends."""
        result = reply.get("result")
        if op != "claim" or reply.get("ok") is not True or not isinstance(result, dict):
            return
        offsets, tokens = result.get("offsets", ()), result.get("tokens", ())
        leases = [list(pair) for pair in zip(offsets, tokens, strict=True)]
        if not leases:
            return
        back: dict = {"leases": leases}
        if "subscription" in fields:
            back["subscription"] = fields["subscription"]
        with contextlib.suppress(PaxqError, RuntimeError):  # RuntimeError: closed meanwhile
            await self.sequenced("release", fields["topic"], back, callers=[])

    async def _connection(self, command: bool, timeout_s: float) -> Connection:
        """The leader's connection if it is known; else, for a query, any open one; else the
        next address in turn (a follower's answer to a command names the leader)."""
        if self._leader is not None:
            return await self._connect(self._leader, timeout_s)
        if not command:
            for connection in self._connections.values():
                if not connection.closed:
                    return connection
        address = self._next_address()
        connection = await self._connect(address, timeout_s)
        if self._leader is not None and self._leader != address:
            # Its hello named the leader: go there (a follower's state may lag behind a
            # write this client just made, e.g. a topic it just created).
            return await self._connect(self._leader, timeout_s)
        return connection

    def _next_address(self) -> Address:
        """The next address in turn, passing over those lost just now; if all were, the one
        lost longest ago."""
        now = anyio.current_time()
        count = len(self._addresses)
        order = [self._addresses[(self._turn + step) % count] for step in range(count)]
        self._turn += 1
        for address in order:
            if self._avoid.get(address, 0.0) <= now:
                return address
        return min(order, key=lambda address: self._avoid[address])

    def _lost(self, address: Address) -> None:
        if self._leader == address:
            self._leader = None
        self._turn += 1  # the next attempt without a leader goes elsewhere
        self._avoid[address] = anyio.current_time() + _AVOID_S

    def _follow(self, connection: Connection, hint: object) -> bool:
        """A NOT_LEADER answer: take its hint. True if it names a node to try right away."""
        leader = None
        if type(hint) is str:
            try:
                leader = parse_address(hint)
            except ValueError:
                leader = None
        if leader is None or leader == connection.address:
            self._lost(connection.address)
            return False
        if leader not in self._addresses and len(self._addresses) < _ADDRESSES_MAX:
            self._addresses.append(leader)
        self._leader = leader
        return True

    # ----------------------------------------------------------------------------- requests

    async def request(
        self,
        op: str,
        fields: dict,
        *,
        retry: Retry = Retry.HARMLESS,
        wait_s: float = 0.0,
        timeout_s: float | None = None,
        callers: list[Caller] | None = None,
    ) -> object:
        """Send one operation to the cluster and return its result, retrying across leader
        changes, lost connections and overload until the deadline. `wait_s` (claim and read)
        lets the node hold the request until a message arrives; the deadline counts it.
        With a tracer, a traced command gets a span whose traceparent goes in the frame
        (`callers`: who the request carries; None: the caller of this method. Background
        tasks pass their callers, or [] for none: they run in the context of whichever
        task started them, not of the callers they serve)."""
        if self._tracing is None or op not in COMMANDS:
            return await self._request(op, fields, retry, wait_s, timeout_s)
        span = self._tracing.start(
            op, fields.get("topic"), callers if callers is not None else [caller()]
        )
        if span is None:
            return await self._request(op, fields, retry, wait_s, timeout_s)
        with trace.use_span(span, end_on_exit=True):
            context = traceparent(span)
            if context is not None:
                fields = {**fields, "trace": context}
            result = await self._request(op, fields, retry, wait_s, timeout_s)
            if op == "publish" and isinstance(result, dict):
                span.set_attribute("paxq.offset", result.get("offset", -1))
            return result

    async def _request(
        self,
        op: str,
        fields: dict,
        retry: Retry,
        wait_s: float,
        timeout_s: float | None,
    ) -> object:
        start = anyio.current_time()
        wait_until = start + wait_s
        deadline = wait_until + (self.request_timeout_s if timeout_s is None else timeout_s)
        command = op in COMMANDS
        sent = False  # a command that may have been applied: its resend may meet itself
        last: object = None
        delay = self.backoff_initial_s
        redirects = 0
        while True:
            now = anyio.current_time()
            if now >= deadline:
                break
            if wait_s:  # what is left of the wait, per attempt (the caller's dict untouched)
                wait_ms = max(0, min(WAIT_MS_MAX, int((wait_until - now) * 1000)))
                fields = {**fields, "wait_ms": wait_ms}
            pause = True
            connect_s = min(self.connect_timeout_s, deadline - now)
            if not self._reached:  # time for every seed within first_contact_s
                share = self.first_contact_s / len(self._addresses)
                connect_s = max(0.001, min(connect_s, share, start + self.first_contact_s - now))
            try:
                connection = await self._connection(command, connect_s)
            except (OSError, TimeoutError, ConnectionLost, PaxqError) as error:
                last = error
                if self._leader is not None:
                    self._lost(self._leader)
                if not self._reached and anyio.current_time() >= start + self.first_contact_s:
                    raise self._unreachable(anyio.current_time() - start) from error
            else:
                try:
                    with anyio.fail_after(max(0.001, deadline - anyio.current_time())):
                        reply = await connection.request(op, fields)
                except (ConnectionLost, TimeoutError) as error:
                    last = error
                    self._lost(connection.address)
                    if command:
                        if retry is Retry.NEVER:
                            raise UnknownOutcome(
                                f"{op}: lost {format_address(connection.address)} after "
                                f"sending ({error}); it may or may not have been applied"
                            ) from error
                        sent = True
                else:
                    if reply.get("ok") is True:
                        return reply.get("result", reply.get("status"))
                    error = error_from_reply(reply)
                    last = error
                    code = error.code
                    # A follower's "no such topic" may be a creation it has not applied yet.
                    lagging = reply.get("follower") is True and code in _GONE
                    if code is ErrorCode.UNKNOWN_OUTCOME:
                        # Not retriable for the caller, but a command under a producer
                        # sequence may be sent again: the machine answers it, not twice.
                        if retry is Retry.NEVER:
                            raise error
                        sent = True
                    elif not (error.retriable or lagging):
                        if sent and retry is Retry.EXISTS and code in _EXISTS:
                            return {"existed": True}  # the first send did it
                        if sent and retry is Retry.GONE and code in _GONE:
                            return {"gone": True}
                        raise error
                    # A node that cannot serve this goes to the leader it names, without a
                    # pause (or, naming none, elsewhere); so does a deposed leader's unknown
                    # outcome that names its successor.
                    hint = reply.get("leader")
                    redirect = lagging or code is ErrorCode.NOT_LEADER
                    if code is ErrorCode.UNKNOWN_OUTCOME:
                        redirect = hint is not None
                    if redirect and self._follow(connection, hint) and redirects < 3:
                        redirects += 1
                        pause = False
            self.retries += 1
            if pause:
                redirects = 0
                remaining = deadline - anyio.current_time()
                await anyio.sleep(max(0.0, min(remaining, delay * random.uniform(0.5, 1.0))))
                # An overloaded cluster needs room; one without a known leader is electing
                # one, which takes a few hundred milliseconds: poll it at a short interval.
                cap = self.backoff_max_s if isinstance(last, Overloaded) else _LEADERLESS_S
                delay = min(cap, delay * 2)
        if not self._reached:
            raise self._unreachable(anyio.current_time() - start)
        what = f"{op}: no answer from the cluster within {deadline - start:.1f}s (last: {last})"
        if command and sent and retry is not Retry.HARMLESS:
            raise UnknownOutcome(what + "; it may or may not have been applied")
        raise Unavailable(what)

    def _unreachable(self, elapsed_s: float) -> Unreachable:
        failures = {
            format_address(address): self._contact.get(address, "not tried in time")
            for address in self._addresses
        }
        listed = "; ".join(
            text if text.startswith(name) else f"{name}: {text}" for name, text in failures.items()
        )
        return Unreachable(f"no paxq node answered within {elapsed_s:.1f}s: {listed}", failures)

    async def sequenced(
        self, op: str, topic: str, fields: dict, callers: list[Caller] | None = None
    ) -> object:
        """Send a publish, ack, nack or extend with this client's producer id and its next
        sequence on the topic, so that resending it is harmless."""
        sequencer = self._sequencers.get(topic)
        if sequencer is None:
            sequencer = self._sequencers[topic] = Sequencer(PRODUCER_WINDOW)
        seq = await sequencer.take()
        try:
            fields = {**fields, "topic": topic, "producer": self.producer_id, "seq": seq}
            return await self.request(op, fields, retry=Retry.ANSWERED, callers=callers)
        finally:
            sequencer.release(seq)

    # -------------------------------------------------------------------------------- admin

    def results(self, queue: str) -> Results:
        """Where this client finds the results of task runs on `queue` (see tasks)."""
        results = self._results.get(queue)
        if results is None:
            results = self._results[queue] = Results(self, queue)
        return results

    async def create_topic(self, topic: str, *, exist_ok: bool = False, **retention: int) -> bool:
        """A topic (a retained, totally ordered log). Retention: max_messages, max_bytes,
        max_age_ms. True if it was created, False if it existed (with exist_ok)."""
        return await self._create(topic, "topic", exist_ok, retention)

    async def create_queue(self, queue: str, *, exist_ok: bool = False, **options: object) -> bool:
        """A work queue. Options: max_messages, max_bytes (it refuses publishes past them:
        QueueFull), max_deliveries, dead_letter, key_ordered, backoff_base_ms,
        backoff_max_ms."""
        return await self._create(queue, "queue", exist_ok, options)

    async def _create(self, topic: str, kind: str, exist_ok: bool, options: dict) -> bool:
        try:
            result = await self.request(
                "create", {"topic": topic, "kind": kind, **options}, retry=Retry.EXISTS
            )
        except TopicExists:
            if exist_ok:
                return False
            raise
        return not (isinstance(result, dict) and result.get("existed"))

    async def delete(self, topic: str) -> None:
        """Delete a topic or queue with everything it holds."""
        await self.request("delete", {"topic": topic}, retry=Retry.GONE)

    async def subscribe(
        self,
        topic: str,
        subscription: str,
        *,
        start: str | int = "latest",
        exist_ok: bool = False,
        **options: object,
    ) -> bool:
        """A durable subscription on a topic, from "earliest", "latest" or an offset. Its
        consumers share its messages (claim). Options as for create_queue."""
        try:
            result = await self.request(
                "subscribe",
                {"topic": topic, "subscription": subscription, "start": start, **options},
                retry=Retry.EXISTS,
            )
        except SubscriptionExists:
            if exist_ok:
                return False
            raise
        return not (isinstance(result, dict) and result.get("existed"))

    async def unsubscribe(self, topic: str, subscription: str) -> None:
        await self.request(
            "unsubscribe", {"topic": topic, "subscription": subscription}, retry=Retry.GONE
        )

    async def purge(self, topic: str, subscription: str | None = None) -> int:
        """Drop every message of a topic or queue (or mark all done for one subscription);
        returns how many. Not retried once sent: it reports UnknownOutcome instead."""
        fields: dict = {"topic": topic}
        if subscription is not None:
            fields["subscription"] = subscription
        result = await self.request("purge", fields, retry=Retry.NEVER)
        return result["purged"]  # type: ignore[index]

    async def topics(self) -> list[dict]:
        """Every topic and queue: name, kind, first and next offset (asked a page at a
        time, by name)."""
        found: list[dict] = []
        while True:
            fields: dict = {"limit": LIST_TOPICS_MAX}
            if found:
                fields["after"] = found[-1]["topic"]
            page = await self.request("list", fields)
            found.extend(page)  # type: ignore[arg-type]
            if len(page) < LIST_TOPICS_MAX:  # type: ignore[arg-type]
                return found

    async def describe(self, topic: str) -> dict:
        """A topic's offsets, retention and, per subscription: depth, in flight, delayed,
        dead-lettered, oldest unacked age."""
        return await self.request("describe", {"topic": topic})  # type: ignore[return-value]

    async def status(self) -> dict:
        """The status of the node this client talks to (the leader if known)."""
        return await self.request("status", {})  # type: ignore[return-value]

    # ------------------------------------------------------------------------------ publish

    async def publish(
        self,
        topic: str,
        body: bytes | str,
        *,
        key: bytes | str | None = None,
        headers: Headers | None = None,
        delay_s: float | None = None,
        message_id: str | None = None,
    ) -> int:
        """Append one message; returns its offset once it is committed. Concurrent calls
        share requests. A delayed message is not delivered to claims before `delay_s`.
        With `message_id`, a message the topic took under that id within its window (2
        minutes) is not stored again: the offset returned is the first one's, and its
        `.duplicate` is True (an `Offset`, an int)."""
        message, size = _message(body, key, headers, delay_s, message_id)
        batcher = self._publisher(topic)
        if self._tracing is None:
            return await batcher.submit(message, size)  # type: ignore[return-value]
        return await batcher.submit(message, size, caller())  # type: ignore[return-value]

    async def publish_soon(
        self,
        topic: str,
        body: bytes | str,
        *,
        key: bytes | str | None = None,
        headers: Headers | None = None,
        delay_s: float | None = None,
        message_id: str | None = None,
        on_done: Callable[[int | None, BaseException | None], object] | None = None,
    ) -> None:
        """Queue one message and return once it is queued, not committed (as NATS's
        `publish_async` or RabbitMQ's publisher confirms): it goes with the others in the
        next request, and `on_done(offset, None)` or `on_done(None, error)` is called once
        it is answered. Waits only while `publish_pending_max` messages of the topic are
        unanswered (so a loop of these needs no window of its own)."""
        message, size = _message(body, key, headers, delay_s, message_id)
        finished = _publish_finished(on_done)
        context = caller() if self._tracing is not None else None
        batcher = self._publisher(topic)
        self._published_nowait += 1
        if self._published_nowait >= _PUBLISH_CHECKPOINT_EVERY:
            self._published_nowait = 0
            await anyio.lowlevel.checkpoint()  # before queueing: cancelled means not queued
        try:
            batcher.submit_nowait(message, size, finished, context)
        except anyio.WouldBlock:
            self._published_nowait = 0
            await batcher.submit_waiting(message, size, finished, context)

    def _publisher(self, topic: str) -> Batcher[dict]:
        batcher = self._publishers.get(topic)
        if batcher is None:
            batcher = self._publishers[topic] = Batcher(
                self.task_group,
                lambda jobs: self._publish_jobs(topic, jobs),
                items_max=self.publish_batch_messages,
                bytes_max=self.publish_batch_bytes,
                linger_s=self.publish_linger_s,
                in_flight_max=self.publish_in_flight,
                pending_max=self.publish_pending_max,
            )
        return batcher

    async def publish_many(self, topic: str, messages: Iterable[bytes | str | dict]) -> list[int]:
        """Append messages in order (bodies, or maps with body, key, headers, delay_s);
        returns their offsets. Sent in requests of at most publish_batch_messages and
        publish_batch_bytes, in order, each one atomic."""
        ready = [
            _message(
                m.get("body", b""),
                m.get("key"),
                m.get("headers"),
                m.get("delay_s"),
                m.get("message_id"),
            )
            if isinstance(m, dict)
            else _message(m, None, None, None, None)
            for m in messages
        ]
        offsets: list[int] = []
        chunk: list[dict] = []
        size = 0
        for message, message_size in ready:
            if chunk and (
                len(chunk) >= self.publish_batch_messages
                or size + message_size > self.publish_batch_bytes
            ):
                offsets.extend(await self._publish_chunk(topic, chunk))
                chunk, size = [], 0
            chunk.append(message)
            size += message_size
        if chunk:
            offsets.extend(await self._publish_chunk(topic, chunk))
        return offsets

    async def _publish_chunk(
        self, topic: str, messages: list[dict], callers: list[Caller] | None = None
    ) -> list[int]:
        result = await self.sequenced("publish", topic, {"messages": messages}, callers)
        offset = result["offset"]  # type: ignore[index]
        duplicates = dict(result.get("duplicates", ()))  # type: ignore[union-attr]
        offsets: list[int] = []
        for index in range(len(messages)):
            if index in duplicates:
                offsets.append(Offset(duplicates[index], duplicate=True))
            else:
                offsets.append(Offset(offset))
                offset += 1
        return offsets

    async def _publish_jobs(self, topic: str, jobs: list[Job]) -> None:
        callers = [job.context for job in jobs] if self._tracing is not None else None
        try:
            offsets = await self._publish_chunk(topic, [job.item for job in jobs], callers)
        except (BadRequest, TooLarge):
            if len(jobs) == 1:
                raise
            # One caller's bad message must not fail the others sharing its request.
            for job in jobs:
                try:
                    alone = [job.context] if callers is not None else None
                    job.finish((await self._publish_chunk(topic, [job.item], alone))[0])
                except PaxqError as error:
                    job.finish(error=error)
            return
        for job, offset in zip(jobs, offsets, strict=True):
            job.finish(offset)

    # ------------------------------------------------------------------------------- claims

    async def claim(
        self,
        topic: str,
        subscription: str | None = None,
        *,
        max: int = 1,
        lease_s: float = 30.0,
        wait_s: float = 0.0,
        max_bytes: int | None = None,
        consumer: str = "",
    ) -> list[Delivery]:
        """Lease up to `max` messages of a queue (or of a subscription of a topic) for
        `lease_s`. With `wait_s`, the node holds the request until a message is there or
        the time is up (then: an empty list)."""
        if type(max) is not int or not 1 <= max <= CLAIM_MAX:
            raise InvalidArgument("max", f"{max!r}: messages from 1 to {CLAIM_MAX:,}")
        lease_ms = _duration_ms("lease_s", lease_s, 1, LEASE_MS_MAX)
        fields: dict = {"topic": topic, "max": max, "lease_ms": lease_ms}
        if subscription is not None:
            fields["subscription"] = subscription
        if max_bytes is not None:
            fields["max_bytes"] = max_bytes
        if consumer:
            fields["consumer"] = consumer
        until = anyio.current_time() + wait_s
        while True:  # a node holds one request at most WAIT_MS_MAX: ask again until done
            left = until - anyio.current_time()  # (`max` is an argument here)
            left = left if left > 0 else 0.0
            result = await self.request("claim", fields, retry=Retry.HARMLESS, wait_s=left)
            if result["offsets"] or left * 1000 <= WAIT_MS_MAX:  # type: ignore[index]
                break
        r: dict = result  # type: ignore[assignment]
        deadline_ms = r["deadline_ms"]
        columns = zip(
            r["offsets"],
            r["payloads"],
            r["deliveries"],
            r["tokens"],
            r["published_ms"],
            strict=True,
        )
        # Positional, in Delivery's field order: a third of the keyword call's cost, paid
        # for every message a consumer takes.
        return [
            Delivery(
                topic,
                subscription,
                offset,
                body,
                key,
                headers,
                deliveries,
                token,
                deadline_ms,
                published_ms,
                self,
            )
            for offset, (body, key, headers), deliveries, token, published_ms in columns
        ]

    async def ack(self, deliveries: Sequence[Delivery]) -> None:
        """Done with these (of one topic and subscription); concurrent acks share requests.
        Raises LeaseLost (with the offsets) if any lease is gone: the others are acked."""
        if not deliveries:
            return
        outcome = _Outcomes(len(deliveries))
        batcher = self._acker(deliveries)
        finished = _ack_finished(outcome.finished)
        context = caller() if self._tracing is not None else None
        # Cut short (cancelled, or the client closed), the acks already queued still go;
        # the rest stay held, extended and handed back as if never acked.
        for delivery in deliveries:
            try:
                batcher.submit_nowait(delivery, 1, finished, context)
            except anyio.WouldBlock:  # a full queue of acks: wait for room
                await batcher.submit_waiting(delivery, 1, finished, context)
            delivery.acking()
        await outcome.done.wait()
        for error in outcome.errors:
            if not isinstance(error, LeaseLost):
                raise error
        if outcome.lost:
            raise LeaseLost(
                f"{len(outcome.lost)} of {len(deliveries)} leases are no longer held",
                sorted(outcome.lost),
            )

    def ack_nowait(
        self,
        deliveries: Sequence[Delivery],
        on_done: Callable[[Delivery, BaseException | None], object] | None = None,
    ) -> None:
        """Queue acks of these (of one topic and subscription) and return at once; they go
        with others in the next request. Each delivery is finished now (no more extends),
        and `on_done(delivery, error)` is called once its ack is answered: error None, or
        LeaseLost, or why it could not be sent. An ack on its way is not extended: one not
        answered within the lease (a long outage) ends LeaseLost, and the message comes
        back. Raises anyio.WouldBlock past ACKS_PENDING_MAX unanswered acks."""
        if not deliveries:
            return
        batcher = self._acker(deliveries)
        finished = _ack_finished(on_done)
        context = caller() if self._tracing is not None else None
        for delivery in deliveries:
            batcher.submit_nowait(delivery, 1, finished, context)
            delivery.acking()  # an ack is on its way: not extended, not handed back

    def _acker(self, deliveries: Sequence[Delivery]) -> Batcher[Delivery]:
        first = deliveries[0]
        key = (first.topic, first.subscription)
        if len(deliveries) > 1:
            _lease_fields(deliveries)  # one topic and subscription
        batcher = self._ackers.get(key)
        if batcher is None:
            batcher = self._ackers[key] = Batcher(
                self.task_group,
                lambda jobs: self._ack_jobs(key, jobs),
                items_max=LEASES_MAX,
                bytes_max=LEASES_MAX,
                in_flight_max=4,
                pending_max=ACKS_PENDING_MAX,
            )
        return batcher

    async def _ack_jobs(self, key: tuple[str, str | None], jobs: list[Job]) -> None:
        # An offset twice in one request is refused whole (an old and a new lease of one
        # message, or one delivery acked twice): such repeats go in a request of their own.
        seen: set[int] = set()
        first: list[Job] = []
        again: list[Job] = []
        for job in jobs:
            (again if job.item.offset in seen else first).append(job)
            seen.add(job.item.offset)
        await self._ack_distinct(key, first)
        if again:
            await self._ack_jobs(key, again)

    async def _ack_distinct(self, key: tuple[str, str | None], jobs: list[Job]) -> None:
        topic, subscription = key
        while jobs:
            fields: dict = {"leases": [job.item.lease for job in jobs]}
            if subscription is not None:
                fields["subscription"] = subscription
            try:
                callers = [job.context for job in jobs] if self._tracing is not None else None
                await self.sequenced("ack", topic, fields, callers)
            except LeaseLost as error:
                lost = set(error.offsets)
                for job in jobs:
                    if job.item.offset in lost:
                        job.finish(error=LeaseLost(error.message, [job.item.offset]))
                remaining = [job for job in jobs if job.item.offset not in lost]
                if len(remaining) == len(jobs):
                    raise
                jobs = remaining  # nothing was acked: the rest go again
                continue
            for job in jobs:
                job.finish(True)
            return

    async def nack(
        self,
        deliveries: Sequence[Delivery],
        *,
        delay_s: float | None = None,
        error: BaseException | str | None = None,
    ) -> int:
        """Give these back for redelivery after `delay_s` (or the backoff by delivery
        count). Returns how many went to the dead letters instead; those carry `error` (an
        exception, as "Type: message", or text; cut to 512 characters) as x-death-error."""
        if not deliveries:
            return 0
        fields = _lease_fields(deliveries)
        if delay_s is not None:
            fields["delay_ms"] = _duration_ms("delay_s", delay_s, 0, DELAY_MS_MAX)
        if error is not None:
            fields["error"] = _error_text(error)
        return await self._give_back("nack", deliveries, fields, "dead_lettered")

    async def release(self, deliveries: Sequence[Delivery]) -> int:
        """Hand these back unprocessed: another consumer may have them at once, and this
        delivery does not count (toward max_deliveries or the backoff), unlike a nack's.
        For messages no handler has seen (a consumer stopping with some prefetched)."""
        if not deliveries:
            return 0
        return await self._give_back("release", deliveries, _lease_fields(deliveries), "released")

    async def reject(
        self, deliveries: Sequence[Delivery], *, error: BaseException | str | None = None
    ) -> int:
        """Dead-letter these at once, whatever deliveries they have left: for a message no
        retry can mend (malformed, an unknown task, an error marked not to retry). `error`
        is kept as x-death-error, as a nack's; x-death-reason is "rejected"."""
        if not deliveries:
            return 0
        fields = _lease_fields(deliveries)
        if error is not None:
            fields["error"] = _error_text(error)
        return await self._give_back("reject", deliveries, fields, "rejected")

    async def _give_back(
        self, op: str, deliveries: Sequence[Delivery], fields: dict, counted: str
    ) -> int:
        """A nack, release or reject; the deliveries are settled whatever its outcome (the
        lease is the cluster's to end now), and `counted` of the result returned."""
        try:
            result = await self.sequenced(op, deliveries[0].topic, fields)
        finally:
            for delivery in deliveries:
                delivery.settle()
        return result[counted]  # type: ignore[index]

    async def redrive(
        self, dead_letters: str, *, to: str | None = None, max: int | None = None
    ) -> int:
        """Move dead letters back to where they died (as SQS's redrive), or to `to`; returns
        how many moved. Each goes back with its body, key and headers, its x-death-* headers
        dropped, under a message_id made of its place in `dead_letters`: a redrive cut short
        and run again within the dedup window (2 minutes) moves none twice. It moves what was
        there when it began. A subscription's dead letters need `to` (the topic they came
        from reaches every subscription)."""
        if max is not None and (type(max) is not int or max < 1):
            raise InvalidArgument("max", f"{max!r}: messages from 1, or None for all")
        if to == dead_letters:
            raise InvalidArgument("to", f"{to!r} is where they are: they would come round again")
        # Only what is there now: a message that dies again meanwhile (a worker that still
        # rejects it) lands past this, and is left for the next redrive.
        end = (await self.describe(dead_letters))["next"]
        moved = 0
        while max is None or moved < max:
            want = CLAIM_MAX if max is None else min(CLAIM_MAX, max - moved)
            batch = await self.claim(dead_letters, max=want, lease_s=60.0)
            later = [delivery for delivery in batch if delivery.offset >= end]
            if later:
                await self.release(later)
                batch = [delivery for delivery in batch if delivery.offset < end]
            if not batch:
                break
            try:
                by_target: dict[str, list[dict]] = {}
                for delivery in batch:
                    target, message = _redriven(dead_letters, delivery, to)
                    by_target.setdefault(target, []).append(message)
                for target, messages in by_target.items():
                    await self.publish_many(target, messages)
            except BaseException:
                with anyio.CancelScope(shield=True), contextlib.suppress(PaxqError):
                    await self.release(batch)
                raise
            await self.ack(batch)
            moved += len(batch)
        return moved

    async def extend(self, deliveries: Sequence[Delivery], *, lease_s: float) -> int:
        """Hold these `lease_s` longer from now; returns the new deadline (stamped ms)."""
        if not deliveries:
            return 0
        lease_ms = _duration_ms("lease_s", lease_s, 1, LEASE_MS_MAX)
        fields = {**_lease_fields(deliveries), "lease_ms": lease_ms}
        result = await self.sequenced("extend", deliveries[0].topic, fields)
        deadline = result["deadline_ms"]  # type: ignore[index]
        for delivery in deliveries:
            delivery.deadline_ms = deadline
        return deadline

    # ------------------------------------------------------------------------------ readers

    def consume(
        self,
        topic: str,
        subscription: str | None = None,
        *,
        prefetch: int = 16,
        lease_s: float = 30.0,
        wait_s: float = 10.0,
        consumer: str = "",
    ) -> Consumer:
        """Deliveries of a queue or shared subscription, with leases kept extended while the
        handler works. `async with client.consume(...) as deliveries: async for d in ...`."""
        from .consumer import Consumer

        return Consumer(
            self,
            topic,
            subscription,
            prefetch=prefetch,
            lease_s=lease_s,
            wait_s=wait_s,
            consumer=consumer,
        )

    def tail(
        self, topic: str, start: str | int = "latest", *, wait_s: float = 10.0, batch: int = 500
    ) -> Tail:
        """A live tail: every message of the topic from `start` ("earliest", "latest" or an
        offset) on, in order, as they come; no state on the server. After a reconnect it
        resumes at the next offset: no gap, no duplicate (`position` says where it is)."""
        from .tail import Tail

        return Tail(self, topic, start, wait_s=wait_s, batch=batch)

    async def read(
        self, topic: str, start: int = 0, *, limit: int = 100, wait_s: float = 0.0
    ) -> tuple[list[Message], int]:
        """Retained messages from offset `start`, and the offset to read from next."""
        result = await self.request(
            "read", {"topic": topic, "from": start, "limit": limit}, wait_s=wait_s
        )
        messages = [
            Message(topic, m["offset"], m["body"], m["key"], m["headers"])
            for m in result["messages"]  # type: ignore[index]
        ]
        return messages, result["next"]  # type: ignore[index]


def _message(
    body: bytes | str,
    key: bytes | str | None,
    headers: Headers | None,
    delay_s: float | None,
    message_id: str | None = None,
) -> tuple[dict, int]:
    """The message to send, checked, and its size as the limit counts it (which is what
    publish requests are cut by, so that one never outgrows a command)."""
    message: dict = {"body": _bytes("body", body)}
    if key is not None:
        message["key"] = key = _bytes("key", key)
        if len(key) > KEY_BYTES_MAX:
            raise InvalidArgument("key", f"{len(key):,} bytes; the most is {KEY_BYTES_MAX:,}")
    encoded_headers = None
    if headers:
        message["headers"] = checked = _headers(headers)
        encoded_headers = cbor2.dumps(checked)
    size = message_bytes(message["body"], message.get("key"), encoded_headers)
    if size > MESSAGE_BYTES_MAX:
        raise TooLarge(
            f"message of {size:,} bytes; the largest is {MESSAGE_BYTES_MAX:,}"
            " (body, key and encoded headers)",
            {"bytes": size, "max": MESSAGE_BYTES_MAX},
        )
    if message_id is not None:
        if type(message_id) is not str or not 0 < len(message_id) <= MESSAGE_ID_CHARS_MAX:
            raise InvalidArgument(
                "message_id", f"{message_id!r:.40}: text of 1 to {MESSAGE_ID_CHARS_MAX} characters"
            )
        message["id"] = message_id
    if delay_s:
        message["delay_ms"] = _duration_ms("delay_s", delay_s, 0, DELAY_MS_MAX)
    elif delay_s is not None:
        _duration_ms("delay_s", delay_s, 0, DELAY_MS_MAX)  # a 0 of the wrong type, say
    return message, size


def _duration_ms(argument: str, seconds: object, low_ms: int, high_ms: int) -> int:
    """Seconds as whole milliseconds, refused unless a number within [low_ms, high_ms]."""
    ms = seconds * 1000 if type(seconds) in (int, float) else None  # (not bool: not a number)
    if ms is None or not low_ms <= ms <= high_ms:
        low, high = _seconds(low_ms), _seconds(high_ms)
        raise InvalidArgument(argument, f"{seconds!r}: seconds from {low} to {high}")
    return max(low_ms, round(ms))


def _seconds(ms: int) -> str:
    return f"{ms // 1000:,}" if ms % 1000 == 0 else f"{ms / 1000:g}"


def _bytes(argument: str, value: object) -> bytes:
    if isinstance(value, str):
        return value.encode()
    if isinstance(value, bytes):
        return value
    if isinstance(value, (bytearray, memoryview)):
        return bytes(value)
    raise InvalidArgument(argument, f"bytes or str, not {type(value).__name__} ({value!r:.40})")


def _headers(headers: object) -> dict:
    if not isinstance(headers, dict):
        raise InvalidArgument("headers", f"a dict, not {type(headers).__name__}")
    if len(headers) > HEADERS_MAX:
        raise InvalidArgument("headers", f"{len(headers)} of them; the most is {HEADERS_MAX}")
    for name, value in headers.items():
        if type(name) is not str or type(value) not in (str, bytes, int):
            raise InvalidArgument(
                "headers", f"{name!r}: {value!r:.40} (names are str, values str, bytes or int)"
            )
    return headers


def _contact_failure(address: Address, error: BaseException, timeout_s: float) -> str:
    """What went wrong at an address, in a user's words."""
    name = format_address(address)
    if isinstance(error, ConnectionLost):
        return str(error)
    if isinstance(error, TimeoutError):
        return f"{name}: no connection within {timeout_s:.1f}s"
    if isinstance(error, socket.gaierror):
        return f"{name}: unknown host ({error.strerror})"
    cause = error.__cause__ if isinstance(error.__cause__, OSError) else error
    if isinstance(cause, ConnectionRefusedError):
        return f"{name}: connection refused (nothing listens there)"
    return f"{name}: {getattr(cause, 'strerror', None) or cause}"


def _ms(seconds: float) -> int:
    return max(0, round(seconds * 1000))


def _redriven(dead_letters: str, delivery: Delivery, to: str | None) -> tuple[str, dict]:
    """Where a dead letter goes back to, and as what."""
    headers = delivery.headers or {}
    origin, subscription = headers.get("x-death-topic"), headers.get("x-death-subscription")
    where = f"{dead_letters}@{delivery.offset}"
    if to is None:
        if not isinstance(origin, str):
            raise InvalidArgument("to", f"{where} is not a dead letter (no x-death-topic)")
        if subscription:
            raise InvalidArgument(
                "to",
                f"{where} died in subscription {subscription!r} of topic {origin!r}, which "
                "every subscription reads: name where it goes",
            )
    kept = {k: v for k, v in headers.items() if not k.startswith("x-death-")}
    message = {
        "body": delivery.body,
        "key": delivery.key,
        "headers": kept or None,
        "message_id": _bounded_id(f"redrive:{where}"),
    }
    return to or origin, message


def _bounded_id(text: str) -> str:
    if len(text) <= MESSAGE_ID_CHARS_MAX:
        return text
    return "redrive:" + hashlib.blake2b(text.encode(), digest_size=32).hexdigest()


def _error_text(error: BaseException | str) -> str:
    """A settle's `error`: an exception as "Type: message", or text; cut to the bound."""
    text = f"{type(error).__name__}: {error}" if isinstance(error, BaseException) else error
    if not isinstance(text, str):
        raise InvalidArgument("error", f"an exception or str, not {type(error).__name__}")
    return text[:NACK_ERROR_CHARS_MAX]


def _lease_fields(deliveries: Sequence[Delivery]) -> dict:
    first = deliveries[0]
    if any((d.topic, d.subscription) != (first.topic, first.subscription) for d in deliveries):
        raise ValueError("deliveries of one topic and subscription at a time")
    fields: dict = {"leases": [d.lease for d in deliveries]}
    if first.subscription is not None:
        fields["subscription"] = first.subscription
    return fields


def _publish_finished(
    on_done: Callable[[int | None, BaseException | None], object] | None,
) -> Callable[[Job[dict]], None]:
    def finished(job: Job[dict]) -> None:
        if on_done is not None:
            try:
                on_done(job.result, job.error)  # type: ignore[arg-type]
            except Exception:  # the caller's bug must not stop the others' answers
                log.exception("a publish_soon callback raised")

    return finished


def _ack_finished(
    on_done: Callable[[Delivery, BaseException | None], object] | None,
) -> Callable[[Job[Delivery]], None]:
    """What an answered ack job does: settle its delivery, then tell `on_done`."""

    def finished(job: Job[Delivery]) -> None:
        job.item.settle()
        if on_done is not None:
            try:
                on_done(job.item, job.error)
            except Exception:  # the caller's bug must not stop the others' answers
                log.exception("an ack_nowait callback raised")

    return finished


class _Outcomes:
    """What one `ack` call waits for: every one of its deliveries answered."""

    __slots__ = ("done", "errors", "left", "lost")

    def __init__(self, count: int) -> None:
        self.left = count
        self.done = anyio.Event()
        self.errors: list[BaseException] = []
        self.lost: list[int] = []

    def finished(self, delivery: Delivery, error: BaseException | None) -> None:
        if isinstance(error, LeaseLost):
            self.lost.append(delivery.offset)
        elif error is not None:
            self.errors.append(error)
        self.left -= 1
        if self.left == 0:
            self.done.set()
