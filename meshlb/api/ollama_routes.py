"""The drop-in Ollama API: the same paths, bodies, streaming and errors as Ollama.

Inference paths become tasks (validated, queued by priority, run when the host has
room, relayed by `RelayResponse`): `meshlb.api.fast_path` serves them, and places them
in the mesh with `place_in_mesh` here. The model lists and the version (here) are
answered from the model catalog and the peers' gossip, or passed to Ollama directly:
they cost Ollama nothing (`/api/ps` and `/api/show` are `meshlb.api.mesh_docs`').
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import structlog
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route as StarletteRoute

from meshlb import __version__
from meshlb.api.errors import ApiError, retry_after
from meshlb.api.peer_auth import PeerAuth
from meshlb.api.ports import Drain, NodeCounters, PeerTable, RequestRules
from meshlb.api.relay import RelayPorts
from meshlb.api.work_errors import ModelCheck
from meshlb.backend.catalog import ModelCatalog
from meshlb.backend.ollama import BackendError, OllamaBackend
from meshlb.events import EventLog
from meshlb.http_client import HttpPool, UpstreamResponse
from meshlb.mesh.forward import PeerUnavailable, open_on_peer
from meshlb.mesh.peer_calls import PeerCalls
from meshlb.mesh.placement import NoHost, RunHere
from meshlb.mesh.placement_service import PlacementService, Reason
from meshlb.mesh.residency_placement import is_unload
from meshlb.mesh.residency_watch import unload_everywhere
from meshlb.model_names import canonical_model
from meshlb.sched.driver import LocalScheduler
from meshlb.telemetry import RequestStats

log = structlog.get_logger()


@dataclass(frozen=True, slots=True)
class MeshPlacement:
    """What `place_in_mesh` uses of the node."""

    node_id: str
    catalog: ModelCatalog
    placement: PlacementService
    mesh: PeerTable  # peers' addresses
    models: ModelCheck  # 404 / 503 when the model cannot run anywhere
    cluster_key: str | None  # signs the forwarded request
    counters: NodeCounters
    log: EventLog  # placement decisions, for the dashboard and /metrics
    calls: PeerCalls  # calls to peers in flight, ended when a peer is declared dead


def _nothing() -> None:
    return None


@dataclass(frozen=True, slots=True)
class OnPeer:
    """A request opened on a peer: its answer (still to read), the peer, and what to
    tell placement once the answer has ended."""

    upstream: UpstreamResponse
    peer: str
    finished: Callable[[], None] = _nothing


@dataclass(frozen=True, slots=True)
class InferencePorts:
    """What serving an inference request uses of the node (`meshlb.api.fast_path`)."""

    node_id: str
    rules: RequestRules
    drain: Drain
    auth: PeerAuth  # a forwarded request must be signed
    scheduler: LocalScheduler
    counters: NodeCounters
    requests: RequestStats  # meshlb_requests_total{route,status}
    relay: RelayPorts  # running it here
    mesh: MeshPlacement  # ... or on a peer


@dataclass(frozen=True, slots=True)
class CatalogPorts:
    """What the model-list and version paths use: the local Ollama and the peers."""

    node_id: str
    catalog: ModelCatalog
    backend: OllamaBackend
    mesh: PeerTable
    started_at_wall: float  # OpenAI's `created` of every model


async def place_in_mesh(
    ctx: MeshPlacement,
    path: str,
    body: bytes,
    model: str,
    est_tokens: int,
    priority: int,
    hops: int,
    exclude: frozenset[str] = frozenset(),
    remaining_s: float = math.inf,
    *,
    peers: HttpPool,
    payload: dict[str, Any] | None = None,
) -> OnPeer | None:
    """Open the request on a better peer and return it (`OnPeer`), or None to run it
    here. The placement service decides; a peer that cannot take the
    request is left out and the service asked again.

    Raises 404 when no member has the model, 503 when every one that has it is down or
    failed; a forwarded request (hops ≥ 1) runs here or is refused, never sent on.
    """
    await ctx.catalog.knows(model)
    if hops == 0 and not exclude and is_unload(payload):  # keep_alive 0: where it is loaded
        candidates = [ctx.placement.local_candidate(), *ctx.placement.peer_candidates()]
        unloaded = await unload_everywhere(
            peers,
            candidates,
            ctx.mesh.address_of,
            canonical_model(model),
            (path, body, priority),
            ctx.cluster_key,
            remaining_s,
            ctx.calls,
        )
        return None if unloaded is None else OnPeer(*unloaded)
    failed = set(exclude)
    known_gb = ctx.catalog.size_gb(model)  # its size on disk, until a host has it loaded
    while True:
        placed = ctx.placement.place(
            model,
            est_tokens,
            hops=hops,
            exclude=frozenset(failed),
            payload=payload,
            known_gb=known_gb,
        )
        decision = placed.decision
        if isinstance(decision, RunHere):
            ctx.log.kept(ctx.node_id, model, decision.eta_s, hops)
            return None
        if isinstance(decision, NoHost):
            if placed.reason is Reason.NO_SECOND_HOP:
                raise ApiError(
                    503, f"node {ctx.node_id} cannot run model '{model}' now", retry_after(1)
                )
            if placed.reason is Reason.EXCLUDED:
                raise ApiError(
                    503,
                    f"every node that has model '{model}' is unreachable "
                    f"right now ({', '.join(sorted(failed))})",
                    retry_after(2),
                )
            await ctx.models.require(model)
            return None
        peer_url = "http://" + (ctx.mesh.address_of(decision.node_id) or "")
        try:
            with ctx.calls.call(decision.node_id) as call:
                upstream = await open_on_peer(
                    peers,
                    peer_url,
                    path,
                    body,
                    priority,
                    hops,
                    ctx.cluster_key,
                    remaining_s,
                )
            if call.cancelled_caught:
                raise PeerUnavailable(f"{peer_url} was declared dead before it answered")
        except PeerUnavailable as e:
            log.info(
                "peer could not take the request, placing again",
                peer=decision.node_id,
                reason=str(e),
            )
            failed.add(decision.node_id)
            continue
        ctx.counters.forwarded += 1
        finished = ctx.placement.sent(decision.node_id, placed.needs)
        log.info(
            "request forwarded",
            peer=decision.node_id,
            model=model,
            eta_s=decision.eta_s,
            local_eta_s=decision.local_eta_s,
            why=placed.reason.value,
        )
        ctx.log.forwarded(decision.node_id, model, decision.eta_s, decision.local_eta_s)
        return OnPeer(upstream, decision.node_id, finished)


def mesh_model_entries(ctx: CatalogPorts) -> list[dict[str, Any]]:
    """`/api/tags` entries: the local Ollama's own, plus models only live peers have.

    Peers gossip model names, not Ollama's full entries, so a remote-only model is
    listed with the fields Ollama always sends, the unknown ones empty.
    """
    entries = {canonical_model(str(e.get("name"))): e for e in ctx.catalog.entries()}
    for peer in ctx.mesh.peers():
        if peer.state != "alive" or peer.node_id == ctx.node_id:
            continue
        for name in peer.models:
            entries.setdefault(
                canonical_model(name),
                {
                    "name": name,
                    "model": name,
                    "modified_at": "1970-01-01T00:00:00Z",
                    "size": 0,
                    "digest": "",
                    "details": {},
                },
            )
    return [entries[name] for name in sorted(entries)]


def tags_handler(ctx: CatalogPorts) -> Any:
    async def handler(request: Request) -> Response:
        if not ctx.catalog.reachable:
            await ctx.catalog.refresh()
        return JSONResponse({"models": mesh_model_entries(ctx)})

    return handler


def openai_model(ctx: CatalogPorts, entry: dict[str, Any]) -> dict[str, Any]:
    """One model in OpenAI's shape, as Ollama's /v1/models lists it."""
    return {
        "id": entry["name"],
        "object": "model",
        "created": int(ctx.started_at_wall),
        "owned_by": "library",
    }


def openai_models_handler(ctx: CatalogPorts) -> Any:
    async def handler(request: Request) -> Response:
        if not ctx.catalog.reachable:
            await ctx.catalog.refresh()
        data = [openai_model(ctx, e) for e in mesh_model_entries(ctx)]
        return JSONResponse({"object": "list", "data": data})

    return handler


def openai_model_handler(ctx: CatalogPorts) -> Any:
    """`GET /v1/models/{model}`: one model of the mesh, 404 (OpenAI's shape) if none has it."""

    async def handler(request: Request) -> Response:
        wanted = canonical_model(request.path_params["model"])
        for entry in mesh_model_entries(ctx):
            if canonical_model(str(entry["name"])) == wanted:
                return JSONResponse(openai_model(ctx, entry))
        raise ApiError(404, f"model '{request.path_params['model']}' not found")

    return handler


def version_handler(ctx: CatalogPorts) -> Any:
    """Ollama's version when it answers (clients gate features on it), else meshlb's."""

    async def handler(request: Request) -> Response:
        try:
            return JSONResponse(await ctx.backend.get_json("/api/version"))
        except BackendError:
            return JSONResponse({"version": f"0.0.0-meshlb-{__version__}"})

    return handler


def ollama_routes(ctx: CatalogPorts) -> list[StarletteRoute]:
    """The model-list and version routes of the Ollama and OpenAI APIs. (The inference
    paths are `meshlb.api.fast_path`'s, ahead of Starlette; ps and show are
    `meshlb.api.mesh_docs`'; pull, push, create, copy, delete, blobs
    `meshlb.api.model_routes`'.)"""
    return [
        StarletteRoute("/api/tags", tags_handler(ctx), methods=["GET"]),
        StarletteRoute("/api/version", version_handler(ctx), methods=["GET"]),
        StarletteRoute("/v1/models", openai_models_handler(ctx), methods=["GET"]),
        StarletteRoute("/v1/models/{model:path}", openai_model_handler(ctx), methods=["GET"]),
    ]
