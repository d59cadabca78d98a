"""Model management in the simulator: pull, push, create, copy, delete, blobs (in-process)."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import httpx
import pytest
import trio
from trio.testing import MockClock

from meshlb.backend.sim_app import build_sim_app
from meshlb.backend.sim_config import SimOllamaConfig
from meshlb.backend.sim_models import FAILED_PULL, NOT_IN_REGISTRY
from tests.fidelity import strict_ollama as strict

MODEL = "llama3.2:1b"


def client(**cfg: Any) -> httpx.AsyncClient:
    cfg.setdefault("models", (MODEL,))
    app = build_sim_app(SimOllamaConfig(**cfg))
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://sim")


def events(r: httpx.Response) -> list[dict[str, Any]]:
    assert r.status_code == 200 and r.headers["content-type"] == "application/x-ndjson"
    out = [json.loads(line) for line in r.text.splitlines()]
    for e in out:
        if "error" not in e:
            strict.StrictProgress.model_validate(e)
    return out


async def tags(c: httpx.AsyncClient) -> list[str]:
    raw = (await c.get("/api/tags")).json()
    strict.StrictList.model_validate(raw)
    return [m["name"] for m in raw["models"]]


async def test_pull_streams_ollamas_progress_at_pull_mbps(autojump_clock: MockClock) -> None:
    c = client(pull_mbps=500.0)
    t0 = trio.current_time()
    out = events(await c.post("/api/pull", json={"model": "llama3.2"}))
    assert trio.current_time() - t0 == pytest.approx(2e9 / 500e6, abs=0.3)  # 2.0 GB
    assert out[0] == {"status": "pulling manifest"}
    assert [e["status"] for e in out[-3:]] == [
        "verifying sha256 digest",
        "writing manifest",
        "success",
    ]
    layer = [e for e in out if e.get("digest")]
    assert layer[0]["status"] == f"pulling {layer[0]['digest'][7:19]}"
    assert "completed" not in layer[0] and layer[0]["total"] > 1.9e9
    done = [
        e["completed"] for e in layer if e["digest"] == layer[0]["digest"][:] and "completed" in e
    ]
    assert done == sorted(done) and done[-1] == layer[0]["total"] and len(done) > 30
    assert sum(t for t in {e["digest"]: e["total"] for e in layer}.values()) == 2_000_000_000
    assert "llama3.2:latest" in await tags(c)
    r = await c.post("/api/generate", json={"model": "llama3.2", "prompt": "x", "stream": False})
    assert r.status_code == 200  # the pulled model runs


async def test_pull_not_streamed_unknown_and_failing() -> None:
    c = client()
    r = await c.post("/api/pull", json={"model": "qwen2.5:0.5b", "stream": False})
    assert (r.status_code, r.json()) == (200, {"status": "success"})
    out = events(await c.post("/api/pull", json={"model": "no-such-model"}))
    assert out == [{"status": "pulling manifest"}, {"error": NOT_IN_REGISTRY}]
    r = await c.post("/api/pull", json={"model": "no-such-model", "stream": False})
    assert (r.status_code, r.json()) == (500, {"error": NOT_IN_REGISTRY})
    assert "no-such-model:latest" not in await tags(c)
    r = await c.post("/api/pull", json={"model": ""})
    assert (r.status_code, r.json()) == (400, {"error": "invalid model name"})
    c = client(fail_pulls=True)
    out = events(await c.post("/api/pull", json={"model": "llama3.2"}))
    assert out[-1] == {"error": FAILED_PULL} and "llama3.2:latest" not in await tags(c)
    r = await c.post("/api/pull", json={"model": "llama3.2", "stream": False})
    assert (r.status_code, r.json()) == (500, {"error": FAILED_PULL})


async def test_delete_and_copy() -> None:
    c = client(models=(MODEL, "qwen2.5:0.5b"))
    r = await c.post("/api/copy", json={"source": MODEL, "destination": "mine:v1"})
    assert (r.status_code, r.content) == (200, b"")
    assert "mine:v1" in await tags(c)
    r = await c.post("/api/generate", json={"model": "mine:v1", "prompt": "x", "stream": False})
    assert r.status_code == 200
    r = await c.post("/api/copy", json={"source": "nope", "destination": "x"})
    assert (r.status_code, r.json()) == (404, {"error": 'model "nope" not found'})
    r = await c.post("/api/copy", json={"source": MODEL, "destination": ""})
    assert (r.status_code, r.json()) == (400, {"error": 'destination "" is invalid'})
    r = await c.request("DELETE", "/api/delete", json={"model": MODEL})
    assert (r.status_code, r.content) == (200, b"")
    assert MODEL not in await tags(c)
    r = await c.request("DELETE", "/api/delete", json={"model": MODEL})
    assert (r.status_code, r.json()) == (404, {"error": f"model '{MODEL}' not found"})
    r = await c.post("/api/generate", json={"model": MODEL, "prompt": "x"})
    assert r.status_code == 404


async def test_blobs_check_their_digest_and_create_uses_them() -> None:
    c = client()
    data = b"GGUF simulated weights"
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    assert (await c.head(f"/api/blobs/{digest}")).status_code == 404
    wrong = "sha256:" + "0" * 64
    r = await c.post(f"/api/blobs/{wrong}", content=data)
    assert r.status_code == 400 and r.json()["error"] == (
        f'digest mismatch, expected "{wrong}", got "{digest}"'
    )
    assert (await c.post(f"/api/blobs/{digest}", content=data)).status_code == 201
    assert (await c.post(f"/api/blobs/{digest}", content=data)).status_code == 200
    assert (await c.head(f"/api/blobs/{digest}")).status_code == 200
    r = await c.head("/api/blobs/sha256:xyz")
    assert r.status_code == 400
    out = events(
        await c.post("/api/create", json={"model": "fromfile", "files": {"m.gguf": digest}})
    )
    assert out[0] == {"status": f"using existing layer {digest}"} and out[-1] == {
        "status": "success"
    }
    out = events(
        await c.post("/api/create", json={"model": "bot", "from": MODEL, "system": "be brief"})
    )
    assert out[-2:] == [{"status": "writing manifest"}, {"status": "success"}]
    assert any(e["status"].startswith("creating new layer sha256:") for e in out)
    assert {"fromfile:latest", "bot:latest"} <= set(await tags(c))
    for body, status in (
        ({"model": "x"}, 400),
        ({"model": "x", "files": {"a": wrong}}, 400),
        ({"model": "x", "from": "no-such-model"}, 404),
        ({"model": "", "from": MODEL}, 400),
    ):
        assert (await c.post("/api/create", json=body)).status_code == status, body


async def test_push_streams_and_fails_for_unknown_models() -> None:
    c = client()
    out = events(await c.post("/api/push", json={"model": MODEL}))
    assert out[0] == {"status": "retrieving manifest"} and out[-1] == {"status": "success"}
    assert out[-2] == {"status": "pushing manifest"}
    assert any(e["status"].startswith("pushing ") and e.get("digest") for e in out)
    r = await c.post("/api/push", json={"model": "nope", "stream": False})
    assert (r.status_code, r.json()) == (500, {"error": "model 'nope' not found"})
