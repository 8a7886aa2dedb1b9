"""dispatch.Budget: a container's share of the daemon's time (token bucket)."""

from __future__ import annotations

import pytest

from interceptd import dispatch


def test_within_share_no_pause(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = [100.0]
    monkeypatch.setattr(dispatch.time, "monotonic", lambda: clock[0])
    b = dispatch.Budget(share=0.25, burst=0.05)
    for _ in range(100):  # 1 ms of handling every 10 ms: 10% of the time
        clock[0] += 0.010
        assert b.charge(0.001) == 0.0


def test_over_share_pauses_for_the_debt(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = [100.0]
    monkeypatch.setattr(dispatch.time, "monotonic", lambda: clock[0])
    b = dispatch.Budget(share=0.25, burst=0.05)
    clock[0] += 0.1
    # 100 ms of handling in 100 ms: the 50 ms burst is spent, 50 ms of debt is repaid
    # at 0.25 s/s, so 200 ms of pause.
    assert b.charge(0.1) == pytest.approx(0.2)
    b.forgive()  # alone meanwhile: the debt is dropped
    clock[0] += 0.001
    assert b.charge(0.0) == 0.0
