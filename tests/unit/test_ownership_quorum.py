"""Ownership core: quorum, results recorded only after a replica ack, re-placement."""

from __future__ import annotations

from meshlb.mesh import ownership_msgs as m
from meshlb.mesh.ownership import OWNER, REPLICA
from meshlb.mesh.replication import rendezvous_order
from tests.unit.ownership_net import IDS, Net, accept, checked, rec


def test_result_is_recorded_only_after_a_replica_acked_it() -> None:
    net = Net()
    replica = rendezvous_order("t-1", [n for n in IDS if n != "a"])[0]
    net.drop = lambda src, dst, ev: isinstance(ev, m.AckReplica)
    accept(net)
    net.start_and_finish("a", "t-1")
    assert [c for c in net.cmds(m.RecordFinal) if c.decided_here] == []
    assert net.copy(replica, "t-1").final
    net.drop = lambda src, dst, ev: False
    net.tick(1.5)  # the owner re-sends; the replica acks again
    assert len([c for c in net.cmds(m.RecordFinal, "a") if c.decided_here]) == 1


def test_owner_dying_before_any_replica_saw_its_result_never_recorded_it() -> None:
    net = Net()
    accept(net)
    net.drop = lambda src, dst, ev: src == "a"  # a's final copy never leaves a
    net.start_and_finish("a", "t-1")
    net.drop = lambda src, dst, ev: False
    net.kill("a")
    heir_runs = net.cmds(m.RunLocally)
    assert [r.reason for r in heir_runs][-1] == "taken over"
    assert [c for c in net.cmds(m.RecordFinal) if c.decided_here] == []


def test_heir_of_an_unacked_final_copy_records_the_same_run() -> None:
    net = Net()
    accept(net)
    net.drop = lambda src, dst, ev: isinstance(ev, m.AckReplica)
    net.start_and_finish("a", "t-1")
    net.drop = lambda src, dst, ev: False
    net.kill("a")
    decided = [c.copy.run_id for c in net.cmds(m.RecordFinal) if c.decided_here]
    assert decided == ["a:1:1"] and net.cmds(m.RunLocally)[-1].reason == "accepted"


def test_minority_side_neither_takes_over_nor_decides() -> None:
    net = Net()
    accept(net, node="d")
    for gone in ("a", "b", "c"):  # d and e are cut off from a, b and c
        for n in ("d", "e"):
            net.feed(n, m.PeerDown(gone))
    net.run()
    assert not net.cores["d"].in_quorum()
    net.log.clear()
    net.start_and_finish("d", "t-1")
    assert net.cmds(m.RecordFinal) == [] and net.cores["d"].counters.results_held == 1
    net.drop = lambda src, dst, ev: (src in "de") != (dst in "de")  # the cut
    accept(net, node="d", task_id="t-2")
    assert net.cores["e"].role("t-2") == REPLICA
    net.feed("e", m.PeerDown("d"))  # e, alone now, has no quorum: takes nothing over
    assert [c for c in net.cmds(m.RunLocally) if c.reason == "taken over"] == []
    assert net.cores["e"].role("t-2") == REPLICA


def test_suspected_members_do_not_count_towards_the_quorum() -> None:
    core = checked("a", set(IDS))
    for n in ("b", "c"):
        core.handle(m.PeerSuspected(n), 0.0)
    assert core.in_quorum()
    core.handle(m.PeerSuspected("d"), 0.0)
    assert not core.in_quorum()
    core.handle(m.PeerUp("d"), 0.0)
    assert core.in_quorum()


def test_held_result_is_decided_after_the_quorum_is_back_for_a_while() -> None:
    net = Net()
    accept(net, node="d")
    for gone in ("a", "b", "c"):
        net.feed("d", m.PeerDown(gone))
    net.start_and_finish("d", "t-1")
    for back in ("a", "b", "c"):
        net.feed("d", m.PeerUp(back))
    net.run()
    assert [c for c in net.cmds(m.RecordFinal) if c.decided_here] == []
    net.tick(2.5)
    assert len([c for c in net.cmds(m.RecordFinal, "d") if c.decided_here]) == 1


def test_peer_chosen_hands_a_taken_over_task_to_a_peer() -> None:
    net = Net()
    accept(net)
    heir = net.copy("a", "t-1").replicas[0]
    net.kill("a")
    target = next(n for n in IDS if n not in ("a", heir))
    net.feed(heir, m.PeerChosen("t-1", target))
    net.run()
    assert net.queues[heir] == [] and net.queues[target] == ["t-1"]
    assert net.cores[target].role("t-1") == OWNER


def test_result_held_in_a_minority_is_proposed_when_the_new_owner_is_back() -> None:
    """After a heal, the new owner's copy may reach the old one before gossip shows
    the new owner alive there; the held result is kept and proposed once it is, so
    the first result can still win (and a later one is dropped and counted)."""
    net = Net(("a", "b", "c"))
    net.feed("a", m.TaskAccepted(rec()))
    net.run()
    copy = net.cores["a"].get("t-1")
    assert copy is not None
    replica = copy.replicas[0]
    other = next(n for n in ("b", "c") if n != replica)
    net.feed("a", m.TaskStarted("t-1", 1.0))
    net.run()
    # a is cut off: it sees both peers gone or suspected, loses the quorum, finishes.
    net.feed("a", m.PeerDown(replica))
    net.feed("a", m.PeerSuspected(other))
    assert not net.cores["a"].in_quorum()
    net.feed("a", m.TaskFinished("t-1", "succeeded", 2.0, result="from a"))
    assert not net.copy("a", "t-1").final
    # Healed: `other` is back in a's view, the heir (`replica`) not yet; its newer copy
    # (it took the task over at epoch 2) arrives first.
    net.feed("a", m.PeerUp(other))
    newer = copy.with_owner(replica, copy.epoch + 1, (other,))
    net.inflight.clear()
    net.feed("a", m.Replicate(newer, sender=replica))
    proposals = net.cmds(m.Replicate, "a")
    net.log.clear()
    assert not any(p.copy.final for p in proposals)  # the heir is unreachable: held
    net.feed("a", m.PeerUp(replica))
    finals = [msg for to, msg in net.sent(m.Replicate, "a") if to == replica and msg.copy.final]
    assert len(finals) == 1 and finals[0].copy.record.result == "from a"
    assert finals[0].copy.record.node == "a"  # who ran it, not the heir's re-queued copy
    assert net.cores["a"].get("t-1") is None  # proposed, then forgotten


def test_dead_members_leave_the_quorum_count_only_after_dead_quorum_after_s() -> None:
    """Issue 15, defect 8: three of five dead stalls take-over until gossip reaps
    them; with `dead_quorum_after_s` the two survivors regain a quorum after it."""
    for after_s, expect_quorum in ((None, False), (30.0, True)):
        core = checked("d", set(IDS), dead_quorum_after_s=after_s)
        for gone in ("a", "b", "c"):
            core.handle(m.PeerDown(gone), 10.0)
        assert not core.in_quorum()
        assert core.next_deadline() == (40.0 if after_s else None)
        core.tick(39.9)
        assert not core.in_quorum()
        core.tick(40.0)
        assert core.in_quorum() is expect_quorum
        assert ("a" in core.known) is not expect_quorum


def test_a_member_back_before_the_deadline_keeps_counting() -> None:
    core = checked("d", set(IDS), dead_quorum_after_s=30.0)
    for gone in ("a", "b", "c"):
        core.handle(m.PeerDown(gone), 10.0)
    core.handle(m.PeerUp("a"), 20.0)
    core.tick(45.0)
    assert core.known == {"a", "d", "e"} and core.in_quorum()


def test_an_ack_of_an_older_revision_means_the_replica_holds_the_task() -> None:
    """A task that starts at once gets a new revision before its first ack returns;
    the replica still holds it, so the 202 need not wait (it used to be refused)."""
    core = checked("a", {"a", "b"})
    core.handle(m.TaskAccepted(rec()), 0.0)
    copy = core.get("t-1")
    assert copy is not None and copy.replicas == ("b",)
    assert not core.held_elsewhere("t-1")
    core.handle(m.TaskStarted("t-1", 0.1), 0.1)
    core.handle(m.AckReplica("t-1", copy.epoch, copy.rev, sender="b"), 0.2)
    assert core.held_elsewhere("t-1") and not core.settled("t-1")


def test_no_second_holder_is_not_safe_unless_alone_from_the_start() -> None:
    alone = checked("a")
    alone.handle(m.TaskAccepted(rec()), 0.0)
    assert alone.held_elsewhere("t-1")
    left_alone = checked("a", {"a", "b"})
    left_alone.handle(m.PeerDown("b"), 0.0)
    left_alone.handle(m.TaskAccepted(rec()), 0.0)
    assert left_alone.settled("t-1") and not left_alone.held_elsewhere("t-1")
