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

import httpx

from meshlb.backend.ollama import describe_http_error
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


async def open_on_peer(
    client: httpx.AsyncClient,
    peer_url: str,
    path: str,
    body: bytes,
    priority: int,
    hops: int,
    cluster_key: str | None,
    remaining_s: float = math.inf,
) -> httpx.Response:
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
    request = client.build_request("POST", f"{peer_url}{path}", content=body, headers=headers)
    try:
        response = await client.send(request, stream=True)
    except httpx.HTTPError as e:
        raise PeerUnavailable(f"{peer_url} {describe_http_error(e)}") from e
    if response.status_code in RETRY_ELSEWHERE:
        await response.aclose()
        raise PeerUnavailable(f"{peer_url} answered {response.status_code}")
    return response
