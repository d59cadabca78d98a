"""The one loop every driver runs: step the core, then sleep until its next deadline
or until something new (a packet, a submitted task, a command) kicks it.

Why one: the four drivers (gossip, scheduler, ownership, task deadlines) each wrote
this loop, with small differences in how "no deadline" and a kick that arrives while
stepping were handled. Here a kick during a step is never lost (the event is replaced
before the step runs, so a kick set during it wakes the next sleep at once), and
`None` or infinity means "only a kick wakes me".
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable
from typing import NoReturn

import trio


class Wakeup:
    """A kick that survives until the sleeper next looks (a level, not an edge)."""

    def __init__(self) -> None:
        self._event = trio.Event()
        self._until = math.inf  # the deadline the sleeper waits for now

    def kick(self) -> None:
        self._event.set()

    @property
    def kicked(self) -> bool:
        """A kick came since the last `rearm` (the next sleep returns at once)."""
        return self._event.is_set()

    def nudge(self, deadline: float | None) -> None:
        """Kick only if `deadline` is earlier than the one slept until: a core whose
        next deadline did not move needs no extra step (half the wake-ups of a busy
        gossip member)."""
        if deadline is not None and deadline < self._until:
            self._event.set()

    async def sleep_until(self, deadline: float | None) -> None:
        """Return at `deadline` or at the first kick since the last return."""
        if deadline is None or not math.isfinite(deadline):
            deadline = math.inf
        self._until = deadline
        with trio.move_on_at(deadline):
            await self._event.wait()
        self._until = -math.inf  # stepping: every nudge counts until the next sleep

    def rearm(self) -> None:
        """Forget kicks seen so far (called just before a step reads the core)."""
        self._event = trio.Event()


async def deadline_loop(
    wakeup: Wakeup, step: Callable[[float], Awaitable[float | None]]
) -> NoReturn:
    """Forever: `step(now)` does the work due and returns the next deadline; then
    sleep until that deadline or a kick."""
    while True:
        wakeup.rearm()
        deadline = await step(trio.current_time())
        await wakeup.sleep_until(deadline)
