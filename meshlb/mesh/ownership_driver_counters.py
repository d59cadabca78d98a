"""What the ownership driver counts, as typed fields (the core counts its own).

Why here and typed: `/v1/queue`, `/metrics` and the gossiped move figures read these;
a string key built at the increment site could drift from the one read elsewhere.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(slots=True)
class MoveCounts:
    """Tasks moved, by why they moved (`HandOver.reason`, or why one arrived here)."""

    forward: int = 0
    steal: int = 0
    replace: int = 0
    taken_over: int = 0
    adopted: int = 0
    taken_back: int = 0
    other: int = 0

    def add(self, reason: str, n: int = 1) -> None:
        match reason:
            case "forward":
                self.forward += n
            case "steal":
                self.steal += n
            case "replace":
                self.replace += n
            case "taken over":
                self.taken_over += n
            case "adopted":
                self.adopted += n
            case "taken back":
                self.taken_back += n
            case _:
                self.other += n


@dataclass(slots=True)
class OutcomeCounts:
    """Results recorded by this node as the deciding owner, by final state."""

    succeeded: int = 0
    failed: int = 0
    cancelled: int = 0

    def add(self, state: str) -> None:
        match state:
            case "succeeded":
                self.succeeded += 1
            case "failed":
                self.failed += 1
            case "cancelled":
                self.cancelled += 1


@dataclass(slots=True)
class DriverCounters:
    handed_over: MoveCounts = field(default_factory=MoveCounts)  # offered to a peer
    received: MoveCounts = field(default_factory=MoveCounts)  # now owned here
    recorded: OutcomeCounts = field(default_factory=OutcomeCounts)
    duplicates_dropped: int = 0
    batches_from_a_past_life: int = 0
