"""pidfds: one for the thread that made a call, and another process's fd through one."""

from __future__ import annotations

import ctypes
import errno
import os

from interceptd.kernel.consts import PIDFD_THREAD
from interceptd.kernel.libc import check, syscall
from interceptd.syscalls import nr

SYS_PIDFD_GETFD = nr("pidfd_getfd")


def thread_pidfd(tid: int) -> int:
    """A pidfd for the thread that made a call (a notification names a thread: Go
    programs such as dockerd and containerd mount from threads that lead no group, which
    a plain pidfd_open refuses with EINVAL); before Linux 6.9, the plain pidfd."""
    try:
        return os.pidfd_open(tid, PIDFD_THREAD)
    except OSError as e:
        if e.errno != errno.EINVAL:
            raise
    return os.pidfd_open(tid)


def pidfd_getfd(pidfd: int, targetfd: int) -> int:
    """A copy of `targetfd` of the process behind `pidfd` (O_CLOEXEC, as the kernel sets)."""
    return check(syscall(SYS_PIDFD_GETFD, ctypes.c_int(pidfd), ctypes.c_int(targetfd),
                         ctypes.c_uint(0)), "pidfd_getfd")
