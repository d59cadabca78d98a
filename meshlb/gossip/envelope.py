"""Sealed gossip frames: AES-GCM (the keyring) around a replay header.

Plaintext inside the seal: an 8-byte sender tag (BLAKE2b of the node id) + an 8-byte
big-endian sequence number + the wire payload. Both header fields are authenticated,
so only holders of the cluster key can choose them; the receiver accepts each
(tag, sequence) once within a sliding window (`replay.py`) and counts the rest as
`replay`. Datagrams and push-pull frames share one counter per sender.

The sequence starts at `boot_epoch_us` — the driver passes its wall clock in
microseconds at start — and grows by one per sealed frame, so a restarted node's
numbers are above all it sent in its previous life and replays of that life are too
old for the window. The cores stay pure: the epoch and the nonce source are injected.

What the key protects against: anyone without it can neither read gossip, nor forge
or alter a packet, nor join; a frame captured on the wire and sent again to the
member it was meant for is dropped (`replay`), and so is any frame older than the
sender's last 1024, whoever it is sent to. What it does not: each member remembers
what *it* received, so a frame captured on its way to member C can still be handed
once to a member B that never got it, while it is among its sender's last 1024
frames (seconds of traffic) — to B it is a genuine, recent, delayed packet from that
sender, which SWIM already tolerates (updates are idempotent and ordered by
incarnation; a stray ack or ping-req only costs a reply). A holder of the key (any
member) can say anything, about itself and about others. Traffic analysis (who talks
to whom, how much) stays visible, and anyone on the path can drop or delay packets
(SWIM takes that as loss). A node whose wall clock was set back past its previous
boot time before it restarted is taken for a replay by members that remember its
previous life, until its clock passes that point again (or they evict its window; at
most 4096 senders are remembered): keep clocks NTP-synced.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Callable

from meshlb.gossip import drops
from meshlb.gossip.crypto import NONCE_BYTES, OVERHEAD_BYTES, Keyring
from meshlb.gossip.replay import ReplayGuard
from meshlb.gossip.wire import WireError

_HEADER = struct.Struct(">8sQ")
HEADER_BYTES = _HEADER.size
# What sealing adds to a payload: the AES-GCM envelope and the replay header (45).
SEALED_OVERHEAD_BYTES = OVERHEAD_BYTES + HEADER_BYTES
_MAX_SEQ = 2**64 - 1


class ReplayError(WireError):
    """An authentic frame whose (sender, sequence) was already accepted, or too old."""

    def __init__(self, why: str) -> None:
        super().__init__("dropped_replay", why, drops.REPLAY)


def sender_tag(node_id: str) -> bytes:
    return hashlib.blake2b(node_id.encode("utf-8", "surrogatepass"), digest_size=8).digest()


class Envelope:
    """Seals our frames and opens (authenticates, de-duplicates) everyone else's."""

    __slots__ = ("_guard", "_nonces", "_seq", "_tag", "keyring")

    def __init__(
        self,
        keyring: Keyring,
        node_id: str,
        nonces: Callable[[int], bytes],
        boot_epoch_us: int,
        guard: ReplayGuard | None = None,
    ) -> None:
        self.keyring = keyring
        self._tag = sender_tag(node_id)
        self._nonces = nonces
        self._seq = max(0, min(boot_epoch_us, _MAX_SEQ >> 1))
        self._guard = guard if guard is not None else ReplayGuard()

    def seal(self, payload: bytes) -> bytes:
        self._seq += 1
        plain = _HEADER.pack(self._tag, self._seq) + payload
        return self.keyring.seal(plain, self._nonces(NONCE_BYTES))

    def open(self, data: bytes) -> bytes:
        """The payload of an authentic frame seen for the first time, or a WireError
        (AuthError: not ours; ReplayError: seen before or too old)."""
        plain = self.keyring.open(data)
        if len(plain) < HEADER_BYTES:
            raise WireError("dropped_malformed", "sealed frame without a replay header")
        tag, seq = _HEADER.unpack_from(plain)
        if not self._guard.accept(tag, seq):
            raise ReplayError(f"sequence {seq} of sender {tag.hex()} replayed or too old")
        return plain[HEADER_BYTES:]

    def __repr__(self) -> str:
        return f"Envelope(tag={self._tag.hex()}, seq={self._seq}, {self._guard!r})"
