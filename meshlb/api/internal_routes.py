"""Node-to-node endpoint of the ownership protocol: `POST /v1/internal/ownership`.

A peer posts a msgpack batch of copies, acks, offers and steal requests
(`meshlb.mesh.ownership_wire`); this node feeds them to its ownership core and
answers 204 once they are applied. With a cluster key the request must carry a valid
HMAC (`meshlb.mesh.auth`), else it is 401 and nothing is applied; a malformed batch
is 400 and nothing is applied either.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from meshlb.api.body import read_body
from meshlb.api.errors import ApiError
from meshlb.api.model_relay import RelayToOllama, internal_model_routes
from meshlb.api.peer_auth import PeerAuth
from meshlb.api.ports import NodeCounters
from meshlb.mesh.mailer import OWNERSHIP_PATH
from meshlb.mesh.ownership_wire import MAX_BATCH_BYTES, Batch, WireError, decode_batch


@dataclass(frozen=True, slots=True)
class InternalPorts:
    """What the node-to-node endpoints use of the node."""

    node_id: str
    auth: PeerAuth
    counters: NodeCounters
    receive: Callable[[Batch], None]  # the ownership driver's: apply a peer's batch
    models: RelayToOllama


def internal_routes(ctx: InternalPorts) -> list[Route]:
    async def ownership(request: Request) -> Response:
        body = await read_body(request, MAX_BATCH_BYTES)
        try:
            ctx.auth.require(request, body, "ownership batch")
        except ApiError:
            ctx.counters.internal_refused += 1
            raise
        try:
            batch = decode_batch(body)
        except WireError as e:
            ctx.counters.internal_malformed += 1
            raise ApiError(400, f"malformed ownership batch: {e}") from None
        if batch.sender == ctx.node_id:
            raise ApiError(400, "ownership batch claims to come from this node itself")
        ctx.receive(batch)
        return Response(status_code=204)

    return [Route(OWNERSHIP_PATH, ownership, methods=["POST"]), *internal_model_routes(ctx.models)]
