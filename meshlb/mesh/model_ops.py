"""Mesh model management, the pure part: which hosts an operation targets, and one
merged progress stream out of many hosts' streams.

Why pure: the HTTP fan-out (`meshlb.api.model_routes`) is sockets and streams; what
it decides — which hosts `X-Meshlb-Hosts` names, what the client sees when three hosts
report progress at once, which hosts failed — is table-testable without them.

`X-Meshlb-Hosts` (SPEC, model management):
- `all` (the default, also an empty header): every live host (member alive, its
  Ollama up);
- a count `N` (1 ≤ N ≤ live hosts): hosts that already have the model first (the pull
  refreshes them instead of adding copies), then the most free model memory
  (gossiped memory minus what is loaded) when every candidate gossips its memory,
  else the fewest models, then the least load (queued + running); ties by node id,
  so the same header picks the same hosts for `/api/blobs` and the `/api/create`
  after them;
- comma-separated node ids: exactly those (an unknown id is 400 naming it; a member
  that is not alive, or whose Ollama is down, is 503 naming it).

Merged progress (Ollama's `/api/pull` objects): per digest, `total` is the layer's
size times the number of targets (every host pulls the same layers, so the total is
fixed from the first report) and `completed` is the sum over hosts of what each
reported, so it never goes down; a status without a digest ("pulling manifest",
"verifying sha256 digest", "writing manifest") is sent once: at once while no layer
was reported yet, else when every target still running has reached it. A host's
"success" is held back: the stream ends with one `{"status": "success"}` only when
every target succeeded, else with an error object naming each failed host and why.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

HOSTS_HEADER = "x-meshlb-hosts"
# Header a meshlb client sets to also get each host's own progress objects, with a
# "node" field, interleaved in the merged stream (official clients never send it).
PROGRESS_HEADER = "x-meshlb-progress"
PER_HOST_PROGRESS = "nodes"
MAX_NAME_LEN = 350
_NAME = re.compile(r"^[A-Za-z0-9][\w.\-]*(/[\w.\-]+)*(:[\w.\-]+)?$")
_NODE_ID = re.compile(r"^[^\s,]{1,128}$")


def canonical(name: str) -> str:
    """Ollama's name rule: a model without a tag means `:latest`."""
    return name if ":" in name.rsplit("/", 1)[-1] else f"{name}:latest"


def valid_model_name(name: str) -> bool:
    """Ollama's model-name shape: `[host/][namespace/]model[:tag]`, word characters."""
    return 0 < len(name) < MAX_NAME_LEN and bool(_NAME.match(name))


class TargetError(Exception):
    """`X-Meshlb-Hosts` cannot be honoured; `status` is the HTTP status to answer."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


@dataclass(frozen=True, slots=True)
class Host:
    """What target selection needs to know about one member."""

    node_id: str
    state: str  # gossip state: alive, suspect, dead, left
    ollama_up: bool
    models: frozenset[str] = frozenset()  # canonical names
    free_memory_gb: float | None = None
    load: int = 0  # queued + running

    @property
    def live(self) -> bool:
        return self.state == "alive" and self.ollama_up


def _rank(hosts: Sequence[Host], model: str) -> list[Host]:
    """Hosts best first for a count: having the model, free memory or fewest models, load."""
    by_memory = all(h.free_memory_gb is not None for h in hosts)

    def key(h: Host) -> tuple[int, float, int, str]:
        room = -(h.free_memory_gb or 0.0) if by_memory else float(len(h.models))
        return (0 if model in h.models else 1, room, h.load, h.node_id)

    return sorted(hosts, key=key)


def select_targets(header: str | None, hosts: Sequence[Host], model: str = "") -> list[str]:
    """Node ids `X-Meshlb-Hosts` names among `hosts`, in a stable order.

    Raises TargetError: 400 malformed or unknown id, 422 a count above the live
    hosts, 503 a named host that is down or no live host at all."""
    text = (header or "").strip()
    live = [h for h in hosts if h.live]
    wanted = canonical(model) if model else ""
    if text.lower() in ("", "all"):
        if not live:
            raise TargetError(503, "no live host with a reachable Ollama in the mesh right now")
        return sorted(h.node_id for h in live)
    if text.isascii() and text.isdigit():
        count = int(text)
        if count < 1:
            raise TargetError(400, "X-Meshlb-Hosts: a count of hosts must be at least 1")
        if count > len(live):
            raise TargetError(
                422,
                f"X-Meshlb-Hosts asks for {count} hosts but only {len(live)} "
                f"{'is' if len(live) == 1 else 'are'} live "
                f"({', '.join(sorted(h.node_id for h in live)) or 'none'})",
            )
        return [h.node_id for h in _rank(live, wanted)[:count]]
    return _named(text, hosts)


def _named(text: str, hosts: Sequence[Host]) -> list[str]:
    ids = [part.strip() for part in text.split(",")]
    if any(not _NODE_ID.match(i) for i in ids):
        raise TargetError(
            400,
            f"X-Meshlb-Hosts must be 'all', a count, or comma-separated node ids, "
            f"not {text[:100]!r}",
        )
    by_id = {h.node_id: h for h in hosts}
    unknown = [i for i in ids if i not in by_id]
    if unknown:
        raise TargetError(
            400,
            f"X-Meshlb-Hosts names {'an unknown node' if len(unknown) == 1 else 'unknown nodes'}: "
            f"{', '.join(unknown)} (members: {', '.join(sorted(by_id))})",
        )
    down = [i for i in ids if not by_id[i].live]
    if down:
        reasons = [
            f"{i} ({'its Ollama is down' if by_id[i].state == 'alive' else by_id[i].state})"
            for i in down
        ]
        raise TargetError(503, f"X-Meshlb-Hosts names hosts that are down: {', '.join(reasons)}")
    return list(dict.fromkeys(ids))


def hosts_with(model: str, hosts: Sequence[Host]) -> list[str]:
    """Live hosts that have `model`, by node id (delete, copy, push go there)."""
    wanted = canonical(model)
    return sorted(h.node_id for h in hosts if h.live and wanted in h.models)


@dataclass(slots=True)
class _Layer:
    total: int
    completed: dict[str, int] = field(default_factory=dict)


class ProgressMerger:
    """Many hosts' progress objects in, one Ollama-shaped stream out.

    `feed(host, event)` returns the merged objects to send now; `end(host, reason)`
    says a host's stream ended (reason None: it succeeded). `final()` is the last
    object: success only when every target succeeded."""

    def __init__(self, hosts: Sequence[str], verb: str = "pull") -> None:
        self.hosts = list(hosts)
        self.verb = verb
        self.failed: dict[str, str] = {}
        self.succeeded: set[str] = set()
        self._layers: dict[str, _Layer] = {}
        self._statuses: dict[str, set[str]] = {}  # status -> hosts that reached it
        self._sent_statuses: set[str] = set()

    def running(self) -> list[str]:
        return [h for h in self.hosts if h not in self.failed and h not in self.succeeded]

    def feed(self, host: str, event: dict[str, Any]) -> list[dict[str, Any]]:
        if host in self.failed or host in self.succeeded:
            return []
        if "error" in event:
            return self.end(host, str(event["error"]))
        status = str(event.get("status", ""))
        if status == "success":
            return self.end(host, None)
        digest = event.get("digest")
        if isinstance(digest, str) and digest:
            return [self._layer_event(host, status, digest, event)]
        self._statuses.setdefault(status, set()).add(host)
        if not self._layers and status not in self._sent_statuses:
            # before any layer ("pulling manifest"): say it at once, not at the slowest host
            self._sent_statuses.add(status)
            return [{"status": status}]
        return self._due_statuses()

    def _layer_event(
        self, host: str, status: str, digest: str, event: dict[str, Any]
    ) -> dict[str, Any]:
        total = event.get("total")
        layer = self._layers.get(digest)
        if layer is None:
            layer = self._layers[digest] = _Layer(total if isinstance(total, int) else 0)
        done = event.get("completed")
        if isinstance(done, int):
            # a host's own figure only grows (a retry restarting a layer stays hidden)
            layer.completed[host] = max(layer.completed.get(host, 0), min(done, layer.total))
        merged: dict[str, Any] = {
            "status": status,
            "digest": digest,
            "total": layer.total * len(self.hosts),
        }
        if layer.completed:
            merged["completed"] = sum(layer.completed.values())
        return merged

    def _due_statuses(self) -> list[dict[str, Any]]:
        """Digest-less statuses every running host has reached, once each, in order."""
        running = set(self.running())
        out = []
        for status, reached in self._statuses.items():
            if status in self._sent_statuses or not running or not running <= reached:
                continue
            self._sent_statuses.add(status)
            out.append({"status": status})
        return out

    def end(self, host: str, reason: str | None) -> list[dict[str, Any]]:
        """A host's stream ended: reason None means it succeeded."""
        if host in self.failed or host in self.succeeded:
            return []
        if reason is None:
            self.succeeded.add(host)
        else:
            self.failed[host] = reason
        return self._due_statuses()

    def done(self) -> bool:
        return not self.running()

    def final(self) -> dict[str, Any]:
        """`{"status": "success"}` if every target succeeded, else the error object."""
        if not self.failed and set(self.hosts) <= self.succeeded:
            return {"status": "success"}
        return {"error": failure_sentence(self.verb, self.failed, self.succeeded)}


def failure_sentence(verb: str, failed: dict[str, str], succeeded: set[str]) -> str:
    """ "pull failed on n1 (reason); n2 (reason)", plus which hosts did finish."""
    reasons = set(failed.values())
    if len(failed) > 1 and len(reasons) == 1:
        text = f"{verb} failed on {', '.join(sorted(failed))}: {reasons.pop()}"
    else:
        text = f"{verb} failed on " + "; ".join(f"{h} ({failed[h]})" for h in sorted(failed))
    if succeeded:
        text += f"; it succeeded on {', '.join(sorted(succeeded))}"
    return text
