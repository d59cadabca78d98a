"""Watch a local answer for what it says about residency, without slowing it down.

Around the relay of a request run on the local Ollama: counts the request in hand for
its model while it runs (gossiped per loaded model, so peers price what evicting it
would cost) and, when it ends, hands the end of the answer to `LocalResidency.end`,
which learns the load rate from `load_duration` and has `/api/ps` re-read soon.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from meshlb.backend.catalog import LocalResidency

TAIL_BYTES = 1024


class WatchedAnswer:
    """ASGI wrapper: `residency.begin(model)` before, `residency.end(model, tail)` after."""

    def __init__(self, app: ASGIApp, residency: LocalResidency, model: str) -> None:
        self.app = app
        self.residency = residency
        self.model = model

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        tail = b""

        async def watch(message: Message) -> None:
            nonlocal tail
            if message["type"] == "http.response.body":
                body = message.get("body", b"")
                if body:
                    tail = (
                        body[-TAIL_BYTES:]
                        if len(body) >= TAIL_BYTES
                        else (tail + body)[-TAIL_BYTES:]
                    )
            await send(message)

        self.residency.begin(self.model)
        try:
            await self.app(scope, receive, watch)
        finally:
            self.residency.end(self.model, tail)
