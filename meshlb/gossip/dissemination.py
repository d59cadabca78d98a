"""Dissemination: piggybacking, gossip rounds, push-pull, reconnects and join retries
(SWIM §4.1 infection-style dissemination, memberlist's gossip and push-pull).

Owns the outboxes and the broadcast queue; reads the member table to pick targets.
Pure: no clock, no sockets; `now` comes with every call.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence

from meshlb.gossip.broadcast import BroadcastQueue
from meshlb.gossip.config import GossipConfig
from meshlb.gossip.messages import Addr, Datagram, Message, PushPull, StreamRequest, Update
from meshlb.gossip.table import MemberRecord, MemberTable
from meshlb.gossip.wire import PACKET_HEADER_BYTES, message_size

INF = math.inf


class Disseminator:
    """Spreads membership updates and full state; owns the outboxes."""

    def __init__(
        self, config: GossipConfig, table: MemberTable, rng: random.Random, now: float
    ) -> None:
        self.config = config
        self._table = table
        self._rng = rng
        self._broadcasts = BroadcastQueue()
        self._gossip_phase = now + rng.random() * config.gossip_interval_s
        self._next_gossip_at = INF  # idle while there is nothing to gossip
        self._next_push_pull_at = now + (1 + rng.random()) * config.push_pull_interval_s
        self._next_reconnect_at = now + (1 + rng.random()) * config.reconnect_interval_s
        self._seeds: list[Addr] = []
        self._join_at = INF
        self._join_backoff_s = config.join_retry_initial_s
        self._out: list[Datagram] = []
        self._streams: list[StreamRequest] = []

    # ---- commands --------------------------------------------------------------

    def join(self, seeds: Sequence[Addr], now: float) -> None:
        """Push-pull with every seed now, retried with backoff until one answers."""
        self._seeds = [s for s in seeds if s != self._table.me.addr]
        self._join_backoff_s = self.config.join_retry_initial_s
        self._join_at = now if self._seeds else INF

    def joined_via(self) -> bool:
        """A push-pull answer arrived: True if it ends a pending join (only the first)."""
        if self._join_at == INF:
            return False
        self._join_at = INF
        self._seeds = []
        return True

    def broadcast(self, msg: Update, now: float) -> None:
        """Queue an update for piggybacking, and wake the gossip timer if it slept."""
        self._broadcasts.queue(msg, message_size(msg))
        if self._next_gossip_at == INF:
            step = self.config.gossip_interval_s
            k = math.ceil((now - self._gossip_phase) / step)
            self._next_gossip_at = self._gossip_phase + max(k, 0) * step

    def gossip_now(self, now: float) -> None:
        self._next_gossip_at = now

    def pending_for(self, node: str) -> Update | None:
        return self._broadcasts.pending_for(node)

    def send(self, addr: Addr, msgs: tuple[Message, ...]) -> None:
        """Queue a datagram, filling its spare room with piggybacked updates."""
        size = PACKET_HEADER_BYTES + sum(message_size(m) for m in msgs)
        if len(self._broadcasts):
            budget = self.config.max_payload_bytes - size
            limit = self.config.retransmit_limit(self._table.live)
            updates, extra = self._broadcasts.take(budget, limit)
            if updates:
                msgs = (*msgs, *updates)
                size += extra
        self._out.append(Datagram(addr, msgs, size))

    def random_members(
        self, k: int, exclude: str | None, now: float, *, gossip: bool
    ) -> list[MemberRecord]:
        dead_since = now - self.config.gossip_to_the_dead_s
        return self._table.random_members(k, exclude, gossip=gossip, dead_since=dead_since)

    # ---- outputs ---------------------------------------------------------------

    def datagrams_to_send(self) -> list[Datagram]:
        out, self._out = self._out, []
        return out

    def streams_to_send(self) -> list[StreamRequest]:
        out, self._streams = self._streams, []
        return out

    def next_deadline(self, leaving: bool) -> float:
        t = min(self._next_gossip_at, self._join_at)
        if not leaving:
            t = min(t, self._next_push_pull_at, self._next_reconnect_at)
        return t

    # ---- timers ----------------------------------------------------------------

    def tick(self, now: float, leaving: bool) -> None:
        if not leaving:
            if now >= self._next_push_pull_at:
                self._push_pull(now)
            if now >= self._next_reconnect_at:
                self._reconnect(now)
        if now >= self._next_gossip_at:
            self._gossip(now)
        if now >= self._join_at:
            self._join_attempt(now)

    def _gossip(self, now: float) -> None:
        """SWIM §4.1 infection-style dissemination to `gossip_nodes` random members."""
        if len(self._broadcasts) == 0:
            self._next_gossip_at = INF
            return
        step = self.config.gossip_interval_s
        self._next_gossip_at = (
            self._gossip_phase + (math.floor((now - self._gossip_phase) / step) + 1) * step
        )
        budget = self.config.max_payload_bytes - PACKET_HEADER_BYTES
        limit = self.config.retransmit_limit(self._table.live)
        for m in self.random_members(self.config.gossip_nodes, None, now, gossip=True):
            updates, size = self._broadcasts.take(budget, limit)
            if not updates:
                break
            self._out.append(Datagram(m.addr, tuple(updates), size + PACKET_HEADER_BYTES))

    def _push_pull(self, now: float) -> None:
        self._next_push_pull_at = now + self.config.push_pull_interval_for(self._table.live)
        peers = self.random_members(1, None, now, gossip=False)
        if peers:
            self._push_pull_with(peers[0].addr, join=False)

    def _reconnect(self, now: float) -> None:
        """Serf-style: push-pull with a random dead member, probability dead/alive."""
        self._next_reconnect_at = now + self.config.reconnect_interval_s
        dead = self._table.dead()
        if dead and self._rng.random() < len(dead) / max(1, self._table.live):
            self._push_pull_with(dead[self._rng.randrange(len(dead))].addr, join=False)

    def _join_attempt(self, now: float) -> None:
        for seed in self._seeds:
            self._push_pull_with(seed, join=True)
        self._join_at = now + self._join_backoff_s
        self._join_backoff_s = min(self._join_backoff_s * 2, self.config.join_retry_max_s)

    def _push_pull_with(self, addr: Addr, *, join: bool) -> None:
        self._streams.append(StreamRequest(addr, PushPull(self._table.snapshot(), join)))
