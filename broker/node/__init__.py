"""The trio runtime around the core (the cluster issue). So far: the peer message codec."""

from .codec import Decoder, encode

__all__ = ["Decoder", "encode"]
