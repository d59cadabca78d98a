"""The mesh as placement, the ownership driver and graceful leave see it, from gossip.

Placement of requests and tasks, work stealing and hand-over at leave all need the
same two things: this node as a placement candidate (its live numbers) and the
peers (as gossiped). One small adapter over `current_peers` keeps them agreeing
with `/v1/peers`.
"""

from __future__ import annotations

from meshlb.api.mesh_routes import current_peers
from meshlb.mesh.announce import local_meta
from meshlb.mesh.candidates import candidate, http_addr_of
from meshlb.mesh.placement import Candidate
from meshlb.mesh.placement_service import MemberLoad
from meshlb.node_context import NodeContext


class NodeMeshView:
    def __init__(self, ctx: NodeContext) -> None:
        self.ctx = ctx

    def local_candidate(self) -> Candidate:
        return candidate(self.ctx.node_id, local_meta(self.ctx), is_local=True)

    def peers(self) -> list[MemberLoad]:
        return [
            MemberLoad(candidate(p.node_id, p.meta, is_local=False), p.state, p.incarnation)
            for p in current_peers(self.ctx)
            if p.meta is not None and p.node_id != self.ctx.node_id
        ]

    def address_of(self, node_id: str) -> str | None:
        return http_addr_of(current_peers(self.ctx), node_id)
