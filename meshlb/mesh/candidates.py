"""Placement candidates from the mesh view: live members with readable metadata.

Gossiped load is up to an announce interval old. During a burst, every request would
see the same idle peer and all would go there (herding). So each node remembers what
it sent to a peer since that peer's last metadata update (`RecentlySent`, keyed by
the peer's incarnation, which every update bumps) and counts it as queued there;
a model it sent there counts as loaded there (the peer is loading it), so a burst of
one cold model does not start a load on every host before gossip says where it went.

Residency is gossiped with wall-clock expiry: a loaded model past its expiry with no
request for it is treated as gone (Ollama has unloaded it, or is about to).
"""

from __future__ import annotations

from dataclasses import replace

from meshlb.backend.catalog import canonical_model
from meshlb.mesh.affinity import ConversationMap
from meshlb.mesh.meta import Load, NodeMeta
from meshlb.mesh.placement import Candidate
from meshlb.mesh.residency import Residency, Resident
from meshlb.mesh.view import Peer


def headroom(limit: int | None, used: int) -> int | None:
    return None if limit is None else limit - used


def residency_of(meta: NodeMeta, now: float | None = None) -> Residency | None:
    """The host's residency as placement prices it (None: the host gossips none)."""
    if meta.resident is None or not meta.ollama_up:
        return None
    loaded = tuple(
        Resident(canonical_model(r.model), r.size_gb, r.active, r.expires_at)
        for r in meta.resident
        if now is None or r.active > 0 or r.expires_at >= now
    )
    return Residency(loaded, meta.memory_gb, meta.load_gbps)


def candidate(node_id: str, meta: NodeMeta, is_local: bool, now: float | None = None) -> Candidate:
    """A host as placement sees it: one whose Ollama is down can run no model now;
    `now` (wall clock) drops loaded models past their expiry."""
    load: Load = meta.load
    return Candidate(
        node_id=node_id,
        models=frozenset(canonical_model(m) for m in meta.models)
        if meta.ollama_up
        else frozenset(),
        queued=load.queued,
        running=load.running,
        max_concurrency=load.max_concurrency,
        tokens_per_s=load.tokens_per_s,
        rpm_headroom=headroom(load.rpm_limit, load.rpm_used),
        tpm_headroom=headroom(load.tpm_limit, load.tpm_used),
        is_local=is_local,
        residency=residency_of(meta, now),
    )


class RecentlySent:
    """Work this node sent to each peer since the peer last updated its metadata, and
    where it placed each recent conversation (`meshlb.mesh.affinity`)."""

    def __init__(self) -> None:
        self.conversations = ConversationMap()
        self._sent: dict[str, tuple[int, int]] = {}  # node -> (incarnation, count)
        self._models: dict[str, tuple[int, dict[str, int]]] = {}  # node -> (inc, model -> n)

    def note(
        self, node_id: str, incarnation: int, count: int = 1, model: str | None = None
    ) -> None:
        seen, sent = self._sent.get(node_id, (incarnation, 0))
        self._sent[node_id] = (incarnation, (sent if seen == incarnation else 0) + count)
        if model is not None:
            seen_m, models = self._models.get(node_id, (incarnation, {}))
            models = dict(models) if seen_m == incarnation else {}
            models[model] = models.get(model, 0) + count
            self._models[node_id] = (incarnation, models)

    def pending(self, node_id: str, incarnation: int) -> int:
        seen, sent = self._sent.get(node_id, (incarnation, 0))
        return sent if seen == incarnation else 0

    def pending_models(self, node_id: str, incarnation: int) -> dict[str, int]:
        """Requests per model sent to the peer since its last metadata update."""
        seen, models = self._models.get(node_id, (incarnation, {}))
        return dict(models) if seen == incarnation else {}


def with_sent(c: Candidate, extra: int, models: dict[str, int]) -> Candidate:
    """`c` with what this node sent it since its last update: queued there, and the
    models loaded (or loading) there."""
    res = c.residency
    if res is not None and models:
        loaded = {r.model: r for r in res.loaded}
        for model, n in models.items():
            r = loaded.get(model) or Resident(model, 0.0)
            loaded[model] = replace(r, active=r.active + n)
        res = replace(res, loaded=tuple(loaded.values()))
    return replace(c, queued=c.queued + extra, residency=res)


def candidates_from_peers(
    peers: list[Peer],
    local_id: str,
    sent: RecentlySent | None = None,
    now: float | None = None,
) -> list[Candidate]:
    """Alive members only: a suspect may be dead, and sending work there risks a hang.
    `now` is wall-clock time, for the expiry of gossiped loaded models."""
    out = []
    for p in peers:
        if p.meta is None or (p.state != "alive" and p.node_id != local_id):
            continue
        c = candidate(p.node_id, p.meta, p.node_id == local_id, now)
        extra = sent.pending(p.node_id, p.incarnation) if sent is not None else 0
        models = sent.pending_models(p.node_id, p.incarnation) if sent is not None else {}
        out.append(with_sent(c, extra, models) if extra or models else c)
    return out


def with_local_residency(candidates: list[Candidate], res: Residency | None) -> list[Candidate]:
    """The local candidate with this node's own, fresher residency (not its gossip)."""
    if res is None:
        return candidates
    return [replace(c, residency=res) if c.is_local and c.models else c for c in candidates]


def incarnation_of(peers: list[Peer], node_id: str) -> int:
    return next((p.incarnation for p in peers if p.node_id == node_id), 0)


def http_addr_of(peers: list[Peer], node_id: str) -> str | None:
    for p in peers:
        if p.node_id == node_id and p.meta is not None:
            return p.meta.http_addr
    return None
