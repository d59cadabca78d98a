"""Which models the local Ollama has, kept fresh from `/api/tags`.

Why a cache: every request is checked against it (404 for an unknown model) and the
list is gossiped to peers, so it must be cheap to read. It is refreshed on a timer and,
at most once per `min_miss_refresh_s`, when a request names a model it does not know
(so a model pulled a second ago works without waiting for the timer).

`LocalResidency` does the same for `/api/ps` (which models are loaded, their size and
expiry): read on a timer and right after an answer (a request may have loaded or
evicted a model), at most every `min_interval_s`. When what it read changes what the
mesh should know (the loaded models, the load rate) it kicks `changed`, so the node
gossips it at once instead of at its next announce round: until peers know where a
model went, each of them may start loading it somewhere else.

It reads only what real Ollama reports: `/api/ps` entries and the `load_duration` of
answers (its load rate is measured from cold loads: the loaded size over the longest
load_duration since the last read; a model that appeared and answered with
load_duration ~0 shows a host that loads instantly).
"""

from __future__ import annotations

import math
import re
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import structlog
import trio

from meshlb.backend.ollama import BackendError, OllamaBackend
from meshlb.drivers.wakeup import Wakeup
from meshlb.mesh.residency import INSTANT_GBPS
from meshlb.model_names import canonical_model

log = structlog.get_logger()
GB = 1_000_000_000
# A load_duration above this is a cold load (below: the model was loaded already).
COLD_LOAD_S = 0.1
# A model gone more than this before its expiry was evicted (not expired).
EXPIRY_SLACK_S = 5.0
_LOAD_DURATION_RE = re.compile(rb'"load_duration"\s*:\s*(\d{1,20})')
_FRACTION_RE = re.compile(r"(\.\d{6})\d+")


class ModelCatalog:
    """The local Ollama's models (`/api/tags` entries) and whether it answered lately."""

    def __init__(
        self, backend: OllamaBackend, refresh_s: float = 10.0, min_miss_refresh_s: float = 2.0
    ) -> None:
        self._backend = backend
        self._refresh_s = refresh_s
        self._min_miss_refresh_s = min_miss_refresh_s
        self._entries: dict[str, dict[str, Any]] = {}
        self._last_refresh_at = -1e9
        self.reachable = False
        self.last_error: str | None = None
        # False until Ollama answered once: before that, which models it has is unknown.
        self.ever_read = False
        self.residency = LocalResidency(backend)

    @property
    def names(self) -> list[str]:
        return sorted(self._entries)

    def entries(self) -> list[dict[str, Any]]:
        return [self._entries[n] for n in sorted(self._entries)]

    def has(self, model: str) -> bool:
        return canonical_model(model) in self._entries

    def size_gb(self, model: str) -> float | None:
        """The model's size on disk in GB, as `/api/tags` lists it (None if unknown):
        what placement takes as its memory size until a host has it loaded."""
        size = self._entries.get(canonical_model(model), {}).get("size")
        return size / GB if isinstance(size, int) and size > 0 else None

    async def refresh(self) -> None:
        """Re-read `/api/tags`; on failure keep the old list and remember why."""
        self._last_refresh_at = trio.current_time()
        try:
            data = await self._backend.get_json("/api/tags")
        except BackendError as e:
            if self.reachable or self.last_error != e.reason:
                log.warning("ollama unreachable", url=self._backend.base_url, reason=e.reason)
            self.reachable, self.last_error = False, e.reason
            return
        models = data.get("models", []) if isinstance(data, dict) else []
        entries = {
            canonical_model(str(m.get("name") or m.get("model"))): m
            for m in models
            if isinstance(m, dict) and (m.get("name") or m.get("model"))
        }
        if not self.reachable or set(entries) != set(self._entries):
            log.info("ollama models", url=self._backend.base_url, models=sorted(entries))
        self._entries, self.reachable, self.last_error = entries, True, None
        self.ever_read = True

    async def knows(self, model: str) -> bool:
        """True if the model is present, refreshing once on a miss (rate-limited)."""
        if self.has(model):
            return True
        if trio.current_time() - self._last_refresh_at >= self._min_miss_refresh_s:
            await self.refresh()
        return self.has(model)

    async def run(self) -> None:
        """Refresh forever on the timer."""
        while True:
            await self.refresh()
            await trio.sleep(self._refresh_s)


@dataclass(frozen=True, slots=True)
class LoadedModel:
    """One `/api/ps` entry: a model loaded on the local Ollama."""

    name: str  # canonical
    size_bytes: int
    expires_at: float  # unix seconds (inf when Ollama shows none)


def parse_expiry(text: object) -> float:
    """Go's RFC 3339 time (nanoseconds, `Z` or an offset) as unix seconds; inf if not."""
    if not isinstance(text, str) or not text:
        return math.inf
    try:
        return datetime.fromisoformat(
            _FRACTION_RE.sub(r"\1", text.replace("Z", "+00:00"))
        ).timestamp()
    except ValueError:
        return math.inf


def parse_ps(doc: object) -> list[LoadedModel]:
    """The loaded models of an `/api/ps` answer (malformed entries are skipped)."""
    models = doc.get("models") if isinstance(doc, dict) else None
    out = []
    for m in models if isinstance(models, list) else []:
        if not isinstance(m, dict) or not (m.get("name") or m.get("model")):
            continue
        size = m.get("size")
        out.append(
            LoadedModel(
                canonical_model(str(m.get("name") or m.get("model"))),
                size if isinstance(size, int) and size >= 0 else 0,
                parse_expiry(m.get("expires_at")),
            )
        )
    return out


def load_duration_s(tail: bytes) -> float | None:
    """`load_duration` (seconds) from the end of an Ollama answer, if it has one."""
    found = _LOAD_DURATION_RE.findall(tail)
    return int(found[-1]) / 1e9 if found else None


class LocalResidency:
    """What the local Ollama has loaded, the most it was seen holding, its load rate,
    and the requests for each model this node has in hand (queued or running)."""

    def __init__(
        self,
        backend: OllamaBackend,
        refresh_s: float = 5.0,
        min_interval_s: float = 0.5,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self._backend = backend
        self._refresh_s = refresh_s
        self._min_interval_s = min_interval_s
        self._wall = wall
        self.loaded: dict[str, LoadedModel] = {}
        self.known = False  # /api/ps answered at least once
        self.max_seen_bytes = 0
        self.load_gbps: float | None = None
        self.active: Counter[str] = Counter()
        self.served: Counter[str] = Counter()  # requests started per model, ever
        self.evicted_seen = False
        # The longest load_duration per model of the answers since the last read: a
        # warm answer right after the cold one must not hide the load it follows.
        self._timed: dict[str, float] = {}
        self._answered = Wakeup()
        self.changed = Wakeup()  # kicked when the loaded models or the load rate change

    def begin(self, model: str) -> None:
        name = canonical_model(model)
        self.active[name] += 1
        self.served[name] += 1

    def end(self, model: str, tail: bytes = b"") -> None:
        """An answer for `model` ended: count it out, learn the load rate from its
        load_duration, and have `/api/ps` read again soon."""
        name = canonical_model(model)
        self.active[name] -= 1
        if self.active[name] <= 0:
            del self.active[name]
        took_s = load_duration_s(tail) if tail else None
        if took_s is not None:  # its size comes with the next /api/ps read
            self._timed[name] = max(took_s, self._timed.get(name, 0.0))
        self._answered.kick()

    def observe_load(self, size_bytes: int, took_s: float) -> None:
        rate = size_bytes / GB / took_s
        self.load_gbps = rate if self.load_gbps is None else 0.7 * self.load_gbps + 0.3 * rate

    def apply(self, models: list[LoadedModel], now: float | None = None) -> None:
        """A fresh `/api/ps`. A model that vanished before its expiry while another
        appeared was evicted for it: memory is full at the most seen loaded at once,
        which is then the learned memory (until then none is assumed)."""
        wall = self._wall() if now is None else now
        before = (set(self.loaded), self.load_gbps)
        new = {m.name: m for m in models}
        appeared = set(new) - set(self.loaded)
        gone = [m for n, m in self.loaded.items() if n not in new]
        if self.known and appeared and any(m.expires_at > wall + EXPIRY_SLACK_S for m in gone):
            self.evicted_seen = True
        for name, took_s in self._timed.items():
            m = new.get(name)
            if m is None or not m.size_bytes:
                continue
            if took_s > COLD_LOAD_S:
                self.observe_load(m.size_bytes, took_s)
            elif name in appeared and self.known:  # loaded for that answer in ~0 s
                self.load_gbps = INSTANT_GBPS
        self._timed.clear()
        self.max_seen_bytes = max(self.max_seen_bytes, sum(m.size_bytes for m in models))
        self.loaded, self.known = new, True
        if (set(new), self.load_gbps) != before:
            self.changed.kick()

    def learned_memory_gb(self) -> float | None:
        """The most seen loaded at once, once an eviction showed memory is that full."""
        if not self.evicted_seen or not self.max_seen_bytes:
            return None
        return self.max_seen_bytes / GB

    async def read(self) -> None:
        """Re-read `/api/ps`; on failure keep what was known."""
        try:
            doc = await self._backend.get_json("/api/ps")
        except BackendError:
            return
        self.apply(parse_ps(doc))

    async def run(self) -> None:
        """Forever: read on the timer and after answers (at most every min_interval_s;
        an answer that ends meanwhile is read at the end of that pause)."""
        while True:
            self._answered.rearm()
            await self.read()
            await trio.sleep(self._min_interval_s)
            await self._answered.sleep_until(
                trio.current_time() + self._refresh_s - self._min_interval_s
            )
