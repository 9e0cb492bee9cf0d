"""The wire format shared by clients and brokers: frames, and typed errors.

The broker imports this; this never imports the broker.
"""

from .errors import (
    ErrorCode,
    FrameTooLarge,
    MalformedFrame,
    MalformedMessage,
    WireError,
)
from .frames import FRAME_BYTES_MAX, HEADER_BYTES, Encoded, FrameDecoder, encode_frame

__all__ = [
    "FRAME_BYTES_MAX",
    "HEADER_BYTES",
    "Encoded",
    "ErrorCode",
    "FrameDecoder",
    "FrameTooLarge",
    "MalformedFrame",
    "MalformedMessage",
    "WireError",
    "encode_frame",
]
