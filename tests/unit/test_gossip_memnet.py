"""MemoryNetwork: the faults the simulator relies on really happen, reproducibly."""

from __future__ import annotations

from meshlb.testing.memnet import LinkModel, MemoryNetwork

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
