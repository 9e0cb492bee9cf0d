"""Frames for one socket: written at once when the socket takes them, else by a pump task.

A frame handed over while nothing is queued goes straight to the socket with one
non-blocking write, from the caller's own turn: a vote or a reply leaves without waking a
task to send it. Whatever the socket does not take at once (a full send buffer, a frame
partly written) waits in order for the pump, which writes queued frames in coalesced
bursts. The part of a frame left over from a direct write belongs to that connection: if it
ends, the rest is dropped with it, never sent at the start of the next one.
"""

from __future__ import annotations

import os
from collections import deque

import trio


class Outbox:
    """One connection's outgoing frames. `put` never blocks; past `frames_max` queued frames
    or `bytes_max` queued bytes it drops the frame and counts it (None: the caller bounds
    what it puts, e.g. one reply per request in flight)."""

    def __init__(self, frames_max: int | None = None, bytes_max: int | None = None) -> None:
        self.frames_max = frames_max
        self.bytes_max = bytes_max
        self._frames: deque[bytes] = deque()
        self.bytes = 0  # queued, not yet written
        self.dropped = 0
        self._rest = b""  # the unwritten end of a frame written in part, on this connection
        self._fd: int | None = None  # the connection's socket, while a pump runs on it
        self._pumping = False  # a burst is being written: nothing may go around it
        self._ended = False  # the last pump ended (its connection broke or was closed)
        self._wake = trio.Event()
        self._idle = trio.Event()  # set when everything handed over is written

    @property
    def connected(self) -> bool:
        return self._fd is not None

    @property
    def empty(self) -> bool:
        return not (self._frames or self._rest or self._pumping)

    def put(self, frame: bytes) -> bool:
        """Write `frame` now if the socket takes it, else queue it; False if dropped."""
        if self._fd is not None and not (self._frames or self._rest or self._pumping):
            try:
                written = os.write(self._fd, frame)
            except BlockingIOError:
                written = 0
            except OSError:
                written = 0  # broken: queued, the pump's next write finds out and ends it
            if written == len(frame):
                return True
            if written:
                self._rest = frame[written:]
                self._wake.set()
                return True
        if (self.frames_max is not None and len(self._frames) >= self.frames_max) or (
            self.bytes_max is not None and self.bytes + len(frame) > self.bytes_max
        ):
            self.dropped += 1
            return False
        self._frames.append(frame)
        self.bytes += len(frame)
        self._wake.set()
        return True

    async def pump(self, stream: trio.SocketStream, burst_bytes_max: int) -> None:
        """Write what is queued to `stream` until it breaks (raises) or is cancelled; direct
        writes go to it meanwhile."""
        frames = self._frames
        self._fd = stream.socket.fileno()
        self._ended = False
        try:
            while True:
                while not (frames or self._rest):
                    self._idle.set()
                    self._wake = trio.Event()
                    await self._wake.wait()
                burst = [self._rest] if self._rest else []
                self._rest = b""
                size = len(burst[0]) if burst else 0
                while frames and size < burst_bytes_max:
                    frame = frames.popleft()
                    burst.append(frame)
                    size += len(frame)
                    self.bytes -= len(frame)
                self._pumping = True
                await stream.send_all(b"".join(burst))
                self._pumping = False
        finally:
            self._fd = None
            self._rest = b""
            self._pumping = False
            self._ended = True
            self._idle.set()

    async def flushed(self) -> None:
        """Wait until everything handed over so far is written (or the pump has ended)."""
        while not (self.empty or self._ended):
            self._idle = trio.Event()
            await self._idle.wait()
