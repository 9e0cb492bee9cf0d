"""Peer transport: framed TCP between the members of one cluster.

Each node dials every peer for its *outgoing* messages and accepts connections for *incoming*
ones, so every ordered pair of nodes has its own connection and nothing needs deduplicating.

- Handshake: the dialer sends `{"paxq": "peer", "v": 1, "cluster": C, "node": N}`; the listener
  answers `{"ok": true}`, or an error (`UNSUPPORTED_VERSION`, `WRONG_CLUSTER`, `NOT_A_MEMBER`)
  and closes. After it, every frame on the connection must carry `src == N`: a peer cannot speak
  for another.
- A message goes straight to its peer's socket when nothing is queued before it; otherwise
  (a full send buffer, a connection down) it waits in a bounded queue per peer. When the
  queue is full, new messages are dropped and counted: Paxos retransmits, and an unbounded queue
  to a dead peer would eat memory. Queued frames are written in coalesced bursts.
- A lost connection is dialled again with exponential backoff and jitter.
- Malformed frames or messages close that one connection; the node keeps serving the others.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable
from dataclasses import dataclass

import trio

from paxq.client.wire import ErrorCode, FrameDecoder, WireError, encode_frame

from ..paxos import Message
from .codec import Decoder, TracedAccept, encode
from .listen import serving
from .outbox import Outbox

log = logging.getLogger("paxq.node.peers")

#: nodes of different versions do not talk: 4 takes slots of one command up to
#: command_bytes_max, which a node of 3 refuses as malformed (it would stall, not diverge);
#: 5 applies release, nack errors and message ids, which a node of 4 would refuse (diverge);
#: 6 applies reject
PROTOCOL_VERSION = 6
Address = tuple[str, int]
#: bytes read from a peer at once at most: several full accepts (256 KiB batches), so that
#: one read's accepts share one write
_READ_BYTES_MAX = 1 << 20


class HandshakeRefused(Exception):
    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(f"{code.name}: {message}")
        self.code = code


@dataclass(frozen=True)
class PeerSettings:
    cluster: str
    node_id: int
    #: every member's peer address, this node's included
    addresses: dict[int, Address]
    #: frames, and bytes, waiting for one peer at most; past either new messages are dropped
    send_queue_max: int = 4096
    send_queue_bytes_max: int = 64 << 20
    #: bytes written to a socket in one burst at most
    write_burst_bytes_max: int = 1 << 20
    frame_bytes_max: int = 16 << 20
    reconnect_min_s: float = 0.05
    reconnect_max_s: float = 2.0
    handshake_timeout_s: float = 5.0

    def __post_init__(self) -> None:
        if self.node_id not in self.addresses:
            raise ValueError(f"node {self.node_id} has no address in {self.addresses}")
        if self.send_queue_max < 1 or self.write_burst_bytes_max < 1:
            raise ValueError("queue and burst bounds must be positive")

    @property
    def peers(self) -> list[int]:
        return sorted(n for n in self.addresses if n != self.node_id)


class PeerTransport:
    def __init__(
        self,
        settings: PeerSettings,
        decoder: Decoder,
        inbox: trio.MemorySendChannel[tuple[int, Message]],
        take_now: Callable[[tuple[int, Message]], bool] | None = None,
        flush: Callable[[], None] | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.settings = settings
        self._decoder = decoder
        self._inbox = inbox
        #: hands a message to the node at once if it can take it now (else: the inbox);
        #: `flush` then carries out what the messages of one read produced
        self._take_now = take_now or (lambda _item: False)
        self._flush = flush or (lambda: None)
        self._rng = rng or random.Random()
        self._outboxes = {
            peer: Outbox(settings.send_queue_max, settings.send_queue_bytes_max)
            for peer in settings.peers
        }
        self.refused_handshakes = 0  # hellos we refused
        self.refused_by_peers = 0  # our hellos a peer refused
        self.closed_for_bad_input = 0

    # ------------------------------------------------------------------------------ sending

    def send(self, peer: int, message: Message) -> bool:
        return self.send_frame(peer, self.frame(message))

    def frame(self, message: Message) -> bytes:
        """Encode once; the same bytes may go to every peer of a broadcast."""
        return encode_frame(encode(message), self.settings.frame_bytes_max)

    def send_frame(self, peer: int, frame: bytes) -> bool:
        """Write at once if the connection takes it, else queue; False (and counted) when
        the peer's queue is full."""
        return self._outboxes[peer].put(frame)

    def dropped(self, peer: int) -> int:
        return self._outboxes[peer].dropped

    def connected(self, peer: int) -> bool:
        return self._outboxes[peer].connected

    # ------------------------------------------------------------------------------ serving

    async def serve(
        self,
        listeners: list[trio.SocketListener] | None = None,
        *,
        task_status: trio.TaskStatus[list[trio.SocketListener]] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Listen for peers and dial every peer, until cancelled."""
        address = self.settings.addresses[self.settings.node_id]
        async with serving(self._accept, address, listeners) as (nursery, serving_on):
            for peer in self.settings.peers:
                nursery.start_soon(self._dial_forever, peer)
            task_status.started(serving_on)

    async def _dial_forever(self, peer: int) -> None:
        settings = self.settings
        outbox = self._outboxes[peer]
        delay = settings.reconnect_min_s
        while True:
            try:
                host, port = settings.addresses[peer]
                stream = await trio.open_tcp_stream(host, port)
                async with stream:
                    await self._introduce(stream)
                    delay = settings.reconnect_min_s
                    await outbox.pump(stream, settings.write_burst_bytes_max)
            except HandshakeRefused as refused:
                self.refused_by_peers += 1
                log.error("node %s refused us: %s", peer, refused)
            except (
                OSError,
                trio.BrokenResourceError,
                trio.ClosedResourceError,
                trio.TooSlowError,
                WireError,
            ) as e:
                log.debug("connection to node %s lost: %r", peer, e)
            await trio.sleep(delay * (0.5 + self._rng.random()))
            delay = min(delay * 2, settings.reconnect_max_s)

    async def _introduce(self, stream: trio.SocketStream) -> None:
        s = self.settings
        hello = {"paxq": "peer", "v": PROTOCOL_VERSION, "cluster": s.cluster, "node": s.node_id}
        await stream.send_all(encode_frame(hello))
        with trio.fail_after(s.handshake_timeout_s):
            answer = await _read_frame(stream, FrameDecoder(4096))
        if not isinstance(answer, dict) or answer.get("ok") is not True:
            code = answer.get("error") if isinstance(answer, dict) else None
            text = answer.get("message", "") if isinstance(answer, dict) else repr(answer)
            known = type(code) is int and code in ErrorCode._value2member_map_
            raise HandshakeRefused(ErrorCode(code) if known else ErrorCode.BAD_FRAME, str(text))

    # ---------------------------------------------------------------------------- receiving

    async def _accept(self, stream: trio.SocketStream) -> None:
        decoder = FrameDecoder(self.settings.frame_bytes_max)
        try:
            with trio.fail_after(self.settings.handshake_timeout_s):
                hello = await _read_frame(stream, decoder)
            peer = await self._admit(stream, hello)
            if peer is None:
                return
            data = b""  # frames that came with the hello are still in the decoder
            while True:
                try:
                    for body in decoder.feed(data):
                        message = self._decoder.decode(body)
                        src = (message.accept if type(message) is TracedAccept else message).src
                        if src != peer:
                            raise WireError(f"node {peer} sent a message as node {src}")
                        if not self._take_now((peer, message)):
                            await self._inbox.send((peer, message))  # bounded: TCP backpressure
                finally:
                    self._flush()  # what this read handed over, even if it ends badly
                data = await stream.receive_some(_READ_BYTES_MAX)
                if not data:
                    return
        except WireError as error:
            self.closed_for_bad_input += 1
            log.warning("closing a peer connection: %s", error)
        except (trio.BrokenResourceError, trio.ClosedResourceError, trio.TooSlowError, OSError):
            pass
        finally:
            await stream.aclose()

    async def _admit(self, stream: trio.SocketStream, hello: object) -> int | None:
        s = self.settings
        refusal: tuple[ErrorCode, str] | None = None
        if not isinstance(hello, dict) or hello.get("paxq") != "peer":
            refusal = (ErrorCode.BAD_REQUEST, "expected a peer hello")
        elif hello.get("v") != PROTOCOL_VERSION:
            refusal = (ErrorCode.UNSUPPORTED_VERSION, f"this node speaks v{PROTOCOL_VERSION}")
        elif hello.get("cluster") != s.cluster:
            refusal = (ErrorCode.WRONG_CLUSTER, f"this node belongs to {s.cluster!r}")
        elif type(hello.get("node")) is not int or hello["node"] not in s.peers:
            refusal = (ErrorCode.NOT_A_MEMBER, f"node {hello.get('node')!r} is not a peer")
        if refusal is not None:
            self.refused_handshakes += 1
            log.warning("refused a peer: %s (%s)", refusal[1], refusal[0].name)
            reply = {"ok": False, "error": int(refusal[0]), "message": refusal[1]}
            await stream.send_all(encode_frame(reply))
            return None
        await stream.send_all(encode_frame({"ok": True}))
        return hello["node"]


async def _read_frame(stream: trio.SocketStream, decoder: FrameDecoder) -> object:
    """Read exactly one frame (the handshake) from a fresh stream."""
    while True:
        data = await stream.receive_some(4096)
        if not data:
            raise trio.BrokenResourceError("closed during the handshake")
        for body in decoder.feed(data):
            return body
