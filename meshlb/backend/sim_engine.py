"""Pure core of the simulated Ollama: model facts, text, embeddings and error bodies
(the bytes of each API dialect are `meshlb.backend.sim_render`'s).

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
from typing import Any

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

# JSON as Ollama writes it (no spaces, UTF-8 kept), for every simulated body.
compact_json = functools.partial(json.dumps, separators=(",", ":"), ensure_ascii=False)


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


def error_body(message: str) -> bytes:
    """Ollama's error shape: `{"error": "<sentence>"}`."""
    return compact_json({"error": message}).encode()


def openai_error_body(status: int, message: str) -> bytes:
    """Ollama's OpenAI-compat error shape (`openai.NewError`)."""
    kind = {400: "invalid_request_error", 404: "not_found_error"}.get(status, "api_error")
    return compact_json(
        {"error": {"message": message, "type": kind, "param": None, "code": None}}
    ).encode()
