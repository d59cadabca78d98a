"""`WaitRecorder` keeps a sorted copy of its window so a snapshot does not sort
(placement reads the node's stats on every request): the percentiles must be exactly
those of the last `RECENT_WAITS` waits, duplicates and eviction included."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from meshlb.sched.stats import RECENT_WAITS, WaitRecorder, percentile


@given(st.lists(st.sampled_from([0.0, 0.001, 0.5, 2.0]) | st.floats(0, 100), max_size=2600))
def test_snapshot_is_the_percentiles_of_the_last_window(waits: list[float]) -> None:
    recorder = WaitRecorder()
    for w in waits:
        recorder.add(w)
    window = sorted(waits[-RECENT_WAITS:])
    snap = recorder.snapshot()
    assert snap.samples == len(window)
    assert snap.p50_ms == percentile(window, 0.50) * 1000.0
    assert snap.p99_ms == percentile(window, 0.99) * 1000.0
