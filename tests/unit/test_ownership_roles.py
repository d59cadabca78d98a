"""The ownership core's roles, its transition table, `validate`, and causes."""

from __future__ import annotations

import pytest

from meshlb.mesh import ownership_msgs as m
from meshlb.mesh.ownership import TRANSITIONS, Change, IllegalTransition, Role
from meshlb.mesh.ownership.roles import Table, next_role
from meshlb.mesh.replication import TaskCopy
from tests.unit.ownership_net import Net, accept, checked, rec


def test_every_role_is_reachable_and_can_be_forgotten() -> None:
    reached = {role for role in TRANSITIONS.values() if role is not None}
    assert reached == set(Role)
    assert all((role, Change.FORGET) in TRANSITIONS for role in Role)


@pytest.mark.parametrize(
    ("role", "change"),
    [(None, Change.OFFER), (Role.REPLICA, Change.COMMIT), (Role.OWNER, Change.CONFIRM),
     (Role.OFFERING, Change.TAKE_OVER), (Role.OWNER, Change.ACCEPT)],
)  # fmt: skip
def test_a_change_not_in_the_table_raises(role: Role | None, change: Change) -> None:
    with pytest.raises(IllegalTransition, match=change.value):
        next_role(role, change)


def test_the_table_refuses_an_illegal_move_and_keeps_the_entry() -> None:
    table = Table(600.0)
    c = TaskCopy(rec(), "a", 1, ("b",))
    assert table.move(c, Change.LEARN, 0.0) is Role.REPLICA
    with pytest.raises(IllegalTransition):
        table.move(c, Change.COMMIT, 0.0)
    assert table.role("t-1") is Role.REPLICA
    assert table.move(c, Change.FORGET, 0.0) is None and table.overtaken(c)


def test_validate_finds_a_broken_invariant() -> None:
    core = checked("a", {"a", "b", "c"})
    core.handle(m.TaskAccepted(rec(), forward_to="b"), 0.0)
    assert core.role("t-1") is Role.OFFERING
    core._handovers.offers.clear()  # an OFFERING entry without its offer
    with pytest.raises(AssertionError, match="offering"):
        core.validate()


def test_commands_carry_the_stimulus_that_caused_them() -> None:
    net = Net()
    accept(net, forward_to="b")
    assert {c.cause for c in net.cmds(m.HandOver, "a")} == {"TaskAccepted t-1"}
    assert {c.cause for c in net.cmds(m.AckHandOver, "b")} == {"HandOver from a"}
    [run] = net.cmds(m.RunLocally, "b")
    assert run.cause == "ConfirmHandOver from a" and run.reason == "handed over"


def test_timer_commands_say_which_timer() -> None:
    net = Net()
    net.drop = lambda src, dst, ev: isinstance(ev, m.AckHandOver)
    accept(net, forward_to="b")
    net.log.clear()
    net.tick(2.5)  # the offer expires
    [run] = net.cmds(m.RunLocally, "a")
    assert run.reason == "taken back" and run.cause == "timer: offer of t-1 expired"
    assert all(msg.cause == "timer: offer of t-1 expired" for _, msg in net.sent(m.Replicate, "a"))


def test_a_message_the_driver_completes_is_refused_by_the_core() -> None:
    with pytest.raises(TypeError, match="StealAsk"):
        checked("a").handle(m.StealAsk(1, frozenset({"m"}), 1.0, sender="b"), 0.0)
