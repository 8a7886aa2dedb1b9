"""Handlers of the ptrace family (ptrace, process_vm_readv/writev, kcmp, pidfd_getfd):
find the process a call names, classify it (procinfo), decide (ptrace.py).

The cost of a call depends on the caller and its target only: the pid is translated by the
kernel from the caller's pid namespace, never by walking the host's /proc, so a container
hammering these calls costs the daemon the same whatever runs beside it.
"""

from __future__ import annotations

import errno

from interceptd.handlers.scope import s32
from interceptd.kernel import procinfo
from interceptd.kernel.procinfo import ProcView
from interceptd.policy.decision import Decision, deny
from interceptd.policy.ptrace import decide_ptrace, decide_targets, ptrace_needs_target
from interceptd.seams import Request
from interceptd.verdict import Verdict

# The kernel cannot translate pids between namespaces (nsfs ioctls, Linux 6.11): refuse
# rather than guess, and rather than walk every process on the host per call.
_NO_TRANSLATION = (errno.ENOTTY, errno.EINVAL)


class _Refused(Exception):
    def __init__(self, decision: Decision) -> None:
        self.decision = decision


def _target(req: Request, ns_pid: int, syscall: str, details: dict[str, object]) -> ProcView | None:
    try:
        return procinfo.target_view(req.pid, ns_pid, req.container.init_pid, req.valid)
    except procinfo.TargetChanged:
        raise _Refused(deny(errno.EPERM, f"{syscall}: pid {ns_pid} named another process "
                                         "during the check", **details)) from None
    except OSError as e:
        if e.errno in _NO_TRANSLATION:
            raise _Refused(deny(errno.EPERM, f"{syscall}: this kernel cannot translate pids "
                                             "between namespaces (nsfs "
                                             "NS_GET_PID_FROM_PIDNS)", **details)) from None
        raise


def _answer(d: Decision) -> Verdict:
    reason = d.reason
    if d.details:
        reason += " [" + " ".join(f"{k}={v}" for k, v in d.details.items()
                                  if v is not None) + "]"
    if d.kind == "errno":
        return Verdict.errno(d.errno, reason)
    return Verdict.cont(reason)  # decide_targets/decide_ptrace answer errno or continue


def handle_ptrace(req: Request) -> Verdict:
    request, pid = s32(req.args[0]), s32(req.args[1])
    details: dict[str, object] = {"request": request, "pid": pid}
    try:
        target = _target(req, pid, "ptrace", details) if ptrace_needs_target(request) else None
    except _Refused as r:
        return _answer(r.decision)
    return _answer(decide_ptrace(request, target, details))


def handle_process_vm(req: Request) -> Verdict:
    pid = s32(req.args[0])
    details: dict[str, object] = {"pid": pid}
    try:
        targets = [_target(req, pid, req.syscall, details)]
    except _Refused as r:
        return _answer(r.decision)
    return _answer(decide_targets(req.syscall, targets, details))


def handle_kcmp(req: Request) -> Verdict:
    p1, p2 = s32(req.args[0]), s32(req.args[1])
    details: dict[str, object] = {"pid1": p1, "pid2": p2, "type": req.args[2]}
    try:
        targets = [_target(req, p1, "kcmp", details), _target(req, p2, "kcmp", details)]
    except _Refused as r:
        return _answer(r.decision)
    return _answer(decide_targets("kcmp", targets, details))


def handle_pidfd_getfd(req: Request) -> Verdict:
    pidfd = s32(req.args[0])
    # fdinfo names the pidfd's process by its host pid: no translation needed.
    host = procinfo.pidfd_target(req.pid, pidfd)
    view = None
    if host:
        try:
            view = procinfo.inspect(host, req.container.init_pid)
        except FileNotFoundError:
            view = None  # gone: the kernel fails the call with ESRCH as well
    # CONTINUE (after the check) is safe enough: the fd number is a register; another
    # thread could dup2 a different pidfd onto it, but a pidfd of a process outside can
    # only come from outside, and an entering runc init is non-dumpable, which the kernel's
    # own ptrace_may_access check in pidfd_getfd refuses.
    return _answer(decide_targets("pidfd_getfd", [view],
                                  {"pidfd": pidfd, "fd": s32(req.args[1])}))


HANDLERS = {
    "ptrace": handle_ptrace,
    "process_vm_readv": handle_process_vm,
    "process_vm_writev": handle_process_vm,
    "pidfd_getfd": handle_pidfd_getfd,
    "kcmp": handle_kcmp,
}
