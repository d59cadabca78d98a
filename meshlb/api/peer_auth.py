"""Refuse a request that claims to come from a peer but cannot prove it (cluster key).

One check for every node-to-node entry point: forwarded inference (hop header),
`?local=1` lookups, forwarded task submissions, ownership batches. The MAC covers the
method, path and query, body and behaviour headers; each signature is accepted once.
"""

from __future__ import annotations

import time

from starlette.requests import Request

from meshlb.api.errors import ApiError
from meshlb.mesh.auth import AUTH_HEADER, verify
from meshlb.node_context import NodeContext


def signed_path(request: Request) -> str:
    query = request.url.query
    return request.url.path + (f"?{query}" if query else "")


def require_peer(ctx: NodeContext, request: Request, body: bytes = b"", what: str = "") -> None:
    """401 unless the request is signed with the cluster key (no-op without a key)."""
    key = ctx.settings.cluster_key
    if key is None:
        return
    problem = verify(
        key,
        request.headers.get(AUTH_HEADER),
        request.method,
        signed_path(request),
        body,
        time.time(),
        request.headers,
        ctx.replay_guard,
    )
    if problem is not None:
        ctx.counters["peer_requests_refused"] += 1
        raise ApiError(401, f"{what or 'request from a peer'} refused: {problem}")
