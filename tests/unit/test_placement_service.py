"""The placement service: which members are candidates, and what it answers and why.

The prices themselves are `placement.place`'s (tests/unit/test_placement.py); here the
candidates (alive, has the model, minus the left-out, plus the work sent lately), the
hop rule and the reasons.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

import pytest

from meshlb.mesh.placement import Candidate, NoHost, RunHere, SendTo
from meshlb.mesh.placement_service import MemberLoad, PlacementService, Reason

M = "llama3.2:1b"
HERE = "a"


def cand(
    node_id: str,
    queued: int = 0,
    tps: float = 50.0,
    models: tuple[str, ...] = (M,),
    slots: int = 4,
) -> Candidate:
    return Candidate(node_id, frozenset(models), queued, 0, slots, tps, is_local=node_id == HERE)


@dataclass
class Board:
    """A hand-made mesh: this node and its peers as gossip shows them."""

    local: Candidate
    members: list[MemberLoad] = field(default_factory=list)

    def local_candidate(self) -> Candidate:
        return self.local

    def peers(self) -> list[MemberLoad]:
        return list(self.members)


def peer(c: Candidate, state: str = "alive", incarnation: int = 1) -> MemberLoad:
    return MemberLoad(c, state, incarnation)


def service(local: Candidate, *peers: MemberLoad, seed: int = 1) -> PlacementService:
    return PlacementService(HERE, Board(local, list(peers)), random.Random(seed))


R = Reason
IDLE, BUSY, BARE = cand(HERE), cand(HERE, queued=40), cand(HERE, models=())
B, C, B_SLOW = peer(cand("b")), peer(cand("c", queued=2)), peer(cand("b", queued=8))
B_OTHER = peer(cand("b", models=("other",)))  # has another model only
B_SUSPECT, B_DEAD = peer(cand("b"), "suspect"), peer(cand("b"), "dead")
# fmt: off
ROWS = [  # id, this node, its peers, hops, left out -> decision, peer chosen, reason
    ("idle-here-stays",          IDLE, [B],         0, set(),  RunHere, None, R.SOONEST_HERE),
    ("busy-here-sends",          BUSY, [B],         0, set(),  SendTo,  "b",  R.SOONER_THERE),
    ("model-only-on-a-peer",     BARE, [B],         0, set(),  SendTo,  "b",  R.NOT_HERE),
    ("no-peer-has-it",           BUSY, [B_OTHER],   0, set(),  RunHere, None, R.ONLY_HERE),
    ("nobody-has-it",            BARE, [B_OTHER],   0, set(),  NoHost,  None, R.NOWHERE),
    ("suspect-is-no-candidate",  BARE, [B_SUSPECT], 0, set(),  NoHost,  None, R.NOWHERE),
    ("dead-is-no-candidate",     BARE, [B_DEAD],    0, set(),  NoHost,  None, R.NOWHERE),
    ("forwarded-stays-landed",   BUSY, [B],         1, set(),  RunHere, None, R.LANDED),
    ("never-a-second-hop",       BARE, [B],         1, set(),  NoHost,  None, R.NO_SECOND_HOP),
    ("failed-peer-left-out",     BARE, [B, C],      0, {"b"},  SendTo,  "c",  R.NOT_HERE),
    ("every-holder-failed",      BARE, [B],         0, {"b"},  NoHost,  None, R.EXCLUDED),
    ("here-out-slower-peer",     IDLE, [B_SLOW],    0, {HERE}, SendTo,  "b",  R.NOT_HERE),
    ("here-out-no-peer-has-it",  IDLE, [B_OTHER],   0, {HERE}, NoHost,  None, R.EXCLUDED),
    ("left-out-lacked-it-anyway", BARE, [B_OTHER],  0, {"b"},  NoHost,  None, R.NOWHERE),
]
# fmt: on
CASES = [pytest.param(*row[1:], id=row[0]) for row in ROWS]


@pytest.mark.parametrize(("local", "peers", "hops", "exclude", "kind", "to", "reason"), CASES)
def test_decision_and_reason(
    local: Candidate,
    peers: list[MemberLoad],
    hops: int,
    exclude: set[str],
    kind: type,
    to: str | None,
    reason: Reason,
) -> None:
    placed = service(local, *peers).place(M, 100, hops=hops, exclude=frozenset(exclude))
    assert isinstance(placed.decision, kind)
    assert placed.peer == to
    assert placed.reason is reason


def test_model_names_are_matched_in_any_spelling() -> None:
    """`llama3.2` and `llama3.2:latest` are one model, as Ollama says."""
    svc = service(cand(HERE, models=()), peer(cand("b", models=("llama3.2:latest",))))
    assert svc.place("llama3.2", 10).peer == "b"


def test_work_sent_counts_as_queued_until_the_peer_updates() -> None:
    """Anti-herding: a burst does not see the same idle peer for every request."""
    b = peer(cand("b"), incarnation=7)
    board = Board(cand(HERE, models=()), [b])
    svc = PlacementService(HERE, board, random.Random(1))
    for _ in range(3):
        svc.sent("b")
    assert [c.queued for c in svc.peer_candidates()] == [3]
    board.members = [peer(cand("b"), incarnation=8)]  # its next metadata update
    assert [c.queued for c in svc.peer_candidates()] == [0]


def test_sent_work_moves_the_next_request_to_another_peer() -> None:
    """Two equal idle peers: after enough sent to one, the other is the better pick."""
    svc = service(cand(HERE, models=()), peer(cand("b", slots=1)), peer(cand("c", slots=1)))
    first = svc.place(M, 100).peer
    assert first in ("b", "c")
    svc.sent(first)
    other = "c" if first == "b" else "b"
    assert all(svc.place(M, 100).peer == other for _ in range(5))


def test_peer_candidates_are_the_alive_peers_only() -> None:
    svc = service(
        cand(HERE),
        peer(cand("b")),
        peer(cand("c"), state="suspect"),
        peer(cand("d"), state="left"),
    )
    assert [c.node_id for c in svc.peer_candidates()] == ["b"]
    assert svc.local_candidate().node_id == HERE


def test_this_node_is_a_candidate_whatever_gossip_says_of_it() -> None:
    """The local candidate comes from live numbers, never filtered by gossip state;
    a member entry for this node itself is ignored (it is not a peer)."""
    svc = service(cand(HERE), peer(cand(HERE), state="suspect"))
    assert svc.peer_candidates() == []
    assert isinstance(svc.place(M, 10).decision, RunHere)
