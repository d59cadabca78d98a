"""Settings of the simulated Ollama (`meshlb sim-ollama`).

Why a separate, frozen config: the simulator is started from the CLI, from tests and from
benchmarks; one validated value object keeps the three in agreement, and its defaults
mirror the real Ollama's where one exists (OLLAMA_NUM_PARALLEL=4, OLLAMA_MAX_QUEUE=512,
keep_alive 5m).
"""

from __future__ import annotations

from dataclasses import dataclass

from meshlb.backend.sim_catalog import GB, parse_model_entry
from meshlb.backend.sim_memory import FOREVER_S, MemoryConfig

DEFAULT_MODELS: tuple[str, ...] = ("llama3.2:1b", "qwen2.5:0.5b", "nomic-embed-text")
SIM_OLLAMA_VERSION = "0.12.6"  # what GET /api/version reports; a real, recent release number


def parse_models(text: str) -> tuple[str, ...]:
    """`"a, b=2.5,,c"` -> `("a", "b=2.5", "c")`: the comma-separated form the CLI takes.

    An entry may carry its size in GB after `=`; `SimOllamaConfig` parses it.
    """
    return tuple(m.strip() for m in text.split(",") if m.strip())


@dataclass(frozen=True, slots=True)
class SimOllamaConfig:
    """Speed, capacity and fault-injection knobs of one simulated Ollama host.

    Invariants (checked in `__post_init__`): at least one model, positive speeds, at
    least one slot, a non-negative queue, and every rate a fraction in [0, 1].
    """

    # Model names offered, each optionally `name=GB` (else the library's size).
    models: tuple[str, ...] = DEFAULT_MODELS
    # Generated tokens per second, per request (each slot streams at this rate).
    tokens_per_second: float = 50.0
    # Prompt processing speed; None means 20x the generation speed, typical on a GPU.
    prompt_tokens_per_second: float | None = None
    # Requests generating at once (OLLAMA_NUM_PARALLEL); more wait in the queue.
    parallel: int = 4
    # Requests waiting for a slot before 503 "server busy" (OLLAMA_MAX_QUEUE).
    max_queue: int = 512
    # Fraction of inference requests answered 500 with an Ollama-style runner error.
    error_rate: float = 0.0
    # Extra delay before the first byte of every inference response.
    latency_ms: float = 0.0
    # Fraction of streamed responses whose connection is cut after some chunks.
    die_mid_stream_rate: float = 0.0
    # Time to "load" a model that is not in memory (first use, or after keep_alive).
    load_ms: float = 0.0
    # How long a model stays loaded after its last use when the request says nothing
    # (OLLAMA_KEEP_ALIVE); negative means forever.
    keep_alive_s: float = 300.0
    # Memory for models, in GB; 0 means unlimited (nothing is ever evicted for room).
    vram_gb: float = 0.0
    # Load speed in GB/s (a load takes size / rate, plus load_ms); 0 means instant.
    load_gbps: float = 0.0
    # Models loaded at once (OLLAMA_MAX_LOADED_MODELS; Ollama's default is 3 per GPU).
    max_loaded_models: int = 3
    # Simulated download speed of /api/pull (and upload of /api/push), in MB/s; 0: instant.
    pull_mbps: float = 0.0
    # Test aid: every pull (and push) fails part-way, as a broken registry connection does.
    fail_pulls: bool = False
    # Seeds the text, the embeddings and the fault-injection dice: same seed, same run.
    seed: int = 0
    version: str = SIM_OLLAMA_VERSION

    def __post_init__(self) -> None:
        if not self.models:
            raise ValueError("models: give at least one model name")
        if self.tokens_per_second <= 0:
            raise ValueError("tokens_per_second must be > 0")
        if self.prompt_tokens_per_second is not None and self.prompt_tokens_per_second <= 0:
            raise ValueError("prompt_tokens_per_second must be > 0")
        if self.parallel < 1:
            raise ValueError("parallel must be >= 1")
        if self.max_queue < 0:
            raise ValueError("max_queue must be >= 0")
        for name in ("error_rate", "die_mid_stream_rate"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be between 0 and 1, got {value}")
        if self.latency_ms < 0 or self.load_ms < 0:
            raise ValueError("latency_ms and load_ms must be >= 0")
        if self.pull_mbps < 0:
            raise ValueError("pull_mbps must be >= 0")
        if self.vram_gb < 0 or self.load_gbps < 0 or self.max_loaded_models < 0:
            raise ValueError("vram_gb, load_gbps and max_loaded_models must be >= 0")
        for entry in self.models:
            parse_model_entry(entry)

    def model_entries(self) -> list[tuple[str, int | None]]:
        """(name, size in bytes or None for the library's) of each offered model."""
        return [parse_model_entry(e) for e in self.models]

    def memory(self) -> MemoryConfig:
        """The memory core's settings (sim_memory) derived from these."""
        return MemoryConfig(
            vram_bytes=int(self.vram_gb * GB),
            max_loaded=self.max_loaded_models,
            load_bytes_per_s=self.load_gbps * GB,
            load_fixed_s=self.load_ms / 1000.0,
            keep_alive_s=FOREVER_S if self.keep_alive_s < 0 else self.keep_alive_s,
            parallel=self.parallel,
        )

    @property
    def prompt_tps(self) -> float:
        """Prompt-processing speed actually used (explicit, or 20x generation)."""
        return self.prompt_tokens_per_second or self.tokens_per_second * 20.0
