"""Serve an ASGI app with hypercorn's trio worker inside the caller's `trio.run`.

Why hypercorn: a well-kept HTTP/1.1 server that runs on Trio natively; it reports a
client disconnect to the app, so a relay can cancel its upstream request.
"""

from __future__ import annotations

import logging
from typing import cast

import trio
from hypercorn.config import Config
from hypercorn.trio import serve
from hypercorn.typing import Framework
from starlette.types import ASGIApp

# Hypercorn's idle timer runs from a connection's start (or its last answer) until a
# request's headers are complete, and is not reset by bytes that arrive: so it is both
# the keep-alive time and the header timeout. 5 s closes a slow-header (slowloris)
# connection fast; a pooled client just reconnects, which costs little on a LAN.
IDLE_AND_HEADER_TIMEOUT_S = 5


class HangUpRacesAreNotErrors(logging.Filter):
    """Drop hypercorn's "Error in ASGI Framework" records whose cause is the socket
    being busy, broken or closed: a client whose framing broke (e.g. Content-Length
    and Transfer-Encoding with an unchunked body) makes hypercorn answer its own 400
    while the app's answer is going out, and the two senders collide. The client is
    already answered or gone; nothing is wrong in the node, so no traceback."""

    GONE = (trio.BusyResourceError, trio.BrokenResourceError, trio.ClosedResourceError)

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        return not isinstance(exc, self.GONE)


def hypercorn_config(host: str, port: int) -> Config:
    config = Config()
    config.bind = [f"[{host}]:{port}" if ":" in host else f"{host}:{port}"]
    config.accesslog = None
    config.errorlog = logging.getLogger("hypercorn.error")
    config.errorlog.addFilter(HangUpRacesAreNotErrors())
    config.keep_alive_timeout = IDLE_AND_HEADER_TIMEOUT_S
    config.graceful_timeout = 5
    config.backlog = 1024
    return config


async def serve_app(
    app: ASGIApp,
    host: str,
    port: int,
    shutdown: trio.Event,
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve until `shutdown` is set; `task_status.started()` once the socket listens."""
    config = hypercorn_config(host, port)

    async def serve_with_status(*, task_status: trio.TaskStatus[list[str]]) -> None:
        await serve(
            cast(Framework, app), config, shutdown_trigger=shutdown.wait, task_status=task_status
        )

    async with trio.open_nursery() as nursery:
        await nursery.start(serve_with_status)
        task_status.started()
