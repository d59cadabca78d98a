"""Task ids: random, so they are drawn here, outside the pure record module."""

from __future__ import annotations

import secrets


def new_task_id() -> str:
    """Random and unguessable enough to share: 't-' + 16 hex digits."""
    return "t-" + secrets.token_hex(8)
