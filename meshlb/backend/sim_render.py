"""Wire bytes of the simulated Ollama: Ollama's timing block and the renderers of each
API dialect (`/api/generate`, `/api/chat`, OpenAI chat and completions).

Pure, as `meshlb.backend.sim_engine` (split from it for size): callers pass wall-clock
timestamps in; bytes are built with `json.dumps`, not pydantic, per chunk.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from meshlb.backend.sim_engine import Completion, compact_json, rfc3339


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
        self._pre = b'{"model":' + compact_json(model).encode() + b',"created_at":"'

    def chunk(self, token: str, now: float) -> bytes:
        return (
            self._pre
            + rfc3339(now).encode()
            + b'","response":'
            + compact_json(token).encode()
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
        return compact_json(self._final("", c, m, now)).encode() + b"\n"

    def whole(self, c: Completion, m: Metrics, now: float) -> bytes:
        return compact_json(self._final(c.text, c, m, now)).encode()


class ChatRenderer:
    """`/api/chat`: NDJSON chunks with `"message":{"role":"assistant","content":...}`."""

    stream_media_type = "application/x-ndjson"

    def __init__(self, model: str) -> None:
        self._model = model
        self._pre = b'{"model":' + compact_json(model).encode() + b',"created_at":"'

    def chunk(self, token: str, now: float) -> bytes:
        return (
            self._pre
            + rfc3339(now).encode()
            + b'","message":{"role":"assistant","content":'
            + compact_json(token).encode()
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
        return compact_json(self._final("", c, m, now)).encode() + b"\n"

    def whole(self, c: Completion, m: Metrics, now: float) -> bytes:
        return compact_json(self._final(c.text, c, m, now)).encode()


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
        return b"data: " + compact_json(self._chunk(token, None, now)).encode() + b"\n\n"

    def tail(self, c: Completion, m: Metrics, now: float) -> bytes:
        out = b"data: " + compact_json(self._chunk("", c.done_reason, now)).encode() + b"\n\n"
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
            out += b"data: " + compact_json(usage).encode() + b"\n\n"
        return out + b"data: [DONE]\n\n"

    def whole(self, c: Completion, m: Metrics, now: float) -> bytes:
        return compact_json(
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
        return b"data: " + compact_json(self._obj(token, None, now)).encode() + b"\n\n"

    def tail(self, c: Completion, m: Metrics, now: float) -> bytes:
        out = b"data: " + compact_json(self._obj("", c.done_reason, now)).encode() + b"\n\n"
        if self._include_usage:
            usage = {**self._obj("", None, now), "choices": [], "usage": _usage(m)}
            out += b"data: " + compact_json(usage).encode() + b"\n\n"
        return out + b"data: [DONE]\n\n"

    def whole(self, c: Completion, m: Metrics, now: float) -> bytes:
        return compact_json({**self._obj(c.text, c.done_reason, now), "usage": _usage(m)}).encode()
