"""The one deadline-or-kick loop (`meshlb.drivers.wakeup`): deadlines, kicks, nudges."""

from __future__ import annotations

import trio
from trio.testing import MockClock

from meshlb.drivers.wakeup import Wakeup, deadline_loop


async def test_steps_at_each_deadline_and_at_once_on_a_kick(autojump_clock: MockClock) -> None:
    wakeup, steps = Wakeup(), []

    async def step(now: float) -> float | None:
        steps.append(now)
        return now + 10.0

    async with trio.open_nursery() as nursery:
        nursery.start_soon(deadline_loop, wakeup, step)
        await trio.sleep(25.0)
        assert steps == [0.0, 10.0, 20.0]
        wakeup.kick()
        await trio.sleep(0.001)
        assert steps == [0.0, 10.0, 20.0, 25.0]  # kicked: not waiting for 30
        nursery.cancel_scope.cancel()


async def test_a_kick_during_a_step_is_not_lost(autojump_clock: MockClock) -> None:
    wakeup, steps = Wakeup(), []

    async def step(now: float) -> float | None:
        steps.append(now)
        if len(steps) == 1:
            wakeup.kick()  # something new arrived while the core was being stepped
        return None  # only a kick wakes the loop

    async with trio.open_nursery() as nursery:
        nursery.start_soon(deadline_loop, wakeup, step)
        await trio.sleep(100.0)
        assert steps == [0.0, 0.0]  # the kick made a second step, nothing after
        nursery.cancel_scope.cancel()


async def test_a_nudge_wakes_only_for_an_earlier_deadline(autojump_clock: MockClock) -> None:
    wakeup, steps = Wakeup(), []

    async def step(now: float) -> float | None:
        steps.append(now)
        return 50.0

    async with trio.open_nursery() as nursery:
        nursery.start_soon(deadline_loop, wakeup, step)
        await trio.sleep(1.0)
        wakeup.nudge(60.0)  # later than the 50 slept for: no step
        wakeup.nudge(None)
        await trio.sleep(1.0)
        assert steps == [0.0]
        wakeup.nudge(5.0)  # earlier: step now, and the step says what is next
        await trio.sleep(0.001)
        assert steps == [0.0, 2.0]
        nursery.cancel_scope.cancel()
