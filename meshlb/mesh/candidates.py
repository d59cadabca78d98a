"""A member's gossiped metadata as a placement candidate, and the work sent lately.

Which members are candidates (alive, with readable metadata, minus those left out) is
the placement service's (`meshlb.mesh.placement_service`); this module converts one.
Gossiped load is up to an announce interval old. During a burst, every request would
see the same idle peer and all would go there (herding). So each node remembers what
it sent to a peer since that peer's last metadata update (`RecentlySent`, keyed by
the peer's incarnation, which every update bumps) and counts it as queued there.
"""

from __future__ import annotations

from meshlb.mesh.meta import Load, NodeMeta
from meshlb.mesh.placement import Candidate
from meshlb.mesh.residency_placement import residency_of
from meshlb.model_names import canonical_model


def headroom(limit: int | None, used: int) -> int | None:
    return None if limit is None else limit - used


def candidate(node_id: str, meta: NodeMeta, is_local: bool) -> Candidate:
    """A host as placement sees it: one whose Ollama is down can run no model now."""
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
        residency=residency_of(meta),
    )


class RecentlySent:
    """Work this node sent to each peer since the peer last updated its metadata."""

    def __init__(self) -> None:
        self._sent: dict[str, tuple[int, int]] = {}  # node -> (incarnation, count)

    def note(self, node_id: str, incarnation: int, count: int = 1) -> None:
        seen, sent = self._sent.get(node_id, (incarnation, 0))
        self._sent[node_id] = (incarnation, (sent if seen == incarnation else 0) + count)

    def pending(self, node_id: str, incarnation: int) -> int:
        seen, sent = self._sent.get(node_id, (incarnation, 0))
        return sent if seen == incarnation else 0

    def done(self, node_id: str, incarnation: int) -> None:
        """One task sent at `incarnation` ended: it is no longer queued there (the peer's
        metadata of that incarnation never counted it; a newer one counts it no more)."""
        seen, sent = self._sent.get(node_id, (incarnation, 0))
        if seen == incarnation and sent > 0:
            self._sent[node_id] = (seen, sent - 1)
