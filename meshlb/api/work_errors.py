"""The errors of "can the mesh take this work": model availability and a full queue.

Shared by the Ollama-API routes, the task API and `/api/show`, so a model only a
peer has, a model whose every host is down, and a model nobody has get the same
answer (200 / 503 + Retry-After / 404) on every path.
"""

from __future__ import annotations

from dataclasses import dataclass

from meshlb.api.errors import ApiError, retry_after
from meshlb.api.ports import PeerTable
from meshlb.backend.catalog import ModelCatalog
from meshlb.mesh.availability import model_availability
from meshlb.sched.driver import Refused


def refused_to_error(refused: Refused) -> ApiError:
    """Scheduler refusals as HTTP: full queue 503 + Retry-After, never-fits 422."""
    if refused.reason == "queue_full":
        return ApiError(503, refused.message, retry_after(refused.retry_after_s or 1.0))
    if refused.reason == "never_fits":
        return ApiError(422, refused.message)
    return ApiError(409, refused.message)


@dataclass(frozen=True, slots=True)
class ModelCheck:
    """Whether the mesh can run a model now: the local catalog and the peers' lists."""

    catalog: ModelCatalog
    peers: PeerTable
    ollama_url: str  # the local Ollama, named when it cannot be read

    async def require(self, model: str) -> None:
        """Return if some live member can run `model` now; else 503 when every member
        that has it is down (Retry-After), 404 when no member has it (as Ollama says)."""
        await self.catalog.knows(model)  # a model pulled here a second ago counts
        found = model_availability(model, self.peers.peers())
        if found.runnable:
            return
        if found.known:
            where = "; ".join(f"{node}: {why}" for node, why in found.down)
            raise ApiError(
                503,
                f"every node that has model '{model}' is down right now ({where}); "
                "try again shortly",
                retry_after(5),
            )
        if not self.catalog.ever_read:
            raise ApiError(
                503,
                f"the Ollama at {self.ollama_url} {self.catalog.last_error}, so this node "
                f"cannot tell whether it has model '{model}'; try again shortly",
                retry_after(5),
            )
        raise ApiError(404, f"model '{model}' not found")
