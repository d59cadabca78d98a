"""The simulated Ollama app in-process: endpoints, errors, timing, capacity, cancellation."""

from __future__ import annotations

import base64
import json
import math
import struct
from typing import Any

import httpx
import pytest
import trio
from trio.testing import MockClock

from meshlb.backend.sim_app import build_sim_app
from meshlb.backend.sim_config import SimOllamaConfig
from meshlb.backend.sim_runtime import BUSY_MESSAGE, INJECTED_ERROR, SimState, SimulatedDeath

MODEL = "llama3.2:1b"
EMBED = "nomic-embed-text"


def sim(**cfg: Any) -> tuple[httpx.AsyncClient, SimState]:
    cfg.setdefault("tokens_per_second", 1000.0)
    app = build_sim_app(SimOllamaConfig(**cfg))
    client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://sim")
    return client, app.state.sim


def ndjson(r: httpx.Response) -> list[dict[str, Any]]:
    assert r.headers["content-type"] == "application/x-ndjson"
    return [json.loads(line) for line in r.text.splitlines()]


async def test_root_version_and_unknown_path() -> None:
    c, _ = sim()
    r = await c.get("/")
    assert r.status_code == 200 and r.text == "Ollama is running"
    assert (await c.head("/")).status_code == 200
    assert (await c.get("/api/version")).json() == {"version": "0.12.6"}
    r = await c.get("/api/nope")
    assert r.status_code == 404 and r.text == "404 page not found"
    assert (await c.get("/api/generate")).status_code == 405


async def test_tags_list_canonical_names() -> None:
    c, _ = sim(models=(MODEL, EMBED))
    models = (await c.get("/api/tags")).json()["models"]
    assert [m["name"] for m in models] == [MODEL, "nomic-embed-text:latest"]
    assert all(m["model"] == m["name"] and len(m["digest"]) == 64 for m in models)


async def test_generate_streams_ndjson_then_final_stats() -> None:
    c, _ = sim()
    r = await c.post("/api/generate", json={"model": MODEL, "prompt": "why is the sky blue?"})
    lines = ndjson(r)
    *chunks, final = lines
    assert all(set(x) == {"model", "created_at", "response", "done"} for x in chunks)
    assert all(x["done"] is False and x["model"] == MODEL for x in chunks)
    assert final["done"] is True and final["done_reason"] == "stop" and final["response"] == ""
    assert final["eval_count"] == len(chunks) and len(final["context"]) > len(chunks)
    whole = (
        await c.post(
            "/api/generate",
            json={"model": MODEL, "stream": False, "prompt": "why is the sky blue?"},
        )
    ).json()
    assert whole["response"] == "".join(x["response"] for x in chunks)
    assert whole["eval_count"] == final["eval_count"]


async def test_num_predict_and_done_reason_length() -> None:
    c, _ = sim()
    for path, body in (
        ("/api/generate", {"prompt": "hi"}),
        ("/api/chat", {"messages": [{"role": "user", "content": "hi"}]}),
    ):
        r = await c.post(
            path, json={"model": MODEL, "stream": False, "options": {"num_predict": 4}, **body}
        )
        out = r.json()
        assert r.headers["content-type"] == "application/json; charset=utf-8"
        assert out["eval_count"] == 4 and out["done_reason"] == "length"


async def test_format_json_gives_json_unless_cut() -> None:
    c, _ = sim()
    body = {"model": MODEL, "prompt": "age?", "stream": False, "format": "json"}
    out = (await c.post("/api/generate", json=body)).json()
    assert out["done_reason"] == "stop" and set(json.loads(out["response"])) == {"answer"}
    schema = {"type": "object"}
    chat = await c.post(
        "/api/chat",
        json={
            "model": MODEL,
            "stream": False,
            "format": schema,
            "messages": [{"role": "user", "content": "x"}],
        },
    )
    assert "answer" in json.loads(chat.json()["message"]["content"])
    cut = (await c.post("/api/generate", json={**body, "options": {"num_predict": 3}})).json()
    assert cut["done_reason"] == "length" and cut["eval_count"] == 3
    oa = (
        await c.post(
            "/v1/chat/completions",
            json={
                "model": MODEL,
                "messages": [{"role": "user", "content": "x"}],
                "response_format": {"type": "json_object"},
            },
        )
    ).json()
    assert "answer" in json.loads(oa["choices"][0]["message"]["content"])


async def test_chat_stream_and_non_stream_agree() -> None:
    c, _ = sim()
    msgs = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hello"}]
    *chunks, final = ndjson(await c.post("/api/chat", json={"model": MODEL, "messages": msgs}))
    assert all(x["message"]["role"] == "assistant" for x in chunks)
    assert final["message"] == {"role": "assistant", "content": ""}
    whole = (
        await c.post("/api/chat", json={"model": MODEL, "messages": msgs, "stream": False})
    ).json()
    assert whole["message"]["content"] == "".join(x["message"]["content"] for x in chunks)
    assert "context" not in whole


async def test_durations_are_nanoseconds_consistent_with_speed(autojump_clock: MockClock) -> None:
    c, _ = sim(tokens_per_second=20.0, latency_ms=250)
    t0 = trio.current_time()
    out = (
        await c.post(
            "/api/generate",
            json={
                "model": MODEL,
                "prompt": "abcd" * 10,
                "stream": False,
                "options": {"num_predict": 10},
            },
        )
    ).json()
    elapsed = trio.current_time() - t0
    assert out["eval_count"] == 10 and out["eval_duration"] == 500_000_000  # 10 / 20 tok/s
    assert out["eval_count"] / out["eval_duration"] * 1e9 == pytest.approx(20.0)
    assert out["prompt_eval_duration"] == int(out["prompt_eval_count"] / 400 * 1e9)
    assert out["load_duration"] == pytest.approx(250_000_000, abs=1000)  # latency_ms
    assert out["total_duration"] == pytest.approx(elapsed * 1e9, abs=1000)
    assert out["total_duration"] >= (
        out["load_duration"] + out["prompt_eval_duration"] + out["eval_duration"] - 10
    )


async def test_load_time_only_when_model_not_loaded(autojump_clock: MockClock) -> None:
    c, _ = sim(load_ms=2000)
    body = {
        "model": MODEL,
        "prompt": "x",
        "stream": False,
        "options": {"num_predict": 1},
        "keep_alive": "10s",
    }
    cold = (await c.post("/api/generate", json=body)).json()
    warm = (await c.post("/api/generate", json=body)).json()
    assert cold["load_duration"] == pytest.approx(2e9, abs=1e3) and warm["load_duration"] < 1e3
    await trio.sleep(11)  # keep_alive expired: unloaded, so loading again
    assert (await c.post("/api/generate", json=body)).json()["load_duration"] >= 2e9


async def test_stream_paces_tokens_per_request(autojump_clock: MockClock) -> None:
    c, _ = sim(tokens_per_second=5.0, prompt_tokens_per_second=1e9)
    t0 = trio.current_time()
    r = await c.post(
        "/api/generate", json={"model": MODEL, "prompt": "x", "options": {"num_predict": 5}}
    )
    assert len(ndjson(r)) == 6
    assert trio.current_time() - t0 == pytest.approx(1.0, abs=1e-3)


async def test_errors_match_ollama() -> None:
    c, _ = sim(models=(MODEL, EMBED))
    cases = [
        ("/api/generate", {"model": "nope", "prompt": "x"}, 404, "model 'nope' not found"),
        ("/api/chat", {"model": "nope", "messages": []}, 404, "model 'nope' not found"),
        ("/api/embed", {"model": "nope", "input": "x"}, 404, "model 'nope' not found"),
        ("/api/show", {"model": "nope"}, 404, "model 'nope' not found"),
        (
            "/api/embeddings",
            {"model": "nope", "prompt": "x"},
            404,
            'model "nope" not found, try pulling it first',
        ),
        ("/api/generate", {"prompt": "x"}, 400, "model is required"),
        ("/api/chat", {"model": ""}, 400, "model is required"),
        (
            "/api/generate",
            {"model": EMBED, "prompt": "x"},
            400,
            '"nomic-embed-text" does not support generate',
        ),
        ("/api/embed", {"model": EMBED, "input": 3}, 400, "invalid input type"),
        (
            "/api/chat",
            {"model": MODEL, "messages": [], "think": True},
            400,
            '"llama3.2:1b" does not support thinking',
        ),
        (
            "/api/generate",
            {"model": MODEL, "prompt": "x", "keep_alive": "soon"},
            400,
            'time: invalid duration "soon"',
        ),
    ]
    for path, body, status, message in cases:
        r = await c.post(path, json=body)
        assert (r.status_code, r.json()) == (status, {"error": message}), path
    for raw, message in (
        (b'{"model": ', "unexpected EOF"),
        (b"", "missing request body"),
        (b"nope", "invalid character 'n' looking for beginning of value"),
    ):
        r = await c.post("/api/generate", content=raw)
        assert (r.status_code, r.json()) == (400, {"error": message})
    r = await c.post("/api/chat", content=b"[1]")
    assert r.status_code == 400 and "cannot unmarshal array" in r.json()["error"]


async def test_empty_prompt_loads_and_keep_alive_zero_unloads() -> None:
    c, _ = sim()
    r = (await c.post("/api/generate", json={"model": MODEL})).json()
    assert r["done_reason"] == "load" and r["done"] is True and r["response"] == ""
    ps = (await c.get("/api/ps")).json()["models"]
    assert [m["name"] for m in ps] == [MODEL] and ps[0]["size_vram"] == ps[0]["size"]
    r = (await c.post("/api/chat", json={"model": MODEL, "messages": [], "keep_alive": 0})).json()
    assert r["done_reason"] == "unload" and r["message"] == {"role": "assistant", "content": ""}
    assert (await c.get("/api/ps")).json() == {"models": []}


async def test_ps_lists_models_used_within_keep_alive(autojump_clock: MockClock) -> None:
    c, _ = sim()
    assert (await c.get("/api/ps")).json() == {"models": []}
    await c.post(
        "/api/generate",
        json={"model": MODEL, "prompt": "x", "keep_alive": "1m", "options": {"num_predict": 1}},
    )
    assert len((await c.get("/api/ps")).json()["models"]) == 1
    await trio.sleep(61)
    assert (await c.get("/api/ps")).json() == {"models": []}


async def test_embed_and_legacy_embeddings() -> None:
    c, _ = sim(models=(MODEL, EMBED))
    out = (await c.post("/api/embed", json={"model": EMBED, "input": ["a", "b"]})).json()
    assert set(out) == {
        "model",
        "embeddings",
        "total_duration",
        "load_duration",
        "prompt_eval_count",
    }
    a, b = out["embeddings"]
    assert len(a) == 768 and a != b and math.isclose(sum(x * x for x in a), 1, rel_tol=1e-6)
    one = (await c.post("/api/embed", json={"model": EMBED, "input": "a"})).json()
    assert one["embeddings"] == [a]
    short = (
        await c.post("/api/embed", json={"model": EMBED, "input": "a", "dimensions": 8})
    ).json()["embeddings"][0]
    assert len(short) == 8
    assert (await c.post("/api/embed", json={"model": EMBED, "input": []})).json() == {
        "model": EMBED,
        "embeddings": [],
    }
    legacy = (await c.post("/api/embeddings", json={"model": EMBED, "prompt": "a"})).json()
    assert legacy == {"embedding": a}


async def test_show_describes_model() -> None:
    c, _ = sim(models=(EMBED,))
    out = (await c.post("/api/show", json={"model": EMBED})).json()
    assert out["capabilities"] == ["embedding"]
    assert out["model_info"]["nomic_bert.embedding_length"] == 768
    assert (await c.post("/api/show", json={})).json() == {"error": "model is required"}


async def test_busy_answers_503_when_slots_and_queue_are_full(autojump_clock: MockClock) -> None:
    c, state = sim(tokens_per_second=10.0, parallel=1, max_queue=1)
    body = {"model": MODEL, "prompt": "x", "stream": False, "options": {"num_predict": 20}}
    statuses: list[int] = []

    async def call() -> None:
        statuses.append((await c.post("/api/generate", json=body)).status_code)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(call)
        nursery.start_soon(call)
        await trio.sleep(0.5)
        assert (state.running, state.pending) == (1, 1)
        r = await c.post("/api/generate", json=body)
        assert (r.status_code, r.json()) == (503, {"error": BUSY_MESSAGE})
        r = await c.post("/v1/completions", json={"model": MODEL, "prompt": "x"})
        assert r.status_code == 503 and r.json()["error"]["message"] == BUSY_MESSAGE
    assert statuses == [200, 200] and state.stats["max_running_seen"] == 1
    assert state.stats["rejected_busy"] == 2
    assert "again.  maximum" in BUSY_MESSAGE  # two spaces, as Ollama writes it


async def test_parallel_slots_bound_concurrency(autojump_clock: MockClock) -> None:
    c, state = sim(tokens_per_second=10.0, parallel=2, prompt_tokens_per_second=1e9)
    t0 = trio.current_time()

    async def call(i: int) -> None:
        await c.post(
            "/api/generate", json={"model": MODEL, "prompt": f"{i}", "options": {"num_predict": 10}}
        )

    async with trio.open_nursery() as nursery:
        for i in range(5):
            nursery.start_soon(call, i)
    assert state.stats["max_running_seen"] == 2 and state.stats["served"] == 5
    assert trio.current_time() - t0 == pytest.approx(3.0, abs=0.01)  # 3 rounds of 1 s


async def test_fault_injection_errors_and_cuts() -> None:
    c, state = sim(error_rate=1.0)
    r = await c.post("/api/generate", json={"model": MODEL, "prompt": "x"})
    assert (r.status_code, r.json()) == (500, {"error": INJECTED_ERROR})
    assert (await c.get("/api/tags")).status_code == 200  # only inference is hit
    c, state = sim(die_mid_stream_rate=1.0)
    with pytest.raises(SimulatedDeath):
        await c.post("/api/generate", json={"model": MODEL, "prompt": "x"})
    assert state.stats["died_mid_stream"] == 1
    r = await c.post("/api/generate", json={"model": MODEL, "prompt": "x", "stream": False})
    assert r.status_code == 200  # only streams are cut


async def _asgi_generate(
    app: Any, body: dict[str, Any], gone: trio.Event, chunks: list[bytes]
) -> None:
    """Drive the ASGI app by hand, so the test decides when the client disconnects."""
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/api/generate",
        "raw_path": b"/api/generate",
        "query_string": b"",
        "root_path": "",
        "headers": [(b"content-type", b"application/json")],
        "client": ("127.0.0.1", 1),
        "server": ("127.0.0.1", 2),
    }
    request = [{"type": "http.request", "body": json.dumps(body).encode(), "more_body": False}]

    async def receive() -> dict[str, Any]:
        if request:
            return request.pop()
        await gone.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.body" and message["body"]:
            chunks.append(message["body"])

    await app(scope, receive, send)


async def test_disconnect_cancels_stream_and_frees_slot(autojump_clock: MockClock) -> None:
    app = build_sim_app(SimOllamaConfig(tokens_per_second=10.0, parallel=1))
    state: SimState = app.state.sim
    first, second = trio.Event(), trio.Event()
    got1: list[bytes] = []
    got2: list[bytes] = []
    body = {"model": MODEL, "prompt": "x", "options": {"num_predict": 100}}
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_asgi_generate, app, body, first, got1)
        await trio.sleep(0.01)  # trio does not promise to start tasks in order
        nursery.start_soon(_asgi_generate, app, body, second, got2)  # queued behind
        await trio.sleep(0.54)
        assert (len(got1), state.running, state.pending) == (5, 1, 1)
        second.set()  # the queued client leaves first
        await trio.sleep(0.1)
        assert (state.running, state.pending) == (1, 0)
        first.set()  # then the streaming one
    assert state.stats["cancelled"] == 2 and state.running == 0 and got2 == []
    assert state.stats["served"] == 0 and len(got1) < 100
    c = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://sim")
    r = await c.post("/api/generate", json={**body, "options": {"num_predict": 2}})
    assert r.status_code == 200 and state.stats["served"] == 1  # the slot is free again


async def test_openai_chat_completions() -> None:
    c, _ = sim()
    msgs = [{"role": "user", "content": [{"type": "text", "text": "hi"}]}]
    out = (
        await c.post(
            "/v1/chat/completions", json={"model": MODEL, "messages": msgs, "max_tokens": 3}
        )
    ).json()
    assert out["object"] == "chat.completion" and out["id"].startswith("chatcmpl-")
    assert out["choices"][0]["finish_reason"] == "length"
    assert out["usage"]["completion_tokens"] == 3
    r = await c.post(
        "/v1/chat/completions",
        json={
            "model": MODEL,
            "messages": msgs,
            "stream": True,
            "max_tokens": 3,
            "stream_options": {"include_usage": True},
        },
    )
    assert r.headers["content-type"] == "text/event-stream"
    events = [e.removeprefix("data: ") for e in r.text.split("\n\n") if e]
    assert events[-1] == "[DONE]" and json.loads(events[-2])["usage"]["total_tokens"] > 3
    deltas = [json.loads(e)["choices"][0]["delta"]["content"] for e in events[:3]]
    assert "".join(deltas) == out["choices"][0]["message"]["content"]
    r = await c.post("/v1/chat/completions", json={"model": "nope", "messages": msgs})
    assert r.status_code == 404 and r.json()["error"] == {
        "message": "model 'nope' not found",
        "type": "not_found_error",
        "param": None,
        "code": None,
    }
    r = await c.post("/v1/chat/completions", json={"model": MODEL, "messages": []})
    assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error"


async def test_openai_embeddings_models_and_completions() -> None:
    c, _ = sim(models=(MODEL, EMBED))
    native = (await c.post("/api/embed", json={"model": EMBED, "input": "a"})).json()
    out = (await c.post("/v1/embeddings", json={"model": EMBED, "input": ["a"]})).json()
    assert out["data"][0]["embedding"] == native["embeddings"][0]
    b64 = (
        await c.post(
            "/v1/embeddings", json={"model": EMBED, "input": "a", "encoding_format": "base64"}
        )
    ).json()
    raw = base64.b64decode(b64["data"][0]["embedding"])
    floats = struct.unpack(f"<{len(raw) // 4}f", raw)
    assert floats == pytest.approx(native["embeddings"][0], abs=1e-6)
    assert (await c.post("/v1/embeddings", json={"model": EMBED, "input": []})).status_code == 400
    ids = [m["id"] for m in (await c.get("/v1/models")).json()["data"]]
    assert ids == [MODEL, "nomic-embed-text:latest"]
    assert (await c.get(f"/v1/models/{MODEL}")).json()["owned_by"] == "library"
    out = (
        await c.post("/v1/completions", json={"model": MODEL, "prompt": "x", "max_tokens": 2})
    ).json()
    assert out["object"] == "text_completion" and out["usage"]["completion_tokens"] == 2


async def test_stats_counts_requests() -> None:
    c, _ = sim()
    await c.post(
        "/api/generate", json={"model": MODEL, "prompt": "x", "options": {"num_predict": 1}}
    )
    stats = (await c.get("/sim/stats")).json()
    assert stats["served"] == 1 and stats["requests"] == 1 and stats["running"] == 0
