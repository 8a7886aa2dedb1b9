"""fairshare: a container's share of the daemon's time (token bucket) and lighter-first."""

from __future__ import annotations

import threading
import time

import pytest

from interceptd import fairshare


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    now = [100.0]
    # The worker thread's CPU time runs with the wall clock here: a busy worker.
    monkeypatch.setattr(fairshare.time, "monotonic", lambda: now[0])
    monkeypatch.setattr(fairshare.time, "thread_time", lambda: now[0])
    return now


def test_within_share_no_pause(clock: list[float]) -> None:
    b = fairshare.Budget(share=0.25, burst=0.05)
    for _ in range(100):  # 1 ms of handling every 10 ms: 10% of the time
        clock[0] += 0.010
        assert b.charge(0.001) == 0.0


def test_over_share_pauses_for_the_debt(clock: list[float]) -> None:
    b = fairshare.Budget(share=0.25, burst=0.05)
    clock[0] += 0.1
    # 100 ms of handling in 100 ms: the 50 ms burst is spent, 50 ms of debt is repaid
    # at 0.25 s/s, so 200 ms of pause.
    assert b.charge(0.1) == pytest.approx(0.2)
    b.forgive()  # alone meanwhile: the debt is dropped
    clock[0] += 0.001
    assert b.charge(0.0) == 0.0


def busy_for(slot: fairshare.Slot, clock: list[float], seconds: float, frac: float) -> None:
    """`slot` handles calls `frac` of the time for `seconds` (1 ms steps)."""
    for _ in range(int(seconds * 1000)):
        slot.begin()
        clock[0] += 0.001 * frac
        slot.end(stopping=True)  # no pause: only the busy time matters here
        clock[0] += 0.001 * (1 - frac)


def test_busy_fraction_follows_use_and_decays(clock: list[float]) -> None:
    s = fairshare.Shares().slot(1)
    busy_for(s, clock, 3.0, 0.6)
    assert s.busy(clock[0]) == pytest.approx(0.6, abs=0.05)
    clock[0] += 5 * fairshare.TAU
    assert s.busy(clock[0]) < 0.01


def test_a_light_container_never_waits_and_a_busy_one_lets_it_go_first(
        clock: list[float]) -> None:
    sh = fairshare.Shares()
    noisy, quiet = sh.slot(1), sh.slot(2)
    busy_for(noisy, clock, 2.0, 0.8)
    busy_for(quiet, clock, 0.2, 0.01)
    assert quiet.busy(clock[0]) < fairshare.LIGHT
    # Both are handling a call: the quiet one goes on at once...
    noisy.begin()
    quiet.begin()
    assert quiet.defer() is False
    # ...the noisy one waits (at most YIELD_MAX) until the quiet one's batch ends.
    clock[0] += 1e-9
    released = threading.Event()

    def finish_quiet() -> None:
        time.sleep(0.001)
        quiet.end(stopping=True)
        released.set()

    t = threading.Thread(target=finish_quiet)
    t.start()
    assert noisy.defer() is True
    t.join()
    assert released.is_set() and noisy.deferred == 1
    noisy.end(stopping=True)


def test_no_deferring_between_equals_nor_when_alone(clock: list[float]) -> None:
    sh = fairshare.Shares()
    a, b = sh.slot(1), sh.slot(2)
    for _ in range(1000):  # both busy half the time, interleaved
        busy_for(a, clock, 0.001, 0.5)
        busy_for(b, clock, 0.001, 0.5)
    a.begin()
    assert a.defer() is False  # alone in the handling set
    b.begin()
    assert a.defer() is False and b.defer() is False
    a.end(stopping=True)
    b.end(stopping=True)


def test_over_share_pauses_only_while_another_container_is_active(clock: list[float]) -> None:
    sh = fairshare.Shares()
    noisy, quiet = sh.slot(1), sh.slot(2)
    noisy.begin()
    clock[0] += 0.2  # 200 ms of handling at once: far over its burst
    assert noisy.end() == 0.0  # alone: forgiven
    quiet.begin()
    clock[0] += 0.0001
    quiet.end()
    noisy.begin()
    clock[0] += 0.2
    assert 0 < noisy.end() <= fairshare.MAX_PAUSE
    assert noisy.throttled == 1
    sh.forget(2)
    noisy.close()


def test_no_waiting_for_a_light_call_that_is_blocked_on_something(clock: list[float]) -> None:
    sh = fairshare.Shares()
    noisy, quiet = sh.slot(1), sh.slot(2)
    busy_for(noisy, clock, 2.0, 0.8)
    quiet.begin()  # e.g. waiting for its executor's fork
    clock[0] += 2 * fairshare.YIELD_MAX
    noisy.begin()
    t0 = time.perf_counter()  # (monotonic is the test's clock here)
    assert noisy.defer() is False and time.perf_counter() - t0 < fairshare.YIELD_MAX
    quiet.end(stopping=True)
    noisy.end(stopping=True)
