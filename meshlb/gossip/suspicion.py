"""Lifeguard dynamic suspicion timeout (Lifeguard §IV-B, memberlist suspicion.go).

A suspicion starts at `max_s` and shrinks towards `min_s` as k independent members
confirm it: timeout(c) = max(min, max - (max - min) * log(c + 1) / log(k + 1)).
The member who raised the suspicion never counts as a confirmation. With k < 1 (too
few members to confirm, or dynamic suspicion disabled) the timeout is `min_s` at once.
The deadline is always measured from the start of the suspicion.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from meshlb.gossip.timers import TimerHeap


def suspicion_timeout_s(confirmations: int, k: int, min_s: float, max_s: float) -> float:
    """Total suspicion time after `confirmations` independent confirmations."""
    if k < 1:
        return min_s
    frac = math.log(confirmations + 1.0) / math.log(k + 1.0)
    return max(min_s, max_s - frac * (max_s - min_s))


class Suspicion:
    """The suspicion timer of one member at one incarnation."""

    __slots__ = (
        "_confirmers",
        "accuser",
        "deadline",
        "incarnation",
        "k",
        "max_s",
        "min_s",
        "n",
        "pings_left",
        "start_at",
        "wake_at",
    )

    def __init__(
        self, by: str, incarnation: int, k: int, min_s: float, max_s: float, now: float
    ) -> None:
        self.accuser = by
        self.incarnation = incarnation
        self.k = k
        self.min_s = min_s
        self.max_s = max_s
        self.start_at = now
        self.n = 0
        self._confirmers = {by}
        self.deadline = now + (max_s if k >= 1 else min_s)
        self.pings_left = 0  # last-chance buddy pings still to send before the deadline
        self.wake_at = self.deadline  # when the owner's timer for it fires next

    def confirm(self, by: str) -> bool:
        """Count an independent confirmation; True if it was new (then re-gossip it)."""
        if self.n >= self.k or by in self._confirmers:
            return False
        self._confirmers.add(by)
        self.n += 1
        self.deadline = self.start_at + suspicion_timeout_s(self.n, self.k, self.min_s, self.max_s)
        return True

    def next_wakeup(self, lead_s: float) -> float:
        """Deadline, minus `lead_s` per last-chance ping still to send."""
        return self.deadline - self.pings_left * lead_s

    def __repr__(self) -> str:
        return (
            f"Suspicion(by={self.accuser!r}, inc={self.incarnation}, "
            f"n={self.n}/{self.k}, deadline={self.deadline:.3f})"
        )


class SuspicionTracker:
    """The live suspicions, one per member, and their timers.

    A timer entry is live only while its suspicion still exists and still wakes at
    that time: re-arming (a confirmation, a last-chance ping) leaves the old entry stale.
    """

    __slots__ = ("_by_node", "lead_s", "timers")

    def __init__(self, lead_s: float, fire: Callable[[str, float], None]) -> None:
        self.lead_s = lead_s  # a last-chance ping goes out this long before the deadline
        self._by_node: dict[str, Suspicion] = {}
        self.timers: TimerHeap[str] = TimerHeap(fire, self._live)

    def __len__(self) -> int:
        return len(self._by_node)

    def get(self, node: str) -> Suspicion | None:
        return self._by_node.get(node)

    def pop(self, node: str) -> Suspicion | None:
        return self._by_node.pop(node, None)

    def start(self, node: str, susp: Suspicion, now: float) -> None:
        self._by_node[node] = susp
        self.arm(susp, node, now)

    def arm(self, susp: Suspicion, node: str, now: float) -> None:
        """(Re)schedule a suspicion's timer; older heap entries become stale.

        A late confirmation can move the deadline into the past; the last-chance
        pings still go out first (the deadline moves to just after them).
        """
        lead = self.lead_s
        if susp.next_wakeup(lead) < now:
            susp.deadline = max(susp.deadline, now + susp.pings_left * lead)
        susp.wake_at = max(now, susp.next_wakeup(lead))
        self.timers.push(susp.wake_at, node)

    def _live(self, at: float, node: str) -> bool:
        s = self._by_node.get(node)
        return s is not None and s.wake_at == at
