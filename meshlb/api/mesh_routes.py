"""Mesh endpoints: `GET /v1/peers` (members, this node first) and `GET /v1/cluster`."""

from __future__ import annotations

import time

import trio
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from meshlb.mesh.announce import local_meta
from meshlb.mesh.view import Peer, cluster_totals, peers_from_members
from meshlb.node_context import NodeContext


def current_peers(ctx: NodeContext) -> list[Peer]:
    """Every member as this node sees it; just this node when gossip is not running."""
    if ctx.gossip is None:
        return [
            Peer(
                node_id=ctx.node_id,
                gossip_addr=ctx.settings.gossip,
                state="alive",
                incarnation=0,
                last_change_wall=ctx.started_at_wall,
                meta=local_meta(ctx),
            )
        ]
    peers = peers_from_members(ctx.gossip.members(), trio.current_time(), time.time())
    # Our own load changes faster than we gossip it: show the live numbers for ourselves.
    return [
        Peer(p.node_id, p.gossip_addr, p.state, p.incarnation, p.last_change_wall, local_meta(ctx))
        if p.node_id == ctx.node_id
        else p
        for p in peers
    ]


def alive_peer_urls(ctx: NodeContext) -> list[str]:
    """Base URLs of the alive peers (not this node), for node-to-node fan-outs."""
    return [
        f"http://{p.meta.http_addr}"
        for p in current_peers(ctx)
        if p.state == "alive" and p.node_id != ctx.node_id and p.meta
    ]


def mesh_routes(ctx: NodeContext) -> list[Route]:
    async def peers(request: Request) -> Response:
        return JSONResponse([p.to_public() for p in current_peers(ctx)])

    async def cluster(request: Request) -> Response:
        rows = current_peers(ctx)
        return JSONResponse(
            {
                "node": ctx.node_id,
                "totals": cluster_totals(rows),
                "nodes": [p.to_public() for p in rows],
            }
        )

    return [
        Route("/v1/peers", peers, methods=["GET"]),
        Route("/v1/cluster", cluster, methods=["GET"]),
    ]
