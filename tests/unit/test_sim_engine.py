"""The simulator's pure core: model facts, deterministic text and embeddings, wire bytes."""

from __future__ import annotations

import base64
import json
import math
import struct
from datetime import datetime

import pytest

from meshlb.backend.sim_config import SimOllamaConfig, parse_models
from meshlb.backend.sim_engine import (
    MAX_NATURAL_TOKENS,
    MIN_NATURAL_TOKENS,
    Completion,
    canonical_name,
    chat_prompt_tokens,
    complete,
    count_tokens,
    describe_model,
    embed_vector,
    floats_to_base64,
    openai_error_body,
    rfc3339,
    truncate_dims,
)
from meshlb.backend.sim_render import (
    ChatRenderer,
    GenerateRenderer,
    Metrics,
    OpenAIChatRenderer,
    OpenAICompletionRenderer,
)

METRICS = Metrics(
    total_ns=900, load_ns=100, prompt_eval_count=7, prompt_eval_ns=200, eval_count=3, eval_ns=600
)
COMP = Completion(tokens=("Hi", " there", " friend."), text="Hi there friend.", done_reason="stop")


def test_names_are_canonical_like_ollama() -> None:
    assert canonical_name("nomic-embed-text") == "nomic-embed-text:latest"
    assert canonical_name("Llama3.2:1B") == "llama3.2:1b"
    assert canonical_name("ns/model") == "ns/model:latest"
    assert canonical_name("host:5000/ns/model") == "host:5000/ns/model:latest"


@pytest.mark.parametrize(
    ("name", "dim", "embedding"),
    [
        ("nomic-embed-text", 768, True),
        ("all-minilm", 384, True),
        ("bge-m3", 1024, True),
        ("llama3.2:1b", 2048, False),
        ("qwen2.5:0.5b", 2048, False),
        ("llama3.1:8b", 4096, False),
    ],
)
def test_model_facts(name: str, dim: int, embedding: bool) -> None:
    spec = describe_model(name)
    assert spec.embedding_dim == dim and spec.is_embedding is embedding
    assert len(spec.digest) == 64 and int(spec.digest, 16) >= 0
    assert set(spec.details()) == {
        "parent_model",
        "format",
        "family",
        "families",
        "parameter_size",
        "quantization_level",
    }
    assert spec.size > 0 and describe_model(name) == spec


def test_parameter_size_comes_from_the_tag() -> None:
    assert describe_model("qwen2.5:0.5b").parameter_size == "500M"  # Ollama: "494.03M"
    assert describe_model("llama3.1:8b").parameter_size == "8.0B"


def test_completion_is_deterministic_and_seeded() -> None:
    a = complete("m:latest", "why is the sky blue?", 0, -1)
    assert a == complete("m:latest", "why is the sky blue?", 0, -1)
    assert a.text != complete("m:latest", "why is grass green?", 0, -1).text
    assert a.text != complete("m:latest", "why is the sky blue?", 1, -1).text
    assert "".join(a.tokens) == a.text and a.text.endswith(".")
    assert MIN_NATURAL_TOKENS <= len(a.tokens) <= MAX_NATURAL_TOKENS
    assert a.done_reason == "stop"


def test_num_predict_cuts_with_reason_length() -> None:
    cut = complete("m:latest", "p", 0, 5)
    assert len(cut.tokens) == 5 and cut.done_reason == "length"
    full = complete("m:latest", "p", 0, -1)
    assert cut.tokens == full.tokens[:5]
    assert complete("m:latest", "p", 0, 10_000).done_reason == "stop"


def test_json_mode_wraps_the_reply_in_an_object() -> None:
    whole = complete("m:latest", "p", 0, -1, json_mode=True)
    assert json.loads(whole.text)["answer"] and whole.done_reason == "stop"
    assert "".join(whole.tokens) == whole.text
    cut = complete("m:latest", "p", 0, 4, json_mode=True)
    assert cut.tokens == whole.tokens[:4] and cut.done_reason == "length"


def test_embeddings_are_unit_length_and_deterministic() -> None:
    v = embed_vector("nomic-embed-text:latest", "hello", 768, 0)
    assert len(v) == 768 and math.isclose(math.fsum(x * x for x in v), 1.0, rel_tol=1e-6)
    assert v == embed_vector("nomic-embed-text:latest", "hello", 768, 0)
    assert v != embed_vector("nomic-embed-text:latest", "hello!", 768, 0)
    assert v != embed_vector("other:latest", "hello", 768, 0)
    short = truncate_dims(v, 16)
    assert len(short) == 16 and math.isclose(math.fsum(x * x for x in short), 1.0, rel_tol=1e-6)
    assert truncate_dims(v, None) == list(v)


def test_base64_embeddings_are_little_endian_float32() -> None:
    vec = [0.5, -0.25, 1.0]
    raw = base64.b64decode(floats_to_base64(vec))
    assert struct.unpack("<3f", raw) == (0.5, -0.25, 1.0)


def test_token_counts() -> None:
    assert count_tokens("") == 0 and count_tokens("a") == 1 and count_tokens("abcdefgh") == 2
    assert chat_prompt_tokens([{"role": "user", "content": "abcd"}]) == 1 + 4 + 3


def test_rfc3339_is_go_style_utc() -> None:
    text = rfc3339(1_700_000_000.25)
    assert text == "2023-11-14T22:13:20.250000Z"
    assert datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp() == 1_700_000_000.25


def test_generate_bytes() -> None:
    r = GenerateRenderer("llama3.2", [1, 2])
    chunk = r.chunk(' "quoted"', 0.0)
    assert chunk.endswith(b"\n") and chunk.count(b"\n") == 1
    assert json.loads(chunk) == {
        "model": "llama3.2",
        "created_at": rfc3339(0.0),
        "response": ' "quoted"',
        "done": False,
    }
    final = json.loads(r.tail(COMP, METRICS, 0.0))
    assert final["response"] == "" and final["done"] is True and final["context"] == [1, 2]
    assert final["done_reason"] == "stop" and final["eval_duration"] == 600
    whole = json.loads(r.whole(COMP, METRICS, 0.0))
    assert whole["response"] == COMP.text
    assert "context" not in json.loads(GenerateRenderer("m", None).whole(COMP, METRICS, 0.0))


def test_chat_bytes() -> None:
    r = ChatRenderer("m")
    assert json.loads(r.chunk("x", 0.0))["message"] == {"role": "assistant", "content": "x"}
    final = json.loads(r.tail(COMP, METRICS, 0.0))
    assert final["message"]["content"] == "" and final["total_duration"] == 900
    assert json.loads(r.whole(COMP, METRICS, 0.0))["message"]["content"] == COMP.text


def _sse(data: bytes) -> list[str]:
    events = data.decode().split("\n\n")
    assert events[-1] == ""
    assert all(e.startswith("data: ") for e in events[:-1])
    return [e[len("data: ") :] for e in events[:-1]]


def test_openai_chat_stream_bytes() -> None:
    r = OpenAIChatRenderer("m", "chatcmpl-7", include_usage=True)
    (chunk,) = _sse(r.chunk("Hi", 0.0))
    assert json.loads(chunk)["choices"][0]["delta"] == {"role": "assistant", "content": "Hi"}
    tail = _sse(r.tail(COMP, METRICS, 0.0))
    assert tail[-1] == "[DONE]"
    assert json.loads(tail[0])["choices"][0]["finish_reason"] == "stop"
    assert json.loads(tail[1])["usage"] == {
        "prompt_tokens": 7,
        "completion_tokens": 3,
        "total_tokens": 10,
    }
    no_usage = _sse(OpenAIChatRenderer("m", "c", include_usage=False).tail(COMP, METRICS, 0.0))
    assert len(no_usage) == 2


def test_openai_completion_bytes() -> None:
    r = OpenAICompletionRenderer("m", "cmpl-1", include_usage=False)
    whole = json.loads(r.whole(COMP, METRICS, 5.0))
    assert whole["object"] == "text_completion" and whole["created"] == 5
    assert whole["choices"] == [{"text": COMP.text, "index": 0, "finish_reason": "stop"}]
    assert _sse(r.tail(COMP, METRICS, 0.0))[-1] == "[DONE]"


def test_openai_error_types() -> None:
    assert json.loads(openai_error_body(404, "x"))["error"]["type"] == "not_found_error"
    assert json.loads(openai_error_body(400, "x"))["error"]["type"] == "invalid_request_error"
    assert json.loads(openai_error_body(503, "x"))["error"] == {
        "message": "x",
        "type": "api_error",
        "param": None,
        "code": None,
    }


def test_config_validates_and_parses_models() -> None:
    assert parse_models(" a, b,,c ") == ("a", "b", "c")
    assert SimOllamaConfig(tokens_per_second=10).prompt_tps == 200
    for bad in (
        {"parallel": 0},
        {"error_rate": 1.5},
        {"models": ()},
        {"tokens_per_second": 0},
        {"max_queue": -1},
    ):
        with pytest.raises(ValueError):
            SimOllamaConfig(**bad)
