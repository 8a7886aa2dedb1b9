"""How the containers' workers share the daemon (issue 8: one container cannot slow every
other). The workers are threads of one interpreter: whatever one container's handler runs
in Python, every other container's handler waits for, and a thread that has used more
than its share of a CPU is the last the kernel schedules. Three rules, per worker:

A container's *busy time* is its worker's CPU time (what it takes from the other workers:
the interpreter, a CPU), decayed over TAU; waiting for an executor or for a CPU is not.

- a **share** (`Budget`): while another container is active, a container's calls may
  take SHARE of a CPU after a BURST; over it, its worker pauses (its callers wait in the
  kernel, costing nothing). Alone, a container has the whole daemon.
- **lighter first** (`Slot.defer`): before each call, a worker that has been busy (its
  busy fraction LIGHT or more) waits while a container markedly lighter than it is
  handling a call, until that batch is YIELD_MAX old (older, it is blocked on something,
  not running Python, and waiting would gain nothing). The light container's handler
  then runs without a busy one taking the interpreter lock from it at every system call
  it makes (each file it reads gives the lock up; getting it back from a thread running
  Python costs up to the switch interval).
- a short **switch interval** (SWITCH_INTERVAL): a worker woken by a notification gets
  the interpreter from a busy one within 0.5 ms instead of 5 ms.

No worker is niced: a niced worker is preempted while it holds the interpreter lock, and
every other worker then waits for it to get a CPU back (measured: a quiet container's p99
next to a busy one 1.5x at nice 0, 1.9x with the busy worker at nice 10, 2-core VM).

Scheduling only: no decision depends on it, and every call is still answered by its own
container's worker, in order.
"""

from __future__ import annotations

import math
import sys
import threading
import time

SHARE = 0.25
BURST = 0.05
ACTIVE_WINDOW = 0.5  # another container is active if its calls were handled this recently
MAX_PAUSE = 0.1
SWITCH_INTERVAL = 0.0005  # seconds a worker may keep the interpreter lock if another waits
TAU = 0.5  # seconds: the decay of a container's busy time (its recent use of the daemon)
LIGHT = 0.05  # busy fraction under which a worker never defers to anyone
LIGHTER = 0.5  # a container defers to one whose busy fraction is under LIGHTER x its own
YIELD_MAX = 0.005  # seconds a worker defers before one call, at most


class Budget:
    """A container's share of the daemon's time: a token bucket of seconds of handling,
    refilled at `share` seconds per second, holding at most `burst`. `charge(spent)` takes
    what a batch of calls cost and answers how long the container's worker must pause
    before it handles the next (0 while within its share)."""

    def __init__(self, share: float, burst: float) -> None:
        self.share, self.burst = share, burst
        self.tokens = burst
        self.t = time.monotonic()

    def forgive(self) -> None:
        self.tokens = max(self.tokens, 0.0)

    def charge(self, spent: float) -> float:
        now = time.monotonic()
        self.tokens = min(self.burst, self.tokens + (now - self.t) * self.share) - spent
        self.t = now
        return -self.tokens / self.share if self.tokens < 0 else 0.0


class Shares:
    """The daemon's containers' workers, one `Slot` each."""

    def __init__(self, share: float = SHARE, burst: float = BURST) -> None:
        self.share, self.burst = share, burst
        self._cond = threading.Condition(threading.Lock())
        self._slots: dict[int, Slot] = {}
        self._handling: dict[int, Slot] = {}  # slots inside a batch of calls
        self._waiters = 0
        # (end of its last batch, key) of the two containers that ended one last, distinct:
        # the latest other than any given container is one of them.
        self._latest: tuple[tuple[float, int], ...] = ()

    @staticmethod
    def start() -> None:
        sys.setswitchinterval(SWITCH_INTERVAL)

    def slot(self, key: int) -> Slot:
        s = Slot(self, key)
        with self._cond:
            self._slots[key] = s
        return s

    def forget(self, key: int) -> None:
        with self._cond:
            self._slots.pop(key, None)
            if self._handling.pop(key, None) is not None and self._waiters:
                self._cond.notify_all()

    def contended(self, key: int, now: float) -> bool:
        """Whether another container's calls were handled within the last ACTIVE_WINDOW."""
        since = now - ACTIVE_WINDOW
        return any(t > since for t, k in self._latest if k != key)

    def _ended(self, key: int, now: float) -> None:
        latest = self._latest
        if latest and latest[0][1] == key:
            self._latest = ((now, key), *latest[1:])
        else:
            self._latest = ((now, key), *latest[:1])

    def _lighter_handling(self, me: Slot, now: float) -> float:
        """How long `me` should still wait (0: not at all): until the youngest batch of a
        markedly lighter container is YIELD_MAX old. A batch older than that is blocked
        on something (an executor, a fork) rather than running Python: no use waiting."""
        mine, left = me.busy(now), 0.0
        for s in list(self._handling.values()):
            if s is not me and s.busy(now) < LIGHTER * mine:
                left = max(left, s._t0 + YIELD_MAX - now)
        return left


class Slot:
    """One container's worker's bookkeeping: `begin()` when its batch of calls arrives,
    `defer()` before each call, `end()` after the batch (answers how long to pause)."""

    def __init__(self, shares: Shares, key: int) -> None:
        self.shares, self.key = shares, key
        self.budget = Budget(shares.share, shares.burst)
        self._u = 0.0  # busy seconds, decayed with TAU, as of _ut
        self._ut = time.monotonic()
        self._t0 = 0.0  # when its current batch began (monotonic)
        self._c0 = 0.0  # its worker thread's CPU time then
        self.throttled = 0  # pauses over its share
        self.deferred = 0  # calls it let a lighter container go first

    def busy(self, now: float) -> float:
        """Its recent busy fraction (decayed busy seconds / TAU)."""
        return self._u * math.exp(-max(0.0, now - self._ut) / TAU) / TAU

    def begin(self) -> None:
        self._t0 = time.monotonic()
        self._c0 = time.thread_time()
        sh = self.shares
        with sh._cond:
            sh._handling[self.key] = self

    def defer(self) -> bool:
        """Before one call: if this container has been busy, let a markedly lighter one
        that is handling a call finish first (at most YIELD_MAX); True if it waited."""
        sh = self.shares
        if len(sh._handling) < 2:
            return False
        now = time.monotonic()
        if self.busy(now) < LIGHT or sh._lighter_handling(self, now) <= 0:
            return False
        self.deferred += 1
        with sh._cond:
            sh._handling.pop(self.key, None)  # a waiting worker handles nothing
            sh._waiters += 1
            try:
                left = sh._lighter_handling(self, time.monotonic())
                if left > 0:
                    sh._cond.wait_for(
                        lambda: sh._lighter_handling(self, time.monotonic()) <= 0, left)
            finally:
                sh._waiters -= 1
                sh._handling[self.key] = self
        return True

    def end(self, stopping: bool = False) -> float:
        """After a batch: charge it, leave the handling set; the pause the worker owes
        (0: none)."""
        now = time.monotonic()
        # CPU time, not wall time: what it took from the other workers (the interpreter,
        # a CPU); waiting for an executor or for a CPU costs the others nothing.
        spent = max(0.0, time.thread_time() - self._c0)
        self._u = self._u * math.exp(-max(0.0, now - self._ut) / TAU) + spent
        self._ut = now
        sh = self.shares
        with sh._cond:
            sh._handling.pop(self.key, None)
            sh._ended(self.key, now)
            if sh._waiters:
                sh._cond.notify_all()
        pause = self.budget.charge(spent)
        if pause > 0 and not stopping:
            if sh.contended(self.key, now):
                # Over its share while others use the daemon too: its own callers wait
                # (their calls queue in the kernel and in its channel) until it is back
                # in budget.
                self.throttled += 1
                return min(pause, MAX_PAUSE)
            self.budget.forgive()  # alone: the daemon's time is all its own
        return 0.0

    def close(self) -> None:
        self.shares.forget(self.key)
