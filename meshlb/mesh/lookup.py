"""Find a task this node does not hold by asking the live peers (any node answers).

Why a fan-out: a task lives on the node that accepted it; a client may ask any node.
The question goes to every alive peer at once with `?local=1` (so it is never asked
further), the first 200 wins, and a short timeout bounds the wait. With a cluster key
the request is signed like every node-to-node request.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import httpx
import trio

from meshlb.mesh.auth import AUTH_HEADER, sign

LOOKUP_TIMEOUT_S = 2.0


async def find_on_peers(
    client: httpx.AsyncClient,
    peer_urls: Sequence[str],
    task_id: str,
    wait_s: float,
    cluster_key: str | None,
) -> dict[str, Any] | None:
    """The task's JSON from whichever peer holds it, or None."""
    found: dict[str, Any] | None = None
    path = f"/v1/tasks/{task_id}"

    async def ask(url: str, cancel: trio.CancelScope) -> None:
        nonlocal found
        headers = {}
        if cluster_key is not None:
            headers[AUTH_HEADER] = sign(cluster_key, "GET", path, b"", time.time())
        params: dict[str, str] = {"local": "1"}
        if wait_s:
            params["wait"] = str(wait_s)
        try:
            r = await client.get(
                f"{url}{path}", params=params, headers=headers, timeout=wait_s + LOOKUP_TIMEOUT_S
            )
        except httpx.HTTPError:
            return
        if r.status_code == 200 and found is None:
            found = r.json()
            cancel.cancel()

    async with trio.open_nursery() as nursery:
        for url in peer_urls:
            nursery.start_soon(ask, url, nursery.cancel_scope)
    return found
