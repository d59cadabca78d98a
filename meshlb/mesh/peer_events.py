"""Gossip membership events -> the ownership core's peer events (pure, no I/O).

One translation for the real node (`ownership_driver`) and the simulator
(`testing.mesh_sim`), so both feed the core the same way:

- died / left -> PeerDown (left: a graceful leave, no majority check needed);
- suspected -> PeerSuspected (it stops counting towards the quorum);
- refuted -> PeerUp; reaped -> PeerForgotten (it leaves the quorum's count);
- joined / metadata changed -> PeerUp if the member was not live, and first
  PeerRestarted if its boot id changed: a restarted process lost everything it
  owned, even if it came back faster than dead-detection could notice.
"""

from __future__ import annotations

from collections.abc import Callable, Collection

from meshlb.gossip.events import (
    Event as GossipEvent,
)
from meshlb.gossip.events import (
    MemberDied,
    MemberJoined,
    MemberLeft,
    MemberReaped,
    MemberRefuted,
    MemberSuspected,
    MetaChanged,
)
from meshlb.mesh import ownership_msgs as m


class PeerEvents:
    """Remembers each peer's boot id; `boot_of` reads it from gossip metadata (None
    when the metadata is unreadable, which then says nothing about a restart)."""

    def __init__(self, node_id: str, boot_of: Callable[[bytes], str | None]) -> None:
        self.node_id = node_id
        self.boot_of = boot_of
        self.boots: dict[str, str] = {}
        # (node, boot) of processes known to have restarted: messages still arriving
        # from them come from a past life.
        self.retired: set[tuple[str, str]] = set()

    def translate(self, ev: GossipEvent, live: Collection[str]) -> list[m.Event]:
        node = getattr(ev, "node", None)
        if not isinstance(node, str) or node == self.node_id:
            return []
        if isinstance(ev, MemberReaped):
            return [m.PeerForgotten(node)]
        if isinstance(ev, MemberSuspected):
            return [m.PeerSuspected(node)]
        if isinstance(ev, MemberDied | MemberLeft):
            return [m.PeerDown(node, isinstance(ev, MemberLeft))]
        if isinstance(ev, MemberRefuted):
            return [m.PeerUp(node)]
        if isinstance(ev, MemberJoined | MetaChanged):
            return self._meta(node, ev.meta, live)
        return []

    def _meta(self, node: str, meta: bytes, live: Collection[str]) -> list[m.Event]:
        boot = self.boot_of(meta)
        old = self.boots.get(node)
        out: list[m.Event] = []
        restarted = bool(boot) and old is not None and old != boot
        if boot:
            self.boots[node] = boot
        if restarted and old is not None:
            self.retired.add((node, old))
            out.append(m.PeerRestarted(node))
        if node not in live or restarted:
            out.append(m.PeerUp(node))
        return out
