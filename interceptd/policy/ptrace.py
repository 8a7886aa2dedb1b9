"""ptrace-class decisions: ptrace, process_vm_readv/writev, pidfd_getfd, kcmp.

A target is acceptable only if it is one of the container's own processes: in the
container's pid namespace (or one nested in it), in its user namespace (or one nested in
it), not in the host's mount namespace, and with its executable and working directory on
mounts of its own mount namespace. A process that is *entering* the container (a runc
exec init, whose exe is runc's memfd or host binary, or whose cwd is a leaked host
directory: CVE-2019-5736, CVE-2024-21626) fails the last test even though it already sits
in the container's namespaces.
"""

from __future__ import annotations

import errno

from interceptd.kernel.consts import (
    PTRACE_ATTACH,
    PTRACE_POKEDATA,
    PTRACE_POKETEXT,
    PTRACE_POKEUSER,
    PTRACE_SEIZE,
    PTRACE_TRACEME,
)
from interceptd.kernel.procinfo import ProcView
from interceptd.policy.decision import Decision, allow_continue, deny

# Requests that create a ptrace link or write the tracee: vetted. Every other request
# needs an existing link made by a vetted ATTACH/SEIZE (or TRACEME by the tracee).
VETTED_PTRACE = frozenset(
    {PTRACE_ATTACH, PTRACE_SEIZE, PTRACE_POKETEXT, PTRACE_POKEDATA, PTRACE_POKEUSER}
)


def outside_reason(t: ProcView) -> str | None:
    """Why a target counts as outside the container, or None."""
    if not t.in_pidns:
        return "target outside the container's pid namespace"
    if not t.in_userns:
        return "target outside the container's user namespace"
    if t.host_mntns:
        return "target in the host mount namespace"
    if not t.exe_inside:
        return f"target is entering the container (exe {t.exe or '?'} outside its root)"
    if not t.cwd_inside:
        return f"target is entering the container (cwd {t.cwd or '?'} outside its root)"
    return None


def decide_targets(
    syscall: str, targets: list[ProcView | None], details: dict[str, object]
) -> Decision:
    for t in targets:
        if t is None:
            # CONTINUE is safe: no such process is visible to the caller, so the kernel
            # fails the call with ESRCH as well (see decide_ptrace on pid reuse).
            return allow_continue(f"{syscall}: no such process", **details)
        why = outside_reason(t)
        if why is not None:
            return deny(errno.EPERM, f"{syscall}: {why}", target=t.host_pid, **details)
    # CONTINUE is safe: the arguments that name the target are pids (register values the
    # container cannot rewrite), and the process they name was just checked. The residual
    # race is pid reuse between the check and the kernel's lookup, within the container's
    # own pid namespace; the kernel's ptrace_may_access still refuses non-dumpable tasks
    # (runc keeps its init non-dumpable until exec).
    return allow_continue(f"{syscall}: target is the container's own process", **details)


def ptrace_needs_target(request: int) -> bool:
    return request in VETTED_PTRACE


def decide_ptrace(request: int, target: ProcView | None, details: dict[str, object]) -> Decision:
    if request == PTRACE_TRACEME:
        # CONTINUE is safe: TRACEME makes the caller's parent its tracer; it gives the
        # caller no hold on any other process.
        return allow_continue("ptrace(TRACEME)", **details)
    if not ptrace_needs_target(request):
        # CONTINUE is safe: every other request needs a ptrace link that a vetted
        # ATTACH/SEIZE (or the tracee's TRACEME) made; the request number is a register.
        return allow_continue("ptrace on an existing tracee", **details)
    return decide_targets("ptrace", [target], details)
