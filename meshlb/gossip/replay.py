"""Anti-replay window per sender (the IPsec/DTLS sliding window, RFC 4303 §3.4.3).

Every sealed gossip packet carries its sender's tag and a sequence number that only
grows. The receiver keeps, per tag, the highest number seen and a bitmap of the
`size` numbers below it: a number seen before, or older than the window, is a replay.
Numbers may arrive out of order and with gaps (a sender talks to many members, each
sees a subset), so only exact repeats and the too-old are refused.

Restarts: the sender's numbers start at its wall clock in microseconds at boot (see
`envelope.py`), so a restarted node's first number is above everything it sent before
(it sends far fewer than one packet per microsecond): the window simply jumps forward,
and replays of its previous life fall below it.

Memory: at most `max_senders` windows, least recently advanced evicted first. Only
holders of the cluster key can create a window (the check runs after authentication).
"""

from __future__ import annotations

from collections import OrderedDict

DEFAULT_WINDOW = 1024
DEFAULT_MAX_SENDERS = 4096


class _Window:
    __slots__ = ("bits", "top")

    def __init__(self, top: int) -> None:
        self.top = top
        self.bits = 1  # bit i set: number top - i was seen


class ReplayGuard:
    """Accepts each (sender, sequence) once, within a sliding window per sender."""

    __slots__ = ("_mask", "_max_senders", "_windows", "size")

    def __init__(self, size: int = DEFAULT_WINDOW, max_senders: int = DEFAULT_MAX_SENDERS):
        if size < 1 or max_senders < 1:
            raise ValueError("window size and sender cap must be positive")
        self.size = size
        self._mask = (1 << size) - 1
        self._max_senders = max_senders
        self._windows: OrderedDict[bytes, _Window] = OrderedDict()

    def __len__(self) -> int:
        return len(self._windows)

    def accept(self, sender: bytes, seq: int) -> bool:
        """True (and remembered) the first time; False for a repeat or a too-old number."""
        windows = self._windows
        w = windows.get(sender)
        if w is None:
            windows[sender] = _Window(seq)
            if len(windows) > self._max_senders:
                windows.popitem(last=False)
            return True
        if seq > w.top:
            shift = seq - w.top
            w.bits = ((w.bits << shift) | 1) & self._mask if shift < self.size else 1
            w.top = seq
            windows.move_to_end(sender)
            return True
        offset = w.top - seq
        if offset >= self.size or (w.bits >> offset) & 1:
            return False
        w.bits |= 1 << offset
        return True

    def __repr__(self) -> str:
        return f"ReplayGuard(senders={len(self._windows)}, size={self.size})"
