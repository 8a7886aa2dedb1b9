"""What this host's kernel offers interceptd, probed without side effects.

The daemon degrades one layer per missing feature (DESIGN: "a missing optional
feature degrades one layer, never the whole daemon"); `interceptctl probe`
shows the same facts to an operator before anything runs.
"""

from __future__ import annotations

import ctypes
import errno
import os
from typing import Any

from interceptd import mountinfo

NR_MOUNT_SETATTR = 442  # x86_64


def _syscall_exists(nr: int) -> bool:
    # Invalid arguments on purpose: ENOSYS means the kernel lacks the call,
    # anything else (EBADF, EINVAL) means it is there. Nothing is changed.
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    if libc.syscall(ctypes.c_long(nr), -1, None, 0, None, 0) == 0:
        return True
    return ctypes.get_errno() != errno.ENOSYS


def _read(path: str) -> str:
    try:
        with open(path, encoding="ascii", errors="replace") as f:
            return f.read().strip()
    except OSError:
        return ""


def _cgroup2_mount() -> str | None:
    try:
        with open("/proc/self/mountinfo", encoding="utf-8", errors="replace") as f:
            entries = mountinfo.parse(f.read(), skip_malformed=True)
    except OSError:
        return None
    return next((e.mountpoint for e in entries if e.fstype == "cgroup2"), None)


def _bcc_importable() -> bool:
    try:
        import bcc  # noqa: F401
    except Exception:  # bcc raises more than ImportError without kernel headers
        return False
    return True


def probe() -> dict[str, Any]:
    """feature -> True/False, or a path/string where that says more."""
    try:
        from interceptd import core

        notify = {k: bool(v) for k, v in core.notify_probe().items()
                  if k in ("user_notif", "sync_wakeup", "addfd_send")}
    except Exception:  # the C core is not built or the kernel refused
        notify = {"user_notif": False, "sync_wakeup": False, "addfd_send": False}
    lsms = _read("/sys/kernel/security/lsm").split(",")
    headers = f"/lib/modules/{os.uname().release}/build"
    return {
        **notify,
        "user_namespaces": _read("/proc/sys/user/max_user_namespaces") not in ("", "0"),
        "idmapped_mounts": _syscall_exists(NR_MOUNT_SETATTR),
        "cgroup2": _cgroup2_mount() or False,
        "fuse": os.path.exists("/dev/fuse"),
        "bpf_lsm": "bpf" in lsms,
        "kernel_headers": os.path.isdir(headers),
        "bcc": _bcc_importable(),
    }
