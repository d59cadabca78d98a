"""Placement candidates from the mesh view: live members with readable metadata."""

from __future__ import annotations

from meshlb.backend.catalog import canonical_model
from meshlb.mesh.meta import Load, NodeMeta
from meshlb.mesh.placement import Candidate
from meshlb.mesh.view import Peer


def headroom(limit: int | None, used: int) -> int | None:
    return None if limit is None else limit - used


def candidate(node_id: str, meta: NodeMeta, is_local: bool) -> Candidate:
    load: Load = meta.load
    return Candidate(
        node_id=node_id,
        models=frozenset(canonical_model(m) for m in meta.models),
        queued=load.queued,
        running=load.running,
        max_concurrency=load.max_concurrency,
        tokens_per_s=load.tokens_per_s,
        rpm_headroom=headroom(load.rpm_limit, load.rpm_used),
        tpm_headroom=headroom(load.tpm_limit, load.tpm_used),
        is_local=is_local,
    )


def candidates_from_peers(peers: list[Peer], local_id: str) -> list[Candidate]:
    """Alive members only: a suspect may be dead, and sending work there risks a hang."""
    return [
        candidate(p.node_id, p.meta, p.node_id == local_id)
        for p in peers
        if p.meta is not None and (p.state == "alive" or p.node_id == local_id)
    ]


def http_addr_of(peers: list[Peer], node_id: str) -> str | None:
    for p in peers:
        if p.node_id == node_id and p.meta is not None:
            return p.meta.http_addr
    return None
