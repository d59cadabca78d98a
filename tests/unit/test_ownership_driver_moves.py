"""The Trio driver of the ownership core, continued: stealing, results, gossip, offers
and the known bugs kept fixed (wiring as in `test_ownership_driver.py`)."""

from __future__ import annotations

from dataclasses import dataclass

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
from tests.unit.ownership_driver_helpers import (
    WireNet,
    candidate,
    holds,
    mesh,
    meta,
    record,
    running,
)

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
