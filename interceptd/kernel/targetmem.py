"""Writing a syscall's result into the caller's memory, and the clock query performed for it.

Why writing is safe: we write only to the buffer address the caller passed in a register
(it cannot be rewritten), only into the caller's own address space, and only what the
kernel itself would have written there. The write goes through /proc/<pid>/mem opened
*before* ID_VALID is checked: the open file is bound to the address space of the process
that made the call, so a pid reused after the check cannot receive the bytes.
"""

from __future__ import annotations

import ctypes
import errno
import os
from collections.abc import Callable

from interceptd.kernel.libc import libc


def write_target(pid: int, addr: int, data: bytes, valid: Callable[[], bool]) -> int:
    """Write `data` at `addr` in `pid`; returns 0 or an errno (EFAULT for a bad address).

    Raises ProcessLookupError when the notification is no longer valid."""
    try:
        fd = os.open(f"/proc/{pid}/mem", os.O_RDWR | os.O_CLOEXEC)
    except FileNotFoundError:
        raise ProcessLookupError(pid) from None
    try:
        if not valid():
            raise ProcessLookupError(pid)
        try:
            n = os.pwrite(fd, data, addr)
        except OSError as e:
            return errno.EFAULT if e.errno in (errno.EIO, errno.EFAULT) else (e.errno or 1)
        return 0 if n == len(data) else errno.EFAULT
    finally:
        os.close(fd)


def call_adjtimex(buf: bytearray, clockid: int | None = None) -> int:
    """adjtimex/clock_adjtime on our own copy of struct timex (read mode); returns the
    clock state, or raises OSError."""
    cbuf = (ctypes.c_char * len(buf)).from_buffer(buf)
    r = (libc.adjtimex(cbuf) if clockid is None
         else libc.clock_adjtime(ctypes.c_int(clockid), cbuf))
    if r < 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))
    return int(r)
