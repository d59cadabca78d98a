"""The ownership protocol's wire codec: every message round-trips to itself (with
the envelope's sender), and no input makes decoding raise anything but WireError."""

from __future__ import annotations

import dataclasses
from typing import Any, cast

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meshlb.mesh import ownership_msgs as m
from meshlb.mesh import ownership_wire as w
from meshlb.mesh.ownership_wire import (
    MAX_BATCH_BYTES,
    Batch,
    WireError,
    decode_batch,
    destination,
    encode_batch,
    is_network_command,
)
from meshlb.mesh.replication import TaskCopy
from meshlb.tasks.model import TaskRecord

RESULT = {
    "model": "llama3.2:1b",
    "message": {"role": "assistant", "content": "héllo ✓", "tool_calls": [{"f": {"x": [1, 2.5]}}]},
    "done": True,
    "eval_count": 2**40,
    "embeddings": [[0.1, -0.2], []],
    "context": None,
}


def record(task_id: str = "t-1", **changes: Any) -> TaskRecord:
    rec = TaskRecord(task_id, "chat", "llama3.2:1b", {"messages": [{"role": "user"}]}, 3, "a", 1.5)
    return dataclasses.replace(rec, **changes)


def final_record(task_id: str = "t-2") -> TaskRecord:
    """Every field set, none at its default."""
    return record(
        task_id, timeout_s=60.0, idempotency_key="idem-1", state="succeeded", node="b",
        attempts=2, started_at=2.0, finished_at=3.25, result=RESULT, error="partial",
        error_status=504, est_tokens=120, extra={"trace": ["x", {"y": None}]}, priority=-1,
    )  # fmt: skip


def copy(rec: TaskRecord, run_id: str | None = None) -> TaskCopy:
    return TaskCopy(rec, "a", 3, ("b", "c"), frozenset({"a", "b", "c", "d"}), run_id, 7)


NON_STEAL: list[m.Send] = [
    m.Send("b", m.Replicate(copy(record()))),
    m.Send("b", m.Replicate(copy(final_record(), run_id="r-1"), cause="TaskFinished t-2")),
    m.Send("c", m.Replicate(copy(record("t-3", request={}, result=[1, "two", None])))),
    m.Send("b", m.AckReplica("t-1", 3, 7)),
    m.Send("b", m.AckReplica("t-2", 3, 8, "r-1")),
    m.Send("c", m.HandOver((copy(record()), copy(final_record(), "r-1")), "steal")),
    m.Send("c", m.HandOver(())),
    m.Send("a", m.AckHandOver((("t-1", 3), ("t-2", 4)))),
    m.Send("c", m.ConfirmHandOver((("t-1", 3),), (("t-2", 4),))),
    m.Send("c", m.ConfirmHandOver((), ())),
    m.Send("d", m.DeclineSteal()),
    m.Send("b", m.CheckReach(12)),
    m.Send("a", m.AnswerReach(12, frozenset({"c", "d"}))),
    m.Send("a", m.AnswerReach(13)),
]
STEAL = m.Send("a", m.StealAsk(2, frozenset({"llama3.2:1b", "qwen"}), 41.5))
LOCAL: list[m.Command] = [
    m.RunLocally("t-1", record()),
    m.Unqueue("t-1"),
    m.RecordFinal(copy(final_record(), "r-1"), decided_here=True),
    m.DropDuplicateResult("t-1", "r-2", "r-1"),
]


def network(cmds: list[m.Send]) -> list[w.NetworkCommand]:
    out = [c for c in cmds if is_network_command(c)]
    assert len(out) == len(cmds)
    return out


def test_every_message_round_trips_to_itself_from_the_envelopes_sender() -> None:
    cmds = network([*NON_STEAL, STEAL])
    batch = decode_batch(encode_batch("z", "boot-1", cmds))
    assert (batch.sender, batch.boot) == ("z", "boot-1")
    assert list(batch.items) == [dataclasses.replace(c.msg, sender="z") for c in cmds]
    assert batch.items[1].cause == "TaskFinished t-2"  # why it was sent travels with it


def test_every_message_type_has_a_wire_form_and_a_unique_tag() -> None:
    assert sorted(w.TAGS) == sorted(cls.TAG for cls in m.MESSAGES)
    classes: list[type] = list(m.MESSAGES)
    for cls in classes:
        assert w._model(cls).model_fields  # or raises: a field without a wire key
    assert {type(c.msg) for c in [*NON_STEAL, STEAL]} == set(m.MESSAGES)


def test_a_sender_in_an_item_is_not_believed() -> None:
    raw = msgpack.unpackb(encode_batch("z", "b0", network([NON_STEAL[3]])))
    raw["i"][0]["sender"] = "intruder"
    (ack,) = decode_batch(msgpack.packb(raw)).items
    assert ack.sender == "z"


def test_a_batch_from_a_node_without_causes_decodes() -> None:
    raw = msgpack.unpackb(encode_batch("z", "b0", network([NON_STEAL[1]])))
    del raw["i"][0]["y"]
    (rep,) = decode_batch(msgpack.packb(raw)).items
    assert rep == m.Replicate(copy(final_record(), "r-1"), sender="z")


def test_types_survive_and_records_are_fresh() -> None:
    sent = copy(final_record(), "r-1")
    cmds = network([m.Send("c", m.HandOver((sent,))), m.Send("a", m.AckHandOver((("t-1", 3),)))])
    received, acked = decode_batch(encode_batch("z", "b0", cmds)).items
    assert isinstance(received, m.HandOver) and isinstance(acked, m.AckHandOver)
    got = received.copies[0]
    assert type(got.replicas) is tuple and type(got.former) is frozenset
    assert type(acked.keys) is tuple and type(acked.keys[0]) is tuple
    assert got == sent and got.record is not sent.record
    assert got.record.request is not sent.record.request and got.record.result == RESULT


def test_the_codec_carries_every_task_record_field() -> None:
    """A field added to TaskRecord must be added to the wire, or it would be lost."""
    wire_fields = {f.name for f in w._fields(TaskRecord)}
    assert wire_fields == {f.name for f in dataclasses.fields(TaskRecord)}


def test_empty_batch_and_unknown_keys_are_fine() -> None:
    assert decode_batch(encode_batch("z", "b0", [])) == Batch("z", "b0", ())
    raw = msgpack.unpackb(encode_batch("z", "b0", network([NON_STEAL[1]])))
    raw["future"] = 1
    raw["i"][0]["future"] = [1]
    raw["i"][0]["c"]["future"] = {}
    raw["i"][0]["c"]["r"]["future"] = None
    (event,) = decode_batch(msgpack.packb(raw)).items
    assert event == m.Replicate(copy(final_record(), "r-1"), sender="z", cause="TaskFinished t-2")


def test_network_and_local_commands() -> None:
    assert [destination(c) for c in network([*NON_STEAL[:2], STEAL, NON_STEAL[-1]])] == [
        "b", "b", "a", "a",
    ]  # fmt: skip
    assert not any(is_network_command(c) for c in LOCAL)
    with pytest.raises(TypeError):
        encode_batch("z", "b0", cast(Any, LOCAL))


# ------------------------------------------------------------------ malformed input


def valid() -> dict[str, Any]:
    """A decoded (plain msgpack) batch to tamper with."""
    cmds = network([NON_STEAL[1], NON_STEAL[4], NON_STEAL[7], STEAL])
    raw: dict[str, Any] = msgpack.unpackb(encode_batch("z", "b0", cmds))
    return raw


def tampered(path: tuple[Any, ...], value: Any, *, delete: bool = False) -> bytes:
    raw = valid()
    node: Any = raw
    for key in path[:-1]:
        node = node[key]
    if delete:
        del node[path[-1]]
    else:
        node[path[-1]] = value
    return bytes(msgpack.packb(raw, use_bin_type=True))


REC = ("i", 0, "c", "r")
MALFORMED = {
    "not msgpack": (b"\xc1", "msgpack"),
    "trailing bytes": (msgpack.packb({"v": 1}) + b"\x00", "msgpack"),
    "bad utf-8": (b"\xa2\xff\xfe", "msgpack"),
    "deep nesting": (b"\x91" * 100_000 + b"\xc0", "msgpack"),
    "not a map": (msgpack.packb([1, "a"]), "not a map"),
    "newer version": (tampered(("v",), 2), "version 2"),
    "bool version": (tampered(("v",), True), "version True"),
    "no version": (tampered(("v",), None, delete=True), "version None"),
    "no sender": (tampered(("s",), None, delete=True), "s: Field required"),
    "bytes sender": (tampered(("s",), b"z"), "s: Input should be a valid string"),
    "empty boot": (tampered(("b",), ""), "b: String should have at least 1 character"),
    "items not a list": (tampered(("i",), {"t": "chk"}), "i: Input should be a valid list"),
    "unknown tag": (tampered(("i", 1, "t"), "zz"), "item 1 has no known type tag (got 'zz')"),
    "item not a map": (tampered(("i", 2), ["chk", 1]), "item 2 has no known type tag"),
    "string epoch": (tampered(("i", 0, "c", "e"), "3"), "item 0 ('rep') is malformed: c.e:"),
    "negative rev": (tampered(("i", 0, "c", "v"), -1), "c.v: Input should be greater"),
    "unknown state": (tampered((*REC, "st"), "exploded"), "c.r.st: Input should be 'queued'"),
    "missing state": (tampered((*REC, "st"), None, delete=True), "c.r.st: Field required"),
    "bool priority": (tampered((*REC, "p"), True), "c.r.p: Input should be a valid integer"),
    "nan time": (tampered((*REC, "ca"), float("nan")), "c.r.ca: Input should be a finite"),
    "request a list": (tampered((*REC, "q"), [1]), "c.r.q: Input should be a valid dict"),
    "bytes in request": (tampered((*REC, "q"), {"a": [b"x"]}), "bytes is not a JSON value"),
    "ext in result": (tampered((*REC, "r"), {"a": msgpack.ExtType(5, b"x")}), "ExtType"),
    "int key in extra": (tampered((*REC, "x"), {1: "a"}), "c.r.x.1.[key]: Input should be"),
    "int key in result": (tampered((*REC, "r"), [{"a": {1: 2}}]), "map keys in a JSON value"),
    "bytes replica": (tampered(("i", 0, "c", "rs"), [b"b"]), "c.rs.0: Input should be a valid"),
    "missing ack field": (tampered(("i", 1, "e"), None, delete=True), "('ack') is malformed: e"),
    "key of two strs": (tampered(("i", 2, "k", 0, 1), "3"), "('hoa') is malformed: k.0.1:"),
    "key too long": (tampered(("i", 2, "k", 0), ["t-1", 3, 4]), "k.0: Tuple should have"),
    "negative n": (tampered(("i", 3, "n"), -2), "('steal') is malformed: n: Input should be"),
    "negative speed": (tampered(("i", 3, "tps"), -1.0), "tps: Input should be greater"),
}


@pytest.mark.parametrize("name", list(MALFORMED))
def test_malformed_batches_raise_wire_error_saying_what(name: str) -> None:
    body, says = MALFORMED[name]
    with pytest.raises(WireError) as info:
        decode_batch(body)
    assert says in str(info.value)


def test_oversized_batch_is_refused_before_unpacking() -> None:
    with pytest.raises(WireError, match="over the 67108864-byte limit"):
        decode_batch(b"\x80" * (MAX_BATCH_BYTES + 1))


# ---------------------------------------------------------------------- properties

scalars = (
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats() | st.text()
    | st.binary(max_size=8) | st.builds(msgpack.ExtType, st.integers(0, 127), st.binary())
)  # fmt: skip
WIRE_KEYS = ["v", "s", "b", "i", "t", "c", "r", "o", "e", "rs", "f", "u", "q", "st", "k", "n"]
values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(st.sampled_from(WIRE_KEYS) | st.text(max_size=3), inner, max_size=5)
    ),
    max_leaves=30,
)


def decodes_or_refuses(body: bytes) -> None:
    try:
        result = decode_batch(body)
    except WireError as e:
        assert str(e)
    else:
        assert isinstance(result, Batch)


@given(st.binary(max_size=2000))
def test_arbitrary_bytes_raise_only_wire_error(body: bytes) -> None:
    decodes_or_refuses(body)


@settings(max_examples=300, deadline=None)  # a loaded CI box must not make it flaky
@given(st.sampled_from(sorted(w.TAGS)), st.dictionaries(st.sampled_from(WIRE_KEYS), values))
def test_arbitrary_items_raise_only_wire_error(tag: str, fields: dict[str, Any]) -> None:
    item = {**fields, "t": tag}
    decodes_or_refuses(msgpack.packb({"v": 1, "s": "z", "b": "b0", "i": [item]}))


@settings(deadline=None)
@given(st.data())
def test_corrupted_batches_raise_only_wire_error(data: st.DataObject) -> None:
    body = bytearray(encode_batch("z", "b0", network([*NON_STEAL, STEAL])))
    for _ in range(data.draw(st.integers(1, 4))):
        at = data.draw(st.integers(0, len(body) - 1))
        body[at] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(body)))
    decodes_or_refuses(bytes(body[:cut]))
