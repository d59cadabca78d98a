"""Bytes in and out of the core: the wire format, sealed when the cluster has a key.

Decoding never raises: a datagram or push-pull frame that is oversized, malformed,
not ours or replayed is counted (the coarse `dropped_*` stat and the drop reason of
`drops.py`) and becomes None.
"""

from __future__ import annotations

from collections.abc import Sequence

from meshlb.gossip import drops
from meshlb.gossip.envelope import Envelope
from meshlb.gossip.messages import Datagram, Message, PushPull
from meshlb.gossip.wire import (
    WireError,
    decode_packet,
    decode_push_pull,
    encode_packet,
    encode_push_pull,
)


class PacketCodec:
    """Encodes what the core sends; decodes (and counts what it drops of) what arrives."""

    __slots__ = ("_drops", "_stats", "envelope", "max_packet_bytes")

    def __init__(
        self,
        max_packet_bytes: int,
        envelope: Envelope | None,
        stats: dict[str, int],
        dropped: drops.DropCounter,
    ) -> None:
        self.max_packet_bytes = max_packet_bytes
        self.envelope = envelope
        self._stats = stats
        self._drops = dropped

    def encode(self, datagram: Datagram) -> bytes:
        """Wire bytes of a datagram (sealed when a keyring is set)."""
        data = encode_packet(datagram.messages)
        return self.envelope.seal(data) if self.envelope is not None else data

    def encode_push_pull(self, pp: PushPull) -> bytes:
        data = encode_push_pull(pp)
        return self.envelope.seal(data) if self.envelope is not None else data

    def decode(self, data: bytes) -> Sequence[Message] | None:
        limit = self.max_packet_bytes
        if len(data) > limit:
            self._count(WireError("dropped_oversize", f"{len(data)} bytes", drops.OVERSIZED))
            return None
        try:
            if self.envelope is not None:
                data = self.envelope.open(data)
            return decode_packet(data, limit)
        except WireError as e:  # AuthError and ReplayError included
            self._count(e)
        return None

    def decode_push_pull(self, data: bytes) -> PushPull | None:
        try:
            if self.envelope is not None:
                data = self.envelope.open(data)
            return decode_push_pull(data)
        except WireError as e:
            self._count(e)
        return None

    def _count(self, e: WireError) -> None:
        self._stats[e.kind] = self._stats.get(e.kind, 0) + 1
        self._drops.add(e.reason)
