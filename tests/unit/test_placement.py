"""Placement: here when good enough, else a better peer; never nowhere if someone has it."""

import random

from meshlb.mesh.placement import (
    Candidate,
    NoHost,
    RunHere,
    SendTo,
    TaskNeeds,
    expected_completion_s,
    place,
)
from meshlb.mesh.stealing import Waiting, choose_gifts

M = "llama3.2:1b"


def cand(
    node_id: str,
    queued: int = 0,
    running: int = 0,
    slots: int = 4,
    tps: float = 50.0,
    models: tuple[str, ...] = (M,),
    local: bool = False,
    **kw: int,
) -> Candidate:
    return Candidate(node_id, frozenset(models), queued, running, slots, tps, is_local=local, **kw)


def test_idle_local_host_runs_it_when_peers_are_no_better() -> None:
    d = place(
        TaskNeeds(M, 100),
        [cand("a", local=True), cand("b"), cand("c", running=2)],
        random.Random(1),
    )
    assert isinstance(d, RunHere)
    assert d.eta_s == expected_completion_s(cand("a"), TaskNeeds(M, 100)) == 2.0


def test_much_faster_idle_peer_wins() -> None:
    d = place(TaskNeeds(M, 100), [cand("a", local=True), cand("b", tps=200)], random.Random(1))
    assert isinstance(d, SendTo) and d.node_id == "b" and d.eta_s == 0.5


def test_busy_local_forwards_to_idle_peer() -> None:
    d = place(
        TaskNeeds(M, 100),
        [cand("a", queued=20, running=4, local=True), cand("b")],
        random.Random(1),
    )
    assert isinstance(d, SendTo) and d.node_id == "b"


def test_small_gain_keeps_task_here() -> None:
    d = place(
        TaskNeeds(M, 100), [cand("a", running=1, local=True), cand("b", tps=51)], random.Random(1)
    )
    assert isinstance(d, RunHere)


def test_forwarded_task_runs_where_it_lands() -> None:
    d = place(
        TaskNeeds(M, 100, hops=1), [cand("a", queued=50, local=True), cand("b")], random.Random(1)
    )
    assert isinstance(d, RunHere)


def test_forwarded_task_is_never_forwarded_a_second_time() -> None:
    """Issue 9, defect 3: a hop that lands on a host without the model stops there
    (the origin places it again), it never makes a second hop to c."""
    d = place(
        TaskNeeds(M, 100, hops=1),
        [cand("a", models=(), local=True), cand("c")],
        random.Random(1),
    )
    assert isinstance(d, NoHost)


def test_a_host_whose_ollama_is_down_is_no_candidate() -> None:
    """Gossip keeps a down host's models listed, but placement never sends work there."""
    from meshlb.mesh.candidates import candidate
    from meshlb.mesh.meta import NodeMeta

    down = candidate("d", NodeMeta("10.0.0.4:11435", (M,), ollama_up=False), is_local=False)
    d = place(TaskNeeds(M, 100), [cand("a", models=(), local=True), down], random.Random(1))
    assert isinstance(d, NoHost)


def test_model_only_elsewhere_is_sent_there() -> None:
    d = place(
        TaskNeeds("other", 10),
        [cand("a", local=True), cand("b", models=("other",))],
        random.Random(1),
    )
    assert isinstance(d, SendTo) and d.node_id == "b" and d.local_eta_s is None


def test_model_nowhere_is_no_host() -> None:
    assert isinstance(
        place(TaskNeeds("x", 10), [cand("a", local=True), cand("b")], random.Random(1)), NoHost
    )


def test_exhausted_budget_is_avoided() -> None:
    d = place(
        TaskNeeds(M, 100), [cand("a", local=True, rpm_headroom=0), cand("b")], random.Random(1)
    )
    assert isinstance(d, SendTo) and d.node_id == "b"


def test_two_choices_spread_load_over_the_best_few() -> None:
    peers = [cand("a", queued=40, local=True)] + [cand(f"p{i}") for i in range(3)]
    chosen = {
        d.node_id
        for s in range(50)
        if isinstance(d := place(TaskNeeds(M, 100), peers, random.Random(s)), SendTo)
    }
    assert len(chosen) >= 2  # not everyone herds onto one peer


def test_a_peer_not_measured_yet_is_assumed_as_fast_as_the_median_host() -> None:
    """A fast local host with a queue sends work to an idle peer whose speed is still
    unknown (assumed 120 tok/s, the median measured), not written off at 20 tok/s."""
    local = cand("a", queued=8, running=4, tps=120.0, local=True)
    d = place(TaskNeeds(M, 256), [local, cand("b", tps=0.0)], random.Random(1))
    assert isinstance(d, SendTo) and d.node_id == "b"
    assert d.eta_s == 256 / 120.0
    alone = place(TaskNeeds(M, 256), [cand("b", tps=0.0)], random.Random(1))
    assert isinstance(alone, SendTo) and alone.eta_s == 256 / 20.0  # nobody measured


def test_an_unmeasured_thief_is_assumed_as_fast_as_the_victim() -> None:
    waiting = [Waiting(f"t{i}", M, 256) for i in range(12)]
    gifts = choose_gifts(waiting, 4, frozenset({M}), 0.0, 120.0, 4)
    assert gifts == ["t11", "t10", "t9", "t8"]  # the tail: the longest waits here
    assert choose_gifts(waiting[:1], 4, frozenset({M}), 0.0, 120.0, 4) == []  # next: no gain
