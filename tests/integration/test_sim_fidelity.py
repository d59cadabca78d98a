"""A real `meshlb sim-ollama` process, driven by the official `ollama` and `openai` clients.

Each call goes twice: once through the official client (it must work unchanged), and
once raw, validated against the strict models of tests/fidelity/strict_ollama.py (the
clients themselves ignore unknown keys and accept missing ones).
"""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlparse

import httpx
import ollama
import openai
import pytest
from pydantic import ValidationError

from tests.fidelity import strict_ollama as strict
from tests.procs import Proc, meshlb_argv, sim_ollama

pytestmark = pytest.mark.integration
MODEL = "llama3.2:1b"
EMBED = "nomic-embed-text"
TPS = 400.0
BUSY = "server busy, please try again.  maximum pending requests exceeded"


@pytest.fixture(scope="module")
def sim() -> Iterator[Proc]:
    with sim_ollama(models=f"{MODEL},{EMBED}", tokens_per_second=TPS, parallel=4) as p:
        yield p


def post(p: Proc, path: str, body: dict[str, Any]) -> httpx.Response:
    return httpx.post(p.url + path, json=body, timeout=10)


def lines(r: httpx.Response) -> list[dict[str, Any]]:
    return [json.loads(x) for x in r.text.splitlines()]


def sse(r: httpx.Response) -> list[str]:
    return [e.removeprefix("data: ") for e in r.text.split("\n\n") if e]


def test_strict_models_reject_extra_and_missing_fields() -> None:
    good = {"model": "m", "created_at": "t", "response": "x", "done": False}
    strict.StrictGenerateChunk.model_validate(good)
    for bad in ({**good, "surprise": 1}, {k: v for k, v in good.items() if k != "created_at"}):
        with pytest.raises(ValidationError):
            strict.StrictGenerateChunk.model_validate(bad)


def test_generate(sim: Proc) -> None:
    client = ollama.Client(host=sim.url)
    t0 = time.monotonic_ns()
    gen = client.generate(model=MODEL, prompt="why is the sky blue?", options={"num_predict": 8})
    wall_ns = time.monotonic_ns() - t0
    assert gen.done and gen.done_reason == "length" and gen.eval_count == 8 and gen.response
    assert gen.eval_duration == int(8 / TPS * 1e9)  # nanoseconds, consistent with tokens/s
    assert gen.total_duration is not None and gen.total_duration <= wall_ns
    assert gen.total_duration >= gen.eval_duration + (gen.prompt_eval_duration or 0)
    streamed = list(
        client.generate(
            model=MODEL, prompt="why is the sky blue?", stream=True, options={"num_predict": 8}
        )
    )
    assert "".join(s.response or "" for s in streamed) == gen.response
    raw = post(
        sim,
        "/api/generate",
        {
            "model": MODEL,
            "prompt": "why is the sky blue?",
            "stream": False,
            "options": {"num_predict": 8},
        },
    )
    assert strict.StrictGenerateFinal.model_validate(raw.json()).response == gen.response
    *chunks, final = lines(post(sim, "/api/generate", {"model": MODEL, "prompt": "hi"}))
    for c in chunks:
        strict.StrictGenerateChunk.model_validate(c)
    assert strict.StrictGenerateFinal.model_validate(final).done_reason == "stop"
    strict.StrictLoadReply.model_validate(post(sim, "/api/generate", {"model": MODEL}).json())


def test_chat(sim: Proc) -> None:
    client = ollama.Client(host=sim.url)
    msgs = [{"role": "user", "content": "hello"}]
    chat = client.chat(model=MODEL, messages=msgs, options={"num_predict": 6})
    assert chat.message.role == "assistant" and chat.eval_count == 6 and chat.message.content
    parts = list(client.chat(model=MODEL, messages=msgs, stream=True, options={"num_predict": 6}))
    assert "".join(p.message.content or "" for p in parts) == chat.message.content
    assert parts[-1].done and parts[-1].done_reason == "length"
    whole = post(sim, "/api/chat", {"model": MODEL, "messages": msgs, "stream": False})
    strict.StrictChatFinal.model_validate(whole.json())
    *chunks, final = lines(post(sim, "/api/chat", {"model": MODEL, "messages": msgs}))
    for c in chunks:
        strict.StrictChatChunk.model_validate(c)
    strict.StrictChatFinal.model_validate(final)


def test_embed_list_ps_show_version(sim: Proc) -> None:
    client = ollama.Client(host=sim.url)
    emb = client.embed(model=EMBED, input=["a", "b"])
    assert len(emb.embeddings) == 2 and len(emb.embeddings[0]) == 768
    raw = post(sim, "/api/embed", {"model": EMBED, "input": "a"})
    strict.StrictEmbed.model_validate(raw.json())
    legacy = client.embeddings(model=EMBED, prompt="a")
    assert list(legacy.embedding) == list(emb.embeddings[0])
    strict.StrictEmbeddings.model_validate(
        post(sim, "/api/embeddings", {"model": EMBED, "prompt": "a"}).json()
    )
    assert [m.model for m in client.list().models] == [MODEL, f"{EMBED}:latest"]
    strict.StrictList.model_validate(httpx.get(sim.url + "/api/tags").json())
    client.generate(model=MODEL, prompt="warm up", options={"num_predict": 1})
    assert MODEL in [m.model for m in client.ps().models]
    strict.StrictPs.model_validate(httpx.get(sim.url + "/api/ps").json())
    show = client.show(MODEL)
    assert show.details is not None and show.details.family == "llama"
    assert show.capabilities == ["completion"]
    strict.StrictShow.model_validate(post(sim, "/api/show", {"model": MODEL}).json())
    strict.StrictVersion.model_validate(httpx.get(sim.url + "/api/version").json())


def test_openai_client(sim: Proc) -> None:
    oc = openai.OpenAI(base_url=sim.url + "/v1", api_key="ollama")
    msgs: Any = [{"role": "user", "content": "hello"}]
    cc = oc.chat.completions.create(model=MODEL, messages=msgs, max_tokens=5)
    assert cc.choices[0].finish_reason == "length" and cc.usage is not None
    assert cc.usage.completion_tokens == 5
    chunks = list(
        oc.chat.completions.create(
            model=MODEL,
            messages=msgs,
            max_tokens=5,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == cc.choices[0].message.content
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 5
    body = {"model": MODEL, "messages": msgs, "max_tokens": 5}
    strict.OAChatCompletion.model_validate(post(sim, "/v1/chat/completions", body).json())
    events = sse(
        post(
            sim,
            "/v1/chat/completions",
            {**body, "stream": True, "stream_options": {"include_usage": True}},
        )
    )
    assert events[-1] == "[DONE]"
    for e in events[:-1]:
        strict.OAChatChunk.model_validate_json(e)
    emb = oc.embeddings.create(model=EMBED, input=["a"])  # the client asks for base64
    native = ollama.Client(host=sim.url).embed(model=EMBED, input="a").embeddings[0]
    assert emb.data[0].embedding == pytest.approx(list(native), abs=1e-6)
    for fmt in ("float", "base64"):
        strict.OAEmbeddingList.model_validate(
            post(
                sim, "/v1/embeddings", {"model": EMBED, "input": "a", "encoding_format": fmt}
            ).json()
        )
    assert [m.id for m in oc.models.list()] == [MODEL, f"{EMBED}:latest"]
    strict.OAModelList.model_validate(httpx.get(sim.url + "/v1/models").json())
    comp = oc.completions.create(model=MODEL, prompt="once", max_tokens=3)
    assert comp.choices[0].finish_reason == "length" and comp.choices[0].text
    strict.OACompletion.model_validate(
        post(sim, "/v1/completions", {"model": MODEL, "prompt": "once", "max_tokens": 3}).json()
    )
    with pytest.raises(openai.NotFoundError):
        oc.chat.completions.create(model="nope", messages=msgs)
    strict.OAError.model_validate(post(sim, "/v1/chat/completions", {**body, "model": "x"}).json())


def test_errors(sim: Proc) -> None:
    client = ollama.Client(host=sim.url)
    with pytest.raises(ollama.ResponseError) as err:
        client.generate(model="nope", prompt="x")
    assert (err.value.status_code, err.value.error) == (404, "model 'nope' not found")
    with pytest.raises(ollama.ResponseError) as err:
        client.chat(model="nope", messages=[{"role": "user", "content": "x"}])
    assert err.value.status_code == 404
    r = httpx.post(sim.url + "/api/chat", content=b"{not json")
    assert r.status_code == 400 and strict.StrictError.model_validate(r.json()).error
    r = post(sim, "/api/generate", {"prompt": "x"})
    assert (r.status_code, r.json()) == (400, {"error": "model is required"})


def test_port_in_use_is_a_clear_error(sim: Proc) -> None:
    port = str(urlparse(sim.url).port)
    done = subprocess.run(
        meshlb_argv("sim-ollama", "--port", port), capture_output=True, text=True, timeout=20
    )
    assert done.returncode == 1 and "cannot listen" in done.stderr


def _hold(p: Proc, body: dict[str, Any]) -> socket.socket:
    """Send a request on a raw socket and never read: it holds a slot or a queue place."""
    url = urlparse(p.url)
    s = socket.create_connection((url.hostname or "127.0.0.1", url.port or 80))
    data = json.dumps(body).encode()
    s.sendall(
        b"POST /api/generate HTTP/1.1\r\nHost: sim\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n\r\n%s" % (len(data), data)
    )
    return s


def _wait_stats(p: Proc, **want: int) -> dict[str, int]:
    deadline = time.monotonic() + 5
    while True:
        stats: dict[str, int] = httpx.get(p.url + "/sim/stats").json()
        if all(stats.get(k, 0) == v for k, v in want.items()) or time.monotonic() > deadline:
            return stats
        time.sleep(0.02)


def test_busy_503_and_disconnects_reach_the_backend() -> None:
    with sim_ollama("--max-queue", "1", models=MODEL, tokens_per_second=5, parallel=2) as p:
        body = {"model": MODEL, "prompt": "slow", "options": {"num_predict": 100}}
        held = [_hold(p, body) for _ in range(3)]
        assert _wait_stats(p, running=2, pending=1)["running"] == 2
        r = post(p, "/api/generate", body)
        assert (r.status_code, r.json()) == (503, {"error": BUSY})
        with pytest.raises(ollama.ResponseError) as err:
            ollama.Client(host=p.url).generate(model=MODEL, prompt="x")
        assert err.value.status_code == 503
        for s in held:
            s.close()
        stats = _wait_stats(p, running=0, pending=0, cancelled=3)
        assert (stats["running"], stats["pending"], stats["cancelled"]) == (0, 0, 3)
        assert stats["max_running_seen"] == 2 and stats["rejected_busy"] == 2
        p.popen.send_signal(signal.SIGINT)
        assert p.popen.wait(10) == 0  # Ctrl-C is a clean stop


def test_fault_injection() -> None:
    with sim_ollama(
        "--error-rate",
        "0.5",
        "--die-mid-stream-rate",
        "1",
        "--seed",
        "3",
        models=MODEL,
        tokens_per_second=2000,
    ) as p:
        client = ollama.Client(host=p.url)
        seen: Counter[str] = Counter()
        for i in range(12):
            try:
                list(client.generate(model=MODEL, prompt=str(i), stream=True))
                seen["complete"] += 1
            except ollama.ResponseError as e:
                assert e.status_code == 500 and "simulated" in e.error
                seen["500"] += 1
            except httpx.HTTPError:
                seen["cut"] += 1
        assert seen["500"] >= 2 and seen["cut"] >= 2 and seen["complete"] == 0
        stats = httpx.get(p.url + "/sim/stats").json()
        assert (stats["errors_injected"], stats["died_mid_stream"]) == (seen["500"], seen["cut"])
    assert p.popen.returncode == 0  # SIGTERM is a clean stop


def test_memory_model_through_the_official_client() -> None:
    """Two 2 GB models in 3 GB: each switch is a cold load of 2 GB / 10 GB/s; ps tells."""
    with sim_ollama(
        "--vram-gb", "3", "--load-gbps", "10", models="alpha=2,beta=2", tokens_per_second=2000
    ) as p:
        client = ollama.Client(host=p.url)
        for model in ("alpha", "beta"):  # both cold: beta does not fit beside alpha
            out = client.generate(model=model, prompt="hi", options={"num_predict": 2})
            assert (out.load_duration or 0) >= 0.2e9
        warm = client.generate(model="beta", prompt="hi", options={"num_predict": 2})
        assert (warm.load_duration or 0) < 0.1e9  # beta is loaded: no load
        raw = httpx.get(p.url + "/api/ps").json()
        strict.StrictPs.model_validate(raw)
        (entry,) = raw["models"]
        assert (entry["name"], entry["size"], entry["size_vram"]) == ("beta:latest", 2e9, 2e9)
        assert [m.model for m in client.ps().models] == ["beta:latest"]
        loaded = client.generate(model="alpha", keep_alive="1m")  # empty prompt: load
        assert loaded.done_reason == "load"
        strict.StrictLoadReply.model_validate(post(p, "/api/generate", {"model": "alpha"}).json())
        assert [m.model for m in client.ps().models] == ["alpha:latest"]  # beta evicted
        assert client.generate(model="alpha", keep_alive=0).done_reason == "unload"
        assert client.ps().models == []
        stats = httpx.get(p.url + "/sim/stats").json()
        assert (stats["loads"], stats["evictions"]) == (3, 2)


def test_model_management_through_the_official_client(tmp_path: Any) -> None:
    with sim_ollama("--pull-mbps", "2000", models=MODEL, tokens_per_second=2000) as p:
        client = ollama.Client(host=p.url)
        parts = list(client.pull("qwen2.5:0.5b", stream=True))
        assert parts[0].status == "pulling manifest" and parts[-1].status == "success"
        first = next(x for x in parts if x.digest)
        done = [x.completed for x in parts if x.digest == first.digest and x.completed]
        assert len(done) >= 2 and done == sorted(done) and done[-1] == first.total
        assert client.pull("qwen2.5:0.5b").status == "success"
        for line in post(p, "/api/pull", {"model": "qwen2.5:0.5b"}).text.splitlines():
            strict.StrictProgress.model_validate_json(line)
        assert "qwen2.5:0.5b" in [m.model for m in client.list().models]
        with pytest.raises(ollama.ResponseError) as err:
            client.pull("no-such-model")
        assert "file does not exist" in err.value.error
        assert client.copy(MODEL, "mine:v1").status == "success"
        blob = tmp_path / "weights.gguf"
        blob.write_bytes(b"GGUF simulated")
        digest = client.create_blob(blob)
        made = list(client.create("made", files={"weights.gguf": digest}, stream=True))
        assert made[-1].status == "success"
        assert client.create("bot", from_=MODEL, system="be brief").status == "success"
        assert {"mine:v1", "made:latest", "bot:latest"} <= {m.model for m in client.list().models}
        assert client.push("mine:v1").status == "success"
        assert client.delete("mine:v1").status == "success"
        with pytest.raises(ollama.ResponseError) as err:
            client.delete("mine:v1")
        assert err.value.status_code == 404
    with sim_ollama("--fail-pulls", models=MODEL) as p:
        with pytest.raises(ollama.ResponseError) as err:
            list(ollama.Client(host=p.url).pull("llama3.2", stream=True))
        assert "--fail-pulls" in err.value.error
