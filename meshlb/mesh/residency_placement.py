"""Residency as placement's input: what each host has loaded, a task's model size and
conversation host, and which requests are unloads (pure).

- `residency_of`: a host's residency as its metadata gossips it (`candidate` reads it).
- `SentModels` / `with_sent`: what this node sent each peer since its last update
  counts as loaded there (a burst of one cold model must not start a load on every
  host before gossip says where it went).
- `task_needs`: the model's size (what a host has loaded, else the local catalog's
  size on disk) and, for a chat that extends an earlier one, the host that served it
  and the prompt evaluation its cache saves there (`meshlb.mesh.affinity`).
- `is_unload`: a request with `keep_alive: 0` and nothing to run is Ollama's unload;
  it goes to every host that has the model loaded, not to one placement pick. A load
  (an empty prompt otherwise) is placed like any request: where the model is loaded if
  anywhere, else where a load costs least.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

from meshlb.mesh.affinity import ConversationMap, Served, Turn, chat_turn, saving_s, survival
from meshlb.mesh.meta import NodeMeta
from meshlb.mesh.placement import Candidate, TaskNeeds
from meshlb.mesh.residency import Residency, Resident, model_size_gb
from meshlb.model_names import canonical_model


def residency_of(meta: NodeMeta) -> Residency | None:
    """A host's gossiped residency (None: it gossips none, or its Ollama is down). The
    host itself leaves out models past their expiry (`residency_watch.gossiped`)."""
    if meta.resident is None or not meta.ollama_up:
        return None
    loaded = tuple(replace(r, model=canonical_model(r.model)) for r in meta.resident)
    return Residency(loaded, meta.memory_gb, meta.load_gbps)


class SentModels:
    """Requests per model this node sent each peer since the peer's last metadata
    update (its incarnation): the peer has them loaded, or is loading them, already."""

    def __init__(self) -> None:
        self._sent: dict[str, tuple[int, dict[str, Resident]]] = {}

    def note(self, node_id: str, incarnation: int, model: str, size_gb: float) -> None:
        seen, models = self._sent.get(node_id, (incarnation, {}))
        models = models if seen == incarnation else {}
        was = models.get(model, Resident(model, size_gb))
        models[model] = replace(was, active=was.active + 1, served=was.served + 1)
        self._sent[node_id] = (incarnation, models)

    def done(self, node_id: str, incarnation: int, model: str) -> None:
        """A request sent at `incarnation` ended: the model stays loaded there (it ran)
        and it stays started, but it is no longer in hand."""
        seen, models = self._sent.get(node_id, (incarnation, {}))
        was = models.get(model)
        if seen == incarnation and was is not None and was.active > 0:
            models[model] = replace(was, active=was.active - 1)

    def pending(self, node_id: str, incarnation: int) -> list[Resident]:
        """Per model sent there since that update: its size and how many requests."""
        seen, models = self._sent.get(node_id, (incarnation, {}))
        return list(models.values()) if seen == incarnation else []


def with_sent(res: Residency | None, sent: Sequence[Resident]) -> Residency | None:
    """`res` with the models sent there since its last update counted as loaded (in
    their memory), busy and started."""
    if res is None or not sent:
        return res
    loaded = {r.model: r for r in res.loaded}
    for s in sent:
        r = loaded.get(s.model) or replace(s, active=0, served=0)
        loaded[s.model] = replace(r, active=r.active + s.active, served=r.served + s.served)
    return replace(res, loaded=tuple(loaded.values()))


def is_empty_prompt(payload: Mapping[str, Any] | None) -> bool:
    """Nothing to generate: Ollama's load (or, with keep_alive 0, unload) request."""
    if payload is None or "input" in payload:
        return False
    if "messages" in payload:
        return not payload["messages"]
    return not payload.get("prompt")


def is_unload(payload: Mapping[str, Any] | None) -> bool:
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
    task: TaskNeeds,
    candidates: Sequence[Candidate],
    payload: Mapping[str, Any] | None,
    conversations: ConversationMap | None,
    known_gb: float | None = None,
) -> tuple[TaskNeeds, Turn | None]:
    """`task` with its model's size and conversation host, and the turn's keys (to
    record where it ran). `conversations` None: affinity off."""
    size = model_size_gb([c.residency for c in candidates], task.model, known_gb)
    turn = chat_turn(task.model, payload) if payload is not None else None
    seen = conversations.get(turn.previous) if turn and conversations is not None else None
    saving = 0.0
    if seen is not None and turn is not None:
        host = next((c for c in candidates if c.node_id == seen.host), None)
        rates = sorted(c.tokens_per_s for c in candidates if c.tokens_per_s > 0)
        rate = host.tokens_per_s if host is not None and host.tokens_per_s > 0 else 0.0
        saving = saving_s(turn.previous_chars, rate or (rates[len(rates) // 2] if rates else 0))
        saving *= cached_chance(host, task.model, seen)
    prefer = seen.host if seen is not None else None
    return replace(task, size_gb=size, prefer=prefer, prefer_saving_s=saving), turn


def cached_chance(host: Candidate | None, model: str, seen: Served) -> float:
    """How likely the turn's prefix is still cached on its host: 0 when the host no
    longer has the model loaded; 1 when it gossips no residency (nothing to go by);
    else by the requests it started for the model since (`affinity.survival`)."""
    if host is None or host.residency is None:
        return 1.0
    resident = host.residency.resident(model)
    return 0.0 if resident is None else survival(seen.served, resident.served)


def served_on(host: Candidate | None, model: str) -> Served | None:
    """Where a turn is going and that host's started-request count for its model."""
    if host is None:
        return None
    resident = host.residency.resident(model) if host.residency is not None else None
    return Served(host.node_id, resident.served if resident is not None else 0)
