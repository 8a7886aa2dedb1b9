"""Every family's handlers by syscall name, wrapped once (the capability check, bad
pointers answered as the kernel would, a debug line per decision), and `register`, the
daemon's entry point."""

from __future__ import annotations

import errno
import logging
import time
from collections.abc import Callable

from interceptd.handlers import HandlerRegistry, clock, fdmount, mount, process, scope, sysinfo
from interceptd.policy import notified_syscalls
from interceptd.seams import Config, Container, Request
from interceptd.verdict import Verdict

log = logging.getLogger("interceptd.policy")

Handler = Callable[[Request], Verdict]


_POINTER_ERRORS = {errno.EFAULT: errno.EFAULT, errno.EIO: errno.EFAULT,
                   errno.ENAMETOOLONG: errno.ENAMETOOLONG}


def _guarded(fn: Handler, req: Request) -> Verdict:
    """Bad pointers get the kernel's answer (EFAULT, ENAMETOOLONG) instead of the
    registry's generic EPERM; a target that went away still propagates."""
    try:
        return fn(req)
    except OSError as e:
        if isinstance(e, req.core.TargetGone) or e.errno not in _POINTER_ERRORS:
            raise
        return Verdict.errno(_POINTER_ERRORS[e.errno],
                             f"{req.syscall}: unreadable argument ({e.strerror})")


def logged(fn: Handler) -> Handler:
    """`fn` with a debug log line per decision (operators: --log-level debug)."""

    def wrapper(req: Request) -> Verdict:
        if not log.isEnabledFor(logging.DEBUG):
            return _guarded(fn, req)
        t0 = time.perf_counter()
        v = _guarded(fn, req)
        log.debug("policy decision", extra={"fields": {
            "container": req.container.id, "pid": req.pid,
            "syscall": req.syscall, "verdict": v.kind, "errno": v.error,
            "reason": v.reason, "us": round((time.perf_counter() - t0) * 1e6)}})
        return v

    wrapper.__name__ = fn.__name__
    wrapper.__doc__ = fn.__doc__
    return wrapper


def _with_cap_sys_admin(fn: Handler) -> Handler:
    """`fn` for callers with CAP_SYS_ADMIN only: what the daemon performs, it performs with
    every capability in the caller's user namespace."""

    def wrapper(req: Request) -> Verdict:
        return scope.lacks_cap_sys_admin(req) or fn(req)

    wrapper.__name__ = fn.__name__
    wrapper.__doc__ = fn.__doc__
    return wrapper


HANDLERS = {
    "mount": _with_cap_sys_admin(mount.handle_mount),
    "umount2": _with_cap_sys_admin(mount.handle_umount2),
    "fsopen": _with_cap_sys_admin(fdmount.handle_fsopen),
    "fspick": _with_cap_sys_admin(fdmount.handle_fspick),
    "open_tree": fdmount.handle_open_tree,
    "move_mount": _with_cap_sys_admin(fdmount.handle_move_mount),
    "mount_setattr": _with_cap_sys_admin(fdmount.handle_mount_setattr),
    **process.HANDLERS,  # the ptrace family
    "sysinfo": sysinfo.handle_sysinfo,
    "adjtimex": clock.handle_adjtimex,
    "clock_adjtime": clock.handle_clock_adjtime,
}


def register(handlers: HandlerRegistry, cfg: Config | None = None) -> None:
    """Register the Python handlers of every enabled family (`policy.notified_syscalls`),
    and the release hooks that free a container's state with its record."""
    scope.configure(cfg)
    for name in notified_syscalls(cfg):
        handlers.register(name, logged(HANDLERS[name]))
    from interceptd.kernel import executors

    # A detached container's executors (helper processes holding its namespaces) close at
    # once rather than whenever its object happens to be collected; its PolicyStore (the
    # cached tables pin mount namespaces) goes with it.
    handlers.on_release(lambda c: executors.close_container(id(c)))
    handlers.on_release(_release)
    if "mount" in notified_syscalls(cfg):
        handlers.on_attach(mount.prestart_native)


def _release(container: Container) -> None:
    scope.release(container)
