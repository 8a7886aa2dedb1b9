"""Call counts and handling-time histograms of the notification paths.

Written on the daemon's busiest threads (each container's worker, the decision
pump), read only when the metrics endpoint is scraped. Like events.Counters,
every writer thread owns a `LocalTally` (no lock on the write side); the
aggregate merges them at read time and folds a finished thread's table back.
Keys are tuples, never formatted strings: the writer does one dict update.
"""

from __future__ import annotations

import bisect
import threading
from collections.abc import Sequence

# Handling time of one notification, RECV to SEND as the daemon sees it.
# The Python path runs 5-300 µs (README benchmarks); the upper buckets catch
# a stalled handler. In nanoseconds so the hot path compares integers.
DURATION_BUCKETS_NS: tuple[int, ...] = (
    2_000, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000,
    1_000_000, 5_000_000, 25_000_000, 100_000_000, 1_000_000_000,
)

Key = tuple[str, str, str]  # (path, syscall, verdict)


class Histogram:
    """Fixed buckets (non-cumulative counts; the last slot is +Inf) and a sum."""

    __slots__ = ("counts", "sum_ns")

    def __init__(self) -> None:
        self.counts = [0] * (len(DURATION_BUCKETS_NS) + 1)
        self.sum_ns = 0

    def observe_ns(self, ns: int) -> None:
        self.counts[bisect.bisect_left(DURATION_BUCKETS_NS, ns)] += 1
        self.sum_ns += ns

    def merge(self, other: Histogram) -> None:
        for i, n in enumerate(list(other.counts)):
            self.counts[i] += n
        self.sum_ns += other.sum_ns

    def cumulative(self) -> list[int]:
        out, run = [], 0
        for n in self.counts:
            run += n
            out.append(run)
        return out


class LocalTally:
    """One writer thread's counts; see CallTally.local()."""

    __slots__ = ("_parent", "calls", "durations")

    def __init__(self, parent: CallTally) -> None:
        self._parent = parent
        self.calls: dict[Key, int] = {}
        self.durations: dict[str, Histogram] = {}

    def count(self, path: str, syscall: str, verdict: str, n: int = 1) -> None:
        key = (path, syscall, verdict)
        self.calls[key] = self.calls.get(key, 0) + n

    def histogram(self, path: str) -> Histogram:
        h = self.durations.get(path)
        if h is None:
            h = self.durations[path] = Histogram()
        return h

    def release(self) -> None:
        self._parent._release(self)


class CallTally:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._done = LocalTally(self)
        self._locals: list[LocalTally] = []

    def local(self) -> LocalTally:
        loc = LocalTally(self)
        with self._lock:
            self._locals.append(loc)
        return loc

    def _release(self, loc: LocalTally) -> None:
        with self._lock:
            if loc in self._locals:
                self._locals.remove(loc)
                _fold(self._done, [loc])

    def snapshot(self) -> tuple[dict[Key, int], dict[str, Histogram]]:
        """(calls, durations) merged over every writer, finished ones included."""
        out = LocalTally(self)
        with self._lock:
            _fold(out, [self._done, *self._locals])
        return out.calls, out.durations


def _fold(into: LocalTally, sources: Sequence[LocalTally]) -> None:
    for loc in sources:
        # list() copies under the GIL: safe while the single writer adds keys.
        for key, n in list(loc.calls.items()):
            into.calls[key] = into.calls.get(key, 0) + n
        for path, h in list(loc.durations.items()):
            into.histogram(path).merge(h)
