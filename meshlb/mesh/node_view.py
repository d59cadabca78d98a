"""The mesh as the ownership driver and graceful leave see it, read from gossip.

Placement of taken-over tasks, work stealing and hand-over at leave all need the
same two things: this node as a placement candidate (its live numbers) and the
alive peers (as gossiped). One small adapter over `current_peers` keeps them agreeing
with `/v1/peers` and with the placement of Ollama-API requests.
"""

from __future__ import annotations

from meshlb.api.mesh_routes import current_peers
from meshlb.mesh.announce import local_meta
from meshlb.mesh.candidates import candidate, candidates_from_peers, http_addr_of
from meshlb.mesh.placement import Candidate
from meshlb.node_context import NodeContext


class NodeMeshView:
    def __init__(self, ctx: NodeContext) -> None:
        self.ctx = ctx

    def local_candidate(self) -> Candidate:
        return candidate(self.ctx.node_id, local_meta(self.ctx), is_local=True)

    def peer_candidates(self) -> list[Candidate]:
        peers = current_peers(self.ctx)
        return [
            c
            for c in candidates_from_peers(peers, self.ctx.node_id, self.ctx.recently_sent)
            if not c.is_local
        ]

    def address_of(self, node_id: str) -> str | None:
        return http_addr_of(current_peers(self.ctx), node_id)
