"""Conversation affinity: the next turn of a chat goes where its prefix is cached.

Ollama's runner keeps, per slot, the prompt it last processed; a request whose prompt
begins with it evaluates only the new part. A chat's turn k+1 sends turn k's messages,
the reply, and a new message, so the host that served turn k holds most of the prompt
already. Each node keeps a small bounded map: hash of a request's rendered messages ->
the host that served it. A later request whose messages before the last assistant
reply hash to a key in the map prefers that host, credited with the prompt evaluation
the cache saves (placement still sends it elsewhere when that host's extra wait
exceeds the saving). The map is per node and not gossiped: the node a client talks to
records where it placed each turn, and the serving node records what it ran (the
forwarded request carries the messages, so it hashes them itself).
Pure: no I/O, no clock.
"""

from __future__ import annotations

import hashlib
import json
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

MAX_CONVERSATIONS = 4096
# Characters per prompt token (the usual estimate for English text).
CHARS_PER_TOKEN = 4.0
# Prompt evaluation runs this many times faster than generation (GPUs batch prompts;
# 10-50x is typical; the simulator's default is 20x).
PROMPT_EVAL_FACTOR = 20.0


@dataclass(frozen=True, slots=True)
class Turn:
    """A chat request's keys: `key` names its own messages; `previous` (None for a
    first turn) names the messages the previous turn sent, `previous_chars` their size."""

    key: str
    previous: str | None
    previous_chars: int


def _render(model: str, messages: list[Any]) -> tuple[str, int]:
    text = json.dumps(
        [model]
        + [[m.get("role"), m.get("content")] if isinstance(m, dict) else m for m in messages],
        separators=(",", ":"),
        sort_keys=True,
        default=str,
    )
    return hashlib.blake2b(text.encode(), digest_size=12).hexdigest(), len(text)


def chat_turn(model: str, payload: Mapping[str, Any]) -> Turn | None:
    """The keys of a chat request (None if it has no list of messages)."""
    messages = payload.get("messages")
    if not isinstance(messages, list) or not messages:
        return None
    key, _ = _render(model, messages)
    last_reply = max(
        (i for i, m in enumerate(messages) if isinstance(m, dict) and m.get("role") == "assistant"),
        default=-1,
    )
    if last_reply <= 0:
        return Turn(key, None, 0)
    previous, chars = _render(model, messages[:last_reply])
    return Turn(key, previous, chars)


def saving_s(previous_chars: int, tokens_per_s: float) -> float:
    """Seconds of prompt evaluation a cached prefix of `previous_chars` saves on a host
    generating at `tokens_per_s` (0 when the speed is unknown)."""
    if tokens_per_s <= 0:
        return 0.0
    return previous_chars / CHARS_PER_TOKEN / (tokens_per_s * PROMPT_EVAL_FACTOR)


class ConversationMap:
    """Bounded map: conversation key -> the host that served it (least recent out)."""

    def __init__(self, capacity: int = MAX_CONVERSATIONS) -> None:
        self._capacity = capacity
        self._hosts: OrderedDict[str, str] = OrderedDict()

    def get(self, key: str | None) -> str | None:
        if key is None:
            return None
        host = self._hosts.get(key)
        if host is not None:
            self._hosts.move_to_end(key)
        return host

    def put(self, key: str, host: str) -> None:
        self._hosts[key] = host
        self._hosts.move_to_end(key)
        while len(self._hosts) > self._capacity:
            self._hosts.popitem(last=False)

    def __len__(self) -> int:
        return len(self._hosts)
