"""Which models the local Ollama has, kept fresh from `/api/tags`.

Why a cache: every request is checked against it (404 for an unknown model) and the
list is gossiped to peers, so it must be cheap to read. It is refreshed on a timer and,
at most once per `min_miss_refresh_s`, when a request names a model it does not know
(so a model pulled a second ago works without waiting for the timer).
"""

from __future__ import annotations

from typing import Any

import structlog
import trio

from meshlb.backend.ollama import BackendError, OllamaBackend

log = structlog.get_logger()


def canonical_model(name: str) -> str:
    """Ollama's name rule: a model without a tag means `:latest`."""
    return name if ":" in name.rsplit("/", 1)[-1] else f"{name}:latest"


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

    @property
    def names(self) -> list[str]:
        return sorted(self._entries)

    def entries(self) -> list[dict[str, Any]]:
        return [self._entries[n] for n in sorted(self._entries)]

    def has(self, model: str) -> bool:
        return canonical_model(model) in self._entries

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
