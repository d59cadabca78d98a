"""Open an Ollama-API request on the peer placement chose: A -> B.

The peer runs it as its own task (the hop count tells it not to forward again; the
remaining deadline travels with it). If the peer is unreachable or answers 404/502/503
(stale gossip, full, dying), `PeerUnavailable` tells the caller to place it again;
nothing has reached the client yet. Streaming B's answer to the client is the api
layer's job (`meshlb.api.forwarded`).
"""

from __future__ import annotations

import math
import time

from meshlb.http_client import HttpPool, Origin, UpstreamError, UpstreamResponse
from meshlb.mesh.auth import AUTH_HEADER, sign

HOPS_HEADER = "x-meshlb-hops"
TIMEOUT_HEADER = "x-meshlb-timeout-s"
# Status codes that mean "this peer cannot take it now": try another placement.
RETRY_ELSEWHERE = frozenset({404, 502, 503})
PASSED_HEADERS = (
    "content-type",
    "content-encoding",
    "x-meshlb-task-id",
    "x-meshlb-node",
    "x-meshlb-queue-ms",
    "retry-after",
)


class PeerUnavailable(Exception):
    """The peer could not take the request; nothing was sent to the client yet."""


def peer_pool() -> HttpPool:
    """The keep-alive pool for node-to-node requests: idle connections expire after
    2 s, well before a node's own 5 s idle close (http_server), so a pooled connection
    is never reused just as the peer closes it."""
    return HttpPool(connect_timeout_s=2.0, max_idle_per_origin=32, idle_expiry_s=2.0)


async def open_on_peer(
    pool: HttpPool,
    peer_url: str,
    path: str,
    body: bytes,
    priority: int,
    hops: int,
    cluster_key: str | None,
    remaining_s: float = math.inf,
) -> UpstreamResponse:
    """Start the request on the peer; raise PeerUnavailable when it should go elsewhere."""
    headers = {
        "content-type": "application/json",
        "x-meshlb-priority": str(priority),
        HOPS_HEADER: str(hops + 1),
    }
    if math.isfinite(remaining_s):
        headers[TIMEOUT_HEADER] = f"{max(0.001, remaining_s):.3f}"
    if cluster_key is not None:
        headers[AUTH_HEADER] = sign(cluster_key, "POST", path, body, time.time(), headers)
    fields = [(k.encode(), v.encode()) for k, v in headers.items()]
    try:
        response = await pool.request(Origin.of(peer_url), "POST", path, fields, body)
    except UpstreamError as e:
        raise PeerUnavailable(f"{peer_url} {e.reason}") from e
    if response.status_code in RETRY_ELSEWHERE:
        await response.aclose()
        raise PeerUnavailable(f"{peer_url} answered {response.status_code}")
    return response
