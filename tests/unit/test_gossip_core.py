"""Unit tests of the pure SWIM + Lifeguard core: probing, suspicion, refutation."""

from __future__ import annotations

import ast
import pathlib
import random

from meshlb.gossip.config import GossipConfig
from meshlb.gossip.events import MemberDied, MemberRefuted, MemberSuspected
from meshlb.gossip.membership import Membership
from meshlb.gossip.messages import Ack, Addr, Alive, Dead, MemberState, Nack, Ping, PingReq, Suspect
from tests.unit.gossip_helpers import addr, core_with_peers, of_type, run_until, sent


def _first_probe(core: Membership) -> tuple[Addr, Ping]:
    """Tick until the first probe goes out; return its destination and the ping."""
    for _ in range(10):
        core.tick(core.next_deadline())
        pings = of_type(sent(core), Ping)
        if pings:
            a, ping = pings[0]
            assert isinstance(ping, Ping)
            return a, ping
    raise AssertionError("no probe was sent")


def test_every_member_probed_within_2n_minus_1_periods() -> None:
    n = 7
    core = core_with_peers(n)
    probed: dict[str, list[float]] = {f"n{i}": [] for i in range(1, n + 1)}
    t = 0.0
    while t < 60:
        t = core.next_deadline()
        core.tick(t)
        for a, msg in of_type(sent(core), Ping):
            assert isinstance(msg, Ping)
            probed[msg.target].append(t)
            core.receive((Ack(msg.seq),), a, t + 0.001)
    for times in probed.values():
        gaps = [b - a for a, b in zip([0.0, *times], times, strict=False)]
        assert max(gaps) <= (2 * n - 1) * 1.0 + 1e-9


def test_timeout_sends_ping_req_with_nack_then_suspects() -> None:
    core = core_with_peers(5)
    a, ping = _first_probe(core)
    assert isinstance(ping, Ping)
    t0 = core.next_deadline()  # probe timeout
    dgs = run_until(core, t0)
    reqs = of_type(dgs, PingReq)
    assert len(reqs) == 3
    assert all(isinstance(r, PingReq) and r.nack and r.target == ping.target for _, r in reqs)
    assert {ra for ra, _ in reqs}.isdisjoint({a, addr(0)})
    dgs = run_until(core, t0 + 1.0)
    sus = of_type(dgs, Suspect)
    assert any(isinstance(s, Suspect) and s.node == ping.target for _, s in sus)
    assert MemberSuspected(ping.target, "n0", 0) in core.events()
    assert core.member(ping.target).state == "suspect"  # type: ignore[union-attr]


def test_relayed_ack_prevents_suspicion_and_improves_health() -> None:
    core = core_with_peers(5)
    core.awareness.apply_delta(2)
    _, ping = _first_probe(core)
    t = core.next_deadline()
    run_until(core, t)
    core.receive((Ack(ping.seq),), addr(2), t + 0.1)  # ack relayed by n2
    run_until(core, t + 2.0)
    assert core.member(ping.target).state == "alive"  # type: ignore[union-attr]
    assert core.awareness.score == 1


def test_missed_nacks_raise_local_health_and_stretch_probe_interval() -> None:
    core = core_with_peers(5)
    _, ping = _first_probe(core)
    t = core.next_deadline()
    run_until(core, t)
    core.receive((Nack(ping.seq),), addr(3), t + 0.1)  # 1 of 3 relays answered
    end = core.next_deadline()
    core.tick(end)
    assert core.awareness.score == 2
    sent(core)
    # The next probe starts at `end`; its timeout is stretched to 3 * 0.5 s.
    assert of_type(run_until(core, end + 1.49, end), PingReq) == []
    assert len(of_type(run_until(core, end + 1.51, end), PingReq)) == 3


def test_failed_probe_without_relays_counts_one() -> None:
    core = core_with_peers(1)
    _first_probe(core)
    run_until(core, 3.0)
    assert core.awareness.score >= 1


def test_relay_forwards_ack_or_sends_nack() -> None:
    core = core_with_peers(3)
    core.receive((PingReq(77, "n2", addr(2), True),), addr(1), 0.0)
    (dst, ping), *_ = of_type(sent(core), Ping)
    assert dst == addr(2) and isinstance(ping, Ping)
    core.receive((Ack(ping.seq),), addr(2), 0.1)
    assert (addr(1), Ack(77)) in of_type(sent(core), Ack)
    core.receive((PingReq(78, "n3", addr(3), True),), addr(1), 1.0)
    sent(core)
    core.tick(1.0 + 0.5)
    assert (addr(1), Nack(78)) in of_type(sent(core), Nack)


def test_ping_for_another_node_is_not_answered() -> None:
    core = core_with_peers(1)
    core.receive((Ping(5, "someone-else"),), addr(1), 0.0)
    assert of_type(sent(core), Ack) == []
    core.receive((Ping(6, "n0"),), addr(1), 0.0)
    assert of_type(sent(core), Ack) == [(addr(1), Ack(6))]


def test_suspect_about_self_is_refuted_with_higher_incarnation() -> None:
    core = core_with_peers(3)
    core.receive((Suspect("n0", 4, "n2"),), addr(2), 1.0)
    assert core.incarnation == 5
    assert MemberRefuted("n0", 5, "n2") in core.events()
    assert core.awareness.score == 1
    dgs = run_until(core, 2.0, 1.0)
    assert any(isinstance(m, Alive) and m.incarnation == 5 for _, m in of_type(dgs, Alive))


def test_dead_about_self_is_refuted() -> None:
    core = core_with_peers(3)
    core.receive((Dead("n0", 0, "n1"),), addr(1), 1.0)
    assert core.incarnation == 1
    assert core.member("n0").state == "alive"  # type: ignore[union-attr]


def test_buddy_ping_to_suspect_carries_suspicion_and_ack_carries_refutation() -> None:
    core = core_with_peers(1)
    core.receive((Suspect("n1", 0, "n9"),), addr(1), 0.0)
    sent(core)
    dgs = run_until(core, 3.0)
    buddy = [d for d in dgs if any(isinstance(m, Ping) for m in d.messages)]
    assert any(Suspect("n1", 0, "n0") in d.messages for d in buddy)
    # The suspect side: the ack to a buddy ping carries the refutation at once.
    other = core_with_peers(1)
    other.receive((Suspect("n0", 0, "n1"), Ping(9, "n0")), addr(1), 0.0)
    (ack_dg,) = sent(other)
    assert Ack(9) in ack_dg.messages
    assert any(isinstance(m, Alive) and m.incarnation == 1 for m in ack_dg.messages)


def test_no_buddy_without_lifeguard() -> None:
    core = core_with_peers(1, GossipConfig().without_lifeguard())
    core.receive((Suspect("n1", 0, "n9"),), addr(1), 0.0)
    dgs = run_until(core, 3.0)
    assert not any(
        isinstance(m, Suspect) and m.by == "n0"
        for d in dgs
        if any(isinstance(x, Ping) for x in d.messages)
        for m in d.messages
    )


def test_suspicion_expires_to_dead_at_max_without_confirmations() -> None:
    core = core_with_peers(9)  # N = 10: min = 4 s, max = 24 s, k = 2
    core.receive((Suspect("n5", 0, "n1"),), addr(1), 0.0)
    for t in (1.0, 10.0, 22.9):
        core.tick(t)
        assert core.member("n5").state == "suspect"  # type: ignore[union-attr]
    sent(core)
    for t in (23.0, 23.5):  # two last-chance buddy pings, probe_timeout apart, before it
        core.tick(t)
        last = [d for d in sent(core) if d.addr == addr(5)]
        assert last and Suspect("n5", 0, "n0") in last[-1].messages
        assert any(isinstance(m, Ping) for m in last[-1].messages)
        assert core.member("n5").state == "suspect"  # type: ignore[union-attr]
    core.tick(23.99)
    assert core.member("n5").state == "suspect"  # type: ignore[union-attr]
    core.tick(24.0)
    assert core.member("n5").state == "dead"  # type: ignore[union-attr]
    assert MemberDied("n5", "n0", 0) in core.events()


def test_last_chance_ping_answered_with_current_alive_saves_the_member() -> None:
    core = core_with_peers(9)
    core.receive((Suspect("n5", 0, "n1"),), addr(1), 0.0)
    core.tick(23.5)
    last = [d for d in sent(core) if d.addr == addr(5)][-1]
    # n5 had refuted long ago (inc 1) but we missed it; a stale suspicion reminds it.
    target = Membership(GossipConfig(), "n5", addr(5), b"", random.Random(5), 0.0)
    target.preload((MemberState("n1", addr(1), 0, "alive", b""),), 0.0)
    target.receive((Suspect("n5", 0, "n1"),), addr(1), 1.0)
    assert target.incarnation == 1
    run_until(target, 10.0, 1.0)  # the refutation runs out of retransmits
    assert not target.broadcast_pending("n5")
    target.receive(last.messages, addr(0), 23.55)
    (reply,) = sent(target)
    assert any(isinstance(m, Ack) for m in reply.messages)
    assert Alive("n5", 1, addr(5), b"") in reply.messages
    core.receive(reply.messages, addr(5), 23.6)
    core.tick(24.5)
    assert core.member("n5").state == "alive"  # type: ignore[union-attr]


def test_independent_confirmations_shrink_suspicion_to_min() -> None:
    core = core_with_peers(9)
    core.receive((Suspect("n5", 0, "n1"),), addr(1), 0.0)
    core.receive((Suspect("n5", 0, "n1"),), addr(1), 0.1)  # same accuser: no confirmation
    core.receive((Suspect("n5", 0, "n2"),), addr(2), 0.2)
    core.receive((Suspect("n5", 0, "n3"),), addr(3), 0.3)
    run_until(core, 3.99, 0.3)  # (ticks at every deadline, last-chance pings included)
    assert core.member("n5").state == "suspect"  # type: ignore[union-attr]
    run_until(core, 4.0, 3.99)
    assert core.member("n5").state == "dead"  # type: ignore[union-attr]


def test_fixed_suspicion_without_lifeguard() -> None:
    core = core_with_peers(9, GossipConfig().without_lifeguard())
    core.receive((Suspect("n5", 0, "n1"),), addr(1), 0.0)
    core.tick(4.0)
    assert core.member("n5").state == "dead"  # type: ignore[union-attr]


def test_refutation_cancels_suspicion_timer() -> None:
    core = core_with_peers(9)
    core.receive((Suspect("n5", 0, "n1"),), addr(1), 0.0)
    core.receive((Alive("n5", 1, addr(5), b""),), addr(5), 1.0)
    core.tick(30.0)
    assert core.member("n5").state == "alive"  # type: ignore[union-attr]
    assert MemberRefuted("n5", 1, "n1") in core.events()


def test_stale_updates_are_ignored() -> None:
    core = core_with_peers(2)
    core.receive((Alive("n1", 3, addr(1), b"x"),), addr(1), 0.0)
    core.receive((Suspect("n1", 2, "n2"),), addr(2), 0.1)
    core.receive((Dead("n1", 2, "n2"),), addr(2), 0.2)
    core.receive((Alive("n1", 3, addr(1), b"old"),), addr(2), 0.3)
    v = core.member("n1")
    assert v is not None and (v.state, v.incarnation, v.meta) == ("alive", 3, b"x")


def test_address_conflict_does_not_hijack_a_live_member() -> None:
    core = core_with_peers(2)
    core.receive((Alive("n1", 5, ("6.6.6.6", 1), b""),), addr(2), 0.0)
    assert core.member("n1").addr == addr(1)  # type: ignore[union-attr]
    assert core.stats()["address_conflicts"] == 1


def test_no_trio_socket_or_time_in_core_modules() -> None:
    root = pathlib.Path(__file__).resolve().parents[2] / "meshlb" / "gossip"
    core_files = [p for p in root.glob("*.py") if p.name not in ("driver.py", "__main__.py")]
    assert len(core_files) >= 8
    for path in core_files:
        for node in ast.walk(ast.parse(path.read_text())):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            for name in names:
                assert name.split(".")[0] not in {"trio", "socket", "time", "asyncio"}, path


def test_late_confirmation_still_gives_the_suspect_its_last_chance_pings() -> None:
    core = core_with_peers(9)
    core.receive((Suspect("n5", 0, "n1"),), addr(1), 0.0)
    core.tick(5.0)
    sent(core)
    core.receive((Suspect("n5", 0, "n2"),), addr(2), 20.0)  # deadline -> 11.4 s: passed
    core.tick(20.0)
    assert core.member("n5").state == "suspect"  # type: ignore[union-attr]
    assert any(Suspect("n5", 0, "n0") in d.messages for d in sent(core) if d.addr == addr(5))
    core.tick(21.0)
    assert core.member("n5").state == "dead"  # type: ignore[union-attr]
