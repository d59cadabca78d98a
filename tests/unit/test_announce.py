"""The announcer: changed metadata reaches gossip once per interval, or at once when
the local Ollama's residency kicks it."""

from __future__ import annotations

import trio
from trio.testing import MockClock

from meshlb.drivers.wakeup import Wakeup
from meshlb.mesh.announce import announce_loop
from meshlb.mesh.meta import NodeMeta, decode_meta


class Sink:
    def __init__(self) -> None:
        self.pushed: list[tuple[float, str]] = []

    def update_meta(self, meta: bytes) -> None:
        decoded = decode_meta(meta)
        assert decoded is not None
        self.pushed.append((trio.current_time(), decoded.http_addr))


async def test_unchanged_metadata_is_not_pushed_and_a_kick_pushes_a_change_at_once(
    autojump_clock: MockClock,
) -> None:
    addr = ["h:1"]
    sink, kicks = Sink(), Wakeup()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(announce_loop, lambda: NodeMeta(addr[0]), sink, 1.0, kicks)
        await trio.sleep(3.5)  # rounds at 0, 1, 2, 3: one push, the rest unchanged
        assert [a for _, a in sink.pushed] == ["h:1"]
        addr[0] = "h:2"
        kicks.kick()
        await trio.sleep(0.01)
        assert sink.pushed[-1] == (3.5, "h:2")  # not at the next round (4.0)
        addr[0] = "h:3"  # no kick: the next round carries it
        await trio.sleep(1.0)
        assert sink.pushed[-1] == (4.5, "h:3")
        nursery.cancel_scope.cancel()
