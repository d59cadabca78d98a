"""num_ctx in the simulator: prompts are cut as Ollama cuts them, so huge ones stay cheap."""

from __future__ import annotations

import time
from typing import Any

import httpx
import pytest
import trio
from trio.testing import MockClock

from meshlb.backend.sim_app import build_sim_app
from meshlb.backend.sim_config import SimOllamaConfig
from meshlb.backend.sim_prompt import (
    DEFAULT_NUM_CTX,
    fit_chat,
    render_chat,
    truncate,
)
from tests.fidelity import strict_ollama as strict

MODEL = "llama3.2:1b"
EMBED = "nomic-embed-text"
BIG = "word " * 2_400_000  # 12 MB, three million simulated tokens


def client(**cfg: Any) -> httpx.AsyncClient:
    cfg.setdefault("models", (MODEL, EMBED))
    app = build_sim_app(SimOllamaConfig(**cfg))
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://sim")


def test_truncate_keeps_the_head_and_the_tail() -> None:
    text = "H" * 40 + "m" * 100_000 + "T" * 400
    cut = truncate(text, num_ctx=200, num_keep=4)
    assert len(cut) == 200 * 4 and cut.startswith("H" * 20) and cut.endswith("T" * 400)
    assert truncate("short", 200) == "short"
    assert truncate(text, num_ctx=200, num_keep=-1).startswith("H" * 40 + "m")  # keep all
    assert len(truncate(text, num_ctx=200, num_keep=10_000)) == 800  # keep < num_ctx


def test_fit_chat_drops_the_oldest_non_system_messages() -> None:
    msgs = [
        {"role": "system", "content": "s" * 40},
        {"role": "user", "content": "old " * 100},
        {"role": "assistant", "content": "reply " * 100},
        {"role": "user", "content": "new"},
    ]
    assert fit_chat(msgs, 10_000) == msgs
    assert fit_chat(msgs, 60) == [msgs[0], msgs[3]]
    assert fit_chat(msgs[3:], 1) == msgs[3:]  # the last message always stays
    assert len(render_chat(fit_chat(msgs, 200))) // 4 <= 200


async def test_a_12_mb_prompt_is_cut_to_num_ctx_and_answers_at_once(
    autojump_clock: MockClock,
) -> None:
    c = client(tokens_per_second=1000.0)
    wall, t0 = time.monotonic(), trio.current_time()
    body = {"model": MODEL, "prompt": BIG, "stream": False, "options": {"num_predict": 3}}
    out = (await c.post("/api/generate", json=body)).json()
    strict.StrictGenerateFinal.model_validate(out)
    assert out["prompt_eval_count"] == DEFAULT_NUM_CTX
    # 4096 tokens at 20 000 tokens/s, not 3 million tokens' worth (150 s)
    assert trio.current_time() - t0 == pytest.approx(4096 / 20_000 + 3 / 1000, abs=0.01)
    assert time.monotonic() - wall < 10  # and the simulator itself does not crawl
    small = {**body, "options": {"num_predict": 3, "num_ctx": 512}}
    assert (await c.post("/api/generate", json=small)).json()["prompt_eval_count"] == 512


async def test_chat_and_openai_paths_are_cut_too() -> None:
    c = client(tokens_per_second=1e6, prompt_tokens_per_second=1e9)
    msgs = [{"role": "user", "content": "old " * 5000}, {"role": "user", "content": BIG}]
    body = {"model": MODEL, "messages": msgs, "stream": False, "options": {"num_ctx": 1024}}
    out = (await c.post("/api/chat", json=body)).json()
    strict.StrictChatFinal.model_validate(out)
    assert out["prompt_eval_count"] == 1024
    c = client(tokens_per_second=1e6, prompt_tokens_per_second=1e9)  # a cold prefix cache
    oa = {"model": MODEL, "messages": msgs, "max_tokens": 2}
    usage = (await c.post("/v1/chat/completions", json=oa)).json()["usage"]
    assert usage["prompt_tokens"] == DEFAULT_NUM_CTX
    c = client(tokens_per_second=1e6, prompt_tokens_per_second=1e9)
    comp = {"model": MODEL, "prompt": BIG, "max_tokens": 2}
    usage = (await c.post("/v1/completions", json=comp)).json()["usage"]
    assert usage["prompt_tokens"] == DEFAULT_NUM_CTX


async def test_embeddings_truncate_unless_told_not_to() -> None:
    c = client(prompt_tokens_per_second=1e9)
    body = {"model": EMBED, "input": [BIG[:40_000], "short"], "options": {"num_ctx": 2048}}
    out = (await c.post("/api/embed", json=body)).json()
    strict.StrictEmbed.model_validate(out)
    assert out["prompt_eval_count"] == 2048 + 2
    r = await c.post("/api/embed", json={**body, "truncate": False})
    assert (r.status_code, r.json()) == (
        400,
        {"error": "input length exceeds maximum context length"},
    )
    legacy = await c.post("/api/embeddings", json={"model": EMBED, "prompt": BIG})
    assert legacy.status_code == 200 and len(legacy.json()["embedding"]) == 768
