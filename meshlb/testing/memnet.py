"""An in-memory datagram network model: seeded loss, delay, duplication, reordering,
partitions (one-way too), stalled nodes, crashes and restarts.

It is a pure model (no clock, no tasks): `route(src, dst, now)` says when, if ever,
each copy of a datagram arrives; `stalled_until(addr)` and `is_down(addr)` describe
nodes. The gossip simulator (`gossip_sim.py`) runs it as a discrete-event loop over
bare cores; `memnet_trio.py` carries the shipped drivers' bytes by it in Trio time.
Every random draw comes from one `random.Random(seed)` in call order, so the same seed
gives the same trace.
"""

from __future__ import annotations

import random
from collections.abc import Iterable
from dataclasses import dataclass

Addr = tuple[str, int]


@dataclass
class LinkModel:
    """How datagrams fare: probabilities in [0, 1], delays in seconds."""

    loss: float = 0.0
    delay_min_s: float = 0.0005
    delay_max_s: float = 0.002
    duplicate: float = 0.0
    # With this probability a datagram takes an extra `reorder_extra_s`, so it
    # overtakes nothing but is overtaken (reordering).
    reorder: float = 0.0
    reorder_extra_s: float = 0.05


class MemoryNetwork:
    """Delivery decisions for datagrams between addresses."""

    def __init__(self, seed: int = 0, link: LinkModel | None = None) -> None:
        self.rng = random.Random(seed)
        self.link = link or LinkModel()
        self._blocked: set[tuple[Addr, Addr]] = set()
        self._groups: dict[Addr, int] = {}
        self._down: set[Addr] = set()
        self._stalled: dict[Addr, float] = {}
        self.sent = 0
        self.dropped = 0

    # ---- faults ----------------------------------------------------------------

    def partition(self, *groups: Iterable[Addr]) -> None:
        """Split into groups that cannot reach each other (both ways)."""
        self._groups = {a: i for i, g in enumerate(groups) for a in g}

    def block(self, src: Addr, dst: Addr) -> None:
        """One-way partition: datagrams from src to dst are lost; dst to src still flow."""
        self._blocked.add((src, dst))

    def heal(self) -> None:
        """Remove every partition and one-way block."""
        self._groups = {}
        self._blocked.clear()

    def crash(self, addr: Addr) -> None:
        self._down.add(addr)

    def restart(self, addr: Addr) -> None:
        self._down.discard(addr)

    def is_down(self, addr: Addr) -> bool:
        return addr in self._down

    def stall(self, addr: Addr, until: float) -> None:
        """The node at addr processes nothing until `until` (packets wait for it)."""
        self._stalled[addr] = max(until, self._stalled.get(addr, 0.0))

    def stalled_until(self, addr: Addr) -> float:
        return self._stalled.get(addr, 0.0)

    # ---- delivery --------------------------------------------------------------

    def reachable(self, src: Addr, dst: Addr) -> bool:
        """No partition or block between src and dst, and dst is up."""
        if dst in self._down or (src, dst) in self._blocked:
            return False
        groups = self._groups
        return not groups or groups.get(src, -1) == groups.get(dst, -1)

    def route(self, src: Addr, dst: Addr, now: float) -> list[float]:
        """Arrival times of the copies of one datagram (empty: lost)."""
        self.sent += 1
        link = self.link
        rng = self.rng
        if not self.reachable(src, dst) or (link.loss and rng.random() < link.loss):
            self.dropped += 1
            return []
        span = link.delay_max_s - link.delay_min_s
        at = now + link.delay_min_s + rng.random() * span
        if link.reorder and rng.random() < link.reorder:
            at += link.reorder_extra_s
        if link.duplicate and rng.random() < link.duplicate:
            return [at, now + link.delay_min_s + rng.random() * span]
        return [at]

    def route_stream(self, src: Addr, dst: Addr, now: float) -> float | None:
        """Arrival time of a stream (TCP-like) message: reliable unless partitioned."""
        if not self.reachable(src, dst) or not self.reachable(dst, src):
            return None
        link = self.link
        return now + 2 * (
            link.delay_min_s + self.rng.random() * (link.delay_max_s - link.delay_min_s)
        )
