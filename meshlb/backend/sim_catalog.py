"""The simulator's model library: sizes of common models, and what `/api/pull` can fetch.

Why a table: residency and placement are about gigabytes, so `--models llama3.2` should
weigh what the real one weighs without the user typing it. Sizes are the download sizes
listed on ollama.com/library (GB = 10^9 bytes, as Ollama's format package counts); the
simulator uses one figure for disk and memory (documented in `--help`). A name not in
the table gets a size derived from its parameter count (sim_engine.describe_model).
"""

from __future__ import annotations

from meshlb.backend.sim_engine import canonical_name

GB = 1_000_000_000

DEFAULT_SIZES_GB: dict[str, float] = {
    "llama3.2:latest": 2.0,
    "llama3.2:3b": 2.0,
    "llama3.2:1b": 1.3,
    "llama3.1:latest": 4.9,
    "llama3.1:8b": 4.9,
    "llama3:latest": 4.7,
    "llama3:8b": 4.7,
    "llama3.3:latest": 43.0,
    "llama3.3:70b": 43.0,
    "qwen2.5:latest": 4.7,
    "qwen2.5:0.5b": 0.398,
    "qwen2.5:1.5b": 0.986,
    "qwen2.5:3b": 1.9,
    "qwen2.5:7b": 4.7,
    "qwen2.5:14b": 9.0,
    "qwen2.5:32b": 20.0,
    "qwen2.5-coder:latest": 4.7,
    "qwen2.5-coder:7b": 4.7,
    "qwen3:latest": 5.2,
    "qwen3:0.6b": 0.523,
    "qwen3:1.7b": 1.4,
    "qwen3:4b": 2.6,
    "qwen3:8b": 5.2,
    "qwen3:14b": 9.3,
    "mistral:latest": 4.1,
    "mistral:7b": 4.1,
    "gemma3:latest": 3.3,
    "gemma3:1b": 0.815,
    "gemma3:4b": 3.3,
    "gemma3:12b": 8.1,
    "gemma2:2b": 1.6,
    "gemma2:latest": 5.4,
    "phi3:latest": 2.2,
    "phi4:latest": 9.1,
    "deepseek-r1:latest": 4.7,
    "deepseek-r1:1.5b": 1.1,
    "deepseek-r1:7b": 4.7,
    "deepseek-r1:8b": 5.2,
    "tinyllama:latest": 0.638,
    "nomic-embed-text:latest": 0.274,
    "mxbai-embed-large:latest": 0.67,
    "all-minilm:latest": 0.046,
    "bge-m3:latest": 1.2,
}


def default_size(name: str) -> int | None:
    """Bytes of a model the library knows, else None."""
    gb = DEFAULT_SIZES_GB.get(canonical_name(name))
    return None if gb is None else int(gb * GB)


def parse_model_entry(entry: str) -> tuple[str, int | None]:
    """`"qwen2.5:7b=4.7"` -> `("qwen2.5:7b", 4_700_000_000)`; no `=GB` -> size None."""
    name, sep, gb = entry.partition("=")
    name = name.strip()
    if not name:
        raise ValueError(f"models: empty model name in {entry!r}")
    if not sep:
        return name, None
    try:
        size = float(gb)
    except ValueError:
        raise ValueError(f"models: size of {name!r} must be a number of GB, got {gb!r}") from None
    if not 0 < size < 1e6:
        raise ValueError(f"models: size of {name!r} must be > 0 GB, got {gb!r}")
    return name, int(size * GB)
