"""A member's gossiped metadata: HTTP address, models, load and capacity.

Every node places work from what its peers gossip, without asking them, so this is
what travels in every alive message. It must stay small (gossip packets are at most
1400 bytes; memberlist caps meta at 512): short msgpack keys, and a model list that is
cut, with a flag, when it would not fit.

Residency (which models the host's Ollama has loaded, their size, expiry and the
requests for each here; the host's model memory and measured load rate) travels in
the same budget: each loaded model is an index into the model list (loaded models go
first, so a cut drops only models that are not loaded) and three small numbers.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field

import msgpack
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from meshlb.mesh.residency import Resident

MAX_META_BYTES = 512


@dataclass(frozen=True, slots=True)
class Load:
    """Queue and capacity numbers a peer needs to estimate a completion time here."""

    queued: int = 0
    running: int = 0
    max_concurrency: int | None = None
    rpm_used: int = 0
    rpm_limit: int | None = None
    tpm_used: int = 0
    tpm_limit: int | None = None
    tokens_per_s: float = 0.0


@dataclass(frozen=True, slots=True)
class Moves:
    """How much work moved through this node since it started (for `/v1/cluster`)."""

    forwarded: int = 0  # requests and tasks this node sent to a peer to run
    stolen: int = 0  # queued tasks this node took from a busy peer
    taken_over: int = 0  # tasks of a dead or departed peer this node re-queued
    duplicates_dropped: int = 0  # second results for a task, dropped


@dataclass(frozen=True, slots=True)
class NodeMeta:
    http_addr: str
    models: tuple[str, ...] = ()
    load: Load = field(default_factory=Load)
    models_truncated: bool = False
    # Random per process start: a peer that sees it change knows this node restarted
    # and lost whatever it owned, even if it came back faster than dead-detection.
    boot: str = ""
    moves: Moves = field(default_factory=Moves)
    # False while this host's Ollama does not answer: its models are still listed (so
    # the mesh can tell "every host with it is down", 503, from "no host has it", 404)
    # but nothing is placed there.
    ollama_up: bool = True
    # Models loaded on this host's Ollama (None: unknown, e.g. /api/ps not read yet).
    resident: tuple[Resident, ...] | None = None
    memory_gb: float | None = None  # model memory (--memory-gb, or the most seen loaded)
    load_gbps: float | None = None  # measured load rate (None: not measured yet)


class _LoadWire(BaseModel):
    model_config = ConfigDict(extra="ignore")
    q: int = Field(0, ge=0)
    r: int = Field(0, ge=0)
    c: int | None = Field(None, ge=0)
    ru: int = Field(0, ge=0)
    rl: int | None = Field(None, ge=0)
    tu: int = Field(0, ge=0)
    tl: int | None = Field(None, ge=0)
    tps: float = Field(0.0, ge=0)


class _MovesWire(BaseModel):
    model_config = ConfigDict(extra="ignore")
    f: int = Field(0, ge=0)
    s: int = Field(0, ge=0)
    t: int = Field(0, ge=0)
    d: int = Field(0, ge=0)


class _MetaWire(BaseModel):
    model_config = ConfigDict(extra="ignore")
    v: int
    h: str = Field(max_length=300)
    m: list[str] = Field(default_factory=list)
    t: bool = False
    b: str = Field("", max_length=32)
    lo: _LoadWire = Field(default_factory=lambda: _LoadWire())
    mv: _MovesWire = Field(default_factory=lambda: _MovesWire())
    u: bool = True
    # [index into m, size in 0.1 GB, expires_at (unix s), requests here] per loaded model
    rs: list[tuple[int, int, int, int]] | None = None
    # requests started per loaded model, in rs's order (its own field: a 5th element
    # in rs would make an older peer reject the whole metadata)
    sv: list[int] | None = None
    mg: int | None = Field(None, ge=0)  # memory, 0.1 GB
    lr: int | None = Field(None, ge=0)  # load rate, MB/s


MAX_GOSSIPED_INT = (1 << 32) - 1


def _u(value: int | None) -> int | None:
    """A count as gossiped: clamped to 0..2^32-1, so no figure can make msgpack fail."""
    return None if value is None else max(0, min(int(value), MAX_GOSSIPED_INT))


def _dg(gb: float | None) -> int | None:
    return None if gb is None else _u(round(gb * 10))


def _resident_wire(
    meta: NodeMeta, models: tuple[str, ...]
) -> list[tuple[int, int, int, int]] | None:
    if meta.resident is None:
        return None
    index = {m: i for i, m in enumerate(models)}
    return [
        (
            index[r.model],
            _dg(r.size_gb) or 0,
            _u(int(min(r.expires_at, 1e10))) or 0,
            _u(r.active) or 0,
        )
        for r in meta.resident
        if r.model in index
    ]


def ordered_models(meta: NodeMeta) -> tuple[str, ...]:
    """Loaded models first (a cut keeps them), then the rest in their order."""
    loaded = tuple(dict.fromkeys(r.model for r in meta.resident or ()))
    return loaded + tuple(m for m in meta.models if m not in loaded)


def _pack(meta: NodeMeta, models: tuple[str, ...], truncated: bool) -> bytes:
    load = meta.load
    extra: dict[str, object] = {}
    if meta.resident is not None:
        extra["rs"] = _resident_wire(meta, models)
        extra["sv"] = [_u(r.served) or 0 for r in meta.resident if r.model in models]
    if meta.memory_gb is not None:
        extra["mg"] = _dg(meta.memory_gb)
    if meta.load_gbps is not None:
        extra["lr"] = _u(round(meta.load_gbps * 1000))
    return bytes(
        msgpack.packb(
            {
                **extra,
                "v": 1,
                "h": meta.http_addr,
                "m": list(models),
                "t": truncated,
                "b": meta.boot,
                "u": meta.ollama_up,
                "mv": {
                    "f": _u(meta.moves.forwarded),
                    "s": _u(meta.moves.stolen),
                    "t": _u(meta.moves.taken_over),
                    "d": _u(meta.moves.duplicates_dropped),
                },
                "lo": {
                    "q": _u(load.queued),
                    "r": _u(load.running),
                    "c": _u(load.max_concurrency),
                    "ru": _u(load.rpm_used),
                    "rl": _u(load.rpm_limit),
                    "tu": _u(load.tpm_used),
                    "tl": _u(load.tpm_limit),
                    "tps": round(min(load.tokens_per_s, 1e9), 1),
                },
            }
        )
    )


def encode_meta(meta: NodeMeta, limit: int = MAX_META_BYTES) -> bytes:
    """msgpack bytes of at most `limit`; drops models from the end (flagged) to fit."""
    models = ordered_models(meta)
    data = _pack(meta, models, meta.models_truncated)
    while len(data) > limit and models:
        models = models[:-1]
        data = _pack(meta, models, True)
    if len(data) > limit:
        raise ValueError(f"node metadata does not fit in {limit} bytes even without models")
    return data


@functools.lru_cache(maxsize=4096)
def decode_meta(data: bytes) -> NodeMeta | None:
    """Parse gossiped metadata; None for anything malformed (never raises).

    Cached by the bytes: every request reads every member's metadata, which changes
    far less often than requests arrive.
    """
    try:
        wire = _MetaWire.model_validate(msgpack.unpackb(data, raw=False))
    except (ValueError, ValidationError, msgpack.UnpackException, TypeError):
        return None
    lo = wire.lo
    resident = None
    if wire.rs is not None:
        served = wire.sv if wire.sv is not None and len(wire.sv) == len(wire.rs) else None
        resident = tuple(
            Resident(
                wire.m[i],
                size / 10,
                max(0, active),
                float(expires),
                max(0, served[k]) if served is not None else 0,
            )
            for k, (i, size, expires, active) in enumerate(wire.rs)
            if 0 <= i < len(wire.m) and size >= 0
        )
    return NodeMeta(
        http_addr=wire.h,
        models=tuple(wire.m),
        models_truncated=wire.t,
        boot=wire.b,
        ollama_up=wire.u,
        moves=Moves(wire.mv.f, wire.mv.s, wire.mv.t, wire.mv.d),
        load=Load(
            queued=lo.q,
            running=lo.r,
            max_concurrency=lo.c,
            rpm_used=lo.ru,
            rpm_limit=lo.rl,
            tpm_used=lo.tu,
            tpm_limit=lo.tl,
            tokens_per_s=lo.tps,
        ),
        resident=resident,
        memory_gb=None if wire.mg is None else wire.mg / 10,
        load_gbps=None if wire.lr is None else wire.lr / 1000,
    )
