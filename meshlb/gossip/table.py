"""The member table: who we know, at which address, incarnation and state.

Records and queries only; the rules that change a member's state live in `rules.py`.
Also kept here: the probe order (SWIM §4.3 round-robin over a shuffled list, so every
member is probed within 2N-1 periods) and the random picks of relays and gossip
targets, because both walk the same records.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from meshlb.gossip.messages import ALIVE, DEAD, LEFT, SUSPECT, Addr, MemberState

LIVE_STATES = (ALIVE, SUSPECT)


class MemberRecord:
    """One member as this node knows it (mutable; only the table and the rules change it)."""

    __slots__ = ("addr", "changed_at", "incarnation", "meta", "node", "state")

    def __init__(self, node: str, addr: Addr, inc: int, state: str, meta: bytes, now: float):
        self.node = node
        self.addr = addr
        self.incarnation = inc
        self.state = state
        self.meta = meta
        self.changed_at = now

    def view(self) -> MemberView:
        return MemberView(self.node, self.addr, self.state, self.incarnation, self.changed_at,
                          self.meta)  # fmt: skip

    def __repr__(self) -> str:
        return f"Member({self.node!r}, {self.state}, inc={self.incarnation}, {self.addr})"


@dataclass(frozen=True, slots=True)
class MemberView:
    """A read-only snapshot of one member, as `members()` returns it."""

    node_id: str
    addr: Addr
    state: str
    incarnation: int
    last_change_at: float
    meta: bytes


class MemberTable:
    """Records by node id, this node's own first; the probe order; the live count."""

    def __init__(self, node_id: str, addr: Addr, meta: bytes, rng: random.Random, now: float):
        self.node_id = node_id
        self.rng = rng
        self.me = MemberRecord(node_id, addr, 0, ALIVE, meta, now)
        self._records: dict[str, MemberRecord] = {node_id: self.me}
        self._order: list[str] = []  # probe order (SWIM §4.3), self excluded
        self._probe_index = 0
        self.live = 1  # alive + suspect, self included: the N of the formulas
        self.version = 0  # bumped on every change; keys the push-pull snapshot
        self._snapshot: tuple[int, tuple[MemberState, ...]] = (-1, ())

    # ---- queries -------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._records)

    @property
    def leaving(self) -> bool:
        """We left (gracefully): our own record is `left` from then on."""
        return self.me.state == LEFT

    def get(self, node: str) -> MemberRecord | None:
        return self._records.get(node)

    def members(self) -> list[MemberView]:
        """All known members, this node first."""
        me = self.me
        return [me.view()] + [m.view() for m in self._records.values() if m is not me]

    def member(self, node_id: str) -> MemberView | None:
        m = self._records.get(node_id)
        return m.view() if m is not None else None

    def snapshot(self) -> tuple[MemberState, ...]:
        """Full state for push-pull, cached until something changes."""
        if self._snapshot[0] != self.version:
            rows = tuple(
                MemberState(m.node, m.addr, m.incarnation, m.state, m.meta)
                for m in self._records.values()
            )
            self._snapshot = (self.version, rows)
        return self._snapshot[1]

    def dead(self) -> list[MemberRecord]:
        return [m for m in self._records.values() if m.state == DEAD]

    # ---- changes ---------------------------------------------------------------

    def preload(self, states: tuple[MemberState, ...], now: float) -> None:
        """Know these alive members from the start, silently (no events, no gossip).

        For simulations that begin from a converged group without N^2 join traffic.
        """
        for row in states:
            if row.node not in self._records and row.state == ALIVE:
                m = MemberRecord(row.node, row.addr, row.incarnation, ALIVE, row.meta, now)
                self._records[row.node] = m
                self._order.append(row.node)
                self.live += 1
        self.rng.shuffle(self._order)
        self.version += 1

    def add(self, node: str, addr: Addr, inc: int, meta: bytes, now: float) -> MemberRecord:
        """A newcomer, recorded as dead until the rules make it alive; inserted at a
        random place of the probe order (memberlist), so it is probed soon."""
        m = MemberRecord(node, addr, inc, DEAD, meta, now)
        self._records[node] = m
        order = self._order
        order.append(node)
        j = self.rng.randrange(len(order))
        order[j], order[-1] = order[-1], order[j]
        return m

    def remove(self, node: str) -> None:
        del self._records[node]
        self.version += 1

    def set_state(self, m: MemberRecord, state: str, now: float) -> None:
        self.live += (state in LIVE_STATES) - (m.state in LIVE_STATES)
        m.state = state
        m.changed_at = now

    # ---- picks ---------------------------------------------------------------

    def random_members(
        self, k: int, exclude: str | None, *, gossip: bool, dead_since: float
    ) -> list[MemberRecord]:
        """Up to k distinct random members: alive ones (probe relays), or gossip targets
        (alive, suspect, and dead since `dead_since`, so the dead can refute)."""
        records, order, me = self._records, self._order, self.me
        picked: dict[str, MemberRecord] = {}
        for _ in range(4 * k + 4):
            if len(picked) >= k or not order:
                break
            m = records.get(order[self.rng.randrange(len(order))])
            if m is None or m is me or m.node == exclude or m.node in picked:
                continue
            if m.state == ALIVE or (
                gossip and (m.state == SUSPECT or (m.state == DEAD and m.changed_at > dead_since))
            ):
                picked[m.node] = m
        return list(picked.values())

    def next_probe_target(self) -> MemberRecord | None:
        """Next member of the shuffled round-robin order (SWIM §4.3), skipping the dead."""
        records = self._records
        for _ in range(2):
            order = self._order
            while self._probe_index < len(order):
                m = records.get(order[self._probe_index])
                self._probe_index += 1
                if m is not None and m is not self.me and m.state in LIVE_STATES:
                    return m
            self._order = [n for n in records if n != self.node_id]
            self.rng.shuffle(self._order)
            self._probe_index = 0
        return None
