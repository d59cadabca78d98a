"""Gossip tuning knobs, with hashicorp/memberlist's DefaultLANConfig values.

Each default says why it has the value it has. Times are seconds (floats) because the
pure core runs on an injected `now: float`.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class GossipConfig:
    """Everything the SWIM + Lifeguard core and its driver need to know, frozen."""

    # SWIM §3.1 protocol period T': one probe per period keeps per-member load constant
    # in N. memberlist LAN: 1 s.
    probe_interval_s: float = 1.0
    # How long to wait for a direct ack before asking k others (SWIM §3.1). Must be well
    # under the period so the indirect probe fits in it. memberlist LAN: 500 ms.
    probe_timeout_s: float = 0.5
    # k members asked to ping-req on our behalf (SWIM §3.1). memberlist LAN: 3.
    indirect_checks: int = 3
    # Suspicion lasts SuspicionMult * max(1, log10 N) * probe interval at least
    # (memberlist). 4 gives 4 s at N=10, 8 s at N=100, 12 s at N=1000.
    suspicion_mult: int = 4
    # Lifeguard §IV-B: a suspicion starts at max = this * min and shrinks as
    # independent members confirm it. memberlist: 6. 1 disables dynamic suspicion.
    suspicion_max_timeout_mult: int = 6
    # Piggybacked updates are sent RetransmitMult * ceil(log10(N+1)) times
    # (SWIM §4.1 lambda log N). memberlist: 4.
    retransmit_mult: int = 4
    # Dissemination rounds: every 200 ms to 3 random members (memberlist LAN); this is
    # what Serf's convergence model assumes (1.6/2.0/2.2 s at N=10/100/1000).
    gossip_interval_s: float = 0.2
    gossip_nodes: int = 3
    # Dead members still get gossip this long, so they can learn of their death and
    # refute it (memberlist GossipToTheDeadTime, 30 s).
    gossip_to_the_dead_s: float = 30.0
    # Full-state anti-entropy with one random member; scaled up with N above 32 members
    # as memberlist's pushPullScale does. memberlist LAN: 30 s.
    push_pull_interval_s: float = 30.0
    # Lifeguard §IV-A local health multiplier: probe interval/timeout scale up to this
    # factor while we miss our own acks/nacks. memberlist: 8. 1 disables it.
    awareness_max_multiplier: int = 8
    # Lifeguard §IV-A nacks from ping-req relays, so a prober can tell "target down"
    # from "I am slow".
    nacks_enabled: bool = True
    # Lifeguard §IV-C buddy system: a ping to a suspect carries the suspicion.
    buddy_enabled: bool = True
    # No datagram over this (memberlist UDPBufferSize 1400: fits a 1500 MTU).
    max_packet_bytes: int = 1400
    # Bytes kept free in every packet for sealing: the AES-GCM envelope (1+12+16 = 29)
    # and the replay header inside it (8-byte sender tag + 8-byte sequence) = 45.
    crypto_overhead_bytes: int = 48
    # memberlist caps node meta at 512 bytes so an alive message fits any packet.
    max_meta_bytes: int = 512
    # Join: retry seeds with exponential backoff from 1 s up to 30 s until one answers.
    join_retry_initial_s: float = 1.0
    join_retry_max_s: float = 30.0
    # Dead/left members are forgotten after this; long enough for a dashboard to show
    # them and for stale push-pulls not to resurrect them.
    reap_after_s: float = 300.0
    # Serf-style reconnect: every interval, push-pull with one random dead member with
    # probability dead/alive, so halves of a healed partition find each other.
    reconnect_interval_s: float = 30.0

    def without_lifeguard(self) -> GossipConfig:
        """Plain SWIM, the Lifeguard paper's baseline: no LHM, nacks, buddy, dynamic suspicion."""
        return dataclasses.replace(
            self,
            awareness_max_multiplier=1,
            suspicion_max_timeout_mult=1,
            nacks_enabled=False,
            buddy_enabled=False,
        )

    def retransmit_limit(self, n: int) -> int:
        """memberlist: RetransmitMult * ceil(log10(N+1))."""
        return self.retransmit_mult * math.ceil(math.log10(n + 1))

    def suspicion_min_s(self, n: int) -> float:
        """memberlist suspicionTimeout: SuspicionMult * max(1, log10 N) * ProbeInterval."""
        return self.suspicion_mult * max(1.0, math.log10(max(1.0, n))) * self.probe_interval_s

    def push_pull_interval_for(self, n: int) -> float:
        """memberlist pushPullScale: above 32 members, multiply by ceil(log2 N - log2 32) + 1."""
        if n <= 32:
            return self.push_pull_interval_s
        mult = math.ceil(math.log2(n) - math.log2(32)) + 1
        return self.push_pull_interval_s * mult

    @property
    def max_payload_bytes(self) -> int:
        """Plaintext budget of one datagram after the crypto envelope."""
        return self.max_packet_bytes - self.crypto_overhead_bytes
