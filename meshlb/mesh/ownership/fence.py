"""The fence: a death confirmed by a majority before anyone acts on it.

Why: SWIM detects members one probe at a time and suspicions do not cross a
partition, so a node cut off with a minority can declare an owner dead while it
still believes most members alive — its local quorum check passes, and it would
take the owner's tasks over while the owner, on the other side, runs them. So a
take-over (and recording a result after a dead replica was replaced) waits for a
round trip to the members: it goes ahead only when more than half of the known
members, this node included, answered a check started after the death and say
that node is dead to them too. From the minority side no round can reach a
majority; after a heal the others see the owner alive again and say no.

Cost: one small message per live member per round, only while something waits
for a confirmation (rounds retry every `REACH_RETRY_S` until the rest of the mesh
has declared the death too, so a re-queue happens at most that long after the
majority's detection). Graceful leaves and restarts (a new boot id in gossip) are
not ambiguous and need no fence.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

from meshlb.mesh import ownership_msgs as m
from meshlb.mesh.ownership.members import Members
from meshlb.mesh.ownership.shared import Outbox

# A round not answered by every member asked in this time ends with what it got.
REACH_TIMEOUT_S = 1.0
# After a round that did not confirm what we wait for, ask again this much later.
REACH_RETRY_S = 0.25


@dataclass(slots=True)
class Round:
    """One majority check in flight."""

    seq: int
    started_at: float
    asked: frozenset[str]
    answers: dict[str, frozenset[str]] = field(default_factory=dict)  # voter -> dead set


class Fence:
    """Majority confirmation of deaths. `on_verdict(now)` runs after each round ends
    (and after a retry is due), so whatever waited for a confirmation looks again."""

    def __init__(self, members: Members, out: Outbox,
                 on_verdict: Callable[[float], None]) -> None:  # fmt: skip
        self.members, self.out, self.on_verdict = members, out, on_verdict
        self.round: Round | None = None
        self._seq = 0
        self.verdict: tuple[float, dict[str, frozenset[str]]] = (-math.inf, {})  # latest
        self.waiting = False  # someone was told "not yet"
        self.retry_at = -math.inf

    def dead_confirmed(self, subject: str, since: float, now: float) -> bool:
        """Did a majority, asked after `since`, confirm `subject` dead? If not yet,
        make sure a round is coming and say no for now."""
        members = self.members
        if subject not in members.known:
            return True  # it left (or was forgotten): nobody will run its tasks
        started, answers = self.verdict
        if started >= since and subject not in members.live:
            agree = 1 + sum(subject in down for down in answers.values())
            if len(members.known) <= 2 or 2 * agree > len(members.known):
                return True
        self.waiting = True
        if self.round is None and now >= self.retry_at:
            self._start(now)
        return False

    def _start(self, now: float) -> None:
        self._seq += 1
        asked = frozenset(self.members.live - {self.members.me})
        self.round = Round(self._seq, now, asked)
        for node in sorted(asked):
            self.out.send(node, m.CheckReach(self._seq))
        if not asked:
            self._finish(now)

    def _finish(self, now: float) -> None:
        assert self.round is not None
        self.verdict = (self.round.started_at, self.round.answers)
        self.round, self.waiting = None, False
        self.retry_at = now + REACH_RETRY_S
        self.on_verdict(now)

    def on_check(self, ev: m.CheckReach) -> None:
        down = frozenset(self.members.known - self.members.live)
        self.out.send(ev.sender, m.AnswerReach(ev.seq, down))

    def on_answer(self, ev: m.AnswerReach, now: float) -> None:
        r = self.round
        if r is None or r.seq != ev.seq:
            return
        r.answers[ev.sender] = ev.down
        if r.asked <= r.answers.keys():
            self._finish(now)

    def next_deadline(self) -> float | None:
        if self.round is not None:
            return self.round.started_at + REACH_TIMEOUT_S
        return self.retry_at if self.waiting else None

    def tick(self, now: float) -> None:
        if self.round is not None and now >= self.round.started_at + REACH_TIMEOUT_S:
            self.out.cause = f"timer: majority check {self.round.seq} timed out"
            self._finish(now)
        elif self.round is None and self.waiting and now >= self.retry_at:
            self.out.cause = "timer: majority check retry"
            self.waiting = False
            self.on_verdict(now)

    def validate(self) -> None:
        if self.round is not None:
            assert self.round.seq == self._seq, "only the latest round is in flight"
            assert not self.round.asked <= self.round.answers.keys(), "a finished round"
