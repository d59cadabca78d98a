"""Transmit-limited piggyback queue (SWIM §4.1, memberlist TransmitLimitedQueue).

Each membership update is piggybacked on outgoing packets until it has been sent
`limit` = RetransmitMult * ceil(log10(N+1)) times. Least-transmitted first, newest
first among equals, so fresh news spreads fastest. A newer update about a node
replaces (invalidates) the queued one: only the latest word about a member travels.
"""

from __future__ import annotations

from meshlb.gossip.messages import Update


class _Item:
    __slots__ = ("message", "order", "size", "transmits")

    def __init__(self, message: Update, size: int, order: int) -> None:
        self.message = message
        self.size = size
        self.order = order
        self.transmits = 0


class BroadcastQueue:
    """Updates waiting to be piggybacked, keyed by the node they are about."""

    __slots__ = ("_items", "_next_order")

    def __init__(self) -> None:
        self._items: dict[str, _Item] = {}
        self._next_order = 0

    def __len__(self) -> int:
        return len(self._items)

    def queue(self, message: Update, size: int) -> None:
        """Queue `message` (encoded `size` bytes), invalidating older news about its node."""
        self._next_order += 1
        self._items[message.node] = _Item(message, size, self._next_order)

    def pending_for(self, node: str) -> Update | None:
        item = self._items.get(node)
        return item.message if item is not None else None

    def take(self, budget: int, limit: int) -> tuple[list[Update], int]:
        """Updates fitting in `budget` bytes (least sent, then newest), and their size.

        Each taken update counts one transmit; at `limit` transmits it is dropped.
        """
        if not self._items:
            return [], 0
        items = sorted(self._items.values(), key=lambda it: (it.transmits, -it.order))
        taken: list[Update] = []
        used = 0
        for it in items:
            if used + it.size > budget:
                continue
            used += it.size
            taken.append(it.message)
            it.transmits += 1
            if it.transmits >= limit:
                del self._items[it.message.node]
        return taken, used
