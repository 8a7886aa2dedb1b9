"""Python handlers for notified syscalls, keyed by syscall name.

The package holds one module per syscall family (mount, fdmount, process, clock,
sysinfo) over one call scope (scope.py); table.py registers them. This module is the
seam they share: a handler is `fn(req: Request) -> Verdict`. It reads pointer arguments once
through `req.read`/`req.read_string` (bounded, ID_VALID-checked by the core) and
acts inside the container only through `req.exec` (the namespace executor).
"""

from __future__ import annotations

import errno as errno_mod
import logging
import os
import threading
from collections.abc import Callable, Sequence
from typing import Protocol

from interceptd.events import Counters
from interceptd.kernel.pidfd import thread_pidfd
from interceptd.seams import Container, Core, ExecResult
from interceptd.verdict import Verdict

log = logging.getLogger("interceptd.handlers")


class NotificationLike(Protocol):
    id: int
    pid: int
    nr: int
    arch: int
    ip: int
    args: Sequence[int]
    notify_fd: int


class Request:
    """One notification handed to a Python handler.

    `args` is the notification's 6-tuple of raw argument values; pointers in
    it are addresses in the target, to be read once with `read`/`read_string`.
    """

    __slots__ = ("args", "container", "core", "notif", "syscall")

    def __init__(self, container: Container, notif: NotificationLike, syscall: str,
                 args: Sequence[int], core: Core) -> None:
        self.container = container
        self.notif = notif
        self.syscall = syscall
        self.args = args
        self.core = core

    def __repr__(self) -> str:
        return (f"Request(container={_cid(self.container)!r}, syscall={self.syscall!r}, "
                f"pid={self.notif.pid}, args={list(self.args)!r})")

    @property
    def pid(self) -> int:
        return self.notif.pid

    def read(self, addr: int, size: int) -> bytes:
        n = self.notif
        return bytes(self.core.read_target(n.pid, addr, size, n.notify_fd, n.id))

    def read_string(self, addr: int, max_len: int) -> bytes:
        n = self.notif
        return bytes(self.core.read_target_string(n.pid, addr, max_len, n.notify_fd, n.id))

    def valid(self) -> bool:
        return bool(self.core.id_valid(self.notif.notify_fd, self.notif.id))

    def exec(self, namespaces: int, op: str, *args: object) -> ExecResult:
        """Run `op` in the target's namespaces; returns the core's ExecResult.

        The pidfd is opened first and the notification checked afterwards, so
        the pidfd is known to name the process that made the call, not a
        process that reused its pid.
        """
        pidfd = thread_pidfd(self.notif.pid)
        try:
            if not self.valid():
                raise _target_gone(self.core)("notification no longer valid")
            return self.core.ns_exec(pidfd, self.notif.pid, namespaces, op, *args)
        finally:
            os.close(pidfd)


def _target_gone(core: Core) -> type[Exception]:
    return core.TargetGone


Handler = Callable[[Request], Verdict]


class HandlerRegistry:
    def __init__(self, counters: Counters | None = None) -> None:
        self._handlers: dict[str, Handler] = {}
        self._on_release: list[Callable[[Container], None]] = []
        self._on_attach: list[Callable[[Container, Core], None]] = []
        self.counters = counters if counters is not None else Counters()

    def register(self, syscall_name: str, fn: Handler) -> None:
        if syscall_name in self._handlers:
            raise ValueError(f"a handler for {syscall_name!r} is already registered")
        self._handlers[syscall_name] = fn

    def on_release(self, fn: Callable[[Container], None]) -> None:
        """`fn(container)` once the container's last notify fd is gone, so per-container
        state kept by handlers (executors, caches) goes with it, not with the GC."""
        self._on_release.append(fn)

    def on_attach(self, fn: Callable[[Container, Core], None]) -> None:
        """`fn(container, core)` once after a container is attached, on a thread of its own
        (set-up that would otherwise fall on its first call, e.g. the native helper)."""
        self._on_attach.append(fn)

    def attached(self, container: Container, core: Core) -> None:
        """Start the attach hooks in the background; never raises, never blocks."""
        if not self._on_attach:
            return

        def run() -> None:
            for fn in self._on_attach:
                try:
                    fn(container, core)
                except Exception:
                    self.counters.inc("handler_errors", "attach hook")
                    log.exception("attach hook failed",
                                  extra={"fields": {"container": _cid(container)}})

        threading.Thread(target=run, name="attach-hooks", daemon=True).start()

    def released(self, container: Container) -> None:
        """Run the release hooks; never raises."""
        for fn in self._on_release:
            try:
                fn(container)
            except Exception:
                self.counters.inc("handler_errors", "release hook")
                log.exception("release hook failed",
                              extra={"fields": {"container": _cid(container)}})

    def get(self, syscall_name: str) -> Handler | None:
        return self._handlers.get(syscall_name)

    def names(self) -> list[str]:
        return sorted(self._handlers)

    def __contains__(self, syscall_name: object) -> bool:
        return syscall_name in self._handlers

    def handle(self, req: Request) -> Verdict:
        """Run the handler for `req`; never raises. Failures fail closed (EPERM)."""
        fn = self._handlers.get(req.syscall)
        if fn is None:
            return Verdict.errno(errno_mod.EPERM, "unhandled")
        return self.call(fn, req)

    def call(self, fn: Handler, req: Request) -> Verdict:
        """`fn(req)` with the failure handling of `handle` (for callers that
        looked the handler up already)."""
        try:
            verdict = fn(req)
        except _target_gone(req.core):
            self.counters.inc("handler_errors", "target gone")
            return Verdict.errno(errno_mod.EPERM, "target gone")
        except Exception:
            self.counters.inc("handler_errors", "internal error")
            log.exception(
                "handler failed",
                extra={"fields": {"syscall": req.syscall, "pid": req.pid,
                                  "container": _cid(req.container)}},
            )
            return Verdict.errno(errno_mod.EPERM, "internal error")
        if not isinstance(verdict, Verdict):
            self.counters.inc("handler_errors", "bad verdict")
            log.error(
                "handler returned a non-Verdict",
                extra={"fields": {"syscall": req.syscall, "type": type(verdict).__name__}},
            )
            return Verdict.errno(errno_mod.EPERM, "internal error")
        return verdict


def _cid(container: Container) -> str:
    return str(container.id)
