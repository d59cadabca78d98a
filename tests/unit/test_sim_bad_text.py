"""Strings Go would repair: lone surrogates and invalid UTF-8 are U+FFFD, never a 500."""

from __future__ import annotations

import json

import httpx
import pytest

from meshlb.backend.sim_app import build_sim_app
from meshlb.backend.sim_config import SimOllamaConfig

MODEL = "llama3.2:1b"
EMBED = "nomic-embed-text"
LONE = "\\ud800"  # as it travels in JSON: an escape no valid UTF-16 pair completes


def client() -> httpx.AsyncClient:
    config = SimOllamaConfig(
        models=(MODEL, EMBED), tokens_per_second=1e6, prompt_tokens_per_second=1e9
    )
    app = build_sim_app(config)
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://sim")


CASES = [
    ("/api/generate", f'{{"model":"{MODEL}","prompt":"{LONE}","stream":false}}', 200),
    ("/api/generate", f'{{"model":"{MODEL}","prompt":"x","system":"\\udfff","stream":false}}', 200),
    ("/api/generate", f'{{"model":"{MODEL}","prompt":"x","verbose":"\\udfff"}}', 200),
    ("/api/generate", f'{{"model":"{LONE}","prompt":"x"}}', 404),
    ("/api/chat", f'{{"model":"{MODEL}","messages":[{{"role":"user","content":"a{LONE}"}}]}}', 200),
    ("/api/embed", f'{{"model":"{EMBED}","input":["{LONE}","b"]}}', 200),
    ("/api/embeddings", f'{{"model":"{EMBED}","prompt":"{LONE}"}}', 200),
    ("/api/show", f'{{"model":"{LONE}"}}', 404),
    ("/api/show", f'{{"model":"{MODEL}","verbose":"{LONE}"}}', 200),
    (
        "/v1/chat/completions",
        f'{{"model":"{MODEL}","messages":[{{"role":"user","content":"{LONE}"}}]}}',
        200,
    ),
    ("/v1/completions", f'{{"model":"{MODEL}","prompt":"{LONE}"}}', 200),
    ("/v1/embeddings", f'{{"model":"{EMBED}","input":"{LONE}"}}', 200),
    ("/v1/embeddings", f'{{"model":"{LONE}","input":"x"}}', 404),
]


@pytest.mark.parametrize(("path", "raw", "status"), CASES)
async def test_lone_surrogates_are_replaced_not_a_500(path: str, raw: str, status: int) -> None:
    c = client()
    r = await c.post(path, content=raw.encode(), headers={"content-type": "application/json"})
    assert r.status_code == status, r.text
    for line in r.text.splitlines():  # one JSON object, or NDJSON lines: all valid JSON
        json.loads(line)
    assert "\\ud800" not in r.text


async def test_a_lone_surrogate_means_what_u_fffd_means() -> None:
    c = client()
    lone = await c.post("/api/embed", content=f'{{"model":"{EMBED}","input":"{LONE}"}}'.encode())
    fffd = await c.post("/api/embed", json={"model": EMBED, "input": "\ufffd"})
    assert lone.json()["embeddings"] == fffd.json()["embeddings"]
    model = await c.post("/api/show", content=f'{{"model":"x{LONE}"}}'.encode())
    assert model.json() == {"error": "model 'x\ufffd' not found"}


async def test_invalid_utf8_bytes_and_deep_nesting() -> None:
    c = client()
    body = b'{"model":"' + MODEL.encode() + b'","prompt":"caf\xe9 \xff","stream":false}'
    r = await c.post("/api/generate", content=body)
    assert r.status_code == 200 and r.json()["done"] is True
    deep = (
        json.dumps({"model": MODEL, "prompt": "x"})[:-1]
        + ',"x":'
        + "[" * 100_000
        + "]" * 100_000
        + "}"
    )
    r = await c.post("/api/generate", content=deep.encode())
    assert (r.status_code, r.json()) == (400, {"error": "exceeded max depth"})
    shallow = json.dumps({"model": MODEL, "prompt": "x", "stream": False, "x": [[[[1]]]]})
    assert (await c.post("/api/generate", content=shallow.encode())).status_code == 200
