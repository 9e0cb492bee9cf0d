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
from .frames import FRAME_BYTES_MAX, HEADER_BYTES, FrameDecoder, encode_frame

__all__ = [
    "FRAME_BYTES_MAX",
    "HEADER_BYTES",
    "ErrorCode",
    "FrameDecoder",
    "FrameTooLarge",
    "MalformedFrame",
    "MalformedMessage",
    "WireError",
    "encode_frame",
]
