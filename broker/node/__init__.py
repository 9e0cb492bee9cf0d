"""The trio runtime around the core: peer codec and transport, and the node loop."""

from .codec import Decoder, encode
from .peers import HandshakeRefused, PeerSettings, PeerTransport
from .runtime import CommandFailed, LogMachine, Node, NodeSettings

__all__ = [
    "CommandFailed",
    "Decoder",
    "HandshakeRefused",
    "LogMachine",
    "Node",
    "NodeSettings",
    "PeerSettings",
    "PeerTransport",
    "encode",
]
