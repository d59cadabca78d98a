"""Conversation affinity's keys and map (`meshlb.mesh.affinity`); how placement prices
a conversation's host is in test_residency.py."""

from __future__ import annotations

import pytest

from meshlb.mesh.affinity import (
    SLOT_SURVIVAL,
    ConversationMap,
    Served,
    chat_turn,
    saving_s,
    survival,
)

A, B = "a:latest", "b:latest"


def test_chat_turn_keys_chain_turns() -> None:
    t1 = [{"role": "user", "content": "hi"}]
    t2 = [*t1, {"role": "assistant", "content": "hello"}, {"role": "user", "content": "more"}]
    first, second = chat_turn(A, {"messages": t1}), chat_turn(A, {"messages": t2})
    assert first is not None and first.previous is None
    assert second is not None and second.previous == first.key and second.previous_chars > 0
    other = chat_turn(B, {"messages": t2})
    assert other is not None and other.previous != first.key  # per model
    assert chat_turn(A, {"prompt": "x"}) is None
    assert saving_s(4000, 50.0) == pytest.approx(1.0) and saving_s(4000, 0.0) == 0.0


def test_conversation_map_is_bounded_least_recent_out() -> None:
    m = ConversationMap(capacity=2)
    a, b, c = Served("a"), Served("b", 3), Served("c")
    m.put("k1", a)
    m.put("k2", b)
    assert m.get("k1") == a  # k1 is now the most recent
    m.put("k3", c)
    assert (m.get("k1"), m.get("k2"), m.get("k3"), len(m)) == (a, None, c, 2)


@pytest.mark.parametrize(
    ("then", "now", "chance"),
    [
        (10, 11, 1.0),  # only the turn itself started since: its slot is intact
        (10, 12, SLOT_SURVIVAL),  # one other request
        (10, 14, SLOT_SURVIVAL**3),
        (10, 10, 1.0),  # gossip has not shown the turn start yet
    ],
)
def test_a_prefix_survives_each_other_request_on_its_host_with_a_fixed_chance(
    then: int, now: int, chance: float
) -> None:
    assert survival(then, now) == pytest.approx(chance)
