"""The process's own libc through ctypes, and the one errno check every wrapper uses."""

from __future__ import annotations

import ctypes
import os

# The running interpreter's own libc (find_library would spawn ldconfig: slow).
libc = ctypes.CDLL(None, use_errno=True)
syscall = libc.syscall
syscall.restype = ctypes.c_long


def check(ret: int, what: str) -> int:
    """`ret`, or OSError(errno, "<what>: <strerror>") for a negative return."""
    if ret < 0:
        e = ctypes.get_errno()
        raise OSError(e, f"{what}: {os.strerror(e)}")
    return int(ret)
