"""Placeholder: the simulated Ollama command is being written (meshlb/backend/sim*.py)."""

import click


@click.command("sim-ollama")
def sim_ollama_command() -> None:
    """A simulated Ollama server (not written yet)."""
    raise click.ClickException("not written yet")
