"""Which member decides an idempotency key (pure): rendezvous (HRW) hashing.

Every node computes the same winner from the same member list, so two submissions
with one key that reach two nodes are both decided by one member, which sees the
second and answers with the first task. When membership changes, only the keys whose
winner left move (HRW's property), and the new winner asks the mesh for a task with
that key before it makes one, because the key travels with every copy of its task.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable


def _score(key: str, node_id: str) -> bytes:
    return hashlib.blake2b(f"{key}\x00{node_id}".encode(), digest_size=8).digest()


def arbiter_for(key: str, node_ids: Iterable[str]) -> str | None:
    """The member that decides `key` (None for an empty list)."""
    return max(node_ids, key=lambda node: (_score(key, node), node), default=None)
