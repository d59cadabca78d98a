"""Hypothesis fuzz of the gossip decoder and the core's receive path.

Whatever arrives — arbitrary bytes, truncated or bit-flipped real captures, valid
msgpack with one wrong field, packets sealed with another key — the decoder raises
nothing but its own `WireError` (AuthError is one), the core never raises, exactly one
drop is counted under a known reason, and nothing that decodes carries an address or
node id we would not dare to use.
"""

from __future__ import annotations

import contextlib
import random
import string
from typing import Any

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from meshlb.gossip.addresses import valid_host
from meshlb.gossip.config import GossipConfig
from meshlb.gossip.crypto import NONCE_BYTES, AuthError, Keyring
from meshlb.gossip.drops import DROP_REASONS
from meshlb.gossip.membership import Membership
from meshlb.gossip.messages import (
    Ack,
    Alive,
    Dead,
    MemberState,
    Message,
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
    message_fields,
)
from tests.unit.gossip_helpers import addr, run_until

KEY = "fuzz-key"
SAMPLES: tuple[Message, ...] = (
    Ping(1, "n1"),
    PingReq(2, "n2", ("10.0.0.2", 7946), True),
    Ack(3),
    Nack(4),
    Alive("n3", 5, ("fe80::1%eth0", 7946), b"meta"),
    Alive("n4", 1, ("node-4.mesh.local", 7946), b""),
    Suspect("n5", 6, "n1"),
    Dead("n6", 2, "n6"),
)


def _member(key: str | None, node: str = "n0") -> Membership:
    ring = Keyring.from_secret(key) if key else None
    m = Membership(GossipConfig(), node, addr(0), b"m0", random.Random(3), 0.0, ring)
    rows = tuple(MemberState(f"n{i}", addr(i), 0, "alive", b"") for i in range(1, 6))
    m.preload(rows, 0.0)
    return m


def _captures(key: str | None) -> list[bytes]:
    """Real datagrams and push-pull frames of a 6-member core, as sent on the wire."""
    core = _member(key)
    core.update_meta(b"models=llama3", 0.0)
    for m in SAMPLES:
        core.receive((m,), addr(1), 0.1)
    dgs = run_until(core, 5.0)
    out = [core.encode(d) for d in dgs]
    out.append(core.encode_push_pull(PushPull(core.snapshot(), True)))
    assert len(out) > 10
    return out


PLAIN = _captures(None)
SEALED = _captures(KEY)


def _core_path(data: bytes, ring: Keyring | None) -> None:
    """What the core does with a datagram: open (if keyed), then decode."""
    if ring is not None:
        data = ring.open(data)
    for msg in decode_packet(data, 1400):
        _assert_usable(msg)


def _assert_usable(msg: Message) -> None:
    """A decoded message never carries what a socket call would choke on."""
    for name in ("target_addr", "addr"):
        a = getattr(msg, name, None)
        if a is not None:
            assert valid_host(a[0]) and 0 < a[1] <= 65535, msg
    for name in ("node", "target", "by"):
        v = getattr(msg, name, None)
        if v is not None:
            assert v.isprintable() and 0 < len(v) <= 128, msg


def _receive_counts_exactly_one_outcome(core: Membership, data: bytes) -> None:
    before = core.dropped()
    handled = core.stats()["messages_in"]
    core.receive(data, addr(9), 1.0)  # must not raise
    after = core.dropped()
    assert set(after) >= set(DROP_REASONS)
    diff = {r: after[r] - before.get(r, 0) for r in after if after[r] != before.get(r, 0)}
    if core.stats()["messages_in"] == handled:
        assert sum(diff.values()) == 1 and set(diff) <= set(DROP_REASONS), diff
    else:
        assert diff == {}


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=1600))
def test_arbitrary_bytes_raise_only_wire_errors(data: bytes) -> None:
    for ring in (None, Keyring.from_secret(KEY)):
        with contextlib.suppress(WireError):
            _core_path(data, ring)
    with contextlib.suppress(WireError):
        decode_push_pull(data)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=1600), st.booleans())
def test_the_core_never_raises_and_counts_one_drop(data: bytes, keyed: bool) -> None:
    _receive_counts_exactly_one_outcome(_member(KEY if keyed else None), data)


def _mutations() -> st.SearchStrategy[tuple[bool, int, int, int]]:
    """(sealed?, which capture, where, how): truncation or a flipped bit."""
    return st.tuples(st.booleans(), st.integers(0, 10_000), st.integers(0, 10_000),
                     st.integers(-1, 7))  # fmt: skip


@settings(max_examples=600, deadline=None)
@given(_mutations())
def test_truncated_or_bit_flipped_captures(m: tuple[bool, int, int, int]) -> None:
    sealed, which, where, bit = m
    pool = SEALED if sealed else PLAIN
    data = pool[which % len(pool)]
    pos = where % len(data)
    if bit < 0:
        mutated = data[:pos]
    else:
        mutated = data[:pos] + bytes((data[pos] ^ (1 << bit),)) + data[pos + 1 :]
    ring = Keyring.from_secret(KEY) if sealed else None
    for decode in (lambda d: _core_path(d, ring), _push_pull_path(ring)):
        with contextlib.suppress(WireError):
            decode(mutated)
    if sealed:  # authenticated encryption: any change at all is an auth failure
        with pytest.raises(AuthError):
            Keyring.from_secret(KEY).open(mutated)
    core = _member(KEY if sealed else None, node="n7")
    _receive_counts_exactly_one_outcome(core, mutated)


def _push_pull_path(ring: Keyring | None) -> Any:
    def decode(data: bytes) -> None:
        pp = decode_push_pull(ring.open(data) if ring is not None else data)
        for row in pp.states:
            assert valid_host(row.addr[0])

    return decode


_LEAF = (
    st.none()
    | st.booleans()
    | st.integers(-(2**64), 2**64)
    | st.floats(allow_nan=True)
    | st.binary(max_size=600)
    | st.text(max_size=300)
    | st.sampled_from(["127.0.0.1\x00", "::", "0.0.0.0", "255.255.255.255", "a" * 64, "",
                       "a..b", "x y", "-a.b", "224.0.0.1", "1.2.3.999", "fe80::1%\x00", "\udcff"])
)  # fmt: skip
_ANY = st.recursive(_LEAF, lambda c: st.lists(c, max_size=5), max_leaves=10)


@settings(max_examples=800, deadline=None)
@given(st.sampled_from(SAMPLES), st.integers(1, 6), _ANY)
def test_valid_msgpack_with_one_wrong_field(msg: Message, index: int, value: object) -> None:
    fields = message_fields(msg)
    fields[index % len(fields) or 1] = value
    try:
        data = bytes((VERSION,)) + msgpack.packb([fields], use_bin_type=True)
    except (ValueError, TypeError, OverflowError):  # not representable in msgpack
        return
    try:
        out = decode_packet(data, 1 << 20)
    except WireError:
        return
    for m in out:
        _assert_usable(m)


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(PLAIN), st.text(string.ascii_letters, min_size=1, max_size=20))
def test_sealed_with_another_key_is_an_auth_failure(plain: bytes, other: str) -> None:
    if other == KEY:
        return
    ours = Keyring.from_secret(KEY)
    theirs = Keyring.from_secret(other)
    sealed = _seal_with(theirs, plain)
    with pytest.raises(AuthError) as e:
        ours.open(sealed)
    assert e.value.reason == "auth_failed"
    core = _member(KEY)
    _receive_counts_exactly_one_outcome(core, sealed)
    assert core.dropped()["auth_failed"] == 1


def _seal_with(ring: Keyring, plain: bytes) -> bytes:
    return ring.seal(plain, random.Random(plain).randbytes(NONCE_BYTES))


@pytest.mark.parametrize(
    "host",
    ["127.0.0.1", "10.1.2.3", "::1", "fe80::1%eth0", "2001:db8::7", "localhost",
     "node-1.mesh.svc.cluster.local", "my_service", "host.", "a" * 63 + ".b"],
)  # fmt: skip
def test_usable_hosts_are_accepted(host: str) -> None:
    assert valid_host(host)


@pytest.mark.parametrize(
    "host",
    ["", "127.0.0.1\x00", "127.0.0.1 ", " x", "a b", "tab\there", "é.example", "a..b", ".a",
     "-a.b", "a-.b", "a" * 64 + ".b", "x" * 254, "1.2.3.999", "1.2.3", "01.2.3.4", "0.0.0.0",
     "::", "224.0.0.1", "ff02::1", "255.255.255.255", "fe80::1%", "fe80::1%a b", "[::1]",
     "example.123", "\udcff", "a/b", "a:b"],
)  # fmt: skip
def test_unusable_hosts_are_refused(host: str) -> None:
    assert not valid_host(host)
