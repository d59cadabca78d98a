"""Strict versions of the official clients' response models, to hold the simulator to them.

The official `ollama` client models (ollama/_types.py) make every field optional and
ignore unknown keys, so almost any JSON passes. Here each is subclassed with
`extra="forbid"` (no field Ollama does not send) and the fields Ollama always sends made
required (per server/routes.go and docs/api.md). The OpenAI-compatible shapes follow
Ollama's openai/openai.go (ChatCompletion, ChatCompletionChunk, Completion, ...).
Validate RAW response JSON against these: the client itself drops unknown keys.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from ollama._types import (
    ChatResponse,
    EmbeddingsResponse,
    EmbedResponse,
    GenerateResponse,
    ListResponse,
    Message,
    ModelDetails,
    ProcessResponse,
    ProgressResponse,
    ShowResponse,
)
from pydantic import BaseModel, ByteSize, ConfigDict

FORBID = ConfigDict(extra="forbid")


class StrictDetails(ModelDetails):
    model_config = FORBID
    parent_model: str
    format: str
    family: str
    families: list[str] | None
    parameter_size: str
    quantization_level: str


class StrictMessage(Message):
    model_config = FORBID
    role: Literal["assistant"]
    content: str


class StrictGenerateChunk(GenerateResponse):
    """A streamed /api/generate chunk before the last one."""

    model_config = FORBID
    model: str
    created_at: str
    response: str
    done: Literal[False]


class _Final(BaseModel):
    done: Literal[True]
    done_reason: Literal["stop", "length"]
    total_duration: int
    load_duration: int
    prompt_eval_count: int
    prompt_eval_duration: int
    # Ollama 0.33+: the part of prompt_eval_count read from the prompt cache (omitempty)
    prompt_eval_cached_count: int | None = None
    eval_count: int
    eval_duration: int


class StrictGenerateFinal(GenerateResponse, _Final):
    model_config = FORBID
    model: str
    created_at: str
    response: str
    context: list[int]
    done: Literal[True]


class StrictChatChunk(ChatResponse):
    model_config = FORBID
    model: str
    created_at: str
    message: StrictMessage
    done: Literal[False]


class StrictChatFinal(ChatResponse, _Final):
    model_config = FORBID
    model: str
    created_at: str
    message: StrictMessage
    done: Literal[True]


class StrictLoadReply(BaseModel):
    """/api/generate with an empty prompt (or /api/chat with no messages)."""

    model_config = FORBID
    model: str
    created_at: str
    response: str | None = None
    message: StrictMessage | None = None
    done: Literal[True]
    done_reason: Literal["load", "unload"]


class StrictEmbed(EmbedResponse):
    model_config = FORBID
    model: str
    embeddings: list[list[float]]
    total_duration: int
    load_duration: int
    prompt_eval_count: int


class StrictEmbeddings(EmbeddingsResponse):
    model_config = FORBID
    embedding: list[float]


class StrictListModel(ListResponse.Model):
    model_config = FORBID
    name: str  # Ollama sends it; the client model lacks it
    model: str
    modified_at: datetime
    digest: str
    size: ByteSize
    details: StrictDetails


class StrictList(ListResponse):
    model_config = FORBID
    models: list[StrictListModel]


class StrictPsModel(ProcessResponse.Model):
    model_config = FORBID
    name: str
    model: str
    digest: str
    expires_at: datetime
    size: ByteSize
    size_vram: ByteSize
    details: StrictDetails
    context_length: int


class StrictPs(ProcessResponse):
    model_config = FORBID
    models: list[StrictPsModel]


class StrictShow(ShowResponse):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    modified_at: datetime
    template: str
    modelfile: str
    license: str
    details: StrictDetails
    parameters: str
    capabilities: list[str]


class StrictProgress(ProgressResponse):
    """One object of /api/pull, /api/push or /api/create (api.ProgressResponse: digest,
    total and completed are omitempty)."""

    model_config = FORBID
    status: str


class StrictVersion(BaseModel):
    model_config = FORBID
    version: str


class StrictError(BaseModel):
    model_config = FORBID
    error: str


# ---- OpenAI-compatible shapes, as Ollama's openai/openai.go writes them ----


class OAMessage(BaseModel):
    model_config = FORBID
    role: Literal["assistant"]
    content: str


class OAChoice(BaseModel):
    model_config = FORBID
    index: int
    message: OAMessage
    finish_reason: Literal["stop", "length"] | None


class OAUsage(BaseModel):
    model_config = FORBID
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class OAChatCompletion(BaseModel):
    model_config = FORBID
    id: str
    object: Literal["chat.completion"]
    created: int
    model: str
    system_fingerprint: str
    choices: list[OAChoice]
    usage: OAUsage


class OAChunkChoice(BaseModel):
    model_config = FORBID
    index: int
    delta: OAMessage
    finish_reason: Literal["stop", "length"] | None


class OAChatChunk(BaseModel):
    model_config = FORBID
    id: str
    object: Literal["chat.completion.chunk"]
    created: int
    model: str
    system_fingerprint: str
    choices: list[OAChunkChoice]
    usage: OAUsage | None = None


class OACompletionChoice(BaseModel):
    model_config = FORBID
    text: str
    index: int
    finish_reason: Literal["stop", "length"] | None


class OACompletion(BaseModel):
    model_config = FORBID
    id: str
    object: Literal["text_completion"]
    created: int
    model: str
    system_fingerprint: str
    choices: list[OACompletionChoice]
    usage: OAUsage | None = None


class OAEmbedding(BaseModel):
    model_config = FORBID
    object: Literal["embedding"]
    embedding: list[float] | str
    index: int


class OAEmbeddingUsage(BaseModel):
    model_config = FORBID
    prompt_tokens: int
    total_tokens: int


class OAEmbeddingList(BaseModel):
    model_config = FORBID
    object: Literal["list"]
    data: list[OAEmbedding]
    model: str
    usage: OAEmbeddingUsage


class OAModel(BaseModel):
    model_config = FORBID
    id: str
    object: Literal["model"]
    created: int
    owned_by: str


class OAModelList(BaseModel):
    model_config = FORBID
    object: Literal["list"]
    data: list[OAModel]


class OAErrorBody(BaseModel):
    model_config = FORBID
    message: str
    type: str
    param: Any
    code: str | None


class OAError(BaseModel):
    model_config = FORBID
    error: OAErrorBody
