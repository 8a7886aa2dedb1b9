"""The daemon's main thread once started: STATUS= lines and watchdog pings driven by
the serving loops' beats (interceptd/liveness.py), and the hand-over on request; the
emulated files' start with the FUSE connection a predecessor left (moved out of
daemon.py)."""

from __future__ import annotations

import contextlib
import logging
import os
from typing import TYPE_CHECKING, Any

from interceptd import sdnotify
from interceptd.dispatch import Dispatcher
from interceptd.handlers import HandlerRegistry
from interceptd.handover import FUSE_PREFIX
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


def start_emulation(d: Daemon, dispatcher: Dispatcher, handlers: HandlerRegistry) -> None:
    """The emulated /proc and /sys files (FUSE at <state-dir>/fs): the predecessor's
    connection when it left one (the files bound into containers go on answering),
    else a new mount. Optional: without /dev/fuse the daemon runs on and status says
    emulation is off, so interceptd-runc binds nothing."""
    from interceptd.emulation.daemon import Emulation

    ho = d._handover()
    inherited = ho.fuse()
    em = None
    try:
        em = Emulation(d.state_dir)
        if inherited is not None:
            name, fd, dev = inherited
            inherited = None
            if em.adopt(fd, dev):
                ho.store.keep(name, fd)
            else:  # ended first: the new mount's look at the old one then returns
                os.close(fd)
                ho.store.remove(name)
        em.start()
    except (OSError, ImportError, AttributeError) as e:
        if inherited is not None:
            os.close(inherited[1])
        _no_emulation(d, em, e)
        return
    d._parts["emulation"] = em
    dispatcher.attach_hooks.append(em.attach)
    handlers.on_release(em.release)
    for c in d.registry.list():  # attached before the hook was in place (adopted ones)
        dispatcher.run_attach_hooks(c)
    try:
        em.serve()  # an adopted connection: its containers are registered by now
    except OSError as e:
        dispatcher.attach_hooks.remove(em.attach)
        d._parts.pop("emulation")
        _no_emulation(d, em, e)
        return
    fd, dev = em.connection()
    if not any(n.startswith(FUSE_PREFIX) for n, _ in ho.store.items()):
        ho.store.add(f"{FUSE_PREFIX}{dev}", fd)


def _no_emulation(d: Daemon, em: Any, e: Exception) -> None:
    """The daemon runs on without the emulated files: a connection adopted or mounted
    leaves the store and is ended (its binds fail with ENOTCONN rather than hang)."""
    d._handover().drop_fuse()
    if em is not None:
        with contextlib.suppress(Exception):
            em.stop()
    log.warning("emulated /proc and /sys not started", extra={"fields": {"error": str(e)}})
