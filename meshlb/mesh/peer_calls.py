"""Node-to-node calls in flight, per peer, ended when gossip declares the peer dead.

Why: a request forwarded to a peer waits on that peer's socket, for the answer's
start (the peer may queue it, or load a model, for a minute) and then for each
chunk. A peer whose process died is noticed by its kernel closing the connection;
a host that lost power or its network sends nothing, and the call would wait
forever. No read timeout can tell that from a slow model, but gossip can: once a
member is declared dead (suspected, not refuted in time: Lifeguard's rules), every
call still open to it is cancelled. The caller then treats it as that peer failing:
before the answer's first byte the request is placed again elsewhere, after it the
stream ends with an error object. A member that LEFT is not cut off: it drains what
it holds before it goes.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import structlog
import trio

from meshlb.gossip.events import Event as GossipEvent
from meshlb.gossip.events import MemberDied

log = structlog.get_logger()


class PeerCalls:
    """The cancel scopes of the calls open to each peer."""

    def __init__(self) -> None:
        self._open: dict[str, set[trio.CancelScope]] = {}

    @contextlib.contextmanager
    def call(self, peer: str) -> Iterator[trio.CancelScope]:
        """Run the body as a call to `peer`: cancelled if the peer is declared dead
        meanwhile (check `cancelled_caught` on the scope afterwards)."""
        scope = trio.CancelScope()
        calls = self._open.setdefault(peer, set())
        calls.add(scope)
        try:
            with scope:
                yield scope
        finally:
            calls.discard(scope)
            if not calls:
                self._open.pop(peer, None)

    def peer_died(self, peer: str) -> int:
        """Cancel every call open to `peer`; how many there were."""
        calls = self._open.pop(peer, set())
        for scope in calls:
            scope.cancel()
        if calls:
            log.warning(
                "peer declared dead: its calls in flight are ended", peer=peer, calls=len(calls)
            )
        return len(calls)

    async def follow_gossip(self, events: trio.MemoryReceiveChannel[GossipEvent]) -> None:
        """Forever: end the calls to each member gossip declares dead."""
        async for ev in events:
            if isinstance(ev, MemberDied):
                self.peer_died(ev.node)
