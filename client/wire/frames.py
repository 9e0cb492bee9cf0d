"""Length-prefixed CBOR frames, with a hard bound, and a sans-IO decoder.

A frame is a 4-byte big-endian length followed by that many bytes of CBOR. The decoder takes
bytes as they arrive (`feed`) and yields whole decoded frames; a length over the bound is refused
as soon as its prefix arrives, so a peer cannot make us buffer more than one bounded frame.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator

import cbor2

from .errors import FrameTooLarge, MalformedFrame
from .protocol import FRAME_BYTES_MAX

_LENGTH = struct.Struct(">I")
HEADER_BYTES = _LENGTH.size


class Encoded:
    """A value already encoded as CBOR, written into a frame as it is: a claim's payloads go
    from the key space to the client without being decoded and encoded again."""

    __slots__ = ("cbor",)

    def __init__(self, cbor: bytes) -> None:
        self.cbor = cbor

    def decode(self) -> object:
        return cbor2.loads(self.cbor)

    def __eq__(self, other: object) -> bool:
        return type(other) is Encoded and other.cbor == self.cbor

    def __repr__(self) -> str:
        return f"Encoded({len(self.cbor):,} bytes)"


def _write_encoded(encoder: cbor2.CBOREncoder, value: object) -> None:
    if type(value) is not Encoded:
        raise cbor2.CBOREncodeTypeError(f"cannot encode {type(value).__name__} as CBOR")
    encoder.write(value.cbor)


def encode_frame(body: object, frame_bytes_max: int = FRAME_BYTES_MAX) -> bytes:
    data = cbor2.dumps(body, default=_write_encoded)
    if len(data) > frame_bytes_max:
        raise FrameTooLarge(
            f"frame of {len(data):,} bytes; the largest is {frame_bytes_max:,}",
            {"bytes": len(data), "max": frame_bytes_max},
        )
    return _LENGTH.pack(len(data)) + data


class FrameDecoder:
    """Bytes in, decoded frames out. After an error the stream is unusable: close it."""

    def __init__(self, frame_bytes_max: int = FRAME_BYTES_MAX) -> None:
        if frame_bytes_max < 1:
            raise ValueError("frame_bytes_max must be positive")
        self.frame_bytes_max = frame_bytes_max
        self._buffer = bytearray()
        self._start = 0  # bytes at the front already handed out as frames
        self._failed = False

    def feed(self, data: bytes) -> Iterator[object]:
        """Add received bytes; yield every frame they complete, in order."""
        if self._failed:
            raise MalformedFrame("the stream failed earlier")
        buffer = self._buffer
        # Consumed frames are cut off once per feed, not once per frame: a read holding
        # hundreds of small frames would otherwise move the buffer hundreds of times.
        del buffer[: self._start]
        self._start = 0
        buffer += data
        while True:
            start = self._start
            if len(buffer) - start < HEADER_BYTES:
                return
            (length,) = _LENGTH.unpack_from(buffer, start)
            if length > self.frame_bytes_max:
                self._failed = True
                raise FrameTooLarge(
                    f"frame of {length:,} bytes announced; the largest is {self.frame_bytes_max:,}",
                    {"bytes": length, "max": self.frame_bytes_max},
                )
            end = start + HEADER_BYTES + length
            if len(buffer) < end:
                return
            body = bytes(buffer[start + HEADER_BYTES : end])
            self._start = end
            try:
                yield cbor2.loads(body)
            except Exception as error:
                self._failed = True
                raise MalformedFrame(f"undecodable frame: {error}") from error

    @property
    def buffered_bytes(self) -> int:
        return len(self._buffer) - self._start
