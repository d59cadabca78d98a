"""The simulator's OpenAI-compatible routes, as Ollama serves them under `/v1`.

Why separate: Ollama implements these as middleware translating to and from its native
handlers (`openai/openai.go`), so they share the same slots and queue (sim_runtime)
and the same core (sim_engine), but have their own request and response shapes:
`chat.completion(.chunk)`, `text_completion`, SSE streaming ending in `data: [DONE]`,
and errors as `{"error": {"message", "type", "param", "code"}}`.
"""

from __future__ import annotations

import itertools
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from meshlb.backend.sim_engine import (
    ModelSpec,
    complete,
    count_tokens,
    embed_vector,
    floats_to_base64,
    truncate_dims,
)
from meshlb.backend.sim_infer import text_key
from meshlb.backend.sim_parse import (
    ApiError,
    dumps,
    field_of,
    json_response,
    read_json,
    require_model,
)
from meshlb.backend.sim_prompt import (
    DEFAULT_NUM_CTX,
    fit_chat,
    render_chat,
    render_generate,
    truncate,
)
from meshlb.backend.sim_render import (
    Metrics,
    OpenAIChatRenderer,
    OpenAICompletionRenderer,
)
from meshlb.backend.sim_runtime import EmbedJob, GenJob, SimState, admit


def _text_of(content: Any) -> str:
    """OpenAI message content: a string, or a list of parts of which we keep the text."""
    if content is None or isinstance(content, str):
        return content or ""
    if isinstance(content, list):
        parts = []
        for part in content:
            if not isinstance(part, dict) or part.get("type") not in ("text", "image_url"):
                raise ApiError(400, "invalid message format")
            parts.append(str(part.get("text") or ""))
        return "".join(parts)
    raise ApiError(400, f"invalid message content type: {type(content).__name__}")


def _max_tokens(body: dict[str, Any], go: str) -> int:
    value = field_of(body, "max_tokens", int, go, None)
    if value is None:
        value = field_of(body, "max_completion_tokens", int, go, None)
    return int(value) if value is not None else -1


def openai_routes(state: SimState) -> list[Route]:
    """Routes for `/v1/chat/completions`, `/v1/completions`, `/v1/embeddings`, `/v1/models`."""
    config = state.config
    ids = itertools.count(1)

    def lookup(model: str) -> ModelSpec:
        spec = state.lookup(model)
        if spec is None:
            raise ApiError(404, f"model '{model}' not found")
        return spec

    def usage_flag(body: dict[str, Any], go: str) -> bool:
        options = field_of(body, "stream_options", dict, go, {})
        return options.get("include_usage") is True

    async def chat_completions(request: Request) -> Response:
        go = "openai.ChatCompletionRequest"
        body = await read_json(request, go)
        messages = field_of(body, "messages", list, go, [])
        if not messages:
            raise ApiError(400, "[] is too short - 'messages'")
        flat: list[dict[str, Any]] = []
        for m in messages:
            if not isinstance(m, dict):
                raise ApiError(400, "invalid message format")
            flat.append({"role": str(m.get("role", "")), "content": _text_of(m.get("content"))})
        model = require_model(body, go)
        spec = lookup(model)
        if spec.is_embedding:
            raise ApiError(400, f'"{model}" does not support chat')
        key = "\x00".join(f"{m['role']}:{m['content']}" for m in flat)
        seed = field_of(body, "seed", int, go, config.seed)
        response_format = field_of(body, "response_format", dict, go, {})
        json_mode = response_format.get("type") in ("json_object", "json_schema")
        completion = complete(spec.name, text_key(key), seed, _max_tokens(body, go), json_mode)
        renderer = OpenAIChatRenderer(model, f"chatcmpl-{next(ids) % 999}", usage_flag(body, go))
        stream = field_of(body, "stream", bool, go, False)
        rendered = truncate(render_chat(fit_chat(flat, DEFAULT_NUM_CTX)), DEFAULT_NUM_CTX)
        return admit(state, GenJob(spec, completion, renderer, rendered, stream, None))

    async def completions(request: Request) -> Response:
        go = "openai.CompletionRequest"
        body = await read_json(request, go)
        prompt = str(field_of(body, "prompt", str, go, ""))
        model = require_model(body, go)
        spec = lookup(model)
        if spec.is_embedding:
            raise ApiError(400, f'"{model}" does not support generate')
        seed = field_of(body, "seed", int, go, config.seed)
        completion = complete(spec.name, text_key("\x00" + prompt), seed, _max_tokens(body, go))
        renderer = OpenAICompletionRenderer(model, f"cmpl-{next(ids) % 999}", usage_flag(body, go))
        stream = field_of(body, "stream", bool, go, False)
        rendered = truncate(render_generate("", prompt), DEFAULT_NUM_CTX)
        return admit(state, GenJob(spec, completion, renderer, rendered, stream, None))

    async def embeddings(request: Request) -> Response:
        go = "openai.EmbedRequest"
        body = await read_json(request, go)
        raw = body.get("input")
        if isinstance(raw, str) and raw:
            inputs = [raw]
        elif isinstance(raw, list) and raw and all(isinstance(x, str) for x in raw):
            inputs = list(raw)
        else:
            raise ApiError(400, "invalid input")
        model = require_model(body, go)
        spec = lookup(model)
        dims = field_of(body, "dimensions", int, go, 0)
        as_base64 = str(body.get("encoding_format") or "float").lower() == "base64"

        def build(m: Metrics) -> bytes:
            data = []
            for i, text in enumerate(inputs):
                vec = truncate_dims(
                    embed_vector(spec.name, text_key(text), spec.embedding_dim, config.seed), dims
                )
                data.append(
                    {
                        "object": "embedding",
                        "embedding": floats_to_base64(vec) if as_base64 else vec,
                        "index": i,
                    }
                )
            return dumps(
                {
                    "object": "list",
                    "data": data,
                    "model": model,
                    "usage": {
                        "prompt_tokens": m.prompt_eval_count,
                        "total_tokens": m.prompt_eval_count,
                    },
                }
            )

        tokens = sum(min(max(1, count_tokens(t)), DEFAULT_NUM_CTX) for t in inputs)
        return admit(state, EmbedJob(spec, tokens, None, build))

    def model_obj(spec: ModelSpec) -> dict[str, Any]:
        return {
            "id": spec.name,
            "object": "model",
            "created": int(state.modified_at),
            "owned_by": "library",
        }

    async def models(request: Request) -> Response:
        return json_response(
            {"object": "list", "data": [model_obj(s) for s in state.specs.values()]}
        )

    async def retrieve(request: Request) -> Response:
        return json_response(model_obj(lookup(request.path_params["model"])))

    return [
        Route("/v1/chat/completions", chat_completions, methods=["POST"]),
        Route("/v1/completions", completions, methods=["POST"]),
        Route("/v1/embeddings", embeddings, methods=["POST"]),
        Route("/v1/models", models, methods=["GET"]),
        Route("/v1/models/{model:path}", retrieve, methods=["GET"]),
    ]
