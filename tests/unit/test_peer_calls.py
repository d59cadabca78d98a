"""Calls to a peer end when gossip declares it dead (a vanished host sends nothing, so
no socket error would ever end them); a peer that leaves keeps its calls."""

from __future__ import annotations

import trio
from trio.testing import MockClock

from meshlb.gossip.events import Event, MemberDied, MemberLeft
from meshlb.mesh.peer_calls import PeerCalls


async def test_a_dead_peers_calls_end_and_others_run_on(autojump_clock: MockClock) -> None:
    calls = PeerCalls()
    ended: list[tuple[str, float]] = []
    send, events = trio.open_memory_channel[Event](10)

    async def call(peer: str) -> None:
        with calls.call(peer) as scope:
            await trio.sleep(100)  # a peer that never answers
        ended.append((peer, trio.current_time() if scope.cancelled_caught else -1.0))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(calls.follow_gossip, events)
        for peer in ("a", "a", "b", "c"):
            nursery.start_soon(call, peer)
        await trio.sleep(5)
        await send.send(MemberLeft("c", 3))  # leaving: it drains what it holds
        await send.send(MemberDied("a", "b", 2))
        await trio.sleep(1)
        assert ended == [("a", 5.0), ("a", 5.0)]  # both of a's calls, at once; b's and c's run on
        assert calls.peer_died("a") == 0  # nothing left open to a
        nursery.cancel_scope.cancel()


async def test_a_call_that_ends_by_itself_is_forgotten() -> None:
    calls = PeerCalls()
    with calls.call("a") as scope:
        await trio.lowlevel.checkpoint()
    assert not scope.cancelled_caught
    assert calls.peer_died("a") == 0
