"""Unit tests: piggyback queue, packet size, push-pull, join, leave, reap, restart, meta."""

from __future__ import annotations

import random

from meshlb.gossip.broadcast import BroadcastQueue
from meshlb.gossip.config import GossipConfig
from meshlb.gossip.events import JoinSucceeded, MemberLeft, MemberReaped, MetaChanged
from meshlb.gossip.membership import Membership
from meshlb.gossip.messages import ALIVE, DEAD, Alive, Dead, MemberState, PushPull, Suspect
from meshlb.gossip.suspicion import Suspicion, suspicion_timeout_s
from meshlb.gossip.wire import encode_packet, message_size
from tests.unit.gossip_helpers import addr, core_with_peers, of_type, run_until, sent


def test_config_formulas_match_memberlist() -> None:
    c = GossipConfig()
    assert [c.retransmit_limit(n) for n in (10, 100, 1000)] == [8, 12, 16]
    assert [c.suspicion_min_s(n) for n in (1, 10, 100, 1000)] == [4.0, 4.0, 8.0, 12.0]
    assert c.push_pull_interval_for(32) == 30.0
    assert c.push_pull_interval_for(100) == 30.0 * 3
    assert c.push_pull_interval_for(1000) == 30.0 * 6


def test_suspicion_timeout_shrinks_log_wise() -> None:
    assert suspicion_timeout_s(0, 2, 4.0, 24.0) == 24.0
    assert abs(suspicion_timeout_s(1, 2, 4.0, 24.0) - 11.381) < 1e-3
    assert suspicion_timeout_s(2, 2, 4.0, 24.0) == 4.0
    assert suspicion_timeout_s(0, 0, 4.0, 24.0) == 4.0
    s = Suspicion("a", 0, 2, 4.0, 24.0, now=10.0)
    assert s.deadline == 34.0
    assert not s.confirm("a")  # the accuser is not a confirmation
    assert s.confirm("b") and not s.confirm("b")
    assert abs(s.deadline - 21.381) < 1e-3


def test_queue_least_sent_newest_first_with_limit_and_invalidation() -> None:
    q = BroadcastQueue()
    q.queue(Alive("a", 1, addr(1), b""), 20)
    q.queue(Alive("b", 1, addr(2), b""), 20)
    taken, size = q.take(1000, limit=2)
    assert [m.node for m in taken] == ["b", "a"] and size == 40
    q.queue(Suspect("c", 0, "x"), 20)
    taken, _ = q.take(25, limit=2)  # only one fits: the least-sent one
    assert [m.node for m in taken] == ["c"]
    q.queue(Dead("a", 1, "x"), 20)  # invalidates the alive about a
    assert q.pending_for("a") == Dead("a", 1, "x")
    taken, _ = q.take(1000, limit=2)
    assert {m.node for m in taken} == {"a", "b", "c"}
    assert len(q) == 1  # b and c reached 2 transmits; the new Dead about a has 1
    q.take(1000, limit=2)
    assert len(q) == 0


def test_updates_are_retransmitted_limit_times_then_stop() -> None:
    core = core_with_peers(9)
    core.update_meta(b"new", 0.0)
    dgs = run_until(core, 10.0)
    alive = [m for _, m in of_type(dgs, Alive) if m.node == "n0"]
    assert len(alive) == GossipConfig().retransmit_limit(10)


def test_no_datagram_exceeds_1400_bytes_under_a_flood_of_updates() -> None:
    core = core_with_peers(200)
    for i in range(1, 201):
        core.receive((Alive(f"n{i}", 1, addr(i), bytes(400)),), addr(i), 0.0)
    dgs = run_until(core, 5.0)
    assert len(dgs) > 20
    for d in dgs:
        assert len(encode_packet(d.messages)) <= 1400 - 32
        assert d.size >= len(encode_packet(d.messages))


def test_gossip_goes_to_gossip_nodes_members_per_interval() -> None:
    core = core_with_peers(20)
    core.update_meta(b"x", 0.0)
    t = core.next_deadline()
    core.tick(t)
    gossip = [d for d in sent(core) if all(isinstance(m, Alive) for m in d.messages)]
    assert len(gossip) == 3 and len({d.addr for d in gossip}) == 3
    assert 0.0 <= t <= 0.2


def test_push_pull_merge_rules() -> None:
    core = core_with_peers(3)
    reply = core.handle_push_pull(
        PushPull(
            (
                MemberState("n1", addr(1), 0, DEAD, b""),  # remote dead -> only suspect here
                MemberState("n2", addr(2), 0, "left", b""),
                MemberState("n3", addr(3), 4, ALIVE, b"z"),
                MemberState("n9", addr(9), 2, ALIVE, b""),  # new member
            ),
            False,
        ),
        addr(3),
        0.0,
    )
    assert reply is not None
    states = {s.node: (s.state, s.incarnation) for s in reply.states}
    assert states["n1"] == ("suspect", 0)
    assert states["n2"] == ("left", 0)
    assert states["n3"] == ("alive", 4)
    assert states["n9"] == ("alive", 2)
    assert MemberLeft("n2", 0) in core.events()


def test_join_retries_with_backoff_until_a_seed_answers() -> None:
    core = Membership(GossipConfig(), "n0", addr(0), b"", random.Random(1), 0.0)
    core.join([addr(1), addr(0)], 0.0)  # our own address is not a seed
    times = []
    t = 0.0
    while t < 20:
        t = core.next_deadline()
        core.tick(t)
        reqs = core.streams_to_send()
        if reqs:
            assert [r.addr for r in reqs] == [addr(1)] and reqs[0].message.join
            times.append(t)
    assert times[:5] == [0.0, 1.0, 3.0, 7.0, 15.0]
    reply = PushPull((MemberState("n1", addr(1), 0, ALIVE, b""),), False)
    core.receive_push_pull(reply, addr(1), 20.0)
    assert core.joined and JoinSucceeded(addr(1), 2) in core.events()
    t = 20.0
    while t < 60:
        t = core.next_deadline()
        core.tick(t)
        assert all(not r.message.join for r in core.streams_to_send())


def test_node_without_seeds_waits() -> None:
    core = Membership(GossipConfig(), "n0", addr(0), b"", random.Random(1), 0.0)
    core.join([], 0.0)
    run_until(core, 100.0)
    assert core.streams_to_send() == [] and not core.joined


def test_leave_is_left_not_dead_and_stops_probing() -> None:
    leaver = core_with_peers(3)
    leaver.leave(5.0)
    dgs = run_until(leaver, 10.0, 5.0)
    deads = [m for _, m in of_type(dgs, Dead)]
    assert deads and all(d == Dead("n0", 0, "n0") for d in deads)
    assert not any(type(m).__name__ == "Ping" for d in dgs for m in d.messages)
    peer = core_with_peers(3)
    peer.receive((Dead("n0", 0, "n0"),), addr(0), 6.0)  # n0 is a stranger here: ignored
    other = Membership(GossipConfig(), "n1", addr(1), b"", random.Random(2), 0.0)
    other.preload((MemberState("n0", addr(0), 0, ALIVE, b""),), 0.0)
    other.receive((Dead("n0", 0, "n0"),), addr(0), 6.0)
    assert other.member("n0").state == "left"  # type: ignore[union-attr]
    assert MemberLeft("n0", 0) in other.events()


def test_dead_members_are_reaped_after_configured_time() -> None:
    core = core_with_peers(3, GossipConfig(reap_after_s=50.0))
    core.receive((Dead("n2", 0, "n1"),), addr(1), 10.0)
    core.tick(59.0)
    assert core.member("n2") is not None
    core.tick(60.0)
    assert core.member("n2") is None
    assert MemberReaped("n2") in core.events()


def test_restarted_node_refutes_above_its_old_incarnation() -> None:
    restarted = Membership(GossipConfig(), "n0", addr(0), b"", random.Random(3), 100.0)
    restarted.join([addr(1)], 100.0)
    old_view = PushPull(
        (MemberState("n1", addr(1), 0, ALIVE, b""), MemberState("n0", addr(0), 7, DEAD, b"")),
        False,
    )
    restarted.receive_push_pull(old_view, addr(1), 100.1)
    assert restarted.incarnation == 8
    dgs = run_until(restarted, 101.0, 100.1)
    assert Alive("n0", 8, addr(0), b"") in [m for _, m in of_type(dgs, Alive)]
    # ... and a peer that had it dead at 7 takes it back.
    peer = core_with_peers(0)
    peer.preload((MemberState("n9", addr(9), 7, ALIVE, b""),), 0.0)
    peer.receive((Dead("n9", 7, "n0"),), addr(1), 1.0)
    peer.receive((Alive("n9", 7, addr(9), b""),), addr(9), 2.0)
    assert peer.member("n9").state == "dead"  # type: ignore[union-attr]
    peer.receive((Alive("n9", 8, addr(9), b""),), addr(9), 3.0)
    assert peer.member("n9").state == "alive"  # type: ignore[union-attr]


def test_update_meta_bumps_incarnation_and_is_bounded() -> None:
    core = core_with_peers(2)
    core.update_meta(b"models", 1.0)
    assert core.incarnation == 1 and core.members()[0].meta == b"models"
    try:
        core.update_meta(bytes(513), 2.0)
    except ValueError:
        pass
    else:
        raise AssertionError("meta over 512 bytes accepted")
    peer = core_with_peers(2)
    peer.receive((Alive("n1", 1, addr(1), b"gpu"),), addr(1), 1.0)
    assert MetaChanged("n1", 1, b"gpu") in peer.events()


def test_members_lists_self_first_with_views() -> None:
    core = core_with_peers(3, now=5.0)
    views = core.members()
    assert views[0].node_id == "n0" and views[0].state == "alive"
    assert {v.node_id for v in views} == {"n0", "n1", "n2", "n3"}
    assert all(v.last_change_at == 5.0 for v in views)


def test_garbage_never_raises_and_is_counted() -> None:
    core = core_with_peers(2)
    for junk in (b"", b"\x01", b"\x01\xc1", b"\x07abc", b"\x01" + bytes(2000), b"\x01\x91\x91\x05"):
        core.receive(junk, addr(1), 0.0)
    s = core.stats()
    assert s["dropped_malformed"] == 4 and s["dropped_version"] == 1 and s["dropped_oversize"] == 1
    assert message_size(Alive("n1", 1, addr(1), b"")) < 40
