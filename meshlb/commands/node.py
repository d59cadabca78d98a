"""`meshlb node`: run a node beside the local Ollama until SIGINT/SIGTERM."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click
import trio

from meshlb.config import ConfigError, load_settings
from meshlb.logs import configure_logging


def node_options(f: Any) -> Any:
    """Every node flag; each is also MESHLB_<NAME> in the environment and a key in the YAML."""
    opts = [
        click.option(
            "--config",
            "config_file",
            type=click.Path(path_type=Path),
            help="YAML file with any of the keys below (see config/meshlb.yaml).",
        ),
        click.option("--node-id", help="Unique name of this node in the mesh [default: hostname]."),
        click.option(
            "--http", help="HOST:PORT for the Ollama-compatible HTTP API [default: 0.0.0.0:11435]."
        ),
        click.option("--gossip", help="HOST:PORT (UDP) for gossip [default: 0.0.0.0:7946]."),
        click.option("--advertise", help="Host or IP that peers should use to reach this node."),
        click.option("--join", multiple=True, help="Seed peer's gossip HOST:PORT (repeatable)."),
        click.option("--ollama", help="URL of the local Ollama [default: http://127.0.0.1:11434]."),
        click.option(
            "--max-concurrency",
            type=str,
            help="Requests run at once on the local Ollama [default: 4].",
        ),
        click.option("--rpm", type=str, help="Max request starts per minute [default: no limit]."),
        click.option("--tpm", type=str, help="Max tokens per minute [default: no limit]."),
        click.option("--max-queue", type=str, help="Max queued tasks before 503 [default: 1000]."),
        click.option(
            "--replication",
            type=str,
            help="Nodes holding each async task (owner + replicas) [default: 2].",
        ),
        click.option(
            "--data-dir",
            type=str,
            help="Directory for the durable task journal [default: memory only].",
        ),
        click.option(
            "--cluster-key",
            help="Shared secret: authenticates (and encrypts) gossip and node-to-node traffic.",
        ),
        click.option("--log-format", help="json or console [default: console]."),
        click.option("--log-level", help="debug, info, warning or error [default: info]."),
    ]
    for opt in reversed(opts):
        f = opt(f)
    return f


@click.command("node")
@node_options
def node_command(config_file: Path | None, **flags: Any) -> None:
    """Run a meshlb node in the foreground beside the local Ollama.

    Precedence: flag > MESHLB_<NAME> env var > --config YAML > default.
    Exit codes: 0 clean stop, 2 bad configuration, 1 anything else.
    """
    try:
        settings = load_settings(config_file, flags)
    except ConfigError as e:
        click.echo(f"meshlb: {e}", err=True)
        sys.exit(2)
    from meshlb.node import run_node  # after validation: a bad config starts nothing

    configure_logging(settings.log_format, settings.log_level)
    try:
        trio.run(run_node, settings)
    except OSError as e:
        click.echo(f"meshlb: cannot start the node: {e}", err=True)
        sys.exit(1)
