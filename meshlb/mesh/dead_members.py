"""When a dead member stops counting towards the quorum (pure; `now` passed in).

By default a dead member leaves the quorum's count only when gossip reaps it (about
5 minutes), so if more than half of a mesh dies within that time the survivors hold
the dead members' tasks until then: the price of refusing split-brain take-overs.
With `--dead-quorum-after-s S`, a member that gossip has declared dead for S seconds
leaves the count earlier. Gossip declares a member dead for everyone only when no
survivor could reach it (one that could would have spread its refutation), so after S
seconds it is unreachable from the whole surviving side. The risk, spelled out in the
README: in a partition both sides see the other as dead, so after S seconds both
regain a quorum and may both take the same tasks over (each runs them; a result can
then be recorded on each side). Off by default.
"""

from __future__ import annotations


class DeadMembers:
    """Members declared dead (not left), and since when."""

    def __init__(self, forget_after_s: float | None) -> None:
        self.forget_after_s = forget_after_s
        self._dead_since: dict[str, float] = {}

    def died(self, node: str, now: float) -> None:
        if self.forget_after_s is not None:
            self._dead_since.setdefault(node, now)

    def back(self, node: str) -> None:
        self._dead_since.pop(node, None)

    def next_deadline(self) -> float | None:
        if self.forget_after_s is None or not self._dead_since:
            return None
        return min(self._dead_since.values()) + self.forget_after_s

    def expired(self, now: float) -> list[str]:
        """Members dead for `forget_after_s` or longer (each reported once)."""
        if self.forget_after_s is None:
            return []
        due = [n for n, at in self._dead_since.items() if now - at >= self.forget_after_s]
        for node in due:
            del self._dead_since[node]
        return sorted(due)
