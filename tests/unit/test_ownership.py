"""The task-ownership core: replication, take-over, hand-over (forward and steal), results.

A tiny synchronous router (`Net`) carries commands between cores as events, so each
rule is exercised through the same messages a driver would send.
"""

from __future__ import annotations

import pytest

from meshlb.mesh import ownership_msgs as m
from meshlb.mesh.ownership import OFFERING, OWNER, PENDING, REPLICA
from meshlb.mesh.placement import Candidate
from meshlb.mesh.replication import TaskCopy, choose_replicas, rendezvous_order
from tests.unit.ownership_net import IDS, Net, accept

# --------------------------------------------------------------------- replication


def test_accept_queues_locally_and_replicates_to_the_rendezvous_choice() -> None:
    net = Net()
    accept(net)
    [run] = net.cmds(m.RunLocally)
    assert run.task_id == "t-1" and net.queues["a"] == ["t-1"]
    expected = rendezvous_order("t-1", [n for n in IDS if n != "a"])[0]
    assert [to for to, _ in net.sent(m.Replicate)] == [expected]
    assert net.holders("t-1") == {"a": OWNER, expected: REPLICA}


def test_accepting_the_same_task_twice_is_one_task() -> None:
    net = Net()
    accept(net)
    accept(net)
    assert len(net.cmds(m.RunLocally)) == 1


def test_every_state_change_is_replicated() -> None:
    net = Net()
    accept(net)
    replica = next(n for n, r in net.holders("t-1").items() if r == REPLICA)
    net.feed("a", m.TaskStarted("t-1", 5.0))
    net.run()
    copy = net.cores[replica].get("t-1")
    assert copy is not None and copy.record.state == "running" and copy.record.node == "a"


def test_replica_choice_is_sticky_and_never_the_owner() -> None:
    live = set(IDS)
    first = choose_replicas("t-9", "a", (), live, 2)
    assert "a" not in first and len(first) == 2
    assert choose_replicas("t-9", "a", first, live | {"z"}, 2) == first  # a join moves nothing
    survivors = live - {first[0]}
    again = choose_replicas("t-9", "a", first, survivors, 2)
    assert again[0] == first[1] and first[0] not in again


def test_losing_a_replica_re_replicates_to_a_new_node() -> None:
    net = Net()
    accept(net)
    old = net.cores["a"].get("t-1")
    assert old is not None
    net.kill(old.replicas[0])
    new = net.cores["a"].get("t-1")
    assert new is not None and len(new.replicas) == 1 and new.replicas != old.replicas
    assert net.cores[new.replicas[0]].role("t-1") == REPLICA


# --------------------------------------------------------------------- take-over


@pytest.mark.parametrize("running", [False, True])
def test_owner_death_makes_exactly_one_survivor_requeue(running: bool) -> None:
    net = Net()
    accept(net)
    if running:
        net.feed("a", m.TaskStarted("t-1", 1.0))
        net.run()
    heir = net.copy("a", "t-1").replicas[0]
    net.log.clear()
    net.kill("a")
    runs = net.cmds(m.RunLocally)
    assert [(r.task_id, r.reason) for r in runs] == [("t-1", "taken over")]
    assert net.cmds(m.RunLocally, heir) == runs
    copy = net.cores[heir].get("t-1")
    assert copy is not None and copy.owner == heir and copy.epoch == 2
    assert copy.record.state == "queued" and heir not in copy.replicas
    assert len(copy.replicas) == 1 and net.cores[copy.replicas[0]].role("t-1") == REPLICA


def test_with_r3_the_second_replica_takes_over_when_owner_and_first_die() -> None:
    net = Net(replication=3)
    accept(net)
    first, second = net.copy("a", "t-1").replicas
    net.log.clear()
    # The first replica dies before anybody notices the owner's death.
    del net.cores[first]
    for n in list(net.cores):
        net.feed(n, m.PeerDown(first))
    net.run()
    net.kill("a")
    assert [n for n, c in net.log if isinstance(c, m.RunLocally)] == [second]


def test_a_final_task_is_not_rerun_after_its_owner_dies() -> None:
    net = Net()
    accept(net)
    net.start_and_finish("a", "t-1")
    net.log.clear()
    net.kill("a")
    assert net.cmds(m.RunLocally) == []
    owners = [n for n, r in net.holders("t-1").items() if r == OWNER]
    assert len(owners) == 1  # the final copy is re-homed and kept at R copies
    assert len(net.holders("t-1")) == 2


# --------------------------------------------------------------------- hand-over


def test_forward_moves_ownership_in_three_phases() -> None:
    net = Net()
    accept(net, forward_to="b")
    assert net.queues["a"] == [] and net.queues["b"] == ["t-1"]
    order = [c.msg if isinstance(c, m.Send) else c for _, c in net.log]
    phases = [type(x).__name__ for x in order if isinstance(x, m.AckHandOver | m.RunLocally)]
    assert phases == ["AckHandOver", "RunLocally"]  # queued only after the confirm
    copy = net.cores["b"].get("t-1")
    assert copy is not None and copy.owner == "b" and copy.epoch == 2 and copy.replicas == ("a",)
    assert net.holders("t-1") == {"a": REPLICA, "b": OWNER}  # the old replica forgot it


def test_forwarded_task_survives_the_new_owner_dying() -> None:
    net = Net()
    accept(net, forward_to="b")
    net.log.clear()
    net.kill("b")
    assert [(n, c.task_id) for n, c in net.log if isinstance(c, m.RunLocally)] == [("a", "t-1")]


@pytest.mark.parametrize("target_is_replica", [False, True])
def test_unacked_offer_is_taken_back_and_a_late_ack_is_aborted(target_is_replica: bool) -> None:
    net = Net()
    replica = rendezvous_order("t-1", [n for n in IDS if n != "a"])[0]
    to = replica if target_is_replica else next(n for n in IDS if n not in ("a", replica))
    net.drop = lambda src, dst, ev: isinstance(ev, m.AckHandOver)
    accept(net, forward_to=to)
    assert net.cores[to].role("t-1") == PENDING and net.queues[to] == []
    net.tick(2.5)  # the offer expires
    assert net.queues["a"] == ["t-1"] and net.copy("a", "t-1").epoch == 3
    net.drop = lambda src, dst, ev: False
    net.tick(1.0)  # the target re-acks (if still pending); a answers with an abort
    if not target_is_replica:
        assert net.cmds(m.ConfirmHandOver)[-1].aborted == (("t-1", 2),)
    assert net.queues[to] == [] and net.cores[to].role("t-1") in (None, REPLICA)
    assert len(net.cmds(m.RunLocally)) == 1
    assert net.holders("t-1")["a"] == OWNER


def test_lost_confirm_is_recovered_by_re_ack() -> None:
    net = Net()
    net.drop = lambda src, dst, ev: isinstance(ev, m.ConfirmHandOver)
    accept(net, forward_to="b")
    assert net.cores["b"].role("t-1") == PENDING
    net.drop = lambda src, dst, ev: False
    net.tick(1.5)
    assert net.queues["b"] == ["t-1"] and net.queues["a"] == []


def test_offer_target_death_takes_the_task_back() -> None:
    net = Net()
    net.drop = lambda src, dst, ev: dst == "b"
    accept(net, forward_to="b")
    assert net.cores["a"].role("t-1") == OFFERING
    net.kill("b")
    assert net.queues["a"] == ["t-1"]


def test_acked_offer_is_adopted_if_its_sender_dies() -> None:
    net = Net()
    net.drop = lambda src, dst, ev: isinstance(ev, m.ConfirmHandOver)
    accept(net, forward_to="b")
    net.kill("a")
    assert net.queues["b"] == ["t-1"] and net.cores["b"].role("t-1") == OWNER


def test_steal_hands_over_the_tail_of_the_queue() -> None:
    net = Net()
    for i in range(4):
        accept(net, task_id=f"t-{i}")
    local = Candidate("b", frozenset({"m"}), 0, 0, 1, 100.0, is_local=True)
    busy = Candidate("a", frozenset({"m"}), 4, 1, 1, 10.0)
    net.feed("b", m.IdleNoticed(2, local, (busy,)))
    net.run()
    assert net.queues["b"] == ["t-3", "t-2"] and net.queues["a"] == ["t-0", "t-1"]
    for tid in ("t-2", "t-3"):
        assert net.copy("b", tid).owner == "b"


def test_slow_thief_gets_nothing_and_is_told_so() -> None:
    net = Net()
    for i in range(2):
        accept(net, task_id=f"t-{i}")
    local = Candidate("b", frozenset({"m"}), 0, 0, 1, 0.5, is_local=True)
    busy = Candidate("a", frozenset({"m"}), 2, 1, 1, 10.0)
    net.feed("b", m.IdleNoticed(2, local, (busy,)))
    net.run()
    assert net.queues["b"] == [] and len(net.cmds(m.DeclineSteal)) == 1
    assert net.cores["b"].next_deadline() is None  # free to ask again


def test_thief_without_the_model_asks_nobody() -> None:
    net = Net()
    accept(net)
    local = Candidate("b", frozenset({"other"}), 0, 0, 1, 100.0, is_local=True)
    busy = Candidate("a", frozenset({"m"}), 4, 1, 1, 10.0)
    net.feed("b", m.IdleNoticed(1, local, (busy,)))
    assert net.cmds(m.StealAsk) == []


# --------------------------------------------------------------------- results


def test_second_result_is_dropped_and_counted() -> None:
    net = Net()
    accept(net)
    net.start_and_finish("a", "t-1")
    net.feed("a", m.TaskFinished("t-1", "failed", 9.0, error="late"))
    assert len(net.cmds(m.DropDuplicateResult)) == 1
    assert net.cores["a"].counters.duplicates_dropped == 1
    assert net.copy("a", "t-1").record.state == "succeeded"
    assert len([c for c in net.cmds(m.RecordFinal) if c.decided_here]) == 1


def test_result_of_a_falsely_dead_owner_wins_over_the_heirs_later_run() -> None:
    net = Net()
    accept(net)
    net.feed("a", m.TaskStarted("t-1", 1.0))
    net.run()
    heir = net.copy("a", "t-1").replicas[0]
    net.feed(heir, m.PeerDown("a"))  # a false death: a keeps running
    net.run()
    net.feed(heir, m.TaskStarted("t-1", 3.0))
    net.feed("a", m.TaskFinished("t-1", "succeeded", 4.0, result="from a"))
    net.run()
    net.feed(heir, m.TaskFinished("t-1", "succeeded", 5.0, result="from heir"))
    assert net.copy(heir, "t-1").record.result == "from a"
    assert len(net.cmds(m.DropDuplicateResult, heir)) == 1


def test_a_death_not_confirmed_by_a_majority_is_not_acted_on() -> None:
    """a and its heir lose each other, but c still sees both: the heir may not take
    over (c does not confirm a dead), and a may not record through its new replica
    (c does not confirm the heir dead) until the heir is back. One result."""
    net = Net(ids=("a", "b", "c"))
    accept(net)
    heir = net.copy("a", "t-1").replicas[0]
    net.drop = lambda src, dst, ev: {src, dst} == {"a", heir}
    net.feed(heir, m.PeerDown("a"))
    net.feed("a", m.PeerDown(heir))
    net.run()
    net.tick(2.0)
    assert [c for c in net.cmds(m.RunLocally) if c.reason == "taken over"] == []
    net.start_and_finish("a", "t-1", at=3.0)
    net.tick(2.0)
    assert [c for c in net.cmds(m.RecordFinal) if c.decided_here] == []
    net.drop = lambda src, dst, ev: False
    net.feed(heir, m.PeerUp("a"))
    net.feed("a", m.PeerUp(heir))
    net.tick(1.5)
    decided = [c.copy.run_id for c in net.cmds(m.RecordFinal) if c.decided_here]
    assert decided == ["a:1:1"]
    copies = [c for core in net.cores.values() if (c := core.get("t-1")) is not None]
    assert len(copies) >= 2 and all(c.run_id == "a:1:1" for c in copies)


# --------------------------------------------------------------------- merging


def test_an_older_copy_overtaken_by_a_newer_one_is_not_stored() -> None:
    net = Net()
    accept(net)
    old = net.cores["a"].get("t-1")
    assert old is not None
    outsider = next(n for n in IDS if n not in ("a", *old.replicas))
    newer_copy = old.with_replicas(old.replicas)  # a later revision that excludes it
    stale = TaskCopy(old.record, "a", old.epoch, (outsider,), old.former)  # listed it, rev 0
    net.feed(outsider, m.Replicate(newer_copy, sender="a"))  # overtook the stale one
    net.feed(outsider, m.Replicate(stale, sender="a"))
    assert net.cores[outsider].role("t-1") is None


def test_an_offer_for_a_task_we_own_is_answered_with_our_copy() -> None:
    net = Net()
    accept(net, node="b", task_id="t-1")
    mine = net.cores["b"].get("t-1")
    assert mine is not None
    offer = mine.with_owner("b", mine.epoch + 1, ("c",))
    net.log.clear()
    net.feed("b", m.HandOver((offer,), sender="c"))
    assert net.cmds(m.AckHandOver) == [] and net.cores["b"].role("t-1") == OWNER
    assert [to for to, _ in net.sent(m.Replicate)] == ["c"]
