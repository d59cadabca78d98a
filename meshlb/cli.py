"""The `meshlb` command line: one group, one module per sub-command under meshlb/commands/."""

from __future__ import annotations

import click

from meshlb import __version__
from meshlb.commands.client import peers_command, stats_command
from meshlb.commands.demo import demo_command
from meshlb.commands.models import cp_command, pull_command, rm_command
from meshlb.commands.node import node_command
from meshlb.commands.sim_ollama import sim_ollama_command
from meshlb.commands.submit import submit_command
from meshlb.commands.top import top_command


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="meshlb")
def cli() -> None:
    """meshlb: one fault-tolerant Ollama made of many hosts.

    Run `meshlb node` beside Ollama on every host; the nodes find each other by gossip,
    and a request sent to any node runs on the best host that has the model.
    Try `meshlb demo` first: a local mesh with simulated Ollamas, nothing else needed.
    """


cli.add_command(demo_command)
cli.add_command(node_command)
cli.add_command(sim_ollama_command)
cli.add_command(peers_command)
cli.add_command(stats_command)
cli.add_command(submit_command)
cli.add_command(top_command)
cli.add_command(pull_command)
cli.add_command(rm_command)
cli.add_command(cp_command)


def main() -> None:
    """Console-script entry point."""
    cli()
