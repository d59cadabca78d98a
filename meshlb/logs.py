"""structlog set-up: JSON lines for machines, coloured console lines for people.

Why structlog: every decision a node makes (placed here, forwarded there, requeued
because Ollama was busy) is logged as an event with fields, so an operator can grep
or ship the JSON, and the console renderer keeps it readable in a terminal.
"""

from __future__ import annotations

import logging
import sys

import structlog

LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}


def configure_logging(fmt: str = "console", level: str = "info") -> None:
    """Configure structlog globally (idempotent: the last call wins)."""
    renderer: structlog.typing.Processor
    if fmt == "json":
        renderer = structlog.processors.JSONRenderer()
    else:
        renderer = structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(LEVELS.get(level, logging.INFO)),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=False,
    )
    # hypercorn logs through the stdlib; keep its access log off (we log tasks ourselves).
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
