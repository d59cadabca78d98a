"""`meshlb node`: run a node beside the local Ollama until SIGINT/SIGTERM.

The flags are made from `NodeSettings`' fields (name, type, help text), so every
setting is a flag, a `MESHLB_<NAME>` variable and a YAML key, and none is file-only.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click
import trio

from meshlb.config import LIST_FIELDS, ConfigError, NodeSettings, load_settings
from meshlb.logs import configure_logging
from meshlb.ports import PortInUse, first_os_error


def flag_name(field_name: str) -> str:
    return "--" + field_name.replace("_", "-")


def settings_options() -> list[Any]:
    """One click option per settings field; values stay strings until pydantic checks
    them, so a bad flag gets the same one-sentence error as a bad YAML key."""
    options = []
    for name, info in NodeSettings.model_fields.items():
        default = info.get_default(call_default_factory=False)
        shown = "" if default in (None, []) or info.default_factory else f" [default: {default}]"
        text = (info.description or "") + shown + f" (env MESHLB_{name.upper()})"
        options.append(click.option(flag_name(name), name, multiple=name in LIST_FIELDS, help=text))
    return options


def node_options(f: Any) -> Any:
    """`--config` plus a flag per setting."""
    config = click.option(
        "--config",
        "config_file",
        type=click.Path(path_type=Path),
        help="YAML file with any of the keys below (see config/meshlb.yaml).",
    )
    for opt in reversed([config, *settings_options()]):
        f = opt(f)
    return f


@click.command("node")
@node_options
def node_command(config_file: Path | None, **flags: Any) -> None:
    """Run a meshlb node in the foreground beside the local Ollama.

    Precedence: flag > MESHLB_<NAME> env var > --config YAML > default.
    Exit codes: 0 clean stop, 2 bad configuration, 1 anything else (e.g. a port in use).
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
    except PortInUse as e:
        click.echo(f"meshlb: {e}", err=True)
        sys.exit(1)
    except (OSError, BaseExceptionGroup) as e:
        cause = first_os_error(e)
        if cause is None:
            raise
        click.echo(f"meshlb: cannot run the node: {cause.strerror or cause}", err=True)
        sys.exit(1)
