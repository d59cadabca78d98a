"""MemoryNetwork: the faults the simulator relies on really happen, reproducibly, and
the shipped gossip driver runs on it (`memnet_trio`) under a mock clock."""

from __future__ import annotations

import random

import pytest
import structlog
import trio
from trio.testing import MockClock

from meshlb.gossip.config import GossipConfig
from meshlb.gossip.driver import GossipDriver
from meshlb.testing.memnet import LinkModel, MemoryNetwork
from meshlb.testing.memnet_trio import TrioNetwork

A, B, C = ("a", 1), ("b", 1), ("c", 1)


def test_loss_duplication_and_reordering_are_seeded() -> None:
    def trace(seed: int) -> list[list[float]]:
        net = MemoryNetwork(seed, LinkModel(loss=0.3, duplicate=0.2, reorder=0.2))
        return [net.route(A, B, float(i)) for i in range(2000)]

    t = trace(1)
    assert t == trace(1) and t != trace(2)
    lost = sum(not r for r in t) / len(t)
    dup = sum(len(r) == 2 for r in t) / len(t)
    late = sum(bool(r) and r[0] - i > 0.04 for i, r in enumerate(t)) / len(t)
    assert 0.25 < lost < 0.35 and 0.1 < dup < 0.2 and 0.1 < late < 0.2


def test_partitions_one_way_blocks_crashes_and_stalls() -> None:
    net = MemoryNetwork(0)
    net.partition([A], [B, C])
    assert net.route(A, B, 0.0) == [] and net.route(B, A, 0.0) == []
    assert net.route(B, C, 0.0) != []
    net.heal()
    net.block(A, B)
    assert net.route(A, B, 0.0) == [] and net.route(B, A, 0.0) != []
    assert net.route_stream(B, A, 0.0) is None  # a stream needs both directions
    net.heal()
    net.crash(C)
    assert net.route(A, C, 0.0) == [] and net.is_down(C)
    net.restart(C)
    assert net.route(A, C, 0.0) != []
    net.stall(B, 5.0)
    assert net.stalled_until(B) == 5.0 and net.stalled_until(A) == 0.0


# ---- the same network carrying the shipped gossip driver (memnet_trio) ------------


async def _members(net: TrioNetwork, n: int, nursery: trio.Nursery) -> list[GossipDriver]:
    addrs = [(f"10.0.0.{i + 1}", 7946) for i in range(n)]
    drivers = []
    for i, addr in enumerate(addrs):
        d = GossipDriver(GossipConfig(), f"n{i}", addr, addr, addrs[:1] if i else [], b"",
                         None, structlog.get_logger(), transport=net.gossip_transport(addr),
                         rng=random.Random(i), boot_epoch_us=0)  # fmt: skip
        await nursery.start(d.run)
        drivers.append(d)
    return drivers


def _alive(d: GossipDriver) -> set[str]:
    return {m.node_id for m in d.members() if m.state == "alive"}


async def test_the_gossip_driver_converges_and_detects_a_crash_on_it(
    autojump_clock: MockClock,
) -> None:
    net = TrioNetwork(MemoryNetwork(3, LinkModel(loss=0.05)))
    async with trio.open_nursery() as nursery:
        drivers = await _members(net, 5, nursery)
        await trio.sleep(5.0)
        assert all(_alive(d) == {f"n{i}" for i in range(5)} for d in drivers)
        assert net.model.sent > 0 and net.model.dropped > 0  # the link really lost some
        net.model.crash(("10.0.0.5", 7946))
        await trio.sleep(30.0)
        assert all(_alive(d) == {"n0", "n1", "n2", "n3"} for d in drivers[:4])
        nursery.cancel_scope.cancel()


async def test_a_partitioned_member_is_declared_dead_on_both_sides_and_a_push_pull_fails(
    autojump_clock: MockClock,
) -> None:
    net = TrioNetwork(MemoryNetwork(4))
    async with trio.open_nursery() as nursery:
        drivers = await _members(net, 3, nursery)
        await trio.sleep(5.0)
        net.model.partition([("10.0.0.1", 7946), ("10.0.0.2", 7946)], [("10.0.0.3", 7946)])
        await trio.sleep(30.0)
        assert _alive(drivers[0]) == _alive(drivers[1]) == {"n0", "n1"}
        assert _alive(drivers[2]) == {"n2"}
        transport = net.gossip_transport(("10.0.0.9", 1))
        with pytest.raises(OSError):  # unreachable: what a reset would say
            await transport.exchange(("10.0.0.3", 7946), b"frame", 5.0)
        nursery.cancel_scope.cancel()
