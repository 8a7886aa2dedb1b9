"""Liveness of the daemon's serving loops, for systemd's watchdog.

Each loop that must keep turning (the listener's and control socket's accept loops,
the decision pump) calls `beat(name)` once per iteration; they all wake at least every
quarter second even when idle (their accept timeouts, the pump interval). The main
thread pings the watchdog only while every loop has beaten recently, so a loop stuck in
a deadlock or a blocking call stops the pings and systemd restarts the service; a timer
thread pinging on its own would keep a wedged daemon alive.

Debug hook (tests only): with `$INTERCEPTD_DEBUG_STALL_DIR` set, a loop whose name is a
file in that directory blocks inside `beat` until the file is removed: a real stuck
loop, in its own thread.
"""

from __future__ import annotations

import os
import threading
import time


class Liveness:
    def __init__(self, stall_dir: str | None = None) -> None:
        self._last: dict[str, float] = {}
        self._lock = threading.Lock()
        self._stall_dir = stall_dir if stall_dir is not None else os.environ.get(
            "INTERCEPTD_DEBUG_STALL_DIR") or None

    def watch(self, name: str) -> None:
        """Start watching `name` (counts as a beat now)."""
        self.beat(name)

    def forget(self, name: str) -> None:
        with self._lock:
            self._last.pop(name, None)

    def beat(self, name: str) -> None:
        if self._stall_dir is not None:
            while os.path.exists(os.path.join(self._stall_dir, name)):
                time.sleep(0.05)
        with self._lock:
            self._last[name] = time.monotonic()

    def stale(self, max_age: float) -> list[str]:
        """The watched loops that have not beaten for `max_age` seconds."""
        now = time.monotonic()
        with self._lock:
            return sorted(n for n, t in self._last.items() if now - t > max_age)
