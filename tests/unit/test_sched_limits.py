"""Limits validation and the sliding 60-s windows (rpm starts, tpm tokens with reconcile)."""

from __future__ import annotations

import math

import pytest

from meshlb.sched.limits import WINDOW_S, Limits, RateWindow, SlidingWindow, TokenWindow


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"max_concurrency": 0}, "max_concurrency"),
        ({"rpm": 0}, "rpm"),
        ({"tpm": -5}, "tpm"),
        ({"max_queue": -1}, "max_queue"),
        ({"aging_s": 0.0}, "aging_s"),
        ({"aging_s": math.nan}, "aging_s"),
        ({"busy_backoff_s": -1.0}, "busy_backoff_s"),
        ({"busy_backoff_s": math.inf}, "busy_backoff_s"),
    ],
)
def test_limits_reject_values_that_cannot_be_honoured(
    kwargs: dict[str, float], fragment: str
) -> None:
    with pytest.raises(ValueError, match=fragment):
        Limits(**kwargs)  # type: ignore[arg-type]


def test_limits_defaults_and_unlimited() -> None:
    limits = Limits()
    assert (limits.max_concurrency, limits.rpm, limits.tpm, limits.max_queue) == (
        4,
        None,
        None,
        1000,
    )
    Limits(max_concurrency=None, aging_s=math.inf)  # unlimited and no aging are valid


def test_window_is_half_open_60_s() -> None:
    window = SlidingWindow()
    window.charge(5, 10.0)
    assert window.used(10.0) == 5
    assert window.used(10.0 + WINDOW_S - 1e-9) == 5
    assert window.used(10.0 + WINDOW_S) == 0  # at exactly +60 s the charge is gone


def test_window_rejects_time_going_backwards() -> None:
    window = SlidingWindow()
    window.charge(1, 5.0)
    with pytest.raises(ValueError, match="backwards"):
        window.charge(1, 4.0)


def test_rate_window_counts_starts_and_refunds() -> None:
    rate = RateWindow()
    first = rate.record(0.0)
    rate.record(1.0)
    assert rate.used(1.0) == 2
    assert not rate.fits(2, 1.0)
    assert rate.fits(3, 1.0)
    assert rate.fits(None, 1.0)
    rate.refund(first)
    assert rate.used(1.0) == 1
    assert rate.fits(2, 1.0)


def test_rate_window_fits_at_is_when_the_oldest_needed_start_expires() -> None:
    rate = RateWindow()
    for at in (0.0, 10.0, 20.0):
        rate.record(at)
    rate.used(30.0)
    assert rate.fits_at(3) == 0.0 + WINDOW_S
    assert rate.fits_at(2) == 10.0 + WINDOW_S  # two must expire
    assert rate.fits_at(4) == -math.inf
    assert rate.fits_at(None) == -math.inf


def test_token_window_reconcile_holds_true_counts() -> None:
    tokens = TokenWindow()
    charge = tokens.record(100, 0.0)
    tokens.record(50, 1.0)
    assert tokens.used(2.0) == 150
    tokens.reconcile(charge, 300)
    assert tokens.used(2.0) == 350
    assert not tokens.fits(400, 51, 2.0)
    assert tokens.fits(400, 50, 2.0)


def test_reconcile_after_expiry_changes_no_future_window() -> None:
    tokens = TokenWindow()
    old = tokens.record(100, 0.0)
    tokens.record(10, 30.0)
    assert tokens.used(61.0) == 10  # the first charge expired
    tokens.reconcile(old, 10_000)
    assert tokens.used(61.0) == 10


def test_token_fits_at_walks_only_what_must_expire() -> None:
    tokens = TokenWindow()
    tokens.record(60, 0.0)
    tokens.record(30, 5.0)
    tokens.record(10, 9.0)
    tokens.used(10.0)
    assert tokens.fits_at(100, 0) == -math.inf
    assert tokens.fits_at(100, 50) == 0.0 + WINDOW_S  # frees 60 >= 50
    assert tokens.fits_at(100, 90) == 5.0 + WINDOW_S  # must free 90: 60 + 30
    assert tokens.fits_at(100, 95) == 9.0 + WINDOW_S  # must free 95: all three
    assert tokens.fits_at(50, 100) is None  # can never fit
