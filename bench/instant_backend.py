"""An instant stand-in Ollama for overhead benchmarks: answers in microseconds.

Why not sim-ollama: it costs ~0.8 ms per request itself, which hides the node's own
cost. This answers the inference paths (/api/chat, /api/generate, /api/embed,
/api/embeddings, /v1/chat/completions, /v1/completions, /v1/embeddings) with canned
bodies from a hand-rolled HTTP/1.1 loop on raw Trio sockets (no h11: every
microsecond spent here is one the benchmark cannot tell from the node's). A request
with `"stream": true` (the default on /api/chat and /api/generate, as in Ollama) gets
`options.num_predict` (or `max_tokens`) chunks, `--chunk-interval-ms` apart, chunked
framing, the final Ollama chunk carrying the token counts a node reads from the tail.
/api/tags, /api/version and /api/ps answer so a node starts beside it.

    python bench/instant_backend.py --port 11500 [--chunk-interval-ms 10]
"""

from __future__ import annotations

import argparse
import json
from typing import Any

import trio

MODELS = ("llama3.2:1b", "nomic-embed-text")
STREAM_BY_DEFAULT = {"/api/chat", "/api/generate"}
OPENAI_STREAMING = {"/v1/chat/completions", "/v1/completions"}
FINAL_COUNTS = {
    "done": True,
    "done_reason": "stop",
    "total_duration": 1000,
    "load_duration": 10,
    "prompt_eval_count": 2,
    "prompt_eval_duration": 100,
    "eval_count": 1,
    "eval_duration": 100,
}
CREATED = "2026-01-01T00:00:00Z"


def _json(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


def ollama_chunk(path: str, model: str, text: str, last: bool) -> bytes:
    """One NDJSON line of Ollama's /api/chat or /api/generate answer."""
    base: dict[str, Any] = {"model": model, "created_at": CREATED}
    if path == "/api/chat":
        base["message"] = {"role": "assistant", "content": text}
    else:
        base["response"] = text
    base.update(FINAL_COUNTS if last else {"done": False})
    return _json(base) + b"\n"


def openai_chunk(path: str, model: str, text: str, last: bool) -> bytes:
    """One SSE event of Ollama's OpenAI-compatible streamed answer."""
    if path == "/v1/chat/completions":
        choice: dict[str, Any] = {"index": 0, "delta": {"role": "assistant", "content": text}}
        kind = "chat.completion.chunk"
    else:
        choice, kind = {"index": 0, "text": text}, "text_completion"
    choice["finish_reason"] = "stop" if last else None
    event = {"id": "x", "object": kind, "created": 0, "model": model, "choices": [choice]}
    return b"data: " + _json(event) + b"\n\n"


def whole_answer(path: str, model: str) -> bytes:
    """The non-streamed body for `path`."""
    if path in ("/api/chat", "/api/generate"):
        return ollama_chunk(path, model, "hi", last=True)
    if path == "/api/embed":
        return _json({"model": model, "embeddings": [[0.1, 0.2, 0.3, 0.4]], **FINAL_COUNTS})
    if path == "/api/embeddings":
        return _json({"embedding": [0.1, 0.2, 0.3, 0.4]})
    if path == "/v1/embeddings":
        data = [{"object": "embedding", "index": 0, "embedding": [0.1, 0.2, 0.3, 0.4]}]
        return _json({"object": "list", "data": data, "model": model})
    usage = {"prompt_tokens": 2, "completion_tokens": 1, "total_tokens": 3}
    if path == "/v1/chat/completions":
        choice: dict[str, Any] = {"index": 0, "message": {"role": "assistant", "content": "hi"}}
        kind = "chat.completion"
    else:
        choice, kind = {"index": 0, "text": "hi"}, "text_completion"
    choice["finish_reason"] = "stop"
    doc = {"id": "x", "object": kind, "created": 0, "model": model, "choices": [choice]}
    return _json({**doc, "usage": usage})


GET_BODIES = {
    "/api/version": _json({"version": "0.9.0"}),
    "/api/tags": _json(
        {
            "models": [
                {
                    "name": m,
                    "model": m,
                    "modified_at": CREATED,
                    "size": 1000,
                    "digest": "0" * 64,
                    "details": {},
                }
                for m in MODELS
            ]
        }
    ),
    "/api/ps": _json({"models": []}),
}


def head(status: int, content_type: bytes, length: int | None) -> bytes:
    framing = b"transfer-encoding: chunked" if length is None else b"content-length: %d" % length
    return b"HTTP/1.1 %d %s\r\ncontent-type: %s\r\n%s\r\n\r\n" % (
        status,
        b"OK" if status == 200 else b"Not Found",
        content_type,
        framing,
    )


class Responder:
    """One connection: read a request, answer it, repeat while the client keeps it."""

    def __init__(self, stream: trio.SocketStream, interval_s: float) -> None:
        self.stream = stream
        self.interval_s = interval_s
        self.buf = bytearray()

    async def _fill(self) -> bool:
        data = await self.stream.receive_some(65536)
        if not data:
            return False
        self.buf += data
        return True

    async def serve(self) -> None:
        try:
            while True:
                end = self.buf.find(b"\r\n\r\n")
                while end < 0:
                    if not await self._fill():
                        return
                    end = self.buf.find(b"\r\n\r\n")
                lines = bytes(self.buf[:end]).split(b"\r\n")
                method, path, _ = lines[0].split(b" ", 2)
                length = 0
                for line in lines[1:]:
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value)
                del self.buf[: end + 4]
                while len(self.buf) < length:
                    if not await self._fill():
                        return
                body = bytes(self.buf[:length])
                del self.buf[:length]
                await self.answer(method, path.decode(), body)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return

    async def answer(self, method: bytes, path: str, body: bytes) -> None:
        path = path.split("?", 1)[0]
        if method == b"GET" and path in GET_BODIES:
            doc = GET_BODIES[path]
            await self.stream.send_all(head(200, b"application/json", len(doc)) + doc)
            return
        if method != b"POST":
            await self.stream.send_all(head(404, b"application/json", 2) + b"{}")
            return
        payload = json.loads(body) if body else {}
        model = str(payload.get("model", MODELS[0]))
        streaming = payload.get("stream", path in STREAM_BY_DEFAULT)
        if not streaming or "embed" in path:
            doc = whole_answer(path, model)
            await self.stream.send_all(head(200, b"application/json", len(doc)) + doc)
            return
        options = payload.get("options") or {}
        count = int(options.get("num_predict") or payload.get("max_tokens") or 8)
        sse = path in OPENAI_STREAMING
        make = openai_chunk if sse else ollama_chunk
        kind = b"text/event-stream" if sse else b"application/x-ndjson"
        await self.stream.send_all(head(200, kind, None))
        for i in range(count):
            chunk = make(path, model, "tok", i == count - 1)
            if sse and i == count - 1:
                chunk += b"data: [DONE]\n\n"
            await self.stream.send_all(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            if i < count - 1 and self.interval_s > 0:
                await trio.sleep(self.interval_s)
        await self.stream.send_all(b"0\r\n\r\n")


async def main_async(host: str, port: int, interval_s: float) -> None:
    async def handler(stream: trio.SocketStream) -> None:
        await Responder(stream, interval_s).serve()

    await trio.serve_tcp(handler, port, host=host, backlog=4096)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=11500)
    parser.add_argument("--chunk-interval-ms", type=float, default=10.0)
    args = parser.parse_args()
    trio.run(main_async, args.host, args.port, args.chunk_interval_ms / 1000)


if __name__ == "__main__":
    main()
