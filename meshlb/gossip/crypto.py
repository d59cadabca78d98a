"""AES-GCM keyring for gossip packets (memberlist keyring semantics).

The primary (first) key encrypts; every key is tried to decrypt. Rotation without
downtime: add the new key everywhere as secondary, make it primary everywhere, then
remove the old one. A packet from another cluster (another key) or tampered with
fails authentication and is dropped by the caller.

Envelope: MAGIC (1 byte, also authenticated as associated data) + 12-byte nonce +
ciphertext + 16-byte tag = 29 bytes of overhead. The nonce is the caller's: it must
never repeat under one key (AES-GCM loses both secrecy and integrity if it does), so
the driver gives random bytes from the OS; this module draws no randomness itself.
MAGIC 0xe2 marks the format with a replay header inside (`envelope.py`); 0xe1 was
the format before it, which this version refuses like any foreign packet.
"""

from __future__ import annotations

import base64
import binascii
import hashlib

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from meshlb.gossip import drops
from meshlb.gossip.wire import WireError

MAGIC = b"\xe2"
NONCE_BYTES = 12
OVERHEAD_BYTES = 1 + NONCE_BYTES + 16


class AuthError(WireError):
    """Not a packet sealed with any key of our keyring (a WireError: one except for all)."""

    def __init__(self, why: str) -> None:
        super().__init__("dropped_auth", why, drops.AUTH_FAILED)


def derive_key(secret: str) -> bytes:
    """A 32-byte AES key from a cluster key string.

    Base64 of exactly 16, 24 or 32 bytes is used as the raw key (what `openssl rand
    -base64 32` prints); any other string is a passphrase hashed with SHA-256.
    """
    try:
        raw = base64.b64decode(secret, validate=True)
    except (binascii.Error, ValueError):
        raw = b""
    if len(raw) in (16, 24, 32):
        return raw
    return hashlib.sha256(secret.encode("utf-8")).digest()


class Keyring:
    """Ordered AES-GCM keys: the first encrypts, all decrypt."""

    def __init__(self, keys: list[bytes]) -> None:
        if not keys:
            raise ValueError("a keyring needs at least one key")
        self._aeads = [AESGCM(k) for k in keys]

    @classmethod
    def from_secret(cls, secret: str) -> Keyring:
        """Comma-separated cluster keys, primary first (so rotation is a config edit)."""
        parts = [p.strip() for p in secret.split(",") if p.strip()]
        return cls([derive_key(p) for p in parts])

    def seal(self, plaintext: bytes, nonce: bytes) -> bytes:
        """Encrypt and authenticate with the primary key; `nonce`: NONCE_BYTES, never reused."""
        if len(nonce) != NONCE_BYTES:
            raise ValueError(f"a nonce is {NONCE_BYTES} bytes, not {len(nonce)}")
        return MAGIC + nonce + self._aeads[0].encrypt(nonce, plaintext, MAGIC)

    def open(self, data: bytes) -> bytes:
        """The plaintext, or AuthError."""
        if len(data) < OVERHEAD_BYTES or data[:1] != MAGIC:
            raise AuthError("not an encrypted packet")
        nonce, body = data[1 : 1 + NONCE_BYTES], data[1 + NONCE_BYTES :]
        for aead in self._aeads:
            try:
                return aead.decrypt(nonce, body, MAGIC)
            except InvalidTag:
                continue
        raise AuthError("no key authenticates this packet")
