"""Request checks (JSON, model, priority) and token estimates/counts."""

import pytest

from meshlb.api.body import parse_json_object, parse_priority, require_model
from meshlb.api.errors import ApiError
from meshlb.tokens import estimate_tokens, num_predict_of, tokens_from_tail


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        (b"", "empty"),
        (b"{not json", "invalid JSON"),
        (b"[1, 2]", "JSON object, not list"),
        (b"\xff\xfe", "UTF-8"),
    ],
)
def test_malformed_json_is_400_with_reason(body: bytes, fragment: str) -> None:
    with pytest.raises(ApiError) as info:
        parse_json_object(body)
    assert info.value.status == 400
    assert fragment in info.value.message


def test_model_required_and_typed() -> None:
    with pytest.raises(ApiError, match="model is required"):
        require_model({})
    with pytest.raises(ApiError, match="must be a string"):
        require_model({"model": 3})
    assert require_model({"model": "m"}) == "m"


def test_priority_header() -> None:
    assert parse_priority(None) == 5
    assert parse_priority("10") == 10
    with pytest.raises(ApiError) as info:
        parse_priority("11")
    assert info.value.status == 422
    with pytest.raises(ApiError) as info:
        parse_priority("high")
    assert info.value.status == 400


def test_estimate_uses_prompt_length_and_num_predict() -> None:
    payload = {"prompt": "x" * 400, "options": {"num_predict": 50}}
    assert estimate_tokens(payload, "generate", 256) == 101 + 50
    assert estimate_tokens({"prompt": "x" * 400}, "generate", 256) == 101 + 256
    chat = {"messages": [{"role": "user", "content": "y" * 40}], "max_tokens": 10}
    assert estimate_tokens(chat, "chat", 256) == 11 + 10
    assert estimate_tokens({"input": ["a" * 8, "b" * 8]}, "embed", 256) == 5


def test_num_predict_ignores_unbounded_values() -> None:
    assert num_predict_of({"options": {"num_predict": -1}}) is None
    assert num_predict_of({"options": {"num_predict": True}}) is None


def test_tokens_from_ollama_final_chunk() -> None:
    tail = (
        b'{"response":"a","done":false}\n'
        b'{"done":true,"prompt_eval_count":12,"eval_count":30,"eval_duration":1}\n'
    )
    assert tokens_from_tail(tail) == 42


def test_tokens_from_openai_usage_and_absent() -> None:
    body = b'{"choices":[],"usage":{"prompt_tokens":5,"completion_tokens":7,"total_tokens":12}}'
    assert tokens_from_tail(body) == 12
    assert tokens_from_tail(b'data: {"choices":[]}\n\ndata: [DONE]\n\n') is None


def test_generation_rate_and_average() -> None:
    from meshlb.tokens import RateAverage, generation_rate_from_tail

    tail = b'{"done":true,"eval_count":50,"eval_duration":2000000000}'
    assert generation_rate_from_tail(tail) == 25.0
    assert generation_rate_from_tail(b'{"done":true}') is None
    avg = RateAverage(weight=0.5)
    avg.observe(10.0)
    avg.observe(None)
    avg.observe(20.0)
    assert avg.value == 15.0


def test_a_huge_num_predict_is_capped_in_the_estimate() -> None:
    """Issue 15, defect 3: 2^63-1 reached tpm, gossip and msgpack, and killed a node."""
    from meshlb.tokens import MAX_OUTPUT_ESTIMATE, estimate_tokens

    payload = {"model": "m", "prompt": "hi", "options": {"num_predict": 9223372036854775807}}
    assert estimate_tokens(payload, "generate", 256) <= MAX_OUTPUT_ESTIMATE + 2
    assert estimate_tokens({"max_tokens": 10**30}, "chat", 256) <= MAX_OUTPUT_ESTIMATE + 2


def test_gossiped_metadata_encodes_whatever_the_figures() -> None:
    from meshlb.mesh.meta import Load, NodeMeta, decode_meta, encode_meta

    meta = NodeMeta("10.0.0.1:11435", ("m",), Load(tpm_used=1 << 70, queued=-3, tokens_per_s=1e300))
    back = decode_meta(encode_meta(meta))
    assert back is not None and back.load.tpm_used == (1 << 32) - 1 and back.load.queued == 0


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        (b'{"messages": ' + b"[" * 600 + b"]" * 600 + b"}", "nested deeper than 100"),
        (b'{"x": ' + b"[" * 200_000 + b"]" * 200_000 + b"}", "nested deeper than 100"),
        (b'{"options": {"temperature": NaN}}', "NaN is not valid JSON"),
        (b'{"options": {"temperature": 1e400}}', "does not fit in a 64-bit float"),
        (b'{"seed": 1' + b"0" * 5000 + b"}", "more than 4300 digits"),
    ],
)
def test_hostile_json_is_a_400_naming_the_problem(body: bytes, fragment: str) -> None:
    """Issue 15, defect 4: these were 500s (RecursionError, ValueError)."""
    from meshlb.api.body import parse_json_object
    from meshlb.api.errors import ApiError

    with pytest.raises(ApiError) as caught:
        parse_json_object(body)
    assert caught.value.status == 400 and fragment in caught.value.message


def test_lone_surrogates_are_repaired_as_go_decodes_them() -> None:
    import json

    from meshlb.api.body import parse_json_object

    payload = parse_json_object(
        b'{"prompt": "a\\ud800b", "system": "\\udfff", "ok": "\\ud83d\\ude00"}'
    )
    assert payload == {"prompt": "a\ufffdb", "system": "\ufffd", "ok": "\U0001f600"}
    json.dumps(payload, ensure_ascii=False).encode("utf-8")  # re-encodable now
