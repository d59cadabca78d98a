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

from meshlb.mesh import ownership_msgs as m
from meshlb.mesh.handover import HandOverMixin

# A round not answered by every member asked in this time ends with what it got.
REACH_TIMEOUT_S = 1.0
# After a round that did not confirm what we wait for, ask again this much later.
REACH_RETRY_S = 0.25

Verdict = tuple[float, dict[str, frozenset[str]]]  # (round started at, voter -> dead set)


class FenceMixin(HandOverMixin):
    """Majority confirmation of deaths; `Ownership` holds the state."""

    known: set[str]
    _round: tuple[int, float] | None  # (seq, started_at) of the round in flight
    _round_seq: int
    _round_asked: set[str]
    _round_answers: dict[str, frozenset[str]]
    _verdict: Verdict  # the latest finished round
    _fence_waiting: bool
    _retry_at: float

    def _take_over_orphans(self, now: float) -> None:
        raise NotImplementedError

    def _retry_fenced(self, now: float) -> None:
        raise NotImplementedError

    def _dead_confirmed(self, subject: str, since: float, now: float) -> bool:
        """Did a majority, asked after `since`, confirm `subject` dead? If not yet,
        make sure a round is coming and say no for now."""
        if subject not in self.known:
            return True  # it left (or was forgotten): nobody will run its tasks
        started, answers = self._verdict
        if started >= since and subject not in self.live:
            agree = 1 + sum(subject in down for down in answers.values())
            if len(self.known) <= 2 or 2 * agree > len(self.known):
                return True
        self._fence_waiting = True
        if self._round is None and now >= self._retry_at:
            self._start_round(now)
        return False

    def _start_round(self, now: float) -> None:
        self._round_seq += 1
        self._round = (self._round_seq, now)
        self._round_asked = self.live - {self.node_id}
        self._round_answers = {}
        for node in sorted(self._round_asked):
            self._emit(m.CheckReach(node, self._round_seq))
        if not self._round_asked:
            self._finish_round(now)

    def _finish_round(self, now: float) -> None:
        assert self._round is not None
        self._verdict = (self._round[1], self._round_answers)
        self._round, self._fence_waiting = None, False
        self._retry_at = now + REACH_RETRY_S
        self._take_over_orphans(now)
        self._retry_fenced(now)

    def _on_reach_checked(self, ev: m.ReachChecked, now: float) -> None:
        self._emit(m.AnswerReach(ev.sender, ev.seq, frozenset(self.known - self.live)))

    def _on_reach_answered(self, ev: m.ReachAnswered, now: float) -> None:
        if self._round is None or self._round[0] != ev.seq:
            return
        self._round_answers[ev.sender] = ev.down
        if self._round_asked <= self._round_answers.keys():
            self._finish_round(now)

    def _fence_due(self) -> float | None:
        if self._round is not None:
            return self._round[1] + REACH_TIMEOUT_S
        return self._retry_at if self._fence_waiting else None

    def _fence_tick(self, now: float) -> None:
        if self._round is not None and now >= self._round[1] + REACH_TIMEOUT_S:
            self._finish_round(now)
        elif self._round is None and self._fence_waiting and now >= self._retry_at:
            self._fence_waiting = False
            self._take_over_orphans(now)
            self._retry_fenced(now)
