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

The saving is credited only as likely as the prefix is still there. A runner has a
few slots (OLLAMA_NUM_PARALLEL) and gives each request the free slot whose last
prompt shares the longest prefix with it (`findLongestCacheSlot`, Ollama's default),
so a prompt of another conversation overwrites a slot: after n other requests for the
model on that host the turn's slot survives with about `SLOT_SURVIVAL`^n. Crediting
the full saving regardless (the first version) pulled turns to a busy host whose
cache had long turned over: more wait, no tokens saved. Each host gossips how many
requests per loaded model it has started (`Resident.served`); the map keeps that
count as of the turn, and the difference is n.
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
# The chance a turn's slot survives one more request for the model on its host. With
# 4 slots, a uniformly chosen victim would give 0.75; Ollama's rule reuses the first
# free slot for every miss, which is worse: the simulator (which follows it) kept a
# turn's prefix 96/69/34/24/10 % of the time after 0/1/2/3/4 other requests
# (bench/residency.py, seed 11), about 0.6 per request.
SLOT_SURVIVAL = 0.6


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


def survival(served_then: int, served_now: int) -> float:
    """The chance a turn's prefix is still in a slot on its host: `served_then` is the
    host's count of started requests for the model when the turn was placed (the turn
    itself is the next one), `served_now` the count now."""
    return SLOT_SURVIVAL ** max(0, served_now - served_then - 1)


def saving_s(previous_chars: int, tokens_per_s: float) -> float:
    """Seconds of prompt evaluation a cached prefix of `previous_chars` saves on a host
    generating at `tokens_per_s` (0 when the speed is unknown)."""
    if tokens_per_s <= 0:
        return 0.0
    return previous_chars / CHARS_PER_TOKEN / (tokens_per_s * PROMPT_EVAL_FACTOR)


@dataclass(frozen=True, slots=True)
class Served:
    """Where a turn ran, and that host's count of started requests for its model then."""

    host: str
    served: int = 0


class ConversationMap:
    """Bounded map: conversation key -> where it was served (least recent out)."""

    def __init__(self, capacity: int = MAX_CONVERSATIONS) -> None:
        self._capacity = capacity
        self._hosts: OrderedDict[str, Served] = OrderedDict()

    def get(self, key: str | None) -> Served | None:
        if key is None:
            return None
        host = self._hosts.get(key)
        if host is not None:
            self._hosts.move_to_end(key)
        return host

    def put(self, key: str, host: Served) -> None:
        self._hosts[key] = host
        self._hosts.move_to_end(key)
        while len(self._hosts) > self._capacity:
            self._hosts.popitem(last=False)

    def __len__(self) -> int:
        return len(self._hosts)
