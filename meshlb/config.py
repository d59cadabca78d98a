"""Node settings: defaults < YAML file < MESHLB_* environment < command-line flags.

Why one pydantic model: every source is merged into one plain dict first and validated
once, so a bad value is reported the same way wherever it came from (the key, the
value, why) and a half-valid configuration can never start a node (exit code 2).
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

MIB = 1024 * 1024
UNSPECIFIED_HOSTS = frozenset({"0.0.0.0", "::", ""})


class ConfigError(Exception):
    """A configuration problem, phrased for the operator; the CLI exits with code 2."""

    def __init__(self, key: str, value: object, why: str) -> None:
        self.key, self.value, self.why = key, value, why
        super().__init__(f"bad configuration: {key}={value!r}: {why}")


def parse_host_port(text: str, default_host: str = "0.0.0.0") -> tuple[str, int]:
    """Split `HOST:PORT` (or `:PORT`, `[v6]:PORT`) into a pair; ValueError says why not."""
    host, sep, port_text = text.rpartition(":")
    if not sep:
        raise ValueError("expected HOST:PORT, e.g. 0.0.0.0:11435")
    host = host.strip("[]") or default_host
    try:
        port = int(port_text)
    except ValueError:
        raise ValueError(f"port {port_text!r} is not a number") from None
    if not 0 <= port <= 65535:
        raise ValueError(f"port {port} is outside 0-65535")
    return host, port


def field(default: Any = ..., description: str = "", **kw: Any) -> Any:
    """A settings field; `description` is the flag's --help text (one source for both)."""
    return Field(default, description=description, **kw)


class NodeSettings(BaseModel):
    """Everything a node needs to run; each default says why it is what it is.

    Every field is a YAML key, a `MESHLB_<NAME>` variable and a `--flag` (the CLI
    builds its flags from these fields, so none can be file-only)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # Hostname: unique per machine in a fleet, and readable in `meshlb peers`.
    node_id: str = Field(
        default_factory=socket.gethostname,
        min_length=1,
        max_length=64,
        description="Unique name of this node in the mesh [default: hostname].",
    )
    # 11435 = Ollama's 11434 + 1: clients switch by changing one digit.
    http: str = field("0.0.0.0:11435", "HOST:PORT for the Ollama-compatible HTTP API.")
    # 7946 is the port Serf/memberlist use for gossip; operators know it.
    gossip: str = field("0.0.0.0:7946", "HOST:PORT for gossip (UDP, and TCP for push-pull).")
    # Address peers should use; None = found at start-up (see `resolve_advertise`).
    advertise: str | None = field(
        None,
        "Host or IP peers use to reach this node [default: the bind host if specific, "
        "else the address routing toward the first --join seed, else the primary "
        "non-loopback address].",
    )
    # Seed peers' gossip addresses; empty = the first node of a new mesh.
    join: list[str] = Field(
        default_factory=list,
        description="A seed peer's gossip HOST:PORT (repeatable; env: comma-separated).",
    )
    # Ollama's own default address.
    ollama: str = field("http://127.0.0.1:11434", "URL of the local Ollama.")
    # Ollama's default OLLAMA_NUM_PARALLEL is up to 4; more only queues inside Ollama.
    max_concurrency: int | None = field(
        4, "Requests run at once on the local Ollama (match OLLAMA_NUM_PARALLEL).", ge=1, le=4096
    )
    # No request/token budgets unless the operator sets them (a local GPU has none).
    rpm: int | None = field(None, "Max request starts per sliding minute [default: none].", ge=1)
    tpm: int | None = field(None, "Max tokens per sliding minute [default: none].", ge=1)
    # 1000 queued tasks is minutes of work for a small fleet; beyond, fail fast with 503.
    max_queue: int = field(
        1000, "Queued tasks beyond which new work gets 503 + Retry-After.", ge=1, le=1_000_000
    )
    # Each async task is held by this many nodes (its owner and replicas): 2 survives
    # any single node's death; 3 survives two at once, for one more copy per change.
    replication: int = field(2, "Nodes holding each async task (owner + replicas).", ge=1, le=5)
    # None: a dead member counts towards the quorum until gossip reaps it (~5 min), so a
    # partition's two sides can never both take tasks over. See meshlb/mesh/dead_members.
    dead_quorum_after_s: float | None = field(
        None,
        "Seconds after which a member declared dead leaves the quorum count (faster "
        "take-over when most of a mesh dies; risks double take-over in a partition) "
        "[default: only when gossip reaps it].",
        gt=0,
    )
    # A waiting task gains one priority level per aging_s, so nothing starves.
    aging_s: float = field(30.0, "A waiting task gains one priority level per this many s.", gt=0)
    # Token estimate when a request does not say num_predict/max_tokens.
    default_num_predict: int = field(
        256, "Output-token estimate for requests without num_predict/max_tokens.", ge=1
    )
    # None = no deadline, as in Ollama; a client sets one with X-Meshlb-Timeout-S.
    request_timeout_s: float | None = field(
        None,
        "Deadline (queued plus running) of a request without X-Meshlb-Timeout-S; "
        "past it 504 [default: none].",
        gt=0,
        le=7 * 86400,
    )
    # Durable task journal; None = memory only (said at start-up).
    data_dir: Path | None = field(None, "Directory of the durable task journal [default: memory].")
    # Shared secret for gossip and node-to-node HTTP; None = open mesh.
    cluster_key: str | None = field(
        None,
        "Shared secret (8+ chars): authenticates and encrypts gossip and node-to-node traffic.",
        min_length=8,
    )
    log_format: Literal["json", "console"] = field("console", "Log format: json or console.")
    log_level: Literal["debug", "info", "warning", "error"] = field(
        "info", "Log level: debug, info, warning or error."
    )
    # Ollama accepts images inline; 32 MiB holds a few large ones.
    max_body_bytes: int = field(32 * MIB, "Largest request body accepted (413 above).", ge=1024)
    # Finished async tasks stay readable this long.
    task_retention_s: float = field(3600.0, "Seconds finished async tasks stay readable.", gt=0)
    # How often the local Ollama's model list is re-read.
    models_refresh_s: float = field(
        10.0, "Seconds between re-reads of the local Ollama's model list.", gt=0
    )
    # None: learned as the most memory the local Ollama was seen holding models in, once
    # an eviction showed that is all it has (until then no limit is assumed).
    memory_gb: float | None = field(
        None,
        "GB of memory for models on this host (gossiped so placement knows what a load "
        "evicts) [default: learned from the local Ollama's evictions].",
        gt=0,
    )

    @field_validator("http", "gossip")
    @classmethod
    def _host_port(cls, value: str) -> str:
        parse_host_port(value)
        return value

    @field_validator("join")
    @classmethod
    def _seeds(cls, value: list[str]) -> list[str]:
        for seed in value:
            parse_host_port(seed, default_host="127.0.0.1")
        return value

    @field_validator("ollama")
    @classmethod
    def _url(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError("must be an http:// or https:// URL, e.g. http://127.0.0.1:11434")
        return value.rstrip("/")

    @field_validator("advertise")
    @classmethod
    def _advertise(cls, value: str | None) -> str | None:
        if value is not None and value.strip("[]") in UNSPECIFIED_HOSTS:
            raise ValueError("peers cannot dial 0.0.0.0 or ::; give this host's address")
        return value

    @property
    def http_bind(self) -> tuple[str, int]:
        return parse_host_port(self.http)

    @property
    def gossip_bind(self) -> tuple[str, int]:
        return parse_host_port(self.gossip)

    def advertised_host(self) -> str:
        """The host peers should dial (after `resolve_advertise`, always --advertise)."""
        if self.advertise:
            return self.advertise
        host = self.http_bind[0]
        return "127.0.0.1" if host in UNSPECIFIED_HOSTS else host


FIELD_NAMES = tuple(NodeSettings.model_fields)
LIST_FIELDS = frozenset({"join"})


def read_yaml(path: Path) -> dict[str, Any]:
    """Read the YAML config file; keys may use '-' or '_'."""
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise ConfigError("config", str(path), f"cannot read the file ({e.strerror})") from None
    except yaml.YAMLError as e:
        raise ConfigError("config", str(path), f"not valid YAML ({e})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError("config", str(path), "the file must hold a mapping of key: value")
    return {str(k).replace("-", "_"): v for k, v in data.items()}


def read_env(environ: Mapping[str, str]) -> dict[str, Any]:
    """MESHLB_<NAME> variables; list keys are comma-separated."""
    out: dict[str, Any] = {}
    for name in FIELD_NAMES:
        raw = environ.get(f"MESHLB_{name.upper()}")
        if raw is None:
            continue
        out[name] = [s.strip() for s in raw.split(",") if s.strip()] if name in LIST_FIELDS else raw
    return out


def load_settings(
    config_file: Path | None = None,
    flags: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
) -> NodeSettings:
    """Merge every source (flag beats env beats file beats default) and validate once."""
    merged: dict[str, Any] = {}
    if config_file is not None:
        merged.update(read_yaml(config_file))
    merged.update(read_env(os.environ if environ is None else environ))
    merged.update({k: v for k, v in (flags or {}).items() if v is not None and v != ()})
    for key in LIST_FIELDS:
        if isinstance(merged.get(key), tuple):
            merged[key] = list(merged[key])
    try:
        return NodeSettings.model_validate(merged)
    except ValidationError as e:
        first = e.errors()[0]
        key = ".".join(str(p) for p in first["loc"]) or "config"
        top = str(first["loc"][0]) if first["loc"] else key
        value = merged.get(top, first.get("input"))
        why = first["msg"].removeprefix("Value error, ")
        if first["type"] == "extra_forbidden":
            why = f"unknown key; known keys are: {', '.join(FIELD_NAMES)}"
        raise ConfigError(key, value, why) from None
