"""Task copies, their versions, and who holds them (pure; no I/O, no clock).

A `TaskCopy` is the unit the ownership core replicates: an immutable snapshot of a
`TaskRecord` plus who owns it, at which version, and which nodes hold replicas.

Why each rule:

* Version = (epoch, owner), then `rev` (every state change) within it. Every change
  of owner (hand-over, take-back, take-over) bumps the epoch; two nodes that take
  over concurrently (a partition) still get distinct versions because the owner id
  breaks the tie. The higher version wins, final or not: only the owner of a
  version decides its result, so a result from a stale owner is not adopted by
  holders — the ownership core proposes it to the current owner, which decides it
  if it has none yet ("the first result wins"). At the same version a final copy
  beats a non-final one, and two finals (never after a single failure) are ordered
  by the earlier result, so every node converges on the same one.
* Replica sets are sticky: a live replica is kept; only a lost one is replaced,
  by rendezvous (highest-random-weight) order over the live members. Few moves,
  and every holder of a copy reads the same ordered list, so on the owner's death
  every survivor computes the same successor: the first live node in the list.
"""

from __future__ import annotations

import hashlib
from collections.abc import Collection, Iterable
from dataclasses import dataclass, field, replace

from meshlb.tasks.model import TaskRecord

Version = tuple[int, str]


def rendezvous_weight(task_id: str, node_id: str) -> int:
    """A stable pseudo-random weight (same in every process: no `hash()`)."""
    digest = hashlib.blake2b(f"{task_id}\x00{node_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def rendezvous_order(task_id: str, nodes: Iterable[str]) -> list[str]:
    """Nodes by decreasing weight for this task; ties (never in practice) by id."""
    return sorted(nodes, key=lambda n: (-rendezvous_weight(task_id, n), n))


def choose_replicas(
    task_id: str,
    owner: str,
    keep: Iterable[str],
    live: Collection[str],
    count: int,
) -> tuple[str, ...]:
    """`count` replica holders: the live nodes of `keep` first (in their order,
    sticky), then the best rendezvous-ranked live members; never the owner."""
    chosen: list[str] = []
    for node in keep:
        if node in live and node != owner and node not in chosen and len(chosen) < count:
            chosen.append(node)
    if len(chosen) < count:
        rest = [n for n in live if n != owner and n not in chosen]
        chosen.extend(rendezvous_order(task_id, rest)[: count - len(chosen)])
    return tuple(chosen)


@dataclass(frozen=True, slots=True)
class TaskCopy:
    """One replicated snapshot (frozen, like its record).

    `former` holds every node that ever owned or held the task, so that a healed
    partition knows whom to reconcile with. `run_id` names the run whose result
    is final (None while the task is not final)."""

    record: TaskRecord = field(metadata={"wire": "r"})
    owner: str = field(metadata={"wire": "o", "nonempty": True})
    epoch: int = field(metadata={"wire": "e", "ge": 0})
    replicas: tuple[str, ...] = field(metadata={"wire": "rs", "nonempty": True})
    former: frozenset[str] = field(default=frozenset(), metadata={"wire": "f", "nonempty": True})
    run_id: str | None = field(default=None, metadata={"wire": "u"})
    # bumped on every state change within one (epoch, owner)
    rev: int = field(default=0, metadata={"wire": "v", "ge": 0})

    @property
    def task_id(self) -> str:
        return self.record.id

    @property
    def version(self) -> Version:
        return (self.epoch, self.owner)

    @property
    def final(self) -> bool:
        return self.record.final

    def successor(self, live: Collection[str]) -> str | None:
        """Who takes over if the owner is gone: the first live replica, else None."""
        return next((n for n in self.replicas if n in live), None)

    def with_replicas(self, replicas: tuple[str, ...]) -> TaskCopy:
        return replace(self, replicas=replicas, former=self.former | set(replicas),
                       rev=self.rev + 1)  # fmt: skip

    def with_owner(self, owner: str, epoch: int, replicas: tuple[str, ...]) -> TaskCopy:
        former = self.former | {owner, *replicas}
        return replace(self, owner=owner, epoch=epoch, replicas=replicas, former=former, rev=0)

    def with_record(self, record: TaskRecord, run_id: str | None = None) -> TaskCopy:
        run = run_id if run_id is not None else self.run_id
        return replace(self, record=record, run_id=run, rev=self.rev + 1)

    def __repr__(self) -> str:
        return (
            f"TaskCopy({self.task_id} {self.record.state} owner={self.owner} "
            f"epoch={self.epoch} replicas={list(self.replicas)})"
        )


def final_rank(c: TaskCopy) -> tuple[float, str]:
    """Earlier result first; the run id makes the order total."""
    finished = c.record.finished_at if c.record.finished_at is not None else float("inf")
    return (finished, c.run_id or "")


def newer(incoming: TaskCopy, current: TaskCopy) -> bool:
    """Should `incoming` replace `current`? (the merge rule; see the module doc)"""
    if incoming.version != current.version:
        return incoming.version > current.version
    if incoming.final != current.final:
        return incoming.final
    if incoming.final and incoming.run_id != current.run_id:
        return final_rank(incoming) < final_rank(current)
    return incoming.rev > current.rev


def conflicting_finals(a: TaskCopy, b: TaskCopy) -> bool:
    """Two final copies from different runs: one result must be dropped."""
    return a.final and b.final and a.run_id != b.run_id
