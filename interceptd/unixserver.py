"""The daemon's root-only Unix stream endpoints (listener.py's seccomp.sock, control.py's
control.sock, runtime/service.py's runtime.sock): their sockets and the accept loop they
share.

Leader/followers: up to `spare` threads wait in accept(); the one that takes a connection
serves it itself (no hand-off), after starting more acceptors if it was the last idle
one, and then goes back to accept() unless `spare` others already wait there. Sequential
clients thus start no thread and a client never waits for one to start; only a burst
starts threads. Every acceptor wakes each `tick` seconds (accept's timeout) to see a stop
and to call `on_tick` (the daemon's watchdog liveness).

A hand-over (interceptd/reexec.py) calls `quiesce()`: accepting stops but the socket
stays open and bound, so clients connecting from then on wait in its backlog for the
successor, which gets the listening fd and passes it to `start(sock)`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
import time
from collections.abc import Callable

log = logging.getLogger("interceptd.unixserver")


def listen_private(path: str, backlog: int) -> socket.socket:
    """A listening AF_UNIX socket at `path`, 0600 from the moment it exists: the umask
    is set around bind, so no other user can connect in the instant before a chmod."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    try:
        old = os.umask(0o177)
        try:
            sock.bind(path)
        finally:
            os.umask(old)
        os.chmod(path, 0o600)
        sock.listen(backlog)
    except BaseException:
        sock.close()
        raise
    return sock


def close_and_unlink(sock: socket.socket | None, path: str) -> None:
    if sock is not None:
        sock.close()
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


# After a failed accept (EMFILE, ENOBUFS...): a pause, so the loop does not spin.
ACCEPT_RETRY = 0.05


class UnixServer:
    """One listening AF_UNIX socket at `path` (0600); subclasses serve a connection in
    `handle` and may refuse one over `max_clients` in `refuse` (the server closes it in
    both cases)."""

    name = "unix"  # the threads' name
    backlog = 32
    tick = 0.25
    spare = 2  # idle acceptors kept
    max_clients: int | None = 32  # connections served at once; more are refused
    join_wait = 3.0  # how long quiesce() and stop() wait for each group of threads
    # quiesce() waits for the connections being served (False: only for the acceptors;
    # a connection may last long, the one asking for the hand-over included).
    drain_on_quiesce = True
    # stop() shuts down the read side of the connections being served, waking a thread
    # blocked reading a client's next request.
    wake_on_stop = False

    def __init__(self, path: str) -> None:
        self.path = path
        # Called once per accept-loop turn (the daemon's watchdog liveness).
        self.on_tick: Callable[[], None] | None = None
        self._stop = threading.Event()
        self._sock: socket.socket | None = None
        self._slots = (threading.BoundedSemaphore(self.max_clients)
                       if self.max_clients is not None else None)
        self._lock = threading.Lock()
        self._idle = 0
        self._threads: set[threading.Thread] = set()  # idle or serving
        self._serving: dict[threading.Thread, socket.socket] = {}

    @property
    def sock(self) -> socket.socket | None:
        return self._sock

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    # -- what a server does with a connection ----------------------------------------

    def handle(self, conn: socket.socket) -> None:
        raise NotImplementedError

    def refuse(self, conn: socket.socket) -> None:
        """A connection over `max_clients` (closed after this)."""

    def accept_failed(self, e: OSError) -> None:
        log.error("accept failed", extra={"fields": {"path": self.path, "error": str(e)}})

    # -- life cycle --------------------------------------------------------------------

    def bind(self, sock: socket.socket | None = None) -> None:
        """Listen now, on `sock` (a listening socket a predecessor left) or on a new one at
        path; serve from start(). Clients connecting meanwhile wait in the backlog."""
        if self._sock is not None:
            return
        if sock is None:
            sock = listen_private(self.path, self.backlog)
        sock.settimeout(self.tick)  # lets the acceptors see a stop
        self._sock = sock

    def start(self, sock: socket.socket | None = None) -> None:
        """Serve `sock` (a listening socket a predecessor left) or the bound one."""
        self.bind(sock)
        self._replenish()

    def quiesce(self, wait: float | None = None) -> None:
        """Stop accepting, the socket kept open and bound (a hand-over: clients wait in its
        backlog for the successor); wait for the connections being served unless
        `drain_on_quiesce` is off."""
        self._stop.set()
        self._join(self.join_wait if wait is None else wait,
                   serving=self.drain_on_quiesce, idle=True)

    def stop(self, wait: float | None = None) -> None:
        """Stop accepting, close and unlink the socket, let the connections being served
        finish (bounded by `wait`)."""
        wait = self.join_wait if wait is None else wait
        self._stop.set()
        self._join(wait, serving=False, idle=True)
        close_and_unlink(self._sock, self.path)
        self._sock = None
        if self.wake_on_stop:
            with self._lock:
                conns = list(self._serving.values())
            for conn in conns:
                with contextlib.suppress(OSError):
                    conn.shutdown(socket.SHUT_RD)
        self._join(wait, serving=True, idle=False)

    def _join(self, wait: float, *, serving: bool, idle: bool) -> None:
        me = threading.current_thread()
        with self._lock:
            busy = set(self._serving)
            threads = [t for t in self._threads if t is not me
                       and ((serving and t in busy) or (idle and t not in busy))]
        deadline = time.monotonic() + wait
        for t in threads:
            t.join(max(0.0, deadline - time.monotonic()))

    # -- the acceptors -----------------------------------------------------------------

    def _replenish(self) -> None:
        """Start acceptors until `spare` are idle."""
        while True:
            with self._lock:
                if self._stop.is_set() or self._idle >= self.spare:
                    return
                self._idle += 1
                t = threading.Thread(target=self._acceptor, name=self.name, daemon=True)
                self._threads.add(t)
            try:
                t.start()
            except RuntimeError as e:  # no thread to be had: the others go on serving
                with self._lock:
                    self._idle -= 1
                    self._threads.discard(t)
                log.error("no acceptor thread", extra={"fields": {
                    "path": self.path, "error": str(e)}})
                return

    def _acceptor(self) -> None:
        me = threading.current_thread()
        idle = True
        try:
            while not self._stop.is_set():
                conn = self._accept()
                if conn is None:
                    continue
                with self._lock:
                    self._idle -= 1
                    idle = False
                    self._serving[me] = conn
                    burst = self._idle == 0
                if burst:
                    self._replenish()
                self._serve(conn)
                with self._lock:
                    del self._serving[me]
                    if self._idle >= self.spare or self._stop.is_set():
                        return
                    self._idle += 1
                    idle = True
        finally:
            with self._lock:
                if idle:
                    self._idle -= 1
                self._threads.discard(me)

    def _accept(self) -> socket.socket | None:
        """A connection this server serves now, or None (a tick, an error, a refusal)."""
        if self.on_tick is not None:
            self.on_tick()
        sock = self._sock
        if sock is None:
            return None
        try:
            conn, _ = sock.accept()
        except TimeoutError:
            return None
        except OSError as e:
            if not self._stop.is_set():
                self.accept_failed(e)
                time.sleep(ACCEPT_RETRY)
            return None
        if self._slots is not None and not self._slots.acquire(blocking=False):
            try:
                self.refuse(conn)
            finally:
                conn.close()
            return None
        return conn

    def _serve(self, conn: socket.socket) -> None:
        try:
            self.handle(conn)
        except Exception:
            # One connection never takes its acceptor (or the daemon) down.
            log.exception("internal error serving a connection",
                          extra={"fields": {"path": self.path}})
        finally:
            conn.close()
            if self._slots is not None:
                self._slots.release()
