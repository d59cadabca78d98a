"""Can the mesh run a model right now, and if not, is that 503 or 404? (pure)

SPEC: any node accepts work for a model that any live member has; 404 only when no
member has it; 503 with Retry-After when every member that has it is down right now.
"Down" covers a member whose Ollama does not answer (it still gossips its last known
models, flagged) and a member gossip suspects or has declared dead but not reaped
(its models come back with it). A member that left gracefully took its models along.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from meshlb.mesh.view import Peer
from meshlb.model_names import canonical_model

STATES_THAT_MAY_COME_BACK = frozenset({"suspect", "dead"})


@dataclass(frozen=True, slots=True)
class ModelAvailability:
    """Who could run `model` now, and who has it but is down (with why)."""

    model: str
    runnable_on: tuple[str, ...]
    down: tuple[tuple[str, str], ...]  # (node id, reason)

    @property
    def runnable(self) -> bool:
        return bool(self.runnable_on)

    @property
    def known(self) -> bool:
        return self.runnable or bool(self.down)


def model_availability(model: str, peers: Sequence[Peer]) -> ModelAvailability:
    """Classify every member for `model` (canonical or not); this node is in `peers`."""
    wanted = canonical_model(model)
    runnable: list[str] = []
    down: list[tuple[str, str]] = []
    for p in peers:
        if p.meta is None or wanted not in {canonical_model(m) for m in p.meta.models}:
            continue
        if p.state in STATES_THAT_MAY_COME_BACK:
            down.append((p.node_id, f"node {p.state}"))
        elif p.state != "alive":
            continue
        elif not p.meta.ollama_up:
            down.append((p.node_id, "Ollama unreachable"))
        else:
            runnable.append(p.node_id)
    return ModelAvailability(wanted, tuple(runnable), tuple(down))
