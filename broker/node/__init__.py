"""The trio runtime around the core (the cluster issue). So far: the peer message codec and
the peer transport."""

from .codec import Decoder, encode
from .peers import HandshakeRefused, PeerSettings, PeerTransport

__all__ = ["Decoder", "HandshakeRefused", "PeerSettings", "PeerTransport", "encode"]
