"""Ollama's model-name rule, shared by the cores and the backend client (pure).

It lives apart from `backend/catalog.py` because that module runs Trio loops over
httpx: a core that needs the name rule must not drag I/O in with it.
"""

from __future__ import annotations


def canonical_model(name: str) -> str:
    """Ollama's name rule: a model without a tag means `:latest`."""
    return name if ":" in name.rsplit("/", 1)[-1] else f"{name}:latest"
