"""`paxq node`: run one node until SIGINT or SIGTERM, then stop cleanly."""

from __future__ import annotations

import ctypes
import logging
import signal
import sys

import trio

from paxq.broker.node import Node, NodeSettings, PeerSettings
from paxq.broker.node.clients import ClientPort
from paxq.broker.node.metrics import NodeMetrics, watch_node
from paxq.broker.node.scrape import ScrapeEndpoint
from paxq.broker.node.tracing import CommitTracing
from paxq.broker.paxos import Config
from paxq.client.wire.protocol import COMMAND_BYTES_MAX
from paxq.storage import Identity, JournalClosed, RocksJournal, StorageError

from .config import NodeConfig
from .tracing import tracer_provider

log = logging.getLogger("paxq")


def _fewer_malloc_arenas() -> None:
    """glibc gives each thread that allocates its own arena (up to 8 per core), and freed
    memory in them is rarely returned: the journal's worker threads handle every batch, so a
    node's resident memory would grow with arenas, not with its state. Two are enough."""
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return  # not glibc
    m_arena_max = -8
    libc.mallopt(m_arena_max, 2)


def _cause(group: BaseExceptionGroup) -> BaseException:
    """The storage error that stopped the node (nurseries nest groups, and tasks that found
    the journal closed after it add theirs)."""
    leaves: list[BaseException] = []
    pending: list[BaseException] = [group]
    while pending:
        error = pending.pop(0)
        if isinstance(error, BaseExceptionGroup):
            pending[:0] = error.exceptions
        else:
            leaves.append(error)
    return next((e for e in leaves if not isinstance(e, JournalClosed)), leaves[0])


def run(config: NodeConfig, bootstrap: bool = False) -> int:
    _fewer_malloc_arenas()
    logging.basicConfig(
        level=logging.INFO,
        format=f"%(asctime)s node {config.id} %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        journal = RocksJournal.open(config.data, Identity(config.cluster, config.id), bootstrap)
    except StorageError as error:
        log.error("refusing to start: %s", error)
        return 2
    status = 0
    traces = None
    try:
        settings = NodeSettings(
            PeerSettings(config.cluster, config.id, config.peers),
            Config(
                nodes=tuple(sorted(config.peers)),
                batch_count_max=config.batch_max,
                command_bytes_max=COMMAND_BYTES_MAX,
                window_slots_max=config.window,
            ),
            tick_s=config.tick_ms / 1000,
            snapshot_every_slots=config.snapshot_every,
            snapshot_keep_slots=config.snapshot_keep,
            clock_offset_ms_max=config.clock_offset_ms_max,
        )
        metrics = NodeMetrics(config.cluster, config.id) if config.metrics else None
        traces = tracer_provider(
            "paxq", config.tracing, 1.0, {"paxq.cluster": config.cluster, "paxq.node": config.id}
        )
        tracing = (
            CommitTracing(traces.get_tracer("paxq.node"), config.id, config.trace_sample)
            if traces is not None
            else None
        )
        node = Node(settings, journal, metrics=metrics, tracing=tracing)
        trio.run(_serve, node, config, journal)
    except* StorageError as group:  # from inside trio's nurseries: an exception group
        log.error("stopping: %s", _cause(group))
        status = 2
    finally:
        journal.close()
        if traces is not None:
            traces.shutdown()  # what is still queued goes out
    log.info("stopped")
    return status


async def _serve(node: Node, config: NodeConfig, journal: RocksJournal) -> None:
    def storage() -> dict:
        try:
            size = journal.size_bytes()
        except OSError:  # RocksDB replaced a file while we counted
            size = None
        return {"storage_bytes": size, "data": str(config.data)}

    port = ClientPort(node, config.clients, extra_status=storage)
    scrape = None
    if node.metrics is not None and config.metrics is not None:
        watch_node(node.metrics, node)
        scrape = ScrapeEndpoint(config.metrics, node.metrics.prometheus_text)
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:
            await nursery.start(node.run)
            await nursery.start(port.serve)
            if scrape is not None:
                await nursery.start(scrape.serve)
                log.info("metrics on http://%s:%d/metrics", *scrape.address)
            log.info(
                "serving cluster %r: peers on %s:%d, clients on %s:%d, data in %s",
                config.cluster,
                *config.listen,
                *config.client,
                config.data,
            )
            async for signum in signals:
                log.info("received %s, stopping", signal.Signals(signum).name)
                nursery.cancel_scope.cancel()
                break
