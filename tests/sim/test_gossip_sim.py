"""N gossip cores on MemoryNetwork, in virtual time: convergence, detection, refutation,
partitions, loss, garbage and foreign clusters, determinism."""

from __future__ import annotations

import pytest

from meshlb.gossip.config import GossipConfig
from meshlb.gossip.crypto import Keyring
from meshlb.gossip.events import MemberDied, MemberRefuted, MemberSuspected
from meshlb.testing.gossip_sim import GossipSim
from meshlb.testing.memnet import LinkModel


def _deaths(sim: GossipSim, node: str | None = None) -> list[tuple[float, int, MemberDied]]:
    return [
        (t, i, e)
        for t, i, e in sim.log
        if isinstance(e, MemberDied) and (node is None or e.node == node)
    ]


def _all_alive(sim: GossipSim) -> bool:
    live = sim.live_indices()
    return all(sim.all_see(j, "alive") for j in live)


def test_nodes_joining_through_one_seed_converge() -> None:
    sim = GossipSim(30, seed=3, converged=False)
    sim.run_until(10.0)
    assert _all_alive(sim)
    assert all(len(nd.core.members()) == 30 for nd in sim.nodes)  # type: ignore[union-attr]


def test_crash_is_detected_by_everyone_and_restart_rejoins_higher() -> None:
    sim = GossipSim(20, seed=4)
    sim.run_until(5.0)
    sim.crash(7)
    sim.run_for(12.0)
    assert sim.all_see(7, "dead")
    died = _deaths(sim, "node-0007")
    assert len({i for _, i, _ in died}) == 19 and max(t for t, _, _ in died) - 5.0 <= 10.0
    assert not [d for d in _deaths(sim) if d[2].node != "node-0007"]
    sim.restart(7)
    sim.run_for(5.0)
    assert sim.all_see(7, "alive")
    assert sim.nodes[7].core.incarnation >= 1  # type: ignore[union-attr]


def test_stalled_node_is_suspected_then_refutes_without_dying() -> None:
    sim = GossipSim(20, seed=5)
    sim.run_until(5.0)
    sim.stall(2, 4.0)  # under the 5.2 s minimum suspicion at N=20
    sim.run_for(10.0)
    suspected = [
        e for _, _, e in sim.log if isinstance(e, MemberSuspected) and e.node == "node-0002"
    ]
    refuted = [e for _, i, e in sim.log if isinstance(e, MemberRefuted) and e.node == "node-0002"]
    assert suspected and refuted
    assert not _deaths(sim)
    assert sim.all_see(2, "alive")


@pytest.mark.parametrize("one_way", [False, True])
def test_partition_heals_and_halves_merge(one_way: bool) -> None:
    sim = GossipSim(16, seed=6)
    sim.run_until(2.0)
    a = [nd.addr for nd in sim.nodes[:8]]
    b = [nd.addr for nd in sim.nodes[8:]]
    if one_way:
        for x in a:
            for y in b:
                sim.net.block(x, y)
    else:
        sim.net.partition(a, b)
    sim.run_for(40.0)
    assert sim.state_of(0, 12) == "dead" and sim.state_of(12, 0) == "dead"
    sim.net.heal()
    sim.run_for(240.0)
    assert _all_alive(sim)


def test_no_false_deaths_at_10_percent_loss_with_dup_and_reorder() -> None:
    link = LinkModel(loss=0.10, duplicate=0.05, reorder=0.05)
    sim = GossipSim(25, seed=7, link=link)
    sim.run_until(300.0)
    assert _deaths(sim) == []
    sim.crash(3)
    sim.run_for(20.0)
    assert sim.all_see(3, "dead")


def test_graceful_leave_is_left_everywhere() -> None:
    sim = GossipSim(12, seed=8)
    sim.run_until(3.0)
    sim.leave(4)
    sim.run_for(3.0)
    sim.crash(4)
    sim.run_for(20.0)
    assert sim.all_see(4, "left")
    assert _deaths(sim) == []


def test_meta_update_reaches_everyone_fast() -> None:
    sim = GossipSim(50, seed=9)
    sim.run_until(3.0)
    sim.update_meta(0, b"models=llama3")
    sim.run_for(3.0)
    metas = {nd.core.member("node-0000").meta for nd in sim.nodes}  # type: ignore[union-attr]
    assert metas == {b"models=llama3"}


def test_real_codec_with_encryption_and_garbage() -> None:
    cfg = GossipConfig()
    sim = GossipSim(
        12, seed=10, use_codec=True, keyring_for=lambda i: Keyring.from_secret("k"), config=cfg
    )
    sim.run_until(5.0)
    for junk in (b"\x00", b"\xe1" + bytes(40), b"\x01\x91\x93\x05", bytes(3000)):
        sim.inject(0, ("6.6.6.6", 1), junk)
    sim.inject(
        0, ("6.6.6.6", 1), Keyring.from_secret("other").seal(b"\x01\x91\x92\x03\x01", bytes(12))
    )
    sim.crash(5)
    sim.run_for(15.0)
    assert sim.all_see(5, "dead")
    assert 0 < sim.max_packet_bytes <= 1400
    s = sim.nodes[0].core.stats()  # type: ignore[union-attr]
    assert s["dropped_auth"] == 4 and s["dropped_oversize"] == 1


def test_wrong_cluster_key_cannot_join() -> None:
    rings = {i: Keyring.from_secret("right") for i in range(5)}
    rings[5] = Keyring.from_secret("wrong")
    sim = GossipSim(6, seed=11, use_codec=True, keyring_for=rings.__getitem__, converged=False)
    sim.run_until(20.0)
    intruder = sim.nodes[5].core
    assert intruder is not None and not intruder.joined
    assert all(sim.state_of(i, 5) is None for i in range(5))
    cores = [sim.nodes[i].core for i in range(5)]
    assert sum(c.stats()["dropped_auth"] for c in cores if c is not None) > 0
    assert all(sim.state_of(0, j) == "alive" for j in range(1, 5))


def test_same_seed_same_trace() -> None:
    def trace(seed: int) -> list[tuple[float, int, object]]:
        sim = GossipSim(15, seed=seed, link=LinkModel(loss=0.2))
        sim.run_until(5.0)
        sim.crash(1)
        sim.run_for(20.0)
        return [(round(t, 9), i, e) for t, i, e in sim.log]

    assert trace(12) == trace(12)
    assert trace(12) != trace(13)


def _healthy_deaths_with_deaf_stalls(lifeguard: bool, seconds: float) -> int:
    """One of 10 members goes deaf (timers run, reads nothing) for 6-10 s, repeatedly."""
    cfg = GossipConfig() if lifeguard else GossipConfig().without_lifeguard()
    sim = GossipSim(10, seed=21, config=cfg)
    at = 5.0
    while at < seconds:
        sim.run_until(at)
        sim.stall(3, 6.0 + (at % 4.0), frozen=False)
        at += 30.0
    sim.run_until(seconds)
    return sum(isinstance(e, MemberDied) and e.node != "node-0003" for _, _, e in sim.log)


def test_lifeguard_prevents_false_deaths_caused_by_a_slow_member() -> None:
    with_lifeguard = _healthy_deaths_with_deaf_stalls(True, 600.0)
    plain_swim = _healthy_deaths_with_deaf_stalls(False, 600.0)
    assert with_lifeguard == 0
    assert plain_swim >= 10


@pytest.mark.slow
def test_thousand_members_detect_a_crash_within_the_target() -> None:
    sim = GossipSim(1000, seed=22, record_events=True)
    sim.run_until(5.0)
    sim.log.clear()
    sim.crash(500)
    sim.run_for(20.0)
    assert sim.all_see(500, "dead")
    last = max(t for t, _, e in sim.log if isinstance(e, MemberDied) and e.node == "node-0500")
    assert last - 5.0 < 17.0
    assert not [e for _, _, e in sim.log if isinstance(e, MemberDied) and e.node != "node-0500"]
