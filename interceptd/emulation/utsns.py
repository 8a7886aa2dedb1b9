"""kernel/hostname and kernel/domainname of a container's UTS namespace, read and written
by the daemon: the kernel keeps them per UTS namespace but lets only the initial
namespace's root write their /proc/sys files, so a container's root gets EACCES there
(sethostname(2) works). The daemon does it for it, from a short-lived thread that joins
the container's UTS namespace (setns affects that thread alone) and uses the same
/proc/sys file, which shows the reader's own namespace. docs/emulation.md "/proc/sys".
"""

from __future__ import annotations

import ctypes
import os
import threading

from interceptd.kernel.consts import CLONE_NEWUTS
from interceptd.kernel.libc import libc as _libc

NAMES = ("kernel/hostname", "kernel/domainname")
MAX_LEN = 64  # __NEW_UTS_LEN


def is_hosts(utsfd: int) -> bool:
    """The namespace is the daemon's (or the host's init's): never written for a container."""
    ino = os.fstat(utsfd).st_ino
    if ino == os.stat("/proc/self/ns/uts").st_ino:
        return True
    try:
        return ino == os.stat("/proc/1/ns/uts").st_ino
    except OSError:  # a pid 1 we may not inspect (the daemon in a sandbox): ours decides
        return False


def _in_ns(utsfd: int, name: str, value: str | None) -> str:
    out: list[str] = []
    err: list[OSError] = []

    def run() -> None:
        try:
            if _libc.setns(utsfd, CLONE_NEWUTS) != 0:
                e = ctypes.get_errno()
                raise OSError(e, os.strerror(e))
            path = f"/proc/sys/{name}"
            if value is None:
                with open(path, encoding="utf-8", errors="replace") as f:
                    out.append(f.read(MAX_LEN + 2))
            else:
                with open(path, "w", encoding="utf-8") as f:
                    f.write(value)
        except OSError as e:
            err.append(e)

    t = threading.Thread(target=run, name="uts", daemon=True)
    t.start()
    t.join(5)
    if err:
        raise err[0]
    if t.is_alive():
        raise OSError(110, "UTS namespace thread timed out")
    return out[0] if out else ""


def read(utsfd: int, name: str) -> str:
    return _in_ns(utsfd, name, None)


def write(utsfd: int, name: str, value: str) -> None:
    if name not in NAMES:
        raise ValueError(name)
    _in_ns(utsfd, name, value)
