"""Pure core of the simulated Ollama: model facts, text, embeddings and wire bytes.

No I/O, no clock: callers pass wall-clock timestamps in. Everything is deterministic
given (seed, model, input), so tests can assert exact outputs and benchmarks are
repeatable. Response shapes follow Ollama's `server/routes.go`, `openai/openai.go`
and `docs/api.md`; bytes are built with `json.dumps` (no pydantic per chunk) because a
benchmark of the proxy must not be a benchmark of the simulator.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import json
import math
import random
import re
import struct
import time
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

MIN_NATURAL_TOKENS = 32  # a reply ends by itself ("stop") somewhere in this range,
MAX_NATURAL_TOKENS = 128  # unless options.num_predict cuts it first ("length").

WORDS = (
    "the",
    "model",
    "answers",
    "with",
    "simulated",
    "tokens",
    "and",
    "a",
    "quiet",
    "river",
    "of",
    "light",
    "over",
    "blue",
    "mountains",
    "while",
    "gossip",
    "finds",
    "every",
    "peer",
    "in",
    "mesh",
    "queue",
    "moves",
    "fast",
    "because",
    "scheduler",
    "is",
    "fair",
    "to",
    "all",
    "requests",
    "that",
    "arrive",
    "from",
    "many",
    "clients",
    "sky",
    "appears",
    "due",
    "rayleigh",
    "scattering",
    "short",
    "wavelengths",
    "sun",
    "data",
    "flows",
    "through",
    "nodes",
    "like",
    "water",
    "on",
    "stone",
    "under",
    "moon",
)

_dumps = functools.partial(json.dumps, separators=(",", ":"), ensure_ascii=False)


def canonical_name(name: str) -> str:
    """Ollama's rule: names compare case-insensitively and a missing tag means `latest`."""
    name = name.strip().lower()
    return name if ":" in name.rsplit("/", 1)[-1] else f"{name}:latest"


@dataclass(frozen=True, slots=True)
class ModelSpec:
    """Everything `/api/tags`, `/api/ps` and `/api/show` say about one simulated model."""

    name: str  # canonical, e.g. "nomic-embed-text:latest"
    family: str
    parameter_count: int
    parameter_size: str
    quantization_level: str
    size: int
    digest: str
    embedding_dim: int
    context_length: int
    is_embedding: bool

    def details(self) -> dict[str, Any]:
        """Ollama's `ModelDetails`: all six keys, always present."""
        return {
            "parent_model": "",
            "format": "gguf",
            "family": self.family,
            "families": [self.family],
            "parameter_size": self.parameter_size,
            "quantization_level": self.quantization_level,
        }


_FAMILIES = (
    ("nomic", "nomic-bert"),
    ("minilm", "bert"),
    ("bge", "bert"),
    ("mxbai", "bert"),
    ("qwen3", "qwen3"),
    ("qwen", "qwen2"),
    ("llama", "llama"),
    ("mistral", "llama"),
    ("gemma", "gemma3"),
    ("phi", "phi3"),
    ("deepseek", "qwen2"),
)
_EMBED_MARKERS = ("embed", "nomic", "minilm", "bge", "mxbai")
_SIZE_RE = re.compile(r"(\d+(?:\.\d+)?)([bm])(?![a-z])")


@functools.lru_cache(maxsize=256)
def describe_model(name: str) -> ModelSpec:
    """Derive plausible, deterministic facts from a model name alone.

    Embedding dimension (documented choice): 384 for *minilm*, 1024 for *bge*/*mxbai*,
    768 for other embedding models (*embed*, *nomic*), and for generative models 2048
    below 3B parameters, else 4096 (llama3.2:1b really has 2048).
    """
    canon = canonical_name(name)
    is_embedding = any(m in canon for m in _EMBED_MARKERS)
    family = next((f for key, f in _FAMILIES if key in canon), canon.split(":")[0].split("/")[-1])
    match = _SIZE_RE.search(canon.split(":", 1)[1]) or _SIZE_RE.search(canon)
    if match:
        count = int(float(match.group(1)) * (1e9 if match.group(2) == "b" else 1e6))
    else:
        count = 137_000_000 if is_embedding else 7_000_000_000
    size_label = f"{count / 1e9:.1f}B" if count >= 1e9 else f"{round(count / 1e6)}M"
    if "minilm" in canon:
        dim = 384
    elif "bge" in canon or "mxbai" in canon:
        dim = 1024
    elif is_embedding:
        dim = 768
    else:
        dim = 2048 if count < 3e9 else 4096
    bytes_per_param = 2.0 if is_embedding else 0.6  # F16 vs Q4_K_M
    return ModelSpec(
        name=canon,
        family=family,
        parameter_count=count,
        parameter_size=size_label,
        quantization_level="F16" if is_embedding else "Q4_K_M",
        size=int(count * bytes_per_param) + 20_000_000,
        digest=hashlib.sha256(canon.encode()).hexdigest(),
        embedding_dim=dim,
        context_length=8192 if is_embedding else 131072,
        is_embedding=is_embedding,
    )


def count_tokens(text: str) -> int:
    """Token estimate: one per 4 characters, at least one for non-empty text."""
    return (len(text) + 3) // 4 if text else 0


def chat_prompt_tokens(messages: Sequence[dict[str, Any]]) -> int:
    """Prompt tokens of a chat: content plus ~4 template tokens per message, +3 for the reply."""
    return sum(count_tokens(str(m.get("content") or "")) + 4 for m in messages) + 3


@dataclass(frozen=True, slots=True)
class Completion:
    """A generated reply: its tokens (text pieces, concatenating to `text`) and why it ended."""

    tokens: tuple[str, ...]
    text: str
    done_reason: str  # "stop" | "length"


@functools.lru_cache(maxsize=4096)
def complete(
    model: str, prompt: str, seed: int, num_predict: int, json_mode: bool = False
) -> Completion:
    """Deterministic reply to `prompt`; `num_predict` > 0 caps its length (done_reason "length").

    `json_mode` (request `format` set) wraps the words in a JSON object, so a reply that
    is not cut parses as JSON, as Ollama's constrained decoding guarantees.
    """
    rng = random.Random(f"{seed}\x00{model}\x00{prompt}")
    natural = rng.randint(MIN_NATURAL_TOKENS, MAX_NATURAL_TOKENS)
    n, reason = natural, "stop"
    if 0 < num_predict < natural and not json_mode:
        n, reason = num_predict, "length"
    tokens = _words(rng, n - 3 if json_mode else n, natural_end=reason == "stop")
    if json_mode:
        tokens = ['{"answer":', ' "', tokens[0].lstrip(), *tokens[1:], '"}']
        if 0 < num_predict < len(tokens):
            tokens, reason = tokens[:num_predict], "length"
    return Completion(tokens=tuple(tokens), text="".join(tokens), done_reason=reason)


def _words(rng: random.Random, n: int, natural_end: bool) -> list[str]:
    """`n` word tokens in sentences; a reply that ends by itself ends with a period."""
    tokens: list[str] = []
    sentence_left = rng.randint(6, 14)
    capital = True
    for i in range(n):
        word = rng.choice(WORDS)
        if capital:
            word = word.capitalize()
        sentence_left -= 1
        capital = sentence_left == 0 or (natural_end and i == n - 1)
        if capital:
            word += "."
            sentence_left = rng.randint(6, 14)
        tokens.append(word if i == 0 else " " + word)
    return tokens


@functools.lru_cache(maxsize=2048)
def embed_vector(model: str, text: str, dim: int, seed: int) -> tuple[float, ...]:
    """Unit-length vector for (model, text): equal inputs give equal vectors, others differ."""
    raw = hashlib.shake_256(f"{seed}\x00{model}\x00{text}".encode()).digest(dim * 2)
    values = struct.unpack(f"<{dim}h", raw)
    norm = math.sqrt(math.fsum(v * v for v in values)) or 1.0
    return tuple(round(v / norm, 9) for v in values)


def truncate_dims(vec: Sequence[float], dims: int | None) -> list[float]:
    """Ollama's `dimensions`: keep the first `dims` values and re-normalise."""
    if not dims or dims >= len(vec):
        return list(vec)
    head = vec[:dims]
    norm = math.sqrt(math.fsum(v * v for v in head)) or 1.0
    return [round(v / norm, 9) for v in head]


def floats_to_base64(vec: Sequence[float]) -> str:
    """OpenAI `encoding_format: base64`: little-endian float32 bytes, as Ollama encodes them."""
    return base64.b64encode(struct.pack(f"<{len(vec)}f", *vec)).decode()


def context_ids(key: str, n: int) -> list[int]:
    """Simulated token ids of prompt+reply, the `context` of /api/generate."""
    base = zlib.crc32(key.encode())
    return [(base + i * 7919) % 128_000 for i in range(n)]


def rfc3339(ts: float) -> str:
    """Go's `time.Time` JSON form in UTC, e.g. `2024-07-22T20:47:51.147561Z`."""
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ts)) + f".{int(ts % 1 * 1e6):06d}Z"


@dataclass(frozen=True, slots=True)
class Metrics:
    """Ollama's timing block, all durations in nanoseconds."""

    total_ns: int
    load_ns: int
    prompt_eval_count: int
    prompt_eval_ns: int
    eval_count: int
    eval_ns: int
    # Prompt tokens served from a slot's cache (part of prompt_eval_count, as in Ollama).
    prompt_eval_cached_count: int = 0

    def fields(self) -> dict[str, int]:
        out = {
            "total_duration": self.total_ns,
            "load_duration": self.load_ns,
            "prompt_eval_count": self.prompt_eval_count,
            "prompt_eval_duration": self.prompt_eval_ns,
            "eval_count": self.eval_count,
            "eval_duration": self.eval_ns,
        }
        if self.prompt_eval_cached_count:  # Ollama omits it when zero (omitempty)
            out["prompt_eval_cached_count"] = self.prompt_eval_cached_count
        return out


def error_body(message: str) -> bytes:
    """Ollama's error shape: `{"error": "<sentence>"}`."""
    return _dumps({"error": message}).encode()


def openai_error_body(status: int, message: str) -> bytes:
    """Ollama's OpenAI-compat error shape (`openai.NewError`)."""
    kind = {400: "invalid_request_error", 404: "not_found_error"}.get(status, "api_error")
    return _dumps(
        {"error": {"message": message, "type": kind, "param": None, "code": None}}
    ).encode()


class Renderer(Protocol):
    """Turns one completion into the bytes of one API dialect."""

    stream_media_type: str

    def chunk(self, token: str, now: float) -> bytes: ...

    def tail(self, c: Completion, m: Metrics, now: float) -> bytes: ...

    def whole(self, c: Completion, m: Metrics, now: float) -> bytes: ...


class GenerateRenderer:
    """`/api/generate`: NDJSON chunks `{"model","created_at","response","done":false}`."""

    stream_media_type = "application/x-ndjson"

    def __init__(self, model: str, context: list[int] | None) -> None:
        self._model = model
        self._context = context
        self._pre = b'{"model":' + _dumps(model).encode() + b',"created_at":"'

    def chunk(self, token: str, now: float) -> bytes:
        return (
            self._pre
            + rfc3339(now).encode()
            + b'","response":'
            + _dumps(token).encode()
            + b',"done":false}\n'
        )

    def _final(self, response: str, c: Completion, m: Metrics, now: float) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": self._model,
            "created_at": rfc3339(now),
            "response": response,
            "done": True,
            "done_reason": c.done_reason,
        }
        if self._context is not None:
            body["context"] = self._context
        body.update(m.fields())
        return body

    def tail(self, c: Completion, m: Metrics, now: float) -> bytes:
        return _dumps(self._final("", c, m, now)).encode() + b"\n"

    def whole(self, c: Completion, m: Metrics, now: float) -> bytes:
        return _dumps(self._final(c.text, c, m, now)).encode()


class ChatRenderer:
    """`/api/chat`: NDJSON chunks with `"message":{"role":"assistant","content":...}`."""

    stream_media_type = "application/x-ndjson"

    def __init__(self, model: str) -> None:
        self._model = model
        self._pre = b'{"model":' + _dumps(model).encode() + b',"created_at":"'

    def chunk(self, token: str, now: float) -> bytes:
        return (
            self._pre
            + rfc3339(now).encode()
            + b'","message":{"role":"assistant","content":'
            + _dumps(token).encode()
            + b'},"done":false}\n'
        )

    def _final(self, content: str, c: Completion, m: Metrics, now: float) -> dict[str, Any]:
        return {
            "model": self._model,
            "created_at": rfc3339(now),
            "message": {"role": "assistant", "content": content},
            "done_reason": c.done_reason,
            "done": True,
            **m.fields(),
        }

    def tail(self, c: Completion, m: Metrics, now: float) -> bytes:
        return _dumps(self._final("", c, m, now)).encode() + b"\n"

    def whole(self, c: Completion, m: Metrics, now: float) -> bytes:
        return _dumps(self._final(c.text, c, m, now)).encode()


def _usage(m: Metrics) -> dict[str, int]:
    return {
        "prompt_tokens": m.prompt_eval_count,
        "completion_tokens": m.eval_count,
        "total_tokens": m.prompt_eval_count + m.eval_count,
    }


class OpenAIChatRenderer:
    """`/v1/chat/completions`: SSE `data: {chat.completion.chunk}` ... `data: [DONE]`."""

    stream_media_type = "text/event-stream"

    def __init__(self, model: str, completion_id: str, include_usage: bool) -> None:
        self._model = model
        self._id = completion_id
        self._include_usage = include_usage

    def _chunk(self, content: str, finish: str | None, now: float) -> dict[str, Any]:
        return {
            "id": self._id,
            "object": "chat.completion.chunk",
            "created": int(now),
            "model": self._model,
            "system_fingerprint": "fp_ollama",
            "choices": [
                {
                    "index": 0,
                    "delta": {"role": "assistant", "content": content},
                    "finish_reason": finish,
                }
            ],
        }

    def chunk(self, token: str, now: float) -> bytes:
        return b"data: " + _dumps(self._chunk(token, None, now)).encode() + b"\n\n"

    def tail(self, c: Completion, m: Metrics, now: float) -> bytes:
        out = b"data: " + _dumps(self._chunk("", c.done_reason, now)).encode() + b"\n\n"
        if self._include_usage:
            usage = {
                "id": self._id,
                "object": "chat.completion.chunk",
                "created": int(now),
                "model": self._model,
                "system_fingerprint": "fp_ollama",
                "choices": [],
                "usage": _usage(m),
            }
            out += b"data: " + _dumps(usage).encode() + b"\n\n"
        return out + b"data: [DONE]\n\n"

    def whole(self, c: Completion, m: Metrics, now: float) -> bytes:
        return _dumps(
            {
                "id": self._id,
                "object": "chat.completion",
                "created": int(now),
                "model": self._model,
                "system_fingerprint": "fp_ollama",
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": c.text},
                        "finish_reason": c.done_reason,
                    }
                ],
                "usage": _usage(m),
            }
        ).encode()


class OpenAICompletionRenderer:
    """`/v1/completions`: objects of type `text_completion`, SSE when streamed."""

    stream_media_type = "text/event-stream"

    def __init__(self, model: str, completion_id: str, include_usage: bool) -> None:
        self._model = model
        self._id = completion_id
        self._include_usage = include_usage

    def _obj(self, text: str, finish: str | None, now: float) -> dict[str, Any]:
        return {
            "id": self._id,
            "object": "text_completion",
            "created": int(now),
            "model": self._model,
            "system_fingerprint": "fp_ollama",
            "choices": [{"text": text, "index": 0, "finish_reason": finish}],
        }

    def chunk(self, token: str, now: float) -> bytes:
        return b"data: " + _dumps(self._obj(token, None, now)).encode() + b"\n\n"

    def tail(self, c: Completion, m: Metrics, now: float) -> bytes:
        out = b"data: " + _dumps(self._obj("", c.done_reason, now)).encode() + b"\n\n"
        if self._include_usage:
            usage = {**self._obj("", None, now), "choices": [], "usage": _usage(m)}
            out += b"data: " + _dumps(usage).encode() + b"\n\n"
        return out + b"data: [DONE]\n\n"

    def whole(self, c: Completion, m: Metrics, now: float) -> bytes:
        return _dumps({**self._obj(c.text, c.done_reason, now), "usage": _usage(m)}).encode()
