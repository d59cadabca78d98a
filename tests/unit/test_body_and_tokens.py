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
