"""A cancel scope that the client's hang-up cancels, for the relays.

Why: a relay must cancel its upstream request (or take its task out of the queue)
when the client leaves. meshlb's server (`meshlb.http_server`) offers that as the
`meshlb.disconnect` scope extension: it takes a cancel scope and cancels it on the
hang-up, watched by one reader per connection, so a request opens no nursery and
starts no task for it. Under another ASGI server (tests driving an app directly) the
hang-up is only `http.disconnect` from `receive`, watched by a task as before.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import trio
from starlette.types import Receive, Scope

from meshlb.http_reader import DISCONNECT_EXTENSION


@asynccontextmanager
async def cancelled_on_hang_up(scope: Scope, receive: Receive) -> AsyncIterator[trio.CancelScope]:
    """Run the body in a cancel scope that the client's hang-up cancels; after the
    block, `cancelled_caught` tells whether the hang-up cut it short."""
    extensions = scope.get("extensions") or {}
    watch: Callable[[trio.CancelScope], None] | None = extensions.get(DISCONNECT_EXTENSION)
    with trio.CancelScope() as cancel:
        if watch is not None:
            watch(cancel)
            yield cancel
            return
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_watch_receive, receive, cancel)
            try:
                yield cancel
            finally:
                nursery.cancel_scope.cancel()


async def _watch_receive(receive: Receive, cancel: trio.CancelScope) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass
    cancel.cancel()
