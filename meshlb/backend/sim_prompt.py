"""Pure prompt handling of the simulator: rendering, fitting into `num_ctx`, truncation.

Why: the prompt-prefix cache compares what a slot last processed with the new prompt,
so prompts must be rendered to one text the way Ollama's template renders messages
(each turn in order, the reply's place at the end), and a prompt longer than the
context must be cut the way Ollama cuts it, so a 12 MB prompt costs `num_ctx` tokens,
not minutes. Tokens are simulated as 4 characters each (sim_engine.count_tokens).

Ollama's rules carried over: `/api/chat` first drops the oldest messages that are not
system messages until the rest fits (server/prompt.go chatPrompt; the last message is
always kept); then the runner truncates any prompt still over `num_ctx` tokens,
keeping the first `num_keep` tokens (+1 for BOS) and the last ones (runner NewSequence,
with `truncate` true, the default). Default `num_ctx` 4096 and `num_keep` 4 are
Ollama's defaults (OLLAMA_CONTEXT_LENGTH, api.DefaultOptions).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from meshlb.backend.sim_engine import count_tokens

DEFAULT_NUM_CTX = 4096
DEFAULT_NUM_KEEP = 4
MIN_NUM_CTX = 4  # sched.go GetRunner raises smaller values to 4
CHARS_PER_TOKEN = 4


def render_generate(system: str, prompt: str, raw: bool = False) -> str:
    """`/api/generate` through a chat-like template (`raw` skips the template)."""
    if raw:
        return prompt
    head = f"<|system|>{system}" if system else ""
    return f"{head}<|user|>{prompt}<|assistant|>"


def render_message(m: dict[str, Any]) -> str:
    return f"<|{m.get('role', '')}|>{m.get('content') or ''}<|end|>"


def render_chat(messages: Sequence[dict[str, Any]]) -> str:
    """All turns in order, then the assistant's place; a reply extends this text, so the
    next turn's rendering begins with what the slot processed (prompt + reply)."""
    return "".join(render_message(m) for m in messages) + "<|assistant|>"


def fit_chat(messages: Sequence[dict[str, Any]], num_ctx: int) -> list[dict[str, Any]]:
    """Drop the oldest non-system messages until the rendering fits (the last one stays)."""
    kept = list(messages)
    cost = [count_tokens(render_message(m)) for m in kept]
    total = sum(cost) + count_tokens("<|assistant|>")
    i = 0
    while total > num_ctx and i < len(kept) - 1:
        if kept[i].get("role") == "system":
            i += 1
            continue
        total -= cost.pop(i)
        kept.pop(i)
    return kept


def truncate(text: str, num_ctx: int, num_keep: int = DEFAULT_NUM_KEEP) -> str:
    """The runner's cut: over `num_ctx` tokens, keep the first `num_keep`+1 and the tail."""
    if count_tokens(text) <= num_ctx:
        return text
    keep = min(len(text) // CHARS_PER_TOKEN if num_keep < 0 else num_keep + 1, num_ctx - 1)
    tail = (num_ctx - keep) * CHARS_PER_TOKEN
    return text[: keep * CHARS_PER_TOKEN] + text[-tail:]


def evaluated_tokens(prompt: str, cached_chars: int) -> tuple[int, int]:
    """(prompt tokens, tokens to evaluate) when a slot holds `cached_chars` of it already.

    At least one token is always evaluated (cache.go: "leave one input to sample").
    """
    total = count_tokens(prompt)
    cached = min(cached_chars // CHARS_PER_TOKEN, max(total - 1, 0))
    return total, total - cached
