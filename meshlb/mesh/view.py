"""The mesh as this node sees it: gossip members joined with their decoded metadata.

`/v1/peers`, `/v1/cluster`, the model union of `/api/tags` and placement all
read this one view, so they agree with each other.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from meshlb.mesh.meta import Load, NodeMeta, decode_meta


class MemberLike(Protocol):
    """What the gossip layer reports per member (meshlb.gossip's MemberView)."""

    @property
    def node_id(self) -> str: ...
    @property
    def addr(self) -> tuple[str, int]: ...
    @property
    def state(self) -> str: ...
    @property
    def incarnation(self) -> int: ...
    @property
    def last_change_at(self) -> float: ...
    @property
    def meta(self) -> bytes: ...


@dataclass(frozen=True, slots=True)
class Peer:
    """One member with its metadata decoded (meta None when it was unreadable)."""

    node_id: str
    gossip_addr: str
    state: str
    incarnation: int
    last_change_wall: float
    meta: NodeMeta | None

    @property
    def models(self) -> tuple[str, ...]:
        return self.meta.models if self.meta else ()

    @property
    def load(self) -> Load:
        return self.meta.load if self.meta else Load()

    def to_public(self) -> dict[str, Any]:
        """The JSON shape SPEC.md gives for `GET /v1/peers`."""
        load = self.load
        return {
            "id": self.node_id,
            "gossip_addr": self.gossip_addr,
            "http_addr": self.meta.http_addr if self.meta else None,
            "state": self.state,
            "incarnation": self.incarnation,
            "last_change": self.last_change_wall,
            "models": list(self.models),
            "models_truncated": bool(self.meta and self.meta.models_truncated),
            "ollama_up": self.meta.ollama_up if self.meta else None,
            "load": {
                "queued": load.queued,
                "running": load.running,
                "max_concurrency": load.max_concurrency,
                "rpm_used": load.rpm_used,
                "rpm_limit": load.rpm_limit,
                "tpm_used": load.tpm_used,
                "tpm_limit": load.tpm_limit,
                "tokens_per_s": load.tokens_per_s,
            },
            "counters": self.counters(),
        }

    def counters(self) -> dict[str, int]:
        moves = self.meta.moves if self.meta else None
        return {
            "forwarded": moves.forwarded if moves else 0,
            "stolen": moves.stolen if moves else 0,
            "taken_over": moves.taken_over if moves else 0,
            "duplicates_dropped": moves.duplicates_dropped if moves else 0,
        }


def peers_from_members(
    members: Sequence[MemberLike], trio_now: float, wall_now: float
) -> list[Peer]:
    """Decode every member; gossip times (Trio clock) become wall-clock seconds
    (both clocks are read by the caller: this module reads none)."""
    return [
        Peer(
            node_id=m.node_id,
            gossip_addr=f"{m.addr[0]}:{m.addr[1]}",
            state=m.state,
            incarnation=m.incarnation,
            last_change_wall=wall_now - max(0.0, trio_now - m.last_change_at),
            meta=decode_meta(m.meta),
        )
        for m in members
    ]


def cluster_totals(peers: Sequence[Peer]) -> dict[str, Any]:
    """Mesh-wide totals over live members (alive or suspect: suspects may still work)."""
    live = [p for p in peers if p.state in ("alive", "suspect")]
    models = sorted({m for p in live for m in p.models})
    return {
        "members": len(peers),
        "live": len(live),
        "by_state": {
            s: sum(1 for p in peers if p.state == s) for s in ("alive", "suspect", "dead", "left")
        },
        "queued": sum(p.load.queued for p in live),
        "running": sum(p.load.running for p in live),
        "max_concurrency": sum(p.load.max_concurrency or 0 for p in live),
        "tokens_per_s": round(sum(p.load.tokens_per_s for p in live), 1),
        "models": models,
        "counters": {
            k: sum(p.counters()[k] for p in live)
            for k in ("forwarded", "stolen", "taken_over", "duplicates_dropped")
        },
    }


class MembershipSource(Protocol):
    """The gossip driver as the mesh view needs it."""

    @property
    def joined(self) -> bool: ...

    def members(self) -> Sequence[MemberLike]: ...

    def update_meta(self, meta: bytes) -> None:
        """Gossip this node's new metadata now."""
        ...

    @property
    def dropped(self) -> Mapping[str, int]:
        """Gossip packets dropped so far, by reason."""
        ...
