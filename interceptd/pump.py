"""The decisions the C side made without Python (the fast path's verdict table, the native
mount helper), drained from the engine's ring by the dispatcher's pump thread every
PUMP_INTERVAL: counted (decisions, call tallies, answers lost to a gone target), each new
caller's comm cached on its container, and published as events like the Python path's."""

from __future__ import annotations

import collections
import time
from collections.abc import Callable, Mapping, Sequence

from interceptd.events import Counters, Event, EventBus
from interceptd.registry import Container
from interceptd.seams import DecisionRecord
from interceptd.tally import LocalTally

PUMP_INTERVAL = 0.075


class DecisionPump:
    def __init__(self, *, verdict_of_action: Mapping[int, str], bus: EventBus,
                 counters: Counters, calls: LocalTally, name_of: Callable[[int], str],
                 comm_of: Callable[[int], str], containers: Mapping[int, Container],
                 container_ids: Mapping[int, str], is_rule: Callable[[int], bool]) -> None:
        self._verdict_of_action = verdict_of_action
        self.bus, self.counters, self.calls = bus, counters, calls
        self._name_of, self._comm_of = name_of, comm_of
        self._containers, self._ids = containers, container_ids  # by cookie, kept current
        self._is_rule = is_rule

    def publish(self, decisions: Sequence[DecisionRecord]) -> int:
        if not decisions:
            return 0
        publish = self.bus.subscribers > 0
        tally: collections.Counter[str] = collections.Counter()
        gone = 0
        calls = self.calls
        for d in decisions:
            verdict = self._verdict_of_action.get(d.action, "errno")
            tally[verdict] += 1
            # The native helper's records say why; the daemon's fast path's do not.
            path = "native" if d.reason else "fast"
            calls.count(path, self._name_of(d.nr), verdict)
            handled = d.handling_ns  # receive to answer, as the C side measured it
            if handled > 0:
                calls.histogram(path).observe_ns(handled)
            if d.send_errno:
                gone += 1
            # Every new pid's comm is cached on its container, events or not, so
            # later events still name a caller that has exited meanwhile.
            c = self._containers.get(d.cookie)
            if c is not None:
                comm = c.comms.get(d.pid)
                if comm is None and d.comm:
                    # read by the core right after answering: the caller may be gone now
                    comm = c.comm(d.pid, lambda _pid, name=d.comm: name)
                if comm is None:
                    comm = c.comm(d.pid, self._comm_of)
            else:
                comm = ""
            if not publish:
                continue
            reason = d.reason  # the native path says why
            if not reason:
                reason = "rule" if self._is_rule(d.nr) else "unhandled"
            self.bus.publish(Event(
                time=d.ns_time / 1e9 if d.ns_time else time.time(),
                container=self._ids.get(d.cookie, f"cookie:{d.cookie}"),
                pid=d.pid, comm=comm or self._comm_of(d.pid), syscall=self._name_of(d.nr),
                args=list(d.args),
                verdict=verdict, errno=int(d.value) if verdict == "errno" else 0,
                reason=reason, source="seccomp",
                value=int(d.value) if verdict == "value" else None,
            ))
        for verdict, n in tally.items():
            self.counters.inc("decisions", verdict, n)
        if gone:
            self.counters.inc("respond_errors", "target gone", gone)
        return len(decisions)
