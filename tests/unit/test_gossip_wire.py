"""Wire codec and keyring: round trips, strict validation, arbitrary bytes, rotation."""

from __future__ import annotations

import base64
import contextlib
import os

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meshlb.gossip.crypto import NONCE_BYTES, AuthError, Keyring, derive_key
from meshlb.gossip.messages import (
    Ack,
    Alive,
    Dead,
    MemberState,
    Nack,
    Ping,
    PingReq,
    PushPull,
    Suspect,
)
from meshlb.gossip.wire import (
    VERSION,
    WireError,
    decode_packet,
    decode_push_pull,
    encode_packet,
    encode_push_pull,
)

ALL = (
    Ping(1, "a"),
    PingReq(2, "b", ("10.0.0.2", 7946), True),
    Ack(3),
    Nack(4),
    Alive("c", 5, ("::1", 1), b"\x00meta"),
    Suspect("d", 6, "e"),
    Dead("f", 2**64 - 1, "f"),
)


def test_round_trip_every_message_in_one_compound() -> None:
    assert decode_packet(encode_packet(ALL)) == ALL


def test_push_pull_round_trip() -> None:
    pp = PushPull((MemberState("a", ("h", 1), 3, "suspect", b"x"),) * 3, True)
    assert decode_push_pull(encode_push_pull(pp)) == pp


def _raw(*msgs: list[object]) -> bytes:
    return bytes((VERSION,)) + msgpack.packb(list(msgs), use_bin_type=True)


@pytest.mark.parametrize(
    ("data", "kind"),
    [
        (b"", "dropped_malformed"),
        (b"\x02" + msgpack.packb([[3, 1]]), "dropped_version"),
        (_raw([3, -1]), "dropped_malformed"),  # negative seq
        (_raw([3, True]), "dropped_malformed"),  # bool is not an int
        (_raw([3, 1, 2]), "dropped_malformed"),  # extra field
        (_raw([5, "n", 1, "h", 70000, b""]), "dropped_malformed"),  # port range
        (_raw([5, "n", 1, "h", 1, bytes(513)]), "dropped_malformed"),  # meta too big
        (_raw([5, "", 1, "h", 1, b""]), "dropped_malformed"),  # empty node id
        (_raw([6, "n" * 129, 1, "x"]), "dropped_malformed"),  # node id too long
        (_raw([99, 1]), "dropped_malformed"),  # unknown type
        (_raw(), "dropped_malformed"),  # empty compound
        (bytes((VERSION,)) + msgpack.packb({"a": 1}), "dropped_malformed"),
        (_raw([3, 1])[:-1], "dropped_malformed"),  # truncated
        (
            _raw(
                [5, "n", 1, "h", 1, bytes(500)],
                [5, "n", 1, "h", 1, bytes(500)],
                [5, "n", 1, "h", 1, bytes(500)],
            ),
            "dropped_oversize",
        ),
    ],
)
def test_invalid_packets_are_rejected_with_a_counter_name(data: bytes, kind: str) -> None:
    with pytest.raises(WireError) as e:
        decode_packet(data)
    assert e.value.kind == kind


@settings(max_examples=600, deadline=None)
@given(st.binary(max_size=1600))
def test_decoder_survives_arbitrary_bytes(data: bytes) -> None:
    with contextlib.suppress(WireError):
        decode_packet(data)
    with contextlib.suppress(WireError):
        decode_push_pull(data)


_LEAF = (
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.binary(max_size=600)
    | st.text(max_size=140)
)
_ANY = st.recursive(_LEAF, lambda c: st.lists(c, max_size=7), max_leaves=20)


@settings(max_examples=400, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 9), st.lists(_ANY, max_size=7)), min_size=1, max_size=4))
def test_decoder_validates_arbitrary_typed_messages(msgs: list[tuple[int, list[object]]]) -> None:
    """Well-formed msgpack with message type codes but random fields: reject or validate."""
    data = bytes((VERSION,)) + msgpack.packb([[t, *f] for t, f in msgs], use_bin_type=True)
    try:
        out = decode_packet(data, max_bytes=1 << 20)
    except WireError:
        return
    assert len(out) == len(msgs)
    assert decode_packet(encode_packet(out), max_bytes=1 << 20) == out


def test_keyring_seals_and_opens_and_rejects_foreign_or_tampered() -> None:
    ring = Keyring.from_secret("alpha")
    sealed = ring.seal(b"hello", os.urandom(NONCE_BYTES))
    assert sealed != b"hello" and ring.open(sealed) == b"hello"
    with pytest.raises(AuthError):
        Keyring.from_secret("beta").open(sealed)
    tampered = sealed[:-1] + bytes((sealed[-1] ^ 1,))
    with pytest.raises(AuthError):
        ring.open(tampered)
    with pytest.raises(AuthError):
        ring.open(b"\x01plain")


def test_key_rotation_primary_encrypts_all_decrypt() -> None:
    old, new = Keyring.from_secret("old"), Keyring.from_secret("new")
    both = Keyring.from_secret("new,old")
    assert both.open(old.seal(b"a", os.urandom(NONCE_BYTES))) == b"a"
    assert new.open(both.seal(b"b", os.urandom(NONCE_BYTES))) == b"b"
    with pytest.raises(AuthError):
        old.open(both.seal(b"c", os.urandom(NONCE_BYTES)))


def test_derive_key_accepts_base64_or_hashes_a_passphrase() -> None:
    raw = bytes(range(32))
    assert derive_key(base64.b64encode(raw).decode()) == raw
    k = derive_key("correct horse battery staple")
    assert len(k) == 32 and k != derive_key("another passphrase")
