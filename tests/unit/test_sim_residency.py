"""The simulator's memory model through its HTTP API, in-process under a mock clock.

Each test checks one rule as a client sees it: load_duration, /api/ps, eviction, waits,
keep_alive forms, slots per model, the prompt-prefix cache. Responses are validated
against the official client's models made strict (tests/fidelity/strict_ollama.py).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
import trio
from trio.testing import MockClock

from meshlb.backend.sim_app import build_sim_app
from meshlb.backend.sim_config import SimOllamaConfig
from meshlb.backend.sim_memory import FOREVER_S
from meshlb.backend.sim_runtime import SimState
from tests.fidelity import strict_ollama as strict

A, B = "alpha:2b", "beta:2b"


def sim(**cfg: Any) -> tuple[httpx.AsyncClient, SimState]:
    cfg.setdefault("tokens_per_second", 100.0)
    cfg.setdefault("prompt_tokens_per_second", 1e9)
    app = build_sim_app(SimOllamaConfig(**cfg))
    client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://sim")
    return client, app.state.sim


async def gen(c: httpx.AsyncClient, model: str, **extra: Any) -> dict[str, Any]:
    body = {"model": model, "prompt": "hi", "stream": False, "options": {"num_predict": 10}}
    r = await c.post("/api/generate", json={**body, **extra})
    assert r.status_code == 200, r.text
    out: dict[str, Any] = r.json()
    if extra.get("prompt", "hi"):
        strict.StrictGenerateFinal.model_validate(out)
    return out


async def ps(c: httpx.AsyncClient) -> list[dict[str, Any]]:
    raw = (await c.get("/api/ps")).json()
    strict.StrictPs.model_validate(raw)
    models: list[dict[str, Any]] = raw["models"]
    return models


def seconds_left(entry: dict[str, Any]) -> float:
    expires = datetime.fromisoformat(entry["expires_at"].replace("Z", "+00:00"))
    return (expires - datetime.now(UTC)).total_seconds()


async def test_load_takes_size_over_rate_and_ps_shows_it(autojump_clock: MockClock) -> None:
    c, state = sim(models=(f"{A}=3", B), load_gbps=2.0, load_ms=500)
    cold = await gen(c, A)
    assert cold["load_duration"] == pytest.approx(2.0e9, rel=1e-3)  # 0.5 s + 3 GB / 2 GB/s
    warm = await gen(c, A)
    assert warm["load_duration"] < 1e6
    (entry,) = await ps(c)
    assert (entry["name"], entry["size"], entry["size_vram"]) == (A, 3 * 10**9, 3 * 10**9)
    assert entry["context_length"] == 4096
    assert seconds_left(entry) == pytest.approx(300, abs=2)  # --keep-alive 5m
    assert state.memory.loads == 1


async def test_default_sizes_come_from_the_library_table() -> None:
    c, _ = sim(models=("llama3.2", "qwen2.5:7b", "mystery:3b", "beta=1.5"))
    sizes = {m["name"]: m["size"] for m in (await c.get("/api/tags")).json()["models"]}
    assert sizes["llama3.2:latest"] == 2_000_000_000
    assert sizes["qwen2.5:7b"] == 4_700_000_000
    assert sizes["beta:latest"] == 1_500_000_000
    assert 1e9 < sizes["mystery:3b"] < 3e9  # derived from the parameter count


async def test_a_model_that_does_not_fit_evicts_the_idle_one(autojump_clock: MockClock) -> None:
    c, state = sim(models=(f"{A}=2", f"{B}=2"), vram_gb=3, load_gbps=10)
    for model in (A, B, A, B):
        out = await gen(c, model)
        assert out["load_duration"] == pytest.approx(0.2e9, rel=1e-3)  # every one cold
    assert [m["name"] for m in await ps(c)] == [B]
    assert (state.memory.loads, state.memory.evictions) == (4, 3)


async def test_a_busy_model_is_not_evicted_the_new_one_waits(autojump_clock: MockClock) -> None:
    c, state = sim(models=(f"{A}=2", f"{B}=2"), vram_gb=3, tokens_per_second=10.0)
    got: dict[str, dict[str, Any]] = {}

    async def long_a() -> None:
        got["a"] = await gen(c, A, options={"num_predict": 50})  # 5 s of generation

    async with trio.open_nursery() as nursery:
        nursery.start_soon(long_a)
        await trio.sleep(1.0)
        assert [m["name"] for m in await ps(c)] == [A]
        t0 = trio.current_time()
        got["b"] = await gen(c, B)
        assert trio.current_time() - t0 == pytest.approx(4.0 + 1.0, abs=0.01)  # wait + own run
    assert got["b"]["load_duration"] == pytest.approx(4.0e9, rel=1e-3)  # A ran 4 s more
    assert got["a"]["done_reason"] == "length" and state.memory.evictions == 1


async def test_keep_alive_forms(autojump_clock: MockClock) -> None:
    c, _ = sim(models=(A,))
    for keep, left in (("10s", 10), (90, 90), ("1h30m", 5400), (-1, FOREVER_S), ("-5m", FOREVER_S)):
        await gen(c, A, keep_alive=keep)
        (entry,) = await ps(c)
        assert seconds_left(entry) == pytest.approx(left, rel=1e-3, abs=2), keep
    await gen(c, A, keep_alive="2s")
    await trio.sleep(2.5)
    assert await ps(c) == []
    await gen(c, A, keep_alive=0)
    assert await ps(c) == []  # unloaded as soon as it was done
    for bad, message in (("300", 'time: missing unit in duration "300"'), ("x", "invalid")):
        r = await c.post("/api/generate", json={"model": A, "prompt": "x", "keep_alive": bad})
        assert r.status_code == 400 and message in r.json()["error"]


async def test_empty_prompt_loads_waiting_for_the_load_and_zero_unloads(
    autojump_clock: MockClock,
) -> None:
    c, _ = sim(models=(f"{A}=2",), load_gbps=1.0)
    t0 = trio.current_time()
    r = await c.post("/api/generate", json={"model": A, "keep_alive": "1m"})
    strict.StrictLoadReply.model_validate(r.json())
    assert r.json()["done_reason"] == "load" and trio.current_time() - t0 == pytest.approx(2.0)
    (entry,) = await ps(c)
    assert seconds_left(entry) == pytest.approx(60, abs=2)
    r = await c.post("/api/chat", json={"model": A, "messages": [], "keep_alive": 0})
    strict.StrictLoadReply.model_validate(r.json())
    assert r.json()["done_reason"] == "unload" and await ps(c) == []


async def test_parallel_slots_are_per_loaded_model(autojump_clock: MockClock) -> None:
    c, state = sim(models=(A, B), parallel=1, tokens_per_second=10.0)
    t0 = trio.current_time()
    async with trio.open_nursery() as nursery:
        for model in (A, B, A):
            nursery.start_soon(gen, c, model)
    # A and B run side by side (one slot each); the second A waits for A's slot.
    assert trio.current_time() - t0 == pytest.approx(2.0, abs=0.01)
    assert state.stats["max_running_seen"] == 2


async def test_prefix_cache_evaluates_only_the_new_part(autojump_clock: MockClock) -> None:
    c, state = sim(models=(A,), prompt_tokens_per_second=1000.0)
    history = [{"role": "user", "content": "tell me about rivers " * 40}]
    body = {"model": A, "stream": False, "options": {"num_predict": 10}}
    first = (await c.post("/api/chat", json={**body, "messages": history})).json()
    strict.StrictChatFinal.model_validate(first)
    history += [first["message"], {"role": "user", "content": "and lakes?"}]
    second = (await c.post("/api/chat", json={**body, "messages": history})).json()
    # as Ollama 0.33+ says it: the whole prompt counted, the cached part named
    assert second["prompt_eval_count"] > first["prompt_eval_count"]
    assert evaluated(second) < 20 < 200 < evaluated(first) == first["prompt_eval_count"]
    assert "prompt_eval_cached_count" not in first  # omitted when zero, as in Ollama
    assert second["prompt_eval_duration"] == int(evaluated(second) / 1000 * 1e9)
    again = (await c.post("/api/chat", json={**body, "messages": history})).json()
    assert evaluated(again) <= evaluated(second)  # at least one token
    fresh = [{"role": "user", "content": "x" * 400}]
    other = (await c.post("/api/chat", json={**body, "messages": fresh})).json()
    assert evaluated(other) > 100  # a different conversation starts cold
    assert state.stats["prompt_tokens_evaluated"] == sum(
        evaluated(x) for x in (first, second, again, other)
    )


def evaluated(answer: dict[str, Any]) -> int:
    """Prompt tokens the runner evaluated (the rest came from its slot's cache)."""
    return int(answer["prompt_eval_count"]) - int(answer.get("prompt_eval_cached_count", 0))


async def test_cache_is_per_slot_and_lost_with_the_model(autojump_clock: MockClock) -> None:
    c, _ = sim(models=(A, B), max_loaded_models=1)
    body = {"stream": False, "options": {"num_predict": 5}, "prompt": "p" * 800}
    first = await gen(c, A, **body)
    warm = await gen(c, A, **body)
    assert evaluated(warm) == 1 < first["prompt_eval_count"] == warm["prompt_eval_count"]
    await gen(c, B, **body)  # max one model: A is evicted, its cache with it
    assert evaluated(await gen(c, A, **body)) == first["prompt_eval_count"]


async def test_a_different_num_ctx_reloads(autojump_clock: MockClock) -> None:
    c, state = sim(models=(f"{A}=1",), load_gbps=1.0)
    await gen(c, A)
    out = await gen(c, A, options={"num_ctx": 8192, "num_predict": 1})
    assert out["load_duration"] == pytest.approx(1e9, rel=1e-3) and state.memory.loads == 2
    assert (await ps(c))[0]["context_length"] == 8192


async def test_a_client_leaving_during_the_load_aborts_it(autojump_clock: MockClock) -> None:
    c, state = sim(models=(f"{A}=10",), load_gbps=1.0)
    with trio.move_on_after(2.0):
        await gen(c, A)
    assert await ps(c) == [] and state.pending == 0 and state.running == 0
