"""The daemon's main thread once started: STATUS= lines and watchdog pings driven by
the serving loops' beats (interceptd/liveness.py), and the hand-over on request (moved
out of daemon.py)."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from interceptd import sdnotify
from interceptd.dispatch import Dispatcher
from interceptd.liveness import Liveness

if TYPE_CHECKING:
    from interceptd.daemon import Daemon

log = logging.getLogger("interceptd.daemon")


def watch_pump(dispatcher: Dispatcher, liveness: Liveness) -> None:
    """The decision pump beats once per turn (it turns every PUMP_INTERVAL)."""
    pump_once = dispatcher.pump_once

    def beating() -> int:
        liveness.beat("pump")
        return pump_once()

    liveness.watch("pump")
    dispatcher.pump_once = beating  # type: ignore[method-assign]


def serve(d: Daemon, notifier: sdnotify.Notifier) -> None:
    """The main thread until a stop signal: STATUS= updates and watchdog pings, sent
    only while every serving loop is turning (a stuck one stops the pings)."""
    interval = notifier.watchdog_interval()
    tick = min(1.0, interval) if interval else 1.0
    # Loops turn at least every 0.25 s; one that missed this long is stuck.
    max_age = max(1.0, min(5.0, (notifier.watchdog_timeout or 10.0) / 2))
    last_status = ""
    stuck: list[str] = []
    while not d.stop_event.wait(tick):
        now_stuck = d.liveness.stale(max_age)
        if now_stuck != stuck:
            stuck = now_stuck
            if stuck:
                log.error("serving loop stuck: not pinging the watchdog",
                          extra={"fields": {"loops": ",".join(stuck)}})
        if stuck:
            line = f"stuck: {', '.join(stuck)}"
        else:
            line = d.status_line()
            if interval:
                notifier.watchdog()
        if line != last_status:
            notifier.status(line)
            last_status = line
