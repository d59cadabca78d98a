"""The task-ownership core: replication, take-over, hand-over (forward and steal), results.

A tiny synchronous router (`Net`) carries commands between cores as events, so each
rule is exercised through the same messages a driver would send.
"""

from __future__ import annotations

import ast
import pathlib
from collections import deque
from collections.abc import Callable
from typing import Any

import pytest

from meshlb.mesh import ownership_msgs as m
from meshlb.mesh.ownership import OFFERING, OWNER, PENDING, REPLICA, Ownership
from meshlb.mesh.placement import Candidate
from meshlb.mesh.replication import choose_replicas, rendezvous_order
from meshlb.mesh.stealing import Waiting
from meshlb.tasks.model import TaskRecord

IDS = ("a", "b", "c", "d", "e")


def rec(task_id: str = "t-1", model: str = "m", est: int = 100, prio: int = 5) -> TaskRecord:
    return TaskRecord(task_id, "generate", model, {}, prio, "a", 0.0, est_tokens=est)


class Net:
    """Cores wired together; messages queue in `inflight` until `run()`."""

    def __init__(self, ids: tuple[str, ...] = IDS, replication: int = 2) -> None:
        self.cores = {i: Ownership(i, set(ids), replication) for i in ids}
        self.queues: dict[str, list[str]] = {i: [] for i in ids}
        self.log: list[tuple[str, m.Command]] = []
        self.inflight: deque[tuple[str, m.Event]] = deque()
        self.drop: Callable[[str, str, m.Event], bool] = lambda src, dst, ev: False
        self.now = 0.0

    def feed(self, node: str, event: m.Event) -> None:
        self.apply(node, self.cores[node].handle(event, self.now))

    def apply(self, node: str, cmds: list[m.Command]) -> None:
        for c in cmds:
            self.log.append((node, c))
            q = self.queues[node]
            if isinstance(c, m.RunLocally):
                q.append(c.task_id)
            elif isinstance(c, m.Unqueue) and c.task_id in q:
                q.remove(c.task_id)
            elif isinstance(c, m.SendStealRequest):
                self.inflight.append((c.to, self._steal_event(node, c)))
            elif (routed := m.as_event(c, node)) is not None:
                dst, ev = routed
                if dst in self.cores and not self.drop(node, dst, ev):
                    self.inflight.append((dst, ev))

    def _steal_event(self, thief: str, c: m.SendStealRequest) -> m.StealRequested:
        core = self.cores[c.to]
        waiting = []
        for tid in self.queues[c.to]:
            copy = core.get(tid)
            assert copy is not None
            waiting.append(Waiting(tid, copy.record.model, copy.record.est_tokens))
        return m.StealRequested(thief, c.n, c.models, c.tokens_per_s, tuple(waiting), 10.0, 1)

    def run(self) -> None:
        while self.inflight:
            dst, ev = self.inflight.popleft()
            if dst in self.cores:
                self.feed(dst, ev)

    def tick(self, dt: float) -> None:
        self.now += dt
        for node, core in list(self.cores.items()):
            self.apply(node, core.tick(self.now))
        self.run()

    def kill(self, node: str) -> None:
        del self.cores[node]
        self.inflight = deque((d, e) for d, e in self.inflight if d != node)
        for other in list(self.cores):
            self.feed(other, m.PeerDown(node))
        self.run()

    def cmds(self, kind: type[Any], node: str | None = None) -> list[Any]:
        return [c for n, c in self.log if isinstance(c, kind) and (node is None or n == node)]

    def holders(self, task_id: str) -> dict[str, str]:
        return {n: r for n, c in self.cores.items() if (r := c.role(task_id)) is not None}

    def start_and_finish(self, node: str, task_id: str, at: float = 1.0) -> None:
        self.feed(node, m.TaskStarted(task_id, at))
        self.feed(node, m.TaskFinished(task_id, "succeeded", at + 1, result={"r": node}))
        self.run()


def accept(net: Net, node: str = "a", task_id: str = "t-1", **kw: Any) -> None:
    net.feed(node, m.TaskAccepted(rec(task_id), **kw))
    net.run()


# --------------------------------------------------------------------- replication


def test_accept_queues_locally_and_replicates_to_the_rendezvous_choice() -> None:
    net = Net()
    accept(net)
    [run] = net.cmds(m.RunLocally)
    assert run.task_id == "t-1" and net.queues["a"] == ["t-1"]
    expected = rendezvous_order("t-1", [n for n in IDS if n != "a"])[0]
    assert [c.node_id for c in net.cmds(m.ReplicateTo)] == [expected]
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
    heir = net.cores["a"].get("t-1").replicas[0]  # type: ignore[union-attr]
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
    first, second = net.cores["a"].get("t-1").replicas  # type: ignore[union-attr]
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
    assert [type(c).__name__ for n, c in net.log if n == "b"][:2] == ["AckHandOver", "RunLocally"]
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
    net.drop = lambda src, dst, ev: isinstance(ev, m.HandOverAcked)
    accept(net, forward_to=to)
    assert net.cores[to].role("t-1") == PENDING and net.queues[to] == []
    net.tick(2.5)  # the offer expires
    assert net.queues["a"] == ["t-1"] and net.cores["a"].get("t-1").epoch == 3  # type: ignore[union-attr]
    net.drop = lambda src, dst, ev: False
    net.tick(1.0)  # the target re-acks (if still pending); a answers with an abort
    if not target_is_replica:
        assert net.cmds(m.ConfirmHandOver)[-1].aborted == (("t-1", 2),)
    assert net.queues[to] == [] and net.cores[to].role("t-1") in (None, REPLICA)
    assert len(net.cmds(m.RunLocally)) == 1
    assert net.holders("t-1")["a"] == OWNER


def test_lost_confirm_is_recovered_by_re_ack() -> None:
    net = Net()
    net.drop = lambda src, dst, ev: isinstance(ev, m.HandOverConfirmed)
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
    net.drop = lambda src, dst, ev: isinstance(ev, m.HandOverConfirmed)
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
        assert net.cores["b"].get(tid).owner == "b"  # type: ignore[union-attr]


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
    assert net.cmds(m.SendStealRequest) == []


# --------------------------------------------------------------------- results


def test_second_result_is_dropped_and_counted() -> None:
    net = Net()
    accept(net)
    net.start_and_finish("a", "t-1")
    net.feed("a", m.TaskFinished("t-1", "failed", 9.0, error="late"))
    assert len(net.cmds(m.DropDuplicateResult)) == 1
    assert net.cores["a"].counters.duplicates_dropped == 1
    assert net.cores["a"].get("t-1").record.state == "succeeded"  # type: ignore[union-attr]
    assert len([c for c in net.cmds(m.RecordFinal) if c.decided_here]) == 1


def test_result_of_a_falsely_dead_owner_wins_over_the_heirs_later_run() -> None:
    net = Net()
    accept(net)
    net.feed("a", m.TaskStarted("t-1", 1.0))
    net.run()
    heir = net.cores["a"].get("t-1").replicas[0]  # type: ignore[union-attr]
    net.feed(heir, m.PeerDown("a"))  # a false death: a keeps running
    net.run()
    net.feed(heir, m.TaskStarted("t-1", 3.0))
    net.feed("a", m.TaskFinished("t-1", "succeeded", 4.0, result="from a"))
    net.run()
    net.feed(heir, m.TaskFinished("t-1", "succeeded", 5.0, result="from heir"))
    assert net.cores[heir].get("t-1").record.result == "from a"  # type: ignore[union-attr]
    assert len(net.cmds(m.DropDuplicateResult, heir)) == 1


def test_partition_heal_converges_on_the_earlier_result() -> None:
    net = Net(ids=("a", "b", "c"))
    accept(net)
    heir = net.cores["a"].get("t-1").replicas[0]  # type: ignore[union-attr]
    net.feed(heir, m.PeerDown("a"))
    net.feed("a", m.PeerDown(heir))
    net.inflight.clear()
    net.start_and_finish(heir, "t-1", at=1.0)
    net.start_and_finish("a", "t-1", at=2.0)
    net.feed(heir, m.PeerUp("a"))
    net.feed("a", m.PeerUp(heir))
    net.run()
    copies = [c for core in net.cores.values() if (c := core.get("t-1")) is not None]
    assert len(copies) >= 2 and all(c.record.result == {"r": heir} for c in copies)
    assert sum(core.counters.duplicates_dropped for core in net.cores.values()) >= 1


# --------------------------------------------------------------------- purity


def test_cores_import_no_io() -> None:
    root = pathlib.Path(__file__).resolve().parents[2] / "meshlb" / "mesh"
    for name in ("ownership.py", "ownership_msgs.py", "replication.py", "stealing.py"):
        tree = ast.parse((root / name).read_text())
        mods = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import)
                for a in n.names}  # fmt: skip
        mods |= {n.module.split(".")[0] for n in ast.walk(tree)
                 if isinstance(n, ast.ImportFrom) and n.module}  # fmt: skip
        assert not mods & {"trio", "time", "socket", "httpx", "random"}, name


# --------------------------------------------------------------------- quorum and acks


def test_result_is_recorded_only_after_a_replica_acked_it() -> None:
    net = Net()
    replica = rendezvous_order("t-1", [n for n in IDS if n != "a"])[0]
    net.drop = lambda src, dst, ev: isinstance(ev, m.ReplicaAcked)
    accept(net)
    net.start_and_finish("a", "t-1")
    assert [c for c in net.cmds(m.RecordFinal) if c.decided_here] == []
    assert net.cores[replica].get("t-1").final  # type: ignore[union-attr]
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
    net.drop = lambda src, dst, ev: isinstance(ev, m.ReplicaAcked)
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
    core = Ownership("a", set(IDS))
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
    heir = net.cores["a"].get("t-1").replicas[0]  # type: ignore[union-attr]
    net.kill("a")
    target = next(n for n in IDS if n not in ("a", heir))
    net.feed(heir, m.PeerChosen("t-1", target))
    net.run()
    assert net.queues[heir] == [] and net.queues[target] == ["t-1"]
    assert net.cores[target].role("t-1") == OWNER
