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

from types import TracebackType

import structlog
import trio

from meshlb.gossip.events import Event as GossipEvent
from meshlb.gossip.events import MemberDied

log = structlog.get_logger()


class PeerCalls:
    """The cancel scopes of the calls open to each peer."""

    def __init__(self) -> None:
        self._open: dict[str, set[trio.CancelScope]] = {}

    def call(self, peer: str) -> Call:
        """`with calls.call(peer) as scope:` runs the body as a call to `peer`,
        cancelled if the peer is declared dead meanwhile (then `scope.cancelled_caught`).
        A class, not a generator: a forwarded stream enters one per chunk."""
        return Call(self._open, peer)

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


class Call:
    """One call's registration under its peer, for as long as its body runs."""

    __slots__ = ("_open", "_peer", "_scope")

    def __init__(self, open_calls: dict[str, set[trio.CancelScope]], peer: str) -> None:
        self._open, self._peer = open_calls, peer
        self._scope = trio.CancelScope()

    def __enter__(self) -> trio.CancelScope:
        self._open.setdefault(self._peer, set()).add(self._scope)
        return self._scope.__enter__()

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        tb: TracebackType | None,
    ) -> bool:
        calls = self._open.get(self._peer)
        if calls is not None:
            calls.discard(self._scope)
            if not calls:
                del self._open[self._peer]
        return self._scope.__exit__(kind, error, tb)
