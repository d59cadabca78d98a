"""SWIM + Lifeguard membership as a pure, sans-I/O state machine.

Feed it `receive(packet, src, now)` and `tick(now)`; take `datagrams_to_send()` (UDP)
and `streams_to_send()` (push-pull, over a stream the driver chooses); sleep until
`next_deadline()`. No clock, socket, task library or OS randomness here: `now`, the
`random.Random`, and (with a cluster key) the nonce source and boot epoch are
injected, so the same inputs always give the same outputs — the simulator passes
seeded ones, the driver the OS's and its wall clock.

`Membership` is a facade that composes one part per concern and routes to them:
- `MemberTable` (table.py): the records, the probe order, random picks;
- `UpdateRules` (rules.py): alive/suspect/dead/merge, with the `SuspicionTracker`
  (suspicion.py) and the reap timers;
- `Prober` (probe.py): probes, ping-req relays, nacks (SWIM §3.1, Lifeguard §IV-A/C);
- `Disseminator` (dissemination.py): piggybacking, gossip rounds, push-pull, join;
- `PacketCodec` (codec.py): the wire format, sealed and replay-checked with a key.
Incoming messages go through a dispatch table by message type.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from meshlb.gossip.awareness import Awareness
from meshlb.gossip.codec import PacketCodec
from meshlb.gossip.config import GossipConfig
from meshlb.gossip.crypto import Keyring
from meshlb.gossip.dissemination import Disseminator
from meshlb.gossip.drops import DropCounter
from meshlb.gossip.envelope import Envelope
from meshlb.gossip.events import Event, JoinSucceeded
from meshlb.gossip.messages import (
    LEFT,
    Ack,
    Addr,
    Alive,
    Datagram,
    Dead,
    MemberState,
    Message,
    Nack,
    Ping,
    PingReq,
    PushPull,
    StreamRequest,
    Suspect,
)
from meshlb.gossip.probe import Prober
from meshlb.gossip.rules import UpdateRules
from meshlb.gossip.table import MemberTable, MemberView
from meshlb.gossip.timers import Due, run_due

M = TypeVar("M", bound=Message)
Handler = Callable[[Any, Addr, float], None]

_STATS = ("refutes", "address_conflicts", "messages_in", "dropped_malformed",
          "dropped_oversize", "dropped_version", "dropped_auth", "dropped_replay",
          "dropped_misdirected", "probes", "probe_failures", "indirect_probes",
          "nacks_received", "push_pulls")  # fmt: skip


class Membership:
    """One node's view of the group and the protocol that maintains it."""

    def __init__(
        self,
        config: GossipConfig,
        node_id: str,
        addr: Addr,
        meta: bytes,
        rng: random.Random,
        now: float,
        keyring: Keyring | None = None,
        *,
        nonces: Callable[[int], bytes] | None = None,
        boot_epoch_us: int | None = None,
    ) -> None:
        if len(meta) > config.max_meta_bytes:
            raise ValueError(f"meta is {len(meta)} bytes, more than {config.max_meta_bytes}")
        self.config = config
        self.node_id = node_id
        self.rng = rng
        self._stats: dict[str, int] = dict.fromkeys(_STATS, 0)
        self._drops = DropCounter()
        self._events: list[Event] = []
        self.awareness = Awareness(config.awareness_max_multiplier)
        self._table = table = MemberTable(node_id, addr, meta, rng, now)
        self._dissem = dissem = Disseminator(config, table, rng, now)
        self._prober = prober = Prober(
            config, table, dissem, self.awareness, self._stats, rng, now, self.on_suspect
        )
        self._rules = rules = UpdateRules(
            config, table, dissem, self.awareness, self._events, self._stats,
            prober.send_last_chance,
        )  # fmt: skip
        envelope = _envelope(keyring, node_id, nonces, boot_epoch_us, now)
        self._codec = PacketCodec(config.max_packet_bytes, envelope, self._stats, self._drops)
        # Timer heaps in tie-break order (as one heap keyed by (time, kind) would be).
        self._timers: tuple[Due, ...] = (rules.suspicions.timers, prober.relay_timers,
                                         rules.reaps)  # fmt: skip
        self._handlers: dict[type, Handler] = {}
        self._on(Ping, prober.on_ping)
        self._on(Ack, prober.on_ack)
        self._on(Nack, prober.on_nack)
        self._on(PingReq, prober.on_ping_req)
        self._on(Alive, lambda a, _src, now: rules.on_alive(a, now))
        self._on(Suspect, lambda s, _src, now: rules.on_suspect(s, now))
        self._on(Dead, lambda d, _src, now: rules.on_dead(d, now))

    def _on(self, cls: type[M], handler: Callable[[M, Addr, float], None]) -> None:
        """Register the handler of one message type (typed: cls and handler agree)."""
        self._handlers[cls] = handler

    # ---- commands --------------------------------------------------------------

    def join(self, seeds: Sequence[Addr], now: float) -> None:
        """Push-pull with every seed now, retried with backoff until one answers."""
        self._dissem.join(seeds, now)

    def update_meta(self, meta: bytes, now: float) -> None:
        """Adopt new metadata: bump our incarnation and gossip an alive message."""
        if len(meta) > self.config.max_meta_bytes:
            raise ValueError(f"meta is {len(meta)} bytes, more than {self.config.max_meta_bytes}")
        me = self._table.me
        me.meta = meta
        me.incarnation += 1
        self._table.version += 1
        self._dissem.broadcast(Alive(me.node, me.incarnation, me.addr, me.meta), now)

    def leave(self, now: float) -> None:
        """Graceful leave: gossip Dead(by=self) so peers mark us `left`; stop probing."""
        if self.leaving:
            return
        me = self._table.me
        self._rules.set_state(me, LEFT, now)
        self._table.version += 1
        self._prober.stop()
        self._dissem.broadcast(Dead(me.node, me.incarnation, me.node), now)
        self._dissem.gossip_now(now)

    def preload(self, states: tuple[MemberState, ...], now: float) -> None:
        """Know these alive members from the start, silently (for simulations)."""
        self._table.preload(states, now)

    def on_alive(self, a: Alive, now: float) -> None:
        self._rules.on_alive(a, now)

    def on_suspect(self, s: Suspect, now: float) -> None:
        self._rules.on_suspect(s, now)

    def on_dead(self, d: Dead, now: float) -> None:
        self._rules.on_dead(d, now)

    def merge(self, states: tuple[MemberState, ...], now: float) -> None:
        self._rules.merge(states, now)

    # ---- inputs ----------------------------------------------------------------

    def receive(self, packet: bytes | Sequence[Message], src: Addr, now: float) -> None:
        """Handle one datagram (bytes, or already-decoded messages). Never raises on input."""
        if isinstance(packet, bytes | bytearray | memoryview):
            messages = self._codec.decode(bytes(packet))
            if messages is None:
                return
        else:
            messages = packet
        self._stats["messages_in"] += len(messages)
        handlers = self._handlers
        for msg in messages:
            handlers[type(msg)](msg, src, now)

    def handle_push_pull(self, request: PushPull | bytes, src: Addr, now: float) -> PushPull | None:
        """Answer a push-pull request: merge the peer's state, reply with ours (merged)."""
        pp = self._codec.decode_push_pull(request) if isinstance(request, bytes) else request
        if pp is None:
            return None
        self._stats["push_pulls"] += 1
        self._rules.merge(pp.states, now)
        return PushPull(self._table.snapshot(), False)

    def receive_push_pull(self, reply: PushPull | bytes, src: Addr, now: float) -> None:
        """The answer to our push-pull request (a join succeeds with the first one)."""
        pp = self._codec.decode_push_pull(reply) if isinstance(reply, bytes) else reply
        if pp is None:
            return
        self._rules.merge(pp.states, now)
        if self._dissem.joined_via():
            self._events.append(JoinSucceeded(src, len(self._table)))

    def tick(self, now: float) -> None:
        """Run every timer that is due at `now`."""
        run_due(self._timers, now)
        leaving = self.leaving
        if not leaving:
            self._prober.tick(now)
        self._dissem.tick(now, leaving)

    # ---- outputs ---------------------------------------------------------------

    def next_deadline(self) -> float:
        leaving = self.leaving
        t = min(self._dissem.next_deadline(leaving), self._prober.next_deadline(leaving))
        rules = self._rules
        return min(t, rules.suspicions.timers.next_at(), self._prober.relay_timers.next_at(),
                   rules.reaps.next_at())  # fmt: skip

    def datagrams_to_send(self) -> list[Datagram]:
        return self._dissem.datagrams_to_send()

    def streams_to_send(self) -> list[StreamRequest]:
        return self._dissem.streams_to_send()

    def encode(self, datagram: Datagram) -> bytes:
        """Wire bytes of a datagram (sealed when a keyring is set)."""
        return self._codec.encode(datagram)

    def encode_push_pull(self, pp: PushPull) -> bytes:
        return self._codec.encode_push_pull(pp)

    def events(self) -> list[Event]:
        """Events since the last call (drained)."""
        out = list(self._events)
        self._events.clear()  # the rules append to this very list
        return out

    # ---- queries ---------------------------------------------------------------

    @property
    def leaving(self) -> bool:
        return self._table.leaving

    @property
    def incarnation(self) -> int:
        return self._table.me.incarnation

    @property
    def joined(self) -> bool:
        """True once another member is known alive."""
        return self._table.live > (0 if self.leaving else 1)

    def members(self) -> list[MemberView]:
        """All known members, this node first."""
        return self._table.members()

    def member(self, node_id: str) -> MemberView | None:
        return self._table.member(node_id)

    def snapshot(self) -> tuple[MemberState, ...]:
        return self._table.snapshot()

    def broadcast_pending(self, node_id: str) -> bool:
        return self._dissem.pending_for(node_id) is not None

    def stats(self) -> dict[str, int]:
        s = dict(self._stats)
        s.update(members_live=self._table.live, members_known=len(self._table))
        s.update(awareness=self.awareness.score, incarnation=self._table.me.incarnation)
        return s

    def dropped(self) -> dict[str, int]:
        """Datagrams and push-pull frames this core threw away, by reason (all present)."""
        return self._drops.snapshot()


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
