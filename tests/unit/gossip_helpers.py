"""Helpers for the gossip core unit tests: a core with known peers, output filters."""

from __future__ import annotations

import random

from meshlb.gossip.config import GossipConfig
from meshlb.gossip.membership import Membership
from meshlb.gossip.messages import ALIVE, Addr, Datagram, MemberState, Message


def addr(i: int) -> Addr:
    return (f"10.0.0.{i}", 7946)


def core_with_peers(
    n_peers: int, config: GossipConfig | None = None, seed: int = 1, now: float = 0.0
) -> Membership:
    """Node 'n0' at addr(0) that already knows n1..n{n_peers} alive at incarnation 0."""
    m = Membership(config or GossipConfig(), "n0", addr(0), b"m0", random.Random(seed), now)
    rows = tuple(MemberState(f"n{i}", addr(i), 0, ALIVE, b"") for i in range(1, n_peers + 1))
    m.preload(rows, now)
    return m


def sent(core: Membership) -> list[Datagram]:
    return core.datagrams_to_send()


def of_type(dgs: list[Datagram], cls: type) -> list[tuple[Addr, Message]]:
    return [(d.addr, msg) for d in dgs for msg in d.messages if isinstance(msg, cls)]


def run_until(core: Membership, t_end: float, start: float = 0.0) -> list[Datagram]:
    """Tick at every deadline up to t_end; return everything sent."""
    out: list[Datagram] = []
    t = start
    while True:
        t = core.next_deadline()
        if t > t_end:
            break
        core.tick(t)
        out += core.datagrams_to_send()
    return out
