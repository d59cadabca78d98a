"""The node's side of residency-aware placement: inputs for `place`, and unloads.

- `task_needs`: the model's size (what a host has loaded, else the local catalog's
  size on disk) and, for a chat that extends an earlier one, the host that served it
  and the prompt evaluation its cache saves (`meshlb.mesh.affinity`).
- `unload_everywhere`: a request with `keep_alive: 0` and nothing to run (Ollama's
  unload) goes to every host that has the model loaded, not to one placement pick, so
  "unload" means unloaded in the whole mesh. A load (an empty prompt otherwise) is
  placed like any request: on the best host, which is where the model is loaded if
  anywhere, else the host where a load costs least.
"""

from __future__ import annotations

import math
import time
from typing import Any

import httpx
import structlog

from meshlb.mesh.affinity import Turn, chat_turn, saving_s
from meshlb.mesh.announce import local_residency
from meshlb.mesh.candidates import (
    candidates_from_peers,
    http_addr_of,
    with_local_residency,
)
from meshlb.mesh.forward import PeerUnavailable, open_on_peer
from meshlb.mesh.placement import Candidate, TaskNeeds
from meshlb.mesh.residency import model_size_gb
from meshlb.mesh.view import Peer
from meshlb.node_context import NodeContext

log = structlog.get_logger()


def mesh_candidates(ctx: NodeContext, peers: list[Peer]) -> list[Candidate]:
    """Candidates from gossip (expired loaded models dropped), with this node's own
    residency as it knows it now rather than as it last gossiped it."""
    candidates = candidates_from_peers(peers, ctx.node_id, ctx.recently_sent, time.time())
    return with_local_residency(candidates, local_residency(ctx))


def is_empty_prompt(payload: dict[str, Any] | None) -> bool:
    """Nothing to generate: Ollama's load (or, with keep_alive 0, unload) request."""
    if payload is None or "input" in payload:
        return False
    if "messages" in payload:
        return not payload["messages"]
    return not payload.get("prompt")


def is_unload(payload: dict[str, Any] | None) -> bool:
    """`keep_alive` 0 (a number, or a duration such as "0s" / "0m") and no prompt."""
    if payload is None or not is_empty_prompt(payload):
        return False
    keep = payload.get("keep_alive")
    if isinstance(keep, bool):
        return False
    if isinstance(keep, int | float):
        return keep == 0
    return isinstance(keep, str) and keep.strip().rstrip("smh") in ("0", "0.0")


def task_needs(
    ctx: NodeContext,
    payload: dict[str, Any] | None,
    model: str,
    est_tokens: int,
    hops: int,
    candidates: list[Candidate],
) -> tuple[TaskNeeds, Turn | None]:
    """What placement needs to know about this request, and its conversation keys."""
    size = model_size_gb([c.residency for c in candidates], model, ctx.catalog.size_gb(model))
    turn = chat_turn(model, payload) if payload is not None else None
    prefer = ctx.recently_sent.conversations.get(turn.previous) if turn is not None else None
    saving = 0.0
    if prefer is not None and turn is not None:
        host = next((c for c in candidates if c.node_id == prefer), None)
        rate = host.tokens_per_s if host is not None else 0.0
        saving = saving_s(turn.previous_chars, rate or ctx.generation_rate.value)
    return TaskNeeds(model, est_tokens, hops, size, prefer, saving), turn


def record_turn(ctx: NodeContext, turn: Turn | None, host: str) -> None:
    if turn is not None:
        ctx.recently_sent.conversations.put(turn.key, host)


async def unload_everywhere(
    ctx: NodeContext,
    peers: list[Peer],
    candidates: list[Candidate],
    path: str,
    body: bytes,
    model: str,
    priority: int,
    remaining_s: float = math.inf,
) -> tuple[httpx.Response, str] | None:
    """Send an unload to every peer that has `model` loaded; None if it must also (or
    only) run here, else the last peer's answer (the others' are read and closed)."""
    holders = [
        c.node_id
        for c in candidates
        if c.residency is not None and c.residency.has(model) and not c.is_local
    ]
    local = next((c for c in candidates if c.is_local), None)
    here = (
        local is not None
        and model in local.models
        and (local.residency is None or local.residency.has(model) or not holders)
    )
    last: tuple[httpx.Response, str] | None = None
    for i, node_id in enumerate(holders):
        url = "http://" + (http_addr_of(peers, node_id) or "")
        try:
            upstream = await open_on_peer(
                ctx.peer_client, url, path, body, priority, 0, ctx.settings.cluster_key, remaining_s
            )
        except PeerUnavailable as e:
            log.info("peer could not unload the model", peer=node_id, model=model, reason=str(e))
            continue
        log.info("unload sent to the host that has the model", peer=node_id, model=model)
        if here or i < len(holders) - 1:
            await upstream.aread()
            await upstream.aclose()
        else:
            last = upstream, node_id
    return None if here or last is None else last
