"""The mesh as this node reads it from gossip: for placement, the mailer and the API.

Two views over one gossip member list, so that they agree with each other:

- `GossipMembers`: this node as a placement candidate (live numbers) and the peers
  as gossiped — the placement service's `MeshMembers`, and the mailer's addresses;
- `MeshPeers`: every member decoded, this node with its full live metadata (its
  moves included) — what `/v1/peers`, `/v1/cluster`, `/api/tags`, model management
  and every fan-out read (`meshlb.api.ports.PeerTable`).

Two and not one because of the order things are built in: placement (and the
ownership driver, which places through it) comes before the counters of work moved
exist, and `/v1/peers` shows those counters for this node.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

from meshlb.mesh.announce import LocalStatus
from meshlb.mesh.candidates import candidate
from meshlb.mesh.meta import NodeMeta
from meshlb.mesh.placement import Candidate
from meshlb.mesh.placement_service import MemberLoad
from meshlb.mesh.view import MembershipSource, Peer, peers_from_members


class GossipMembers:
    """Gossip's members, decoded; this node's own entry from its live status."""

    def __init__(
        self,
        local: LocalStatus,
        gossip: MembershipSource,
        trio_clock: Callable[[], float],
        wall_clock: Callable[[], float],
    ) -> None:
        self.node_id = local.node_id
        self._local = local
        self._gossip = gossip
        self._trio_clock = trio_clock
        self._wall_clock = wall_clock

    def decoded(self) -> list[Peer]:
        """Every member as gossiped (this node's entry with its gossiped metadata)."""
        return peers_from_members(self._gossip.members(), self._trio_clock(), self._wall_clock())

    def local_candidate(self) -> Candidate:
        return self._local.candidate()

    def peers(self) -> list[MemberLoad]:
        return [
            MemberLoad(candidate(p.node_id, p.meta, is_local=False), p.state, p.incarnation)
            for p in self.decoded()
            if p.meta is not None and p.node_id != self.node_id
        ]

    def address_of(self, node_id: str) -> str | None:
        for p in self.decoded():
            if p.node_id == node_id and p.meta is not None:
                return p.meta.http_addr
        return None


class MeshPeers:
    """Every member as this node sees it, this node with its live numbers."""

    def __init__(
        self,
        members: GossipMembers,
        own_meta: Callable[[], NodeMeta],
        gossip_addr: str,
        started_at_wall: float,
    ) -> None:
        self.node_id = members.node_id
        self._members = members
        self._own_meta = own_meta
        self._gossip_addr = gossip_addr
        self._started_at_wall = started_at_wall

    def peers(self) -> list[Peer]:
        """Our own load changes faster than we gossip it: show the live numbers for
        ourselves; before gossip lists us (not started yet), this node alone."""
        peers = self._members.decoded()
        mine = [p for p in peers if p.node_id == self.node_id]
        if not mine:
            here = Peer(self.node_id, self._gossip_addr, "alive", 0, self._started_at_wall, None)
            peers, mine = [here, *peers], [here]
        live = replace(mine[0], meta=self._own_meta())
        return [live if p.node_id == self.node_id else p for p in peers]

    def alive_peer_urls(self) -> list[str]:
        return [
            f"http://{p.meta.http_addr}"
            for p in self.peers()
            if p.state == "alive" and p.node_id != self.node_id and p.meta
        ]

    def address_of(self, node_id: str) -> str | None:
        return self._members.address_of(node_id)
