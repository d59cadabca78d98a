"""Lifeguard local health multiplier (Lifeguard §IV-A, memberlist awareness.go).

A node that misses its own acks and nacks is more likely slow itself than surrounded
by failures, so it stretches its probe interval and probe timeout by (score + 1),
score in [0, max_multiplier - 1]. Failed probes without a nack and refuting a
suspicion about ourselves raise the score; a successful probe lowers it.
"""

from __future__ import annotations


class Awareness:
    """The score and how it scales timeouts."""

    __slots__ = ("max_multiplier", "score")

    def __init__(self, max_multiplier: int) -> None:
        self.max_multiplier = max(1, max_multiplier)
        self.score = 0

    def apply_delta(self, delta: int) -> None:
        """Move the score by `delta`, clamped to [0, max_multiplier - 1]."""
        self.score = min(self.max_multiplier - 1, max(0, self.score + delta))

    def scale(self, timeout_s: float) -> float:
        """`timeout_s` stretched by the current health multiplier."""
        return timeout_s * (self.score + 1)

    def __repr__(self) -> str:
        return f"Awareness(score={self.score}, max={self.max_multiplier})"
