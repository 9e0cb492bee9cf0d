"""The trio runtime around the core: peer codec and transport, and the node loop."""

from .codec import Decoder, encode
from .machines import LogMachine, Machine
from .peers import HandshakeRefused, PeerSettings, PeerTransport
from .runtime import CommandFailed, Node, NodeSettings

__all__ = [
    "CommandFailed",
    "Decoder",
    "HandshakeRefused",
    "LogMachine",
    "Machine",
    "Node",
    "NodeSettings",
    "PeerSettings",
    "PeerTransport",
    "encode",
]
