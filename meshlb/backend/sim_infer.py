"""The simulator's native inference routes: `/api/generate`, `/api/chat`, `/api/embed(dings)`.

Why apart from sim_app.py: these are the routes that go through the memory model
(load, keep_alive, eviction, slots, prefix cache) and `num_ctx` truncation; the app
keeps the listing routes. Bodies, errors and the empty-prompt load / `keep_alive: 0`
unload follow Ollama's server/routes.go.
"""

from __future__ import annotations

import hashlib
import time
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from meshlb.backend.sim_engine import (
    ModelSpec,
    complete,
    context_ids,
    count_tokens,
    embed_vector,
    rfc3339,
    truncate_dims,
)
from meshlb.backend.sim_parse import (
    ApiError,
    dumps,
    field_of,
    int_option,
    json_response,
    keep_alive_s,
    read_json,
    require_model,
)
from meshlb.backend.sim_prompt import (
    DEFAULT_NUM_CTX,
    DEFAULT_NUM_KEEP,
    MIN_NUM_CTX,
    fit_chat,
    render_chat,
    render_generate,
    truncate,
)
from meshlb.backend.sim_render import (
    ChatRenderer,
    GenerateRenderer,
    Metrics,
)
from meshlb.backend.sim_runtime import EmbedJob, GenJob, LoadJob, SimState, admit

TOO_LONG = "input length exceeds maximum context length"  # routes.go EmbedHandler
_KEY_LIMIT = 1 << 16


def text_key(text: str) -> str:
    """The seed text of a reply: the text itself, or its digest when huge (bounded cache)."""
    if len(text) <= _KEY_LIMIT:
        return text
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def context_options(options: dict[str, Any]) -> tuple[int, int]:
    """(num_ctx, num_keep) from `options`, with Ollama's defaults and floor."""
    num_ctx = max(MIN_NUM_CTX, int_option(options, "num_ctx", DEFAULT_NUM_CTX))
    return num_ctx, int_option(options, "num_keep", DEFAULT_NUM_KEEP)


def lookup(state: SimState, model: str) -> ModelSpec:
    spec = state.lookup(model)
    if spec is None:
        raise ApiError(404, f"model '{model}' not found")
    return spec


def _no_thinking(body: dict[str, Any], model: str) -> None:
    """No simulated model thinks; Ollama refuses `think` for such models."""
    think = body.get("think")
    if think is True or (isinstance(think, str) and think not in ("", "false")):
        raise ApiError(400, f'"{model}" does not support thinking')


def _check_messages(messages: list[Any]) -> None:
    for m in messages:
        if (
            not isinstance(m, dict)
            or not isinstance(m.get("role", ""), str)
            or not isinstance(m.get("content") or "", str)
        ):
            raise ApiError(
                400,
                "json: cannot unmarshal messages into Go struct field "
                "ChatRequest.messages of type api.Message",
            )


def inference_routes(state: SimState) -> list[Route]:
    """The native inference routes over one simulator's state."""
    config = state.config

    def load_or_unload(
        spec: ModelSpec, model: str, keep: float | None, num_ctx: int, extra: dict[str, Any]
    ) -> Response:
        """Nothing to do: Ollama loads the model (waiting as a request would) and says
        "load", or with `keep_alive: 0` unloads it at once and says "unload"."""

        def reply() -> dict[str, Any]:
            done_reason = "unload" if keep == 0 else "load"
            head = {"model": model, "created_at": rfc3339(time.time())}
            return {**head, **extra, "done_reason": done_reason, "done": True}

        if keep == 0:
            state.expire(spec)
            return json_response(reply())
        return admit(state, LoadJob(spec, keep, lambda: dumps(reply()), num_ctx))

    async def generate(request: Request) -> Response:
        go = "api.GenerateRequest"
        body = await read_json(request, go)
        model = require_model(body, go)
        spec = lookup(state, model)
        if spec.is_embedding:
            raise ApiError(400, f'"{model}" does not support generate')
        _no_thinking(body, model)
        prompt = str(field_of(body, "prompt", str, go, ""))
        system = str(field_of(body, "system", str, go, ""))
        keep = keep_alive_s(body)
        options = field_of(body, "options", dict, go, {})
        num_ctx, num_keep = context_options(options)
        if not prompt:
            return load_or_unload(spec, model, keep, num_ctx, {"response": ""})
        stream = field_of(body, "stream", bool, go, True)
        completion = complete(
            spec.name,
            text_key(system + "\x00" + prompt),
            int_option(options, "seed", config.seed),
            int_option(options, "num_predict", -1),
            bool(body.get("format")),
        )
        raw = body.get("raw") is True
        rendered = truncate(render_generate(system, prompt, raw), num_ctx, num_keep)
        n = count_tokens(rendered) + len(completion.tokens)
        context = None if raw else context_ids(text_key(prompt), n)
        renderer = GenerateRenderer(model, context)
        job = GenJob(spec, completion, renderer, rendered, stream, keep, num_ctx)
        return admit(state, job)

    async def chat(request: Request) -> Response:
        go = "api.ChatRequest"
        body = await read_json(request, go)
        model = require_model(body, go)
        spec = lookup(state, model)
        if spec.is_embedding:
            raise ApiError(400, f'"{model}" does not support chat')
        _no_thinking(body, model)
        messages = field_of(body, "messages", list, go, [])
        _check_messages(messages)
        keep = keep_alive_s(body)
        options = field_of(body, "options", dict, go, {})
        num_ctx, num_keep = context_options(options)
        if not messages:
            extra = {"message": {"role": "assistant", "content": ""}}
            return load_or_unload(spec, model, keep, num_ctx, extra)
        stream = field_of(body, "stream", bool, go, True)
        key = "\x00".join(f"{m.get('role')}:{m.get('content') or ''}" for m in messages)
        completion = complete(
            spec.name,
            text_key(key),
            int_option(options, "seed", config.seed),
            int_option(options, "num_predict", -1),
            bool(body.get("format")),
        )
        rendered = truncate(render_chat(fit_chat(messages, num_ctx)), num_ctx, num_keep)
        job = GenJob(spec, completion, ChatRenderer(model), rendered, stream, keep, num_ctx)
        return admit(state, job)

    def embed_tokens(texts: list[str], num_ctx: int, allow_truncate: bool) -> int:
        counts = [max(1, count_tokens(t)) for t in texts]
        if not allow_truncate and any(n > num_ctx for n in counts):
            raise ApiError(400, TOO_LONG)
        return sum(min(n, num_ctx) for n in counts)

    async def embed(request: Request) -> Response:
        go = "api.EmbedRequest"
        body = await read_json(request, go)
        model = require_model(body, go)
        spec = lookup(state, model)
        raw_input = body.get("input")
        if isinstance(raw_input, str):
            inputs = [raw_input] if raw_input else []
        elif isinstance(raw_input, list) and all(isinstance(x, str) for x in raw_input):
            inputs = list(raw_input)
        elif raw_input is None:
            inputs = []
        else:
            raise ApiError(400, "invalid input type")
        dims = field_of(body, "dimensions", int, go, 0)
        keep = keep_alive_s(body)
        num_ctx, _ = context_options(field_of(body, "options", dict, go, {}))
        allow_truncate = field_of(body, "truncate", bool, go, True)
        if not inputs:
            reply = {"model": model, "embeddings": []}
            return admit(state, LoadJob(spec, keep, lambda: dumps(reply), num_ctx))

        def build(m: Metrics) -> bytes:
            vectors = [
                truncate_dims(
                    embed_vector(spec.name, text_key(text), spec.embedding_dim, config.seed),
                    dims,
                )
                for text in inputs
            ]
            return dumps(
                {
                    "model": model,
                    "embeddings": vectors,
                    "total_duration": m.total_ns,
                    "load_duration": m.load_ns,
                    "prompt_eval_count": m.prompt_eval_count,
                }
            )

        tokens = embed_tokens(inputs, num_ctx, allow_truncate)
        return admit(state, EmbedJob(spec, tokens, keep, build, num_ctx))

    async def embeddings(request: Request) -> Response:
        go = "api.EmbeddingRequest"
        body = await read_json(request, go)
        model = require_model(body, go)
        spec = state.lookup(model)
        if spec is None:  # this legacy path reports the scheduler's sentence
            raise ApiError(404, f'model "{model}" not found, try pulling it first')
        prompt = str(field_of(body, "prompt", str, go, ""))
        keep = keep_alive_s(body)
        num_ctx, _ = context_options(field_of(body, "options", dict, go, {}))
        if not prompt:  # "an empty request loads the model"
            return admit(state, LoadJob(spec, keep, lambda: dumps({"embedding": []}), num_ctx))

        def build(m: Metrics) -> bytes:
            vec = embed_vector(spec.name, text_key(prompt), spec.embedding_dim, config.seed)
            return dumps({"embedding": vec})

        tokens = embed_tokens([prompt], num_ctx, True)
        return admit(state, EmbedJob(spec, tokens, keep, build, num_ctx))

    return [
        Route("/api/generate", generate, methods=["POST"]),
        Route("/api/chat", chat, methods=["POST"]),
        Route("/api/embed", embed, methods=["POST"]),
        Route("/api/embeddings", embeddings, methods=["POST"]),
    ]
