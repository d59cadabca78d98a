"""`meshlb sim-ollama`: a simulated Ollama server for demos, tests and benchmarks.

Why a real process: the demo and the integration tests treat it exactly like an Ollama
host (its own port, killable), so the meshlb node cannot tell the difference.
"""

from __future__ import annotations

import signal
import sys

import click
import trio

from meshlb.backend.sim_config import DEFAULT_MODELS, SimOllamaConfig, parse_models
from meshlb.backend.sim_parse import parse_keep_alive
from meshlb.ports import first_os_error


@click.command("sim-ollama")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option(
    "--port", default=11434, show_default=True, type=int, help="TCP port (11434 is Ollama's own)."
)
@click.option(
    "--models",
    default=",".join(DEFAULT_MODELS),
    show_default=True,
    help="Comma-separated models to offer (no tag means :latest), each optionally NAME=GB "
    "(its size on disk and in memory; default: the library size of common models, "
    "e.g. llama3.2=2.0, qwen2.5:7b=4.7, else derived from the parameter count).",
)
@click.option(
    "--tokens-per-second",
    default=50.0,
    show_default=True,
    type=float,
    help="Generation speed of each request.",
)
@click.option(
    "--parallel",
    default=4,
    show_default=True,
    type=int,
    help="Requests generating at once per loaded model (like OLLAMA_NUM_PARALLEL); each "
    "slot keeps a prompt-prefix cache.",
)
@click.option(
    "--max-queue",
    default=512,
    show_default=True,
    type=int,
    help="Requests waiting for a slot before 503 (like OLLAMA_MAX_QUEUE).",
)
@click.option(
    "--error-rate",
    default=0.0,
    show_default=True,
    type=float,
    help="Fraction of inference requests answered 500 (fault injection).",
)
@click.option(
    "--latency-ms",
    default=0.0,
    show_default=True,
    type=float,
    help="Extra delay before the first byte of each inference response.",
)
@click.option(
    "--die-mid-stream-rate",
    default=0.0,
    show_default=True,
    type=float,
    help="Fraction of streams whose connection is cut after some chunks.",
)
@click.option(
    "--load-ms",
    default=0.0,
    show_default=True,
    type=float,
    help="Fixed time to load a model that is not in memory (added to size / --load-gbps).",
)
@click.option(
    "--vram-gb",
    default=0.0,
    show_default=True,
    type=float,
    help="Memory for models in GB; a model that does not fit evicts the least recently used "
    "idle one (0: unlimited, nothing is evicted for room).",
)
@click.option(
    "--load-gbps",
    default=0.0,
    show_default=True,
    type=float,
    help="Load speed in GB/s: a load takes size / rate seconds, and requests for the model "
    "wait (0: loads are instant, so tests stay fast).",
)
@click.option(
    "--keep-alive",
    default="5m",
    show_default=True,
    help="How long a model stays loaded after its last request when the request gives no "
    "keep_alive (like OLLAMA_KEEP_ALIVE: a duration such as 5m or 1h30m, seconds, "
    "negative for forever, 0 to unload at once).",
)
@click.option(
    "--max-loaded-models",
    default=3,
    show_default=True,
    type=int,
    help="Models loaded at once (like OLLAMA_MAX_LOADED_MODELS; 3 is Ollama's default for "
    "one GPU; 0: unlimited).",
)
@click.option(
    "--pull-mbps",
    default=0.0,
    show_default=True,
    type=float,
    help="Simulated download speed of /api/pull (and upload of /api/push) in MB/s; the "
    "library of pullable models is the size table plus --models (0: instant).",
)
@click.option(
    "--fail-pulls",
    is_flag=True,
    help="Test aid: every pull and push fails half-way with an error object, as a broken "
    "registry connection does.",
)
@click.option(
    "--seed",
    default=0,
    show_default=True,
    type=int,
    help="Seeds generated text, embeddings and the fault dice.",
)
def sim_ollama_command(
    host: str,
    port: int,
    models: str,
    tokens_per_second: float,
    parallel: int,
    max_queue: int,
    error_rate: float,
    latency_ms: float,
    die_mid_stream_rate: float,
    load_ms: float,
    vram_gb: float,
    load_gbps: float,
    keep_alive: str,
    max_loaded_models: int,
    pull_mbps: float,
    fail_pulls: bool,
    seed: int,
) -> None:
    """Run a simulated Ollama: the real HTTP API (native and /v1), no GPU needed.

    Text and embeddings are deterministic fakes; speed, capacity and faults are tunable.
    Ollama's memory model (sizes, VRAM, load time, keep_alive, eviction, slots with a
    prompt-prefix cache, num_ctx truncation) shows in load_duration and /api/ps.
    GET /sim/stats shows counters (served, cancelled, rejected_busy, max_running_seen,
    loads, evictions, prompt_tokens_evaluated).
    Stops cleanly (exit 0) on Ctrl-C or SIGTERM.
    """
    try:
        config = SimOllamaConfig(
            keep_alive_s=parse_keep_alive(keep_alive),
            vram_gb=vram_gb,
            load_gbps=load_gbps,
            max_loaded_models=max_loaded_models,
            pull_mbps=pull_mbps,
            fail_pulls=fail_pulls,
            models=parse_models(models),
            tokens_per_second=tokens_per_second,
            parallel=parallel,
            max_queue=max_queue,
            error_rate=error_rate,
            latency_ms=latency_ms,
            die_mid_stream_rate=die_mid_stream_rate,
            load_ms=load_ms,
            seed=seed,
        )
    except ValueError as e:
        click.echo(f"meshlb sim-ollama: {e}", err=True)
        sys.exit(2)
    try:
        trio.run(_main, config, host, port)
    except (OSError, BaseExceptionGroup) as e:
        os_error = first_os_error(e)
        if os_error is None:
            raise
        click.echo(f"meshlb sim-ollama: cannot listen on {host}:{port}: {os_error}", err=True)
        sys.exit(1)


async def _main(config: SimOllamaConfig, host: str, port: int) -> None:
    from meshlb.backend.sim_app import serve_sim

    shutdown = trio.Event()
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:
            await nursery.start(
                lambda task_status: serve_sim(
                    config, host, port, shutdown=shutdown, task_status=task_status
                )
            )
            click.echo(
                f"simulated Ollama listening on http://{host}:{port} "
                f"(models: {', '.join(config.models)}; "
                f"{config.tokens_per_second:g} tokens/s, {config.parallel} slots)"
            )
            async for _ in signals:
                shutdown.set()
                break
