"""The official ollama and openai clients, pointed at a node, work unchanged (real processes)."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import ollama
import openai
import pytest

from tests.procs import Proc, meshlb_node, sim_ollama

pytestmark = pytest.mark.integration
MODEL = "llama3.2:1b"


@pytest.fixture(scope="module")
def node() -> Iterator[Proc]:
    with sim_ollama(tokens_per_second=500) as sim, meshlb_node(sim.url) as n:
        yield n


def test_ollama_client_chat_generate_embed_list(node: Proc) -> None:
    client = ollama.Client(host=node.url)
    chat = client.chat(
        model=MODEL, messages=[{"role": "user", "content": "hi"}], options={"num_predict": 8}
    )
    assert chat.message.role == "assistant" and chat.message.content
    assert chat.done and chat.eval_count == 8
    gen = client.generate(model=MODEL, prompt="hello", options={"num_predict": 5})
    assert gen.response and gen.eval_count == 5 and gen.done_reason == "length"
    emb = client.embed(model="nomic-embed-text", input=["a", "b"])
    assert len(emb.embeddings) == 2 and len(emb.embeddings[0]) > 0
    names = [m.model for m in client.list().models]
    assert "llama3.2:1b" in names


def test_ollama_client_streaming_chat(node: Proc) -> None:
    client = ollama.Client(host=node.url)
    parts = list(
        client.chat(
            model=MODEL,
            messages=[{"role": "user", "content": "hi"}],
            stream=True,
            options={"num_predict": 10},
        )
    )
    assert len(parts) >= 10
    assert all(not p.done for p in parts[:-1]) and parts[-1].done
    assert parts[-1].eval_count == 10
    assert "".join(p.message.content or "" for p in parts)


def test_openai_client_chat_and_stream(node: Proc) -> None:
    client = openai.OpenAI(base_url=f"{node.url}/v1", api_key="unused")
    out = client.chat.completions.create(
        model=MODEL, max_tokens=6, messages=[{"role": "user", "content": "hi"}]
    )
    assert out.choices[0].message.content
    stream = client.chat.completions.create(
        model=MODEL, max_tokens=6, stream=True, messages=[{"role": "user", "content": "hi"}]
    )
    text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert text
    assert MODEL in [m.id for m in client.models.list().data]


def test_meshlb_headers_on_every_task(node: Proc) -> None:
    before = httpx.get(f"{node.url}/v1/queue").json()["node_counters"].get("completed", 0)
    r = httpx.post(
        f"{node.url}/api/generate",
        headers={"X-Meshlb-Priority": "9"},
        json={"model": MODEL, "prompt": "x", "stream": False, "options": {"num_predict": 3}},
    )
    assert r.status_code == 200
    assert r.headers["x-meshlb-task-id"].startswith("t-")
    assert r.headers["x-meshlb-node"] == "n1"
    assert int(r.headers["x-meshlb-queue-ms"]) >= 0
    assert r.json()["eval_count"] == 3
    after = httpx.get(f"{node.url}/v1/queue").json()["node_counters"]["completed"]
    assert after == before + 1  # counted even though the client hangs up at once


def test_metadata_endpoints(node: Proc) -> None:
    assert httpx.get(f"{node.url}/").text == "Ollama is running"
    assert httpx.head(f"{node.url}/").status_code == 200
    assert "<html" in httpx.get(f"{node.url}/", headers={"accept": "text/html"}).text
    assert httpx.get(f"{node.url}/api/version").json()["version"]
    assert "models" in httpx.get(f"{node.url}/api/ps").json()
    show = httpx.post(f"{node.url}/api/show", json={"model": MODEL})
    assert show.status_code == 200 and "details" in show.json()
    assert httpx.get(f"{node.url}/readyz").json()["ready"] is True
    metrics = httpx.get(f"{node.url}/metrics").text
    assert "meshlb_queued" in metrics and "meshlb_ollama_up" in metrics
