"""Replay window of sealed gossip: each authentic frame is accepted once per member,
restarts start above their previous life, and every refusal is counted as `replay`."""

from __future__ import annotations

import random

import pytest

from meshlb.gossip.config import GossipConfig
from meshlb.gossip.crypto import Keyring
from meshlb.gossip.envelope import SEALED_OVERHEAD_BYTES, Envelope, ReplayError
from meshlb.gossip.membership import Membership
from meshlb.gossip.messages import Ack, Alive, Datagram, MemberState, Ping, PushPull
from meshlb.gossip.replay import ReplayGuard
from meshlb.gossip.wire import WireError
from tests.unit.gossip_helpers import addr

RING = Keyring.from_secret("k")


def test_guard_accepts_each_number_once_in_any_order_within_the_window() -> None:
    g = ReplayGuard(size=8)
    assert g.accept(b"a", 100)
    assert not g.accept(b"a", 100)
    assert g.accept(b"a", 105) and g.accept(b"a", 103) and g.accept(b"a", 98)
    assert not g.accept(b"a", 103) and not g.accept(b"a", 98)
    assert not g.accept(b"a", 97)  # 105 - 97 = 8: out of the window of 8
    assert g.accept(b"b", 97)  # another sender has its own window
    assert g.accept(b"a", 1000)  # a jump (a restart) clears the window
    assert not g.accept(b"a", 105) and g.accept(b"a", 999) and not g.accept(b"a", 999)


def test_guard_forgets_the_least_recently_advanced_sender_past_its_cap() -> None:
    g = ReplayGuard(size=8, max_senders=2)
    assert g.accept(b"a", 1) and g.accept(b"b", 1)
    assert g.accept(b"a", 2)  # a is now the most recent
    assert g.accept(b"c", 1)  # evicts b
    assert len(g) == 2
    assert not g.accept(b"a", 2)
    assert g.accept(b"b", 1)  # forgotten: accepted again (the documented price of a cap)


def _envelope(node: str, epoch: int) -> Envelope:
    return Envelope(RING, node, random.Random(epoch).randbytes, epoch)


def test_envelope_refuses_a_replayed_frame_and_counts_it_as_replay() -> None:
    sender, receiver = _envelope("a", 1_000), _envelope("b", 5_000)
    frame = sender.seal(b"payload")
    assert len(frame) == len(b"payload") + SEALED_OVERHEAD_BYTES
    assert receiver.open(frame) == b"payload"
    with pytest.raises(ReplayError) as e:
        receiver.open(frame)
    assert isinstance(e.value, WireError) and e.value.reason == "replay"
    assert e.value.kind == "dropped_replay"


def test_a_restarted_sender_is_heard_and_its_previous_life_is_not() -> None:
    receiver = _envelope("b", 0)
    old_life = _envelope("a", 1_000_000)
    old_frames = [old_life.seal(bytes([i])) for i in range(5)]
    for f in old_frames[:3]:
        receiver.open(f)
    restarted = _envelope("a", 2_000_000)  # one second later, by its wall clock
    assert receiver.open(restarted.seal(b"new")) == b"new"
    for f in old_frames:  # seen or not, its previous life is below the window now
        with pytest.raises(ReplayError):
            receiver.open(f)


def test_a_restart_with_the_clock_set_back_is_refused_as_documented() -> None:
    receiver = _envelope("b", 0)
    receiver.open(_envelope("a", 1_000_000).seal(b"x"))
    with pytest.raises(ReplayError):
        receiver.open(_envelope("a", 10).seal(b"y"))


def test_sealed_overhead_fits_the_configured_budget() -> None:
    assert GossipConfig().crypto_overhead_bytes >= SEALED_OVERHEAD_BYTES


def _keyed_core(node: str, i: int, epoch: int | None = None) -> Membership:
    m = Membership(GossipConfig(), node, addr(i), b"", random.Random(i), 0.0, RING,
                   boot_epoch_us=epoch)  # fmt: skip
    others = tuple(MemberState(f"n{j}", addr(j), 0, "alive", b"") for j in range(3) if j != i)
    m.preload(others, 0.0)
    return m


def test_core_drops_a_replayed_datagram_and_push_pull() -> None:
    a, b = _keyed_core("n0", 0), _keyed_core("n1", 1)
    ping = a.encode(Datagram(addr(1), (Ping(7, "n1"),), 0))
    b.receive(ping, addr(0), 1.0)
    assert [d.messages[0] for d in b.datagrams_to_send()] == [Ack(7)]
    b.receive(ping, addr(0), 1.1)
    assert b.datagrams_to_send() == []
    assert b.dropped()["replay"] == 1 and b.stats()["dropped_replay"] == 1
    pp = a.encode_push_pull(PushPull(a.snapshot(), False))
    assert b.handle_push_pull(pp, addr(0), 2.0) is not None
    assert b.handle_push_pull(pp, addr(0), 2.1) is None
    assert b.dropped()["replay"] == 2
    assert sum(b.dropped().values()) == 2


def test_core_hears_a_restarted_member_with_a_later_epoch() -> None:
    b = _keyed_core("n1", 1)
    old = _keyed_core("n0", 0, epoch=1_000_000)
    stale = old.encode(Datagram(addr(1), (Alive("n0", 0, addr(0), b"old"),), 0))
    b.receive(old.encode(Datagram(addr(1), (Ping(1, "n1"),), 0)), addr(0), 1.0)
    new = _keyed_core("n0", 0, epoch=60_000_000)
    b.receive(new.encode(Datagram(addr(1), (Alive("n0", 3, addr(0), b"new"),), 0)), addr(0), 2.0)
    assert b.member("n0").meta == b"new"  # type: ignore[union-attr]
    b.receive(stale, addr(0), 3.0)
    assert b.dropped()["replay"] == 1
