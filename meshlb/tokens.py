"""Token counting: estimate before a request runs, read the true count after.

The scheduler charges the estimate against tokens-per-minute when a task starts and
reconciles it with Ollama's own counts when it ends, so the window holds true numbers.
"""

from __future__ import annotations

import re
from typing import Any

_COUNT_RE = re.compile(
    rb'"(prompt_eval_count|eval_count|prompt_tokens|completion_tokens)"\s*:\s*(\d+)'
)


def _text_len(value: Any) -> int:
    """Characters of prompt text in a field (str, list of str, chat messages)."""
    if isinstance(value, str):
        return len(value)
    if isinstance(value, list):
        return sum(_text_len(v) for v in value)
    if isinstance(value, dict):
        return _text_len(value.get("content", ""))
    return 0


PROMPT_FIELDS = ("prompt", "system", "messages", "input", "suffix")
# The output estimate is capped: a client may ask for num_predict 2^63-1 (Ollama takes
# it as "until done"), and an unbounded figure would reach the tpm window, gossip and
# msgpack (a query of death: an int msgpack cannot carry killed the announcer). No
# model context holds more than this many tokens, so no answer can be longer here.
MAX_OUTPUT_ESTIMATE = 1 << 20


def num_predict_of(payload: dict[str, Any]) -> int | None:
    """Requested output length: options.num_predict (Ollama) or max_tokens (OpenAI)."""
    options = payload.get("options")
    raw = options.get("num_predict") if isinstance(options, dict) else None
    if raw is None:
        raw = payload.get("max_tokens") or payload.get("max_completion_tokens")
    if isinstance(raw, int) and not isinstance(raw, bool) and raw > 0:
        return min(raw, MAX_OUTPUT_ESTIMATE)
    return None  # absent, or -1/-2 (Ollama's "until done"/"fill context")


def estimate_tokens(payload: dict[str, Any], kind: str, default_num_predict: int) -> int:
    """Tokens a request will use, estimated before it runs (reconciled after).

    Rule of thumb: 4 characters per token for the prompt, plus the requested output
    length (or a configurable default); embeddings produce no output tokens.
    """
    prompt_tokens = sum(_text_len(payload.get(f)) for f in PROMPT_FIELDS) // 4 + 1
    if kind == "embed":
        return prompt_tokens
    return prompt_tokens + (num_predict_of(payload) or default_num_predict)


def tokens_from_tail(tail: bytes) -> int | None:
    """True token count from the end of an Ollama/OpenAI answer, if it is there.

    Ollama's final chunk carries prompt_eval_count + eval_count; the OpenAI paths carry
    usage.prompt_tokens + completion_tokens. A regex over the last few KiB avoids parsing
    a large body (e.g. embeddings) just for two integers.
    """
    found: dict[bytes, int] = {}
    for match in _COUNT_RE.finditer(tail):
        found[match.group(1)] = min(int(match.group(2)[:12]), MAX_OUTPUT_ESTIMATE)
    if b"prompt_eval_count" in found or b"eval_count" in found:
        return found.get(b"prompt_eval_count", 0) + found.get(b"eval_count", 0)
    if b"prompt_tokens" in found:
        return found[b"prompt_tokens"] + found.get(b"completion_tokens", 0)
    return None


_RATE_RE = re.compile(rb'"(eval_count|eval_duration)"\s*:\s*(\d+)')


def generation_rate_from_tail(tail: bytes) -> float | None:
    """Tokens per second of a finished Ollama generation (eval_count / eval_duration)."""
    found = {m.group(1): int(m.group(2)) for m in _RATE_RE.finditer(tail)}
    count, duration_ns = found.get(b"eval_count"), found.get(b"eval_duration")
    if not count or not duration_ns:
        return None
    return count / (duration_ns / 1e9)


class RateAverage:
    """Exponentially weighted mean of observed generation rates (tokens/s).

    Gossiped so peers can estimate completion times here; a weight of 0.2 follows a
    change within ~10 requests without jumping on one outlier.
    """

    def __init__(self, weight: float = 0.2) -> None:
        self.weight = weight
        self.value = 0.0

    def observe(self, rate: float | None) -> None:
        if rate is None or rate <= 0:
            return
        self.value = (
            rate if self.value == 0.0 else (self.weight * rate + (1 - self.weight) * self.value)
        )
