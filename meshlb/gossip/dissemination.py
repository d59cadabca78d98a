"""Dissemination half of the membership core: piggybacking, gossip rounds, push-pull,
reconnects and join retries (SWIM §4.1 infection-style dissemination, memberlist's
gossip and push-pull). Pure: no clock, no sockets; `Membership` adds probing.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence

from meshlb.gossip.config import GossipConfig
from meshlb.gossip.crypto import Keyring
from meshlb.gossip.envelope import Envelope
from meshlb.gossip.events import JoinSucceeded
from meshlb.gossip.messages import (
    ALIVE,
    DEAD,
    SUSPECT,
    Addr,
    Datagram,
    Message,
    PushPull,
    StreamRequest,
)
from meshlb.gossip.table import MemberTable, _Member
from meshlb.gossip.wire import (
    PACKET_HEADER_BYTES,
    WireError,
    decode_push_pull,
    encode_packet,
    encode_push_pull,
    message_size,
)

INF = math.inf


def _envelope(
    keyring: Keyring | None,
    node_id: str,
    nonces: Callable[[int], bytes] | None,
    boot_epoch_us: int | None,
    now: float,
) -> Envelope | None:
    """The sealing of a keyed member. The driver injects OS randomness and its wall clock;
    the defaults (a PRNG seeded from the node id and epoch, `now` in microseconds) are
    for simulations, where every input must be reproducible."""
    if keyring is None:
        return None
    epoch = boot_epoch_us if boot_epoch_us is not None else int(now * 1_000_000)
    if nonces is None:
        nonces = random.Random(f"{node_id}/{epoch}").randbytes
    return Envelope(keyring, node_id, nonces, epoch)


class Disseminator(MemberTable):
    """Spreads membership updates and full state; owns the outboxes."""

    def __init__(
        self,
        config: GossipConfig,
        node_id: str,
        addr: Addr,
        meta: bytes,
        rng: random.Random,
        now: float,
        keyring: Keyring | None = None,
        nonces: Callable[[int], bytes] | None = None,
        boot_epoch_us: int | None = None,
    ) -> None:
        super().__init__(config, node_id, addr, meta, rng, now)
        self.envelope = _envelope(keyring, node_id, nonces, boot_epoch_us, now)
        self._gossip_phase = now + rng.random() * config.gossip_interval_s
        self._next_gossip_at = INF  # idle while there is nothing to gossip
        self._next_push_pull_at = now + (1 + rng.random()) * config.push_pull_interval_s
        self._next_reconnect_at = now + (1 + rng.random()) * config.reconnect_interval_s
        self._now = now
        self._seeds: list[Addr] = []
        self._join_at = INF
        self._join_backoff_s = config.join_retry_initial_s
        self._out: list[Datagram] = []
        self._streams: list[StreamRequest] = []

    def join(self, seeds: Sequence[Addr], now: float) -> None:
        """Push-pull with every seed now, retried with backoff until one answers."""
        self._seeds = [s for s in seeds if s != self._self.addr]
        self._join_backoff_s = self.config.join_retry_initial_s
        self._join_at = now if self._seeds else INF

    def datagrams_to_send(self) -> list[Datagram]:
        out, self._out = self._out, []
        return out

    def streams_to_send(self) -> list[StreamRequest]:
        out, self._streams = self._streams, []
        return out

    def encode(self, datagram: Datagram) -> bytes:
        """Wire bytes of a datagram (sealed when a keyring is set)."""
        data = encode_packet(datagram.messages)
        return self.envelope.seal(data) if self.envelope is not None else data

    def encode_push_pull(self, pp: PushPull) -> bytes:
        data = encode_push_pull(pp)
        return self.envelope.seal(data) if self.envelope is not None else data

    def handle_push_pull(self, request: PushPull | bytes, src: Addr, now: float) -> PushPull | None:
        """Answer a push-pull request: merge the peer's state, reply with ours (merged)."""
        pp = self._decode_push_pull(request) if isinstance(request, bytes) else request
        if pp is None:
            return None
        self._stats["push_pulls"] += 1
        self.merge(pp.states, now)
        return PushPull(self.snapshot(), False)

    def receive_push_pull(self, reply: PushPull | bytes, src: Addr, now: float) -> None:
        """The answer to our push-pull request (a join succeeds with the first one)."""
        pp = self._decode_push_pull(reply) if isinstance(reply, bytes) else reply
        if pp is None:
            return
        self.merge(pp.states, now)
        if self._join_at != INF:
            self._join_at = INF
            self._seeds = []
            self._events.append(JoinSucceeded(src, len(self._members)))

    def _decode_push_pull(self, data: bytes) -> PushPull | None:
        try:
            if self.envelope is not None:
                data = self.envelope.open(data)
            return decode_push_pull(data)
        except WireError as e:  # AuthError included
            self._stats[e.kind] += 1
            self._drops.add(e.reason)
        return None

    def _on_broadcast_queued(self) -> None:
        if self._next_gossip_at == INF:
            step = self.config.gossip_interval_s
            k = math.ceil((self._now - self._gossip_phase) / step)
            self._next_gossip_at = self._gossip_phase + max(k, 0) * step

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
        limit = self.config.retransmit_limit(self._live)
        for m in self._random_members(self.config.gossip_nodes, None, gossip=True):
            updates, size = self._broadcasts.take(budget, limit)
            if not updates:
                break
            self._out.append(Datagram(m.addr, tuple(updates), size + PACKET_HEADER_BYTES))

    def _send(self, addr: Addr, msgs: tuple[Message, ...]) -> None:
        """Queue a datagram, filling its spare room with piggybacked updates."""
        size = PACKET_HEADER_BYTES + sum(message_size(m) for m in msgs)
        if len(self._broadcasts):
            budget = self.config.max_payload_bytes - size
            updates, extra = self._broadcasts.take(budget, self.config.retransmit_limit(self._live))
            if updates:
                msgs = (*msgs, *updates)
                size += extra
        self._out.append(Datagram(addr, msgs, size))

    def _random_members(self, k: int, exclude: str | None, *, gossip: bool) -> list[_Member]:
        """Up to k distinct random members: alive (probe relays) or gossip targets."""
        members, order, me = self._members, self._order, self._self
        dead_cutoff = self._now - self.config.gossip_to_the_dead_s
        picked: dict[str, _Member] = {}
        for _ in range(4 * k + 4):
            if len(picked) >= k or not order:
                break
            m = members.get(order[self.rng.randrange(len(order))])
            if m is None or m is me or m.node == exclude or m.node in picked:
                continue
            if m.state == ALIVE or (
                gossip and (m.state == SUSPECT or (m.state == DEAD and m.changed_at > dead_cutoff))
            ):
                picked[m.node] = m
        return list(picked.values())

    def _push_pull(self, now: float) -> None:
        self._next_push_pull_at = now + self.config.push_pull_interval_for(self._live)
        peers = self._random_members(1, None, gossip=False)
        if peers:
            self._streams.append(StreamRequest(peers[0].addr, PushPull(self.snapshot(), False)))

    def _reconnect(self, now: float) -> None:
        """Serf-style: push-pull with a random dead member, probability dead/alive."""
        self._next_reconnect_at = now + self.config.reconnect_interval_s
        dead = [m for m in self._members.values() if m.state == DEAD]
        if dead and self.rng.random() < len(dead) / max(1, self._live):
            m = dead[self.rng.randrange(len(dead))]
            self._streams.append(StreamRequest(m.addr, PushPull(self.snapshot(), False)))

    def _join_attempt(self, now: float) -> None:
        for seed in self._seeds:
            self._streams.append(StreamRequest(seed, PushPull(self.snapshot(), True)))
        self._join_at = now + self._join_backoff_s
        self._join_backoff_s = min(self._join_backoff_s * 2, self.config.join_retry_max_s)
