"""Capacity limits of one host, and the sliding 60-s windows that enforce rpm and tpm.

Pure: no clock reads. Every method that depends on time takes `now` (seconds, any
monotonic origin).

Window semantics (the invariant the scheduler's proof rests on): a charge made at
time `at` counts in the window at `now` while `now < at + WINDOW_S`, i.e. the window
at `now` is the half-open interval `(now - 60, now]`. The expiry test and the
deadline the scheduler sleeps until use the very same expression (`at + WINDOW_S`),
so waking at a deadline always finds the charge gone (no float off-by-one).
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

WINDOW_S = 60.0
"""Length of the rpm/tpm sliding window: "per minute" means any 60 s, not clock minutes."""


@dataclass(frozen=True, slots=True)
class Limits:
    """What one host may do; `None` means unlimited.

    Validated on construction so a scheduler never runs with a limit it cannot honour
    (e.g. `rpm=0` would block forever; `aging_s=0` would divide by zero).
    `aging_s=math.inf` turns aging off (strict priority, FIFO within a level).
    """

    max_concurrency: int | None = 4  # in-flight requests to the local Ollama
    rpm: int | None = None  # starts per sliding 60 s
    tpm: int | None = None  # tokens per sliding 60 s
    max_queue: int = 1000  # queued (not running) tasks
    aging_s: float = 30.0  # a waiting task gains +1 priority level per aging_s
    busy_backoff_s: float = 10.0  # after "server busy", concurrency is lowered this long

    def __post_init__(self) -> None:
        for name in ("max_concurrency", "rpm", "tpm"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be at least 1 or unset (unlimited), got {value}")
        if self.max_queue < 0:
            raise ValueError(f"max_queue must be 0 or more, got {self.max_queue}")
        if not self.aging_s > 0:  # also rejects NaN
            raise ValueError(f"aging_s must be a positive number of seconds, got {self.aging_s}")
        if not (self.busy_backoff_s >= 0 and math.isfinite(self.busy_backoff_s)):
            raise ValueError(
                f"busy_backoff_s must be a finite number of seconds >= 0, got {self.busy_backoff_s}"
            )


class Charge:
    """One entry of a window: `amount` charged at time `at`.

    Mutable on purpose: the scheduler keeps a reference per running task so that a
    refund or a reconcile is O(1) instead of a search. `in_window` turns False once
    the window has expired the charge; after that, changing it has no effect on totals.
    """

    __slots__ = ("amount", "at", "in_window")

    def __init__(self, at: float, amount: int) -> None:
        self.at = at
        self.amount = amount
        self.in_window = True

    def __repr__(self) -> str:
        return f"Charge(at={self.at!r}, amount={self.amount}, in_window={self.in_window})"


class SlidingWindow:
    """Sum of charges made in the last `WINDOW_S` seconds; amounts can be corrected later.

    Invariant: `self._total == sum(c.amount for c in self._charges)`, and every charge
    in `_charges` has `in_window`. Charges are appended in non-decreasing `at`, so
    expiry pops from the left: amortised O(1) per charge.
    """

    __slots__ = ("_charges", "_total")

    def __init__(self) -> None:
        self._charges: deque[Charge] = deque()
        self._total = 0

    def __len__(self) -> int:
        return len(self._charges)

    @property
    def total(self) -> int:
        """Sum as of the last `expire` (no clock: callers expire first)."""
        return self._total

    def expire(self, now: float) -> None:
        """Drop the charges that have left the window at `now`."""
        charges = self._charges
        while charges and charges[0].at + WINDOW_S <= now:
            gone = charges.popleft()
            gone.in_window = False
            self._total -= gone.amount

    def used(self, now: float) -> int:
        """Total charged in `(now - 60, now]`."""
        self.expire(now)
        return self._total

    def charge(self, amount: int, now: float) -> Charge:
        """Add `amount` at `now`; keep the returned handle to correct it later."""
        if self._charges and now < self._charges[-1].at:
            raise ValueError(f"time went backwards: {now} < {self._charges[-1].at}")
        entry = Charge(now, amount)
        self._charges.append(entry)
        self._total += amount
        return entry

    def adjust(self, entry: Charge, amount: int) -> None:
        """Replace a charge's amount (refund: 0; reconcile: the true count).

        A charge already expired stays out of every future window, so only its record
        changes: the tokens are attributed to the instant the task started.
        """
        if entry.in_window:
            self._total += amount - entry.amount
        entry.amount = amount

    def free_at(self, excess: int) -> float | None:
        """Earliest time at which at least `excess` units will have expired, no new charges.

        O(k) in the number of oldest charges needed to cover `excess` — typically one,
        because a task is blocked by at most about one task's worth of charges.
        None if the window cannot free that much (only possible if `excess` > total).
        """
        if excess <= 0:
            return -math.inf
        freed = 0
        for entry in self._charges:
            freed += entry.amount
            if freed >= excess:
                return entry.at + WINDOW_S
        return None


class RateWindow:
    """Starts per sliding 60 s (the rpm limit). A refunded start counts as 0."""

    __slots__ = ("_window",)

    def __init__(self) -> None:
        self._window = SlidingWindow()

    def used(self, now: float) -> int:
        return self._window.used(now)

    def fits(self, rpm: int | None, now: float) -> bool:
        """True if one more start at `now` keeps every 60-s window at or below `rpm`."""
        return rpm is None or self._window.used(now) + 1 <= rpm

    def record(self, now: float) -> Charge:
        return self._window.charge(1, now)

    def refund(self, entry: Charge) -> None:
        self._window.adjust(entry, 0)

    def fits_at(self, rpm: int | None) -> float | None:
        """Earliest time one more start fits (call after `used(now)`): -inf if it fits now."""
        if rpm is None:
            return -math.inf
        return self._window.free_at(self._window.total + 1 - rpm)


class TokenWindow:
    """Tokens per sliding 60 s (the tpm limit): the estimate is charged at start and
    replaced by the true count (prompt_eval_count + eval_count) at finish, so after
    reconcile the window holds true numbers."""

    __slots__ = ("_window",)

    def __init__(self) -> None:
        self._window = SlidingWindow()

    def used(self, now: float) -> int:
        return self._window.used(now)

    def fits(self, tpm: int | None, est_tokens: int, now: float) -> bool:
        """True if charging `est_tokens` at `now` keeps the window's charges <= `tpm`."""
        return tpm is None or self._window.used(now) + est_tokens <= tpm

    def record(self, est_tokens: int, now: float) -> Charge:
        return self._window.charge(est_tokens, now)

    def reconcile(self, entry: Charge, actual_tokens: int) -> None:
        self._window.adjust(entry, actual_tokens)

    def refund(self, entry: Charge) -> None:
        self._window.adjust(entry, 0)

    def fits_at(self, tpm: int | None, est_tokens: int) -> float | None:
        """Earliest time `est_tokens` fits (call after `used(now)`): -inf if it fits now."""
        if tpm is None:
            return -math.inf
        return self._window.free_at(self._window.total + est_tokens - tpm)
