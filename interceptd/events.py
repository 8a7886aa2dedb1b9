"""Decision events, the in-process bus they travel on, and the daemon's counters.

Publishers are the seccomp workers and the fast-path pump; they must never wait
for a subscriber, so every subscriber has a bounded queue and a drop counter.
"""

from __future__ import annotations

import collections
import json
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

VERDICTS = ("continue", "errno", "value", "fd")
SOURCES = ("seccomp", "bpf")


@dataclass(frozen=True)
class Event:
    """One decision, in the schema of DESIGN.md ("Events")."""

    time: float
    container: str
    pid: int
    comm: str
    syscall: str
    args: list[int]
    verdict: str
    errno: int
    reason: str
    source: str = "seccomp"
    value: int | None = None
    # The arguments as a handler decoded them (Verdict.details): path, fstype,
    # flags...; `args` stays the raw six values. Left out of the JSON when empty.
    details: Mapping[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        d = {"time": self.time, "container": self.container, "pid": self.pid,
             "comm": self.comm, "syscall": self.syscall, "args": list(self.args),
             "verdict": self.verdict, "errno": self.errno, "reason": self.reason,
             "source": self.source}
        if self.value is not None:
            d["value"] = self.value
        if self.details:
            d["details"] = dict(self.details)
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), separators=(",", ":"))


class Subscription:
    """A bounded queue of events; when full, new events are dropped and counted."""

    def __init__(self, bus: EventBus, maxlen: int) -> None:
        if maxlen < 1:
            raise ValueError("maxlen must be positive")
        self._bus = bus
        self._maxlen = maxlen
        self._queue: collections.deque[Event] = collections.deque()
        self._cond = threading.Condition()
        self.dropped = 0
        self.closed = False

    def _offer(self, ev: Event) -> bool:
        with self._cond:
            if self.closed:
                return True
            if len(self._queue) >= self._maxlen:
                self.dropped += 1
                return False
            self._queue.append(ev)
            self._cond.notify()
            return True

    def get(self, timeout: float | None = None) -> Event | None:
        """The next event, or None after `timeout` seconds or once closed and empty."""
        with self._cond:
            if not self._queue and not self.closed:
                self._cond.wait(timeout)
            return self._queue.popleft() if self._queue else None

    def close(self) -> None:
        with self._cond:
            self.closed = True
            self._cond.notify_all()
        self._bus._unsubscribe(self)

    def __enter__(self) -> Subscription:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class EventBus:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._subs: list[Subscription] = []
        # A plain attribute (kept equal to len(_subs)): publishers test it on
        # every decision, and a property costs more.
        self.subscribers = 0
        self.published = 0
        self.dropped = 0

    def subscribe(self, maxlen: int = 4096) -> Subscription:
        sub = Subscription(self, maxlen)
        with self._lock:
            self._subs = [*self._subs, sub]
            self.subscribers = len(self._subs)
        return sub

    def _unsubscribe(self, sub: Subscription) -> None:
        with self._lock:
            self._subs = [s for s in self._subs if s is not sub]
            self.subscribers = len(self._subs)

    def publish(self, ev: Event) -> None:
        # The list is replaced, never mutated, so iterating a snapshot is safe.
        subs = self._subs
        dropped = sum(0 if s._offer(ev) else 1 for s in subs)
        with self._lock:
            self.published += 1
            self.dropped += dropped

    def publish_many(self, evs: Iterable[Event]) -> None:
        for ev in evs:
            self.publish(ev)


class Counters:
    """Labelled monotonic counters, e.g. `inc("listener_errors", "no fd")`.

    `snapshot()` is what `interceptctl status` shows and what the Prometheus
    exporter will read: {name: {label_value: count}} with "" for unlabelled.
    Hot paths (one per container worker) take a `local()` view: a single-writer
    table without a lock, merged into snapshots and folded back on `release()`.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._values: dict[str, dict[str, int]] = {}
        self._locals: list[LocalCounters] = []

    def inc(self, name: str, label: str = "", n: int = 1) -> None:
        with self._lock:
            _add(self._values, name, label, n)

    def get(self, name: str, label: str = "") -> int:
        return self.snapshot().get(name, {}).get(label, 0)

    def snapshot(self) -> dict[str, dict[str, int]]:
        with self._lock:
            out = {k: dict(v) for k, v in self._values.items()}
            for loc in self._locals:
                # dict() and items() copy in C under the GIL: safe against the
                # single writer adding keys meanwhile.
                for name, bucket in list(loc._values.items()):
                    for label, n in list(bucket.items()):
                        _add(out, name, label, n)
            return out

    def local(self) -> LocalCounters:
        loc = LocalCounters(self)
        with self._lock:
            self._locals.append(loc)
        return loc

    def _release(self, loc: LocalCounters) -> None:
        with self._lock:
            if loc in self._locals:
                self._locals.remove(loc)
                for name, bucket in loc._values.items():
                    for label, n in bucket.items():
                        _add(self._values, name, label, n)


class LocalCounters:
    """Counters written by one thread only (no lock); see Counters.local()."""

    __slots__ = ("_parent", "_values")

    def __init__(self, parent: Counters) -> None:
        self._parent = parent
        self._values: dict[str, dict[str, int]] = {}

    def inc(self, name: str, label: str = "", n: int = 1) -> None:
        bucket = self._values.get(name)
        if bucket is None:
            bucket = self._values[name] = {}
        bucket[label] = bucket.get(label, 0) + n

    def bucket(self, name: str) -> dict[str, int]:
        """The {label: n} table of `name`, for a hot path to bump directly."""
        bucket = self._values.get(name)
        if bucket is None:
            bucket = self._values[name] = {}
        return bucket

    def release(self) -> None:
        self._parent._release(self)


def _add(table: dict[str, dict[str, int]], name: str, label: str, n: int) -> None:
    bucket = table.setdefault(name, {})
    bucket[label] = bucket.get(label, 0) + n


def now() -> float:
    return time.time()
