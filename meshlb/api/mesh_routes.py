"""Mesh endpoints: `GET /v1/peers` (members, this node first) and `GET /v1/cluster`."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from meshlb.api.ports import PeerTable
from meshlb.mesh.view import cluster_totals


def mesh_routes(node_id: str, mesh: PeerTable) -> list[Route]:
    async def peers(request: Request) -> Response:
        return JSONResponse([p.to_public() for p in mesh.peers()])

    async def cluster(request: Request) -> Response:
        rows = mesh.peers()
        return JSONResponse(
            {
                "node": node_id,
                "totals": cluster_totals(rows),
                "nodes": [p.to_public() for p in rows],
            }
        )

    return [
        Route("/v1/peers", peers, methods=["GET"]),
        Route("/v1/cluster", cluster, methods=["GET"]),
    ]
