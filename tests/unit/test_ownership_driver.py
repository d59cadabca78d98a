"""The Trio driver of the ownership core, with 1-3 drivers wired in process: one
node, replication, forwarding, owner death and restarts (stealing, results, gossip
and offers: `test_ownership_driver_moves.py`).

Each driver gets a fake executor (records run/unqueue/record_final; the test plays
the local scheduler by feeding TaskStarted/TaskFinished) and an in-memory sender
that carries every command through `encode_batch`/`decode_batch` to the peer's
`receive`, so the driver, the core and the wire codec are exercised together.
Timers run under pytest-trio's `autojump_clock` (virtual time, no real waiting).
"""

from __future__ import annotations

import pytest
import trio
from trio.testing import MockClock

from meshlb.gossip.events import (
    MemberDied,
    MemberJoined,
    MemberLeft,
    MetaChanged,
)
from meshlb.mesh import ownership_msgs as m
from meshlb.mesh.ownership import OWNER, PENDING, REPLICA
from tests.unit.ownership_driver_helpers import (
    WireNet,
    candidate,
    holds,
    mesh,
    meta,
    record,
    running,
    task_replicated_on,
)

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
