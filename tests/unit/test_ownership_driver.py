"""The Trio driver of the ownership core, with 1-3 drivers wired in process.

Each driver gets a fake executor (records run/unqueue/record_final; the test plays
the local scheduler by feeding TaskStarted/TaskFinished) and an in-memory sender
that carries every command through `encode_batch`/`decode_batch` to the peer's
`receive`, so the driver, the core and the wire codec are exercised together.
Timers run under pytest-trio's `autojump_clock` (virtual time, no real waiting).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import pytest
import trio
from trio.testing import MockClock

from meshlb.gossip.events import (
    Event as GossipEvent,
)
from meshlb.gossip.events import (
    JoinSucceeded,
    MemberDied,
    MemberJoined,
    MemberLeft,
    MemberReaped,
    MemberRefuted,
    MemberSuspected,
    MetaChanged,
)
from meshlb.mesh import ownership_msgs as m
from meshlb.mesh.ownership import OFFERING, OWNER, PENDING, REPLICA
from meshlb.mesh.ownership_driver import IDLE_CHECK_S
from meshlb.mesh.replication import choose_replicas
from tests.unit.ownership_driver_helpers import (
    WireNet,
    candidate,
    holds,
    meta,
    record,
)


def task_replicated_on(owner: str, replica: str, live: set[str]) -> str:
    """A task id whose replica (R=2), chosen by rendezvous on `owner`, is `replica`."""
    for i in range(1000):
        task_id = f"t-{i}"
        if choose_replicas(task_id, owner, (), live, 1) == (replica,):
            return task_id
    raise AssertionError("no such task id")


def mesh(*ids: str) -> WireNet:
    net = WireNet()
    for node_id in ids:
        net.add(node_id)
    net.introduce()
    net.flush()
    return net


@asynccontextmanager
async def running(net: WireNet, *ids: str) -> AsyncIterator[None]:
    """The drivers' run() loops (timers, idle checks) and background delivery."""
    async with trio.open_nursery() as nursery:
        nursery.start_soon(net.pump)
        for node_id in ids:
            nursery.start_soon(net.nodes[node_id].driver.run)
        yield
        nursery.cancel_scope.cancel()


# ------------------------------------------------------------------ one node


async def test_single_node_runs_settles_and_records_its_own_task(
    autojump_clock: MockClock,
) -> None:
    net = WireNet()
    a = net.add("A")
    a.driver.accept(record("t-1"), None)
    assert a.executor.runs == [("t-1", "accepted")]
    before = trio.current_time()
    assert await a.driver.wait_settled("t-1", 10.0) is True
    assert trio.current_time() == before  # nobody to wait for: settled at once
    a.start("t-1")
    a.finish("t-1", result={"response": "hello"})
    [(final, decided_here)] = a.executor.finals
    assert decided_here is True
    assert final.state == "succeeded" and final.result == {"response": "hello"}
    assert final.node == "A" and final.attempts == 1
    assert not net.inflight and net.lost == 0  # no peers: nothing was sent
    assert a.driver.stats()["accepted"] == 1 and a.driver.stats()["owned"] == 0
    assert a.driver.stats()["succeeded"] == 1 and a.driver.stats()["failed"] == 0


# ------------------------------------------------------------------ replication


async def test_two_nodes_replicate_settle_and_share_one_result(autojump_clock: MockClock) -> None:
    net = mesh("A", "B")
    a, b = net.nodes["A"], net.nodes["B"]
    async with running(net):
        a.driver.accept(record("t-1"), None)
        before = trio.current_time()
        assert await a.driver.wait_settled("t-1", 5.0) is True
        assert trio.current_time() == before  # woken by B's ack, not by the timeout
    copy = b.driver.get("t-1")
    assert copy is not None and copy.owner == "A" and copy.replicas == ("B",)
    assert b.role("t-1") == REPLICA and b.executor.runs == []
    assert a.executor.runs == [("t-1", "accepted")]

    a.start("t-1")
    a.finish("t-1", result={"response": "from A"})
    assert a.executor.finals == []  # decided, but recorded only once B holds it
    net.flush()
    [(on_a, decided_a)] = a.executor.finals
    [(on_b, decided_b)] = b.executor.finals
    assert (decided_a, decided_b) == (True, False)
    assert on_a.result == on_b.result == {"response": "from A"}
    assert on_b.state == "succeeded" and on_b.node == "A"
    on_owner, on_replica = a.driver.get("t-1"), b.driver.get("t-1")
    assert on_owner is not None and on_replica is not None
    assert on_replica.run_id == on_owner.run_id == "A:1:1"  # one run, known to both


async def test_wait_settled_gives_up_when_the_replica_never_acks(
    autojump_clock: MockClock,
) -> None:
    net = mesh("A", "B")
    a = net.nodes["A"]
    net.down.add("B")  # B is alive for gossip, but its HTTP never answers
    async with running(net, "A"):
        a.driver.accept(record("t-1"), None)
        before = trio.current_time()
        assert await a.driver.wait_settled("t-1", 3.0) is False
        assert trio.current_time() - before == pytest.approx(3.0)
    assert net.lost >= 3  # the core kept re-sending the copy (every ACK_RETRY_S)
    assert a.executor.runs == [("t-1", "accepted")]  # it runs here all the same


# ------------------------------------------------------------------ forwarding


async def test_forward_hands_the_task_to_the_chosen_peer_in_three_phases() -> None:
    net = mesh("A", "B")
    a, b = net.nodes["A"], net.nodes["B"]
    net.hold = holds(m.ConfirmHandOver)
    a.driver.accept(record("t-1"), forward_to="B")
    net.flush()
    assert b.role("t-1") == PENDING and b.executor.runs == []  # acked, not queued yet
    assert a.driver.core.settled("t-1") is True  # A is a replica of B's copy now
    net.release()
    assert a.executor.runs == [] and b.executor.runs == [("t-1", "handed over")]
    assert "HandOver" in net.sent_types("A") and "AckHandOver" in net.sent_types("B")
    copy = a.driver.get("t-1")
    assert copy is not None and copy.owner == "B" and copy.epoch == 2 and copy.replicas == ("A",)
    assert (a.role("t-1"), b.role("t-1")) == (REPLICA, OWNER)
    assert await a.driver.wait_settled("t-1", 0.0) is True
    sa, sb = a.driver.stats(), b.driver.stats()
    assert (sa["accepted"], sa["forwarded"], sa["owned"], sa["copies"]) == (1, 1, 0, 1)
    assert (sb["received"], sb["owned"], sb["stolen_by_here"]) == (1, 1, 0)
    assert b.driver.counters.received.forward == 1


async def test_result_of_a_forwarded_task_is_recorded_by_its_new_owner() -> None:
    net = mesh("A", "B")
    a, b = net.nodes["A"], net.nodes["B"]
    a.driver.accept(record("t-1"), forward_to="B")
    net.flush()
    b.start("t-1")
    b.finish("t-1", result="done on B")
    net.flush()
    assert [(r.result, d) for r, d in b.executor.finals] == [("done on B", True)]
    assert [(r.result, d) for r, d in a.executor.finals] == [("done on B", False)]


# ------------------------------------------------------------------ owner death


async def test_heir_takes_over_a_dead_owners_task_once_a_majority_confirms(
    autojump_clock: MockClock,
) -> None:
    net = mesh("A", "B", "C")
    a, b, c = (net.nodes[n] for n in "ABC")
    task = task_replicated_on("A", "B", {"A", "B", "C"})
    a.driver.accept(record(task), None)
    net.flush()
    assert b.role(task) == REPLICA and c.role(task) is None
    net.down.add("A")  # A crashes
    async with running(net, "B", "C"):
        b.driver.on_gossip(MemberDied("A", "B", 1))
        await trio.sleep(3.0)
        # C still sees A alive, so B's majority check fails: no take-over yet.
        assert b.executor.runs == [] and b.role(task) == REPLICA
        assert "CheckReach" in net.sent_types("B")
        c.driver.on_gossip(MemberDied("A", "C", 1))
        await trio.sleep(1.0)  # B's next round (REACH_RETRY_S) is confirmed by C
    assert b.executor.runs == [(task, "taken over")] and c.executor.runs == []
    copy = b.driver.get(task)
    assert copy is not None and copy.owner == "B" and copy.epoch == 2
    assert copy.replicas == ("C",) and c.role(task) == REPLICA
    assert b.driver.stats()["taken_over"] == 1
    assert b.driver.counters.received.taken_over == 1


async def test_heir_without_the_model_places_the_taken_over_task_on_a_peer() -> None:
    net = WireNet()
    a = net.add("A")
    b = net.add("B", models=("other",))
    c = net.add("C")
    net.introduce()
    b.view.alive_peers = [candidate("C")]  # B's gossiped view: C has the model
    task = task_replicated_on("A", "B", {"A", "B", "C"})
    a.driver.accept(record(task), None)
    net.flush()
    net.down.add("A")
    b.driver.on_gossip(MemberDied("A", "B", 1))
    c.driver.on_gossip(MemberDied("A", "C", 1))
    net.flush()
    assert b.executor.runs == []  # never queued on B
    assert c.executor.runs == [(task, "handed over")]
    assert c.driver.counters.received.replace == 1
    assert b.driver.counters.handed_over.replace == 1
    copy = c.driver.get(task)
    assert copy is not None and copy.owner == "C" and copy.epoch == 3
    assert (b.role(task), c.role(task)) == (REPLICA, OWNER)


async def test_graceful_leave_is_taken_over_without_a_majority_check() -> None:
    net = mesh("A", "B", "C")
    a, b = net.nodes["A"], net.nodes["B"]
    task = task_replicated_on("A", "B", {"A", "B", "C"})
    a.driver.accept(record(task), None)
    net.flush()
    net.down.add("A")
    b.driver.on_gossip(MemberLeft("A", 2))  # C has not heard yet: no fence for a leave
    net.flush()
    assert b.executor.runs == [(task, "taken over")]
    assert "CheckReach" not in net.sent_types("B")


# ------------------------------------------------------------------ restarts


@pytest.mark.parametrize(("new_boot", "restarted"), [("boot-2", True), ("boot-1", False)])
async def test_a_new_boot_id_in_gossip_meta_means_the_peer_lost_its_tasks(
    new_boot: str, restarted: bool
) -> None:
    net = mesh("A", "B")
    a, b = net.nodes["A"], net.nodes["B"]
    a.driver.accept(record("t-1"), None)
    net.flush()
    if restarted:  # a fresh process on A, which knows nothing of t-1
        a = net.add("A", new_boot)
    # Same incarnation bump either way; only the boot id tells a restart from new load.
    b.driver.on_gossip(MetaChanged("A", 2, meta(new_boot, queued=3)))
    net.flush()
    if restarted:
        assert b.executor.runs == [("t-1", "taken over")]
        copy = b.driver.get("t-1")
        assert copy is not None and copy.owner == "B" and copy.epoch == 2
        assert a.role("t-1") == REPLICA and a.executor.runs == []
        assert b.driver.stats()["taken_over"] == 1
    else:
        assert b.executor.runs == [] and b.role("t-1") == REPLICA
        assert b.driver.stats()["taken_over"] == 0
    assert "A" in b.driver.core.live


async def test_a_restart_seen_as_a_rejoin_with_a_new_boot_is_not_taken_over_twice() -> None:
    net = mesh("A", "B")
    a, b = net.nodes["A"], net.nodes["B"]
    a.driver.accept(record("t-1"), None)
    net.flush()
    net.down.add("A")
    b.driver.on_gossip(MemberDied("A", "B", 1))
    net.flush()
    assert b.executor.runs == [("t-1", "taken over")]
    net.down.discard("A")
    net.add("A", "boot-2")
    b.driver.on_gossip(MemberJoined("A", ("10.0.0.1", 7946), 3, meta("boot-2")))
    net.flush()
    assert b.executor.runs == [("t-1", "taken over")]  # already B's: nothing orphaned
    assert b.role("t-1") == OWNER and "A" in b.driver.core.live


# ------------------------------------------------------------------ stealing


def busy_victim_and_idle_thief(queued: int = 4) -> WireNet:
    """A slow A with `queued` tasks waiting; a fast, idle B that sees A's queue."""
    net = WireNet()
    a = net.add("A", tps=10.0)
    b = net.add("B", tps=100.0)
    net.introduce()
    for i in range(queued):
        a.driver.accept(record(f"t-{i}"), None)
    net.flush()
    b.executor.free = 2
    b.view.alive_peers = [candidate("A", queued=queued, tps=10.0)]
    net.delivered.clear()
    return net


async def test_idle_node_steals_the_tail_of_a_busy_queue_in_three_phases() -> None:
    net = busy_victim_and_idle_thief()
    a, b = net.nodes["A"], net.nodes["B"]
    net.hold = holds(m.ConfirmHandOver)
    b.driver.notice_idle()
    net.flush()
    assert net.sent_types("B")[0] == "StealAsk"
    assert net.sent_types("A")[0] == "HandOver"
    assert sorted(a.executor.unqueued) == ["t-2", "t-3"]  # offered: off A's queue
    assert b.executor.runs == []  # not B's until the confirm
    assert {b.role("t-2"), b.role("t-3")} == {PENDING}
    net.release()
    phases = [t for t in net.sent_types() if t in ("StealAsk", "DeclineSteal", "HandOver",
                                                   "AckHandOver", "ConfirmHandOver")]  # fmt: skip
    assert phases == ["StealAsk", "HandOver", "AckHandOver", "ConfirmHandOver"]
    assert a.executor.queue == ["t-0", "t-1"]
    assert sorted(b.executor.queue) == ["t-2", "t-3"]
    assert sorted(b.executor.runs) == [("t-2", "handed over"), ("t-3", "handed over")]
    assert a.executor.runs == [(f"t-{i}", "accepted") for i in range(4)]  # none again
    for task in ("t-2", "t-3"):
        assert (a.role(task), b.role(task)) == (REPLICA, OWNER)
    assert a.driver.stats()["stolen_from_here"] == 2
    assert b.driver.stats()["stolen_by_here"] == 2
    assert b.driver.stats()["steal_requests"] == 1


async def test_run_loop_steals_when_idle_and_no_task_runs_on_both_nodes(
    autojump_clock: MockClock,
) -> None:
    net = busy_victim_and_idle_thief(queued=3)
    a, b = net.nodes["A"], net.nodes["B"]
    b.executor.free = 1
    async with running(net, "A", "B"):
        await trio.sleep(IDLE_CHECK_S * 1.5)  # one idle check on B
        assert b.driver.stats()["steal_requests"] == 1
        b.executor.free = 0  # busy with what it took
        await trio.sleep(5 * IDLE_CHECK_S)
    assert b.executor.runs == [("t-2", "handed over")]
    assert a.executor.queue == ["t-0", "t-1"] and b.executor.queue == ["t-2"]
    assert not set(a.executor.queue) & set(b.executor.queue)
    assert a.executor.unqueued == ["t-2"]


async def test_victim_with_nothing_worth_giving_declines() -> None:
    net = busy_victim_and_idle_thief(queued=1)
    a, b = net.nodes["A"], net.nodes["B"]
    a.view.local = candidate("A", tps=1000.0, is_local=True)  # A is far faster: keep it
    b.driver.notice_idle()
    net.flush()
    assert net.sent_types("A")[-1:] == ["DeclineSteal"]
    assert a.executor.queue == ["t-0"] and b.executor.runs == []
    assert b.driver.core.next_deadline() is None  # B may ask again at once


async def test_hand_over_offers_a_queued_task_to_a_peer_before_leaving() -> None:
    net = mesh("A", "B")
    a, b = net.nodes["A"], net.nodes["B"]
    a.driver.accept(record("t-1"), None)
    net.flush()
    a.driver.hand_over("t-1", "B")
    net.flush()
    assert a.executor.unqueued == ["t-1"] and a.executor.queue == []
    assert b.executor.runs == [("t-1", "handed over")]
    assert b.driver.counters.received.replace == 1


# ------------------------------------------------------------------ results


async def test_a_late_second_result_is_dropped_and_counted() -> None:
    net = mesh("A", "B")
    a, b = net.nodes["A"], net.nodes["B"]
    a.driver.accept(record("t-1"), None)
    net.flush()
    a.start("t-1")
    a.finish("t-1", result="first")
    net.flush()
    a.driver.feed(m.TaskFinished("t-1", "failed", 9.0, error="late"))
    net.flush()
    assert [(r.result, r.state, d) for r, d in a.executor.finals] == [("first", "succeeded", True)]
    assert a.driver.stats()["duplicates_dropped"] == 1
    assert a.driver.counters.duplicates_dropped == 1
    copy = b.driver.get("t-1")
    assert copy is not None and copy.record.result == "first"
    assert len(b.executor.finals) == 1


async def test_a_replicas_late_result_loses_to_the_recorded_one() -> None:
    """A replica that ran the task too (it thought the owner dead) is too late."""
    net = mesh("A", "B")
    a, b = net.nodes["A"], net.nodes["B"]
    a.driver.accept(record("t-1"), None)
    net.flush()
    a.start("t-1")
    a.finish("t-1", result="first")
    net.flush()
    b.driver.feed(m.TaskFinished("t-1", "succeeded", 5.0, result="second"))
    net.flush()
    assert b.driver.stats()["duplicates_dropped"] == 1
    assert [r.result for r, _ in b.executor.finals] == ["first"]


# ------------------------------------------------------------------ gossip


@dataclass(frozen=True)
class SomethingNew:
    """An event type a newer gossip layer might add."""

    node: str


async def test_on_gossip_ignores_events_about_itself_and_unknown_events() -> None:
    net = mesh("A", "B")
    a = net.nodes["A"]
    a.driver.accept(record("t-1"), None)
    net.flush()
    sent = len(net.delivered)
    live, known = set(a.driver.core.live), set(a.driver.core.known)
    about_me: list[GossipEvent] = [
        MemberReaped("A"),
        MemberDied("A", "B", 1),
        MemberLeft("A", 2),
        MemberSuspected("A", "B", 2),
        MemberRefuted("A", 3, "B"),
        MemberJoined("A", ("10.0.0.1", 7946), 4, meta("another-boot")),
        MetaChanged("A", 5, meta("yet-another")),
    ]
    for ev in about_me:
        a.driver.on_gossip(ev)
        assert (a.driver.core.live, a.driver.core.known) == (live, known), ev
    a.driver.on_gossip(JoinSucceeded(("10.0.0.2", 7946), 2))  # no `node`
    a.driver.on_gossip(SomethingNew("B"))  # type: ignore[arg-type]
    a.driver.on_gossip(object())  # type: ignore[arg-type]
    net.flush()
    assert a.driver.core.live == live and a.driver.core.known == known == {"A", "B"}
    assert a.driver.core.suspected == set()
    assert a.role("t-1") == OWNER and a.executor.runs == [("t-1", "accepted")]
    assert len(net.delivered) == sent


async def test_on_gossip_maps_membership_to_the_cores_peer_events() -> None:
    net = mesh("A", "B", "C")
    a = net.nodes["A"]
    assert a.driver.core.live == {"A", "B", "C"}
    a.driver.on_gossip(MemberSuspected("B", "C", 1))
    assert a.driver.core.suspected == {"B"}
    a.driver.on_gossip(MemberRefuted("B", 2, "C"))
    assert a.driver.core.suspected == set()
    a.driver.on_gossip(MemberDied("C", "B", 1))
    assert a.driver.core.live == {"A", "B"}
    a.driver.on_gossip(MemberJoined("C", ("10.0.0.3", 7946), 2, meta("boot-1")))
    assert a.driver.core.live == {"A", "B", "C"}


# ------------------------------------------------------------------ offers


async def test_an_unanswered_offer_is_taken_back_by_the_run_loop(
    autojump_clock: MockClock,
) -> None:
    net = mesh("A", "B")
    a, b = net.nodes["A"], net.nodes["B"]
    net.hold = holds(m.HandOver)  # B never hears of the offer
    async with running(net, "A"):
        a.driver.accept(record("t-1"), forward_to="B")
        assert a.role("t-1") == OFFERING and a.executor.runs == []
        await trio.sleep(3.0)  # HANDOFF_TIMEOUT_S
    assert a.executor.runs == [("t-1", "taken back")] and b.executor.runs == []
    assert a.role("t-1") == OWNER and a.driver.stats()["taken_back"] == 1


# ------------------------------------------------------------------ known bugs


async def test_a_stale_ack_from_a_restarted_peers_old_process_does_not_strand_the_task(
    autojump_clock: MockClock,
) -> None:
    net = mesh("A", "B")
    b = net.nodes["B"]
    net.hold = holds(m.AckHandOver)  # A's (boot-1) ack is slow to arrive
    b.driver.accept(record("t-1"), forward_to="A")
    net.flush()
    assert len(net.held) == 1 and b.role("t-1") == OFFERING
    a2 = net.add("A", "boot-2")  # A restarts; gossip shows its new boot id
    b.driver.on_gossip(MetaChanged("A", 2, meta("boot-2")))
    net.flush()
    async with running(net, "A", "B"):
        net.release()  # the old process's ack arrives now
        await trio.sleep(60.0)
    assert sorted(a2.executor.ran() + b.executor.ran()) == ["t-1"]


async def test_a_task_taken_back_on_a_node_without_its_model_is_placed_again() -> None:
    net = WireNet()
    a = net.add("A", models=("other",))
    net.add("B")
    c = net.add("C")
    net.introduce()
    a.driver.accept(record("t-1"), forward_to="B")  # placement chose B, which has the model
    net.down.add("B")
    net.flush()
    a.view.alive_peers = [candidate("C")]
    a.driver.on_gossip(MemberDied("B", "A", 1))  # the offer's target died: taken back
    net.flush()
    assert a.executor.runs == []  # A cannot run the model
    assert c.executor.runs == [("t-1", "handed over")]


async def test_an_unreadable_meta_does_not_make_the_next_one_look_like_a_restart() -> None:
    net = mesh("A", "B")
    a, b = net.nodes["A"], net.nodes["B"]
    a.driver.accept(record("t-1"), None)
    net.flush()
    b.driver.on_gossip(MetaChanged("A", 2, b"\x81\xa1v\x01"))  # msgpack {"v": 1}: no address
    b.driver.on_gossip(MetaChanged("A", 3, meta("boot-1")))  # same process as before
    net.flush()
    assert b.executor.runs == [] and a.role("t-1") == OWNER
