"""The node's side of residency: what it gossips, what it learns from its own answers,
and unloads sent to the hosts that hold the model.

- `gossiped`: the residency fields of this node's metadata (loaded models with their
  size, expiry rounded down to `EXPIRY_STEP_S` so a stream of requests that keeps
  pushing a model's keep_alive does not change the bytes every second, the requests
  in hand for each and how many were started; the model memory; the measured load
  rate).
- `WatchedAnswer`: around the relay of a request run on the local Ollama, counts the
  request in hand for its model while it runs (peers price what evicting it costs)
  and hands the end of the answer to `LocalResidency.end`, which times the load from
  `load_duration` and has `/api/ps` re-read soon.
- `unload_everywhere`: a request with `keep_alive: 0` and nothing to run is Ollama's
  unload; it goes to every peer that has the model loaded (and runs here too when
  this host has it, or when no host is known to), so "unload" means the whole mesh.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from typing import Any

import structlog
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from meshlb.backend.catalog import GB, LocalResidency
from meshlb.http_client import HttpPool, UpstreamError, UpstreamResponse
from meshlb.mesh.forward import PeerUnavailable, open_on_peer
from meshlb.mesh.peer_calls import PeerCalls
from meshlb.mesh.placement import Candidate
from meshlb.mesh.residency import Resident

log = structlog.get_logger()
TAIL_BYTES = 1024
EXPIRY_STEP_S = 10.0


def gossiped(
    res: LocalResidency, memory_gb: float | None, wall: Callable[[], float] = time.time
) -> dict[str, Any]:
    """The residency fields of `NodeMeta` for this host (nothing before `/api/ps`)."""
    if not res.known:
        return {}
    now = wall()
    resident = tuple(
        Resident(
            m.name,
            round(m.size_bytes / GB, 1),
            res.active.get(m.name, 0),
            m.expires_at // EXPIRY_STEP_S * EXPIRY_STEP_S
            if math.isfinite(m.expires_at)
            else m.expires_at,
            res.served.get(m.name, 0),
        )
        for m in res.loaded.values()
        if res.active.get(m.name, 0) > 0 or m.expires_at >= now
    )
    return {
        "resident": resident,
        "memory_gb": memory_gb or res.learned_memory_gb(),
        "load_gbps": res.load_gbps,
    }


class WatchedAnswer:
    """ASGI wrapper: `residency.begin(model)` before, `residency.end(model, tail)` after."""

    def __init__(self, app: ASGIApp, residency: LocalResidency, model: str) -> None:
        self.app = app
        self.residency = residency
        self.model = model

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        tail = b""

        async def watch(message: Message) -> None:
            nonlocal tail
            if message["type"] == "http.response.body":
                body = message.get("body", b"")
                if body:
                    tail = (tail + body[-TAIL_BYTES:])[-TAIL_BYTES:]
            await send(message)

        self.residency.begin(self.model)
        try:
            await self.app(scope, receive, watch)
        finally:
            self.residency.end(self.model, tail)


async def unload_everywhere(
    pool: HttpPool,
    candidates: Sequence[Candidate],
    address_of: Callable[[str], str | None],
    model: str,
    request: tuple[str, bytes, int],
    cluster_key: str | None,
    remaining_s: float = math.inf,
    calls: PeerCalls | None = None,
) -> tuple[UpstreamResponse, str] | None:
    """Send the unload (`request`: path, body, priority) to every peer that has `model`
    loaded; None when it must run here too (or only), else the last peer's answer (the
    others' are read and closed). `calls`: a holder declared dead is given up on."""
    calls = calls if calls is not None else PeerCalls()
    path, body, priority = request
    holders = [
        c.node_id
        for c in candidates
        if not c.is_local and c.residency is not None and c.residency.has(model)
    ]
    local = next((c for c in candidates if c.is_local), None)
    here = (
        local is not None
        and model in local.models
        and (local.residency is None or local.residency.has(model) or not holders)
    )
    last: tuple[UpstreamResponse, str] | None = None
    for node_id in holders:
        url = "http://" + (address_of(node_id) or "")
        try:
            with calls.call(node_id) as call:
                upstream = await open_on_peer(
                    pool, url, path, body, priority, 0, cluster_key, remaining_s
                )
            if call.cancelled_caught:
                raise PeerUnavailable(f"{url} was declared dead before it answered")
        except PeerUnavailable as e:
            log.info("peer could not unload the model", peer=node_id, model=model, reason=str(e))
            continue
        log.info("unload sent to the host that has the model", peer=node_id, model=model)
        if last is not None:
            await _drain(last, calls)
        last = upstream, node_id
    if here and last is not None:
        await _drain(last, calls)
        return None
    return last


async def _drain(answer: tuple[UpstreamResponse, str], calls: PeerCalls) -> None:
    """Read and close a holder's answer to the unload (given up if it is declared dead)."""
    upstream, node_id = answer
    try:
        with calls.call(node_id):
            await upstream.aread()
    except UpstreamError as e:
        log.info("peer failed while answering the unload", peer=node_id, reason=e.reason)
    finally:
        await upstream.aclose()
