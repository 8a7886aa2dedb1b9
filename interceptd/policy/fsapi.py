"""The new mount API called by the daemon itself (ctypes), for building detached trees.

A procfs/sysfs the container asks for is built as a detached tree in the daemon: the
filesystem context comes from the caller's namespaces (fsopen through the executor, so
it shows the caller's pid or network namespace), the superblock and the detached mount are
made here, the masks and read-only paths are attached inside the detached tree, and only
then is the whole tree attached where the caller asked, in one move_mount. Nothing is ever
visible unmasked.
"""

from __future__ import annotations

import ctypes
import os

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long

NR_OPEN_TREE = 428
NR_MOVE_MOUNT = 429
NR_FSOPEN = 430
NR_FSCONFIG = 431
NR_FSMOUNT = 432
NR_MOUNT_SETATTR = 442

FSCONFIG_SET_FLAG = 0
FSCONFIG_SET_STRING = 1
FSCONFIG_SET_FD = 5
FSCONFIG_CMD_CREATE = 6
FSMOUNT_CLOEXEC = 1
FSOPEN_CLOEXEC = 1
OPEN_TREE_CLONE = 1
OPEN_TREE_CLOEXEC = 0o2000000
AT_FDCWD = -100
AT_EMPTY_PATH = 0x1000
AT_RECURSIVE = 0x8000
MOVE_MOUNT_F_EMPTY_PATH = 0x4


def _call(nr: int, *args: object) -> int:
    r = _libc.syscall(ctypes.c_long(nr), *args)
    if r < 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))
    return int(r)


def _b(s: str | None) -> bytes | None:
    return None if s is None else os.fsencode(s)


def fsopen(fstype: str) -> int:
    return _call(NR_FSOPEN, _b(fstype), ctypes.c_uint(FSOPEN_CLOEXEC))


def fsconfig(fd: int, cmd: int, key: str | None = None, value: str | None = None) -> None:
    _call(NR_FSCONFIG, ctypes.c_int(fd), ctypes.c_uint(cmd), _b(key), _b(value),
          ctypes.c_int(0))


def apply_options(fd: int, data: str | None) -> None:
    """Legacy comma-separated mount data as fsconfig calls (as the kernel splits it)."""
    for opt in (data or "").split(","):
        if not opt:
            continue
        key, sep, val = opt.partition("=")
        if sep:
            fsconfig(fd, FSCONFIG_SET_STRING, key, val)
        else:
            fsconfig(fd, FSCONFIG_SET_FLAG, key)


def fsmount(fd: int, attrs: int) -> int:
    return _call(NR_FSMOUNT, ctypes.c_int(fd), ctypes.c_uint(FSMOUNT_CLOEXEC),
                 ctypes.c_uint(attrs))


def clone_tree(dfd: int, path: str, recursive: bool = True) -> int:
    flags = OPEN_TREE_CLONE | OPEN_TREE_CLOEXEC | (AT_RECURSIVE if recursive else 0)
    if path == "":
        flags |= AT_EMPTY_PATH
    return _call(NR_OPEN_TREE, ctypes.c_int(dfd), _b(path), ctypes.c_uint(flags))


def attach(src_fd: int, dst_dfd: int, dst_path: str) -> None:
    """move_mount of the detached tree `src_fd` onto `dst_path` (relative to `dst_dfd`,
    which may be a detached tree itself)."""
    _call(NR_MOVE_MOUNT, ctypes.c_int(src_fd), b"", ctypes.c_int(dst_dfd), _b(dst_path),
          ctypes.c_uint(MOVE_MOUNT_F_EMPTY_PATH))


class _MountAttr(ctypes.Structure):
    _fields_ = [("attr_set", ctypes.c_uint64), ("attr_clr", ctypes.c_uint64),
                ("propagation", ctypes.c_uint64), ("userns_fd", ctypes.c_uint64)]


def set_attrs(fd: int, attr_set: int, recursive: bool = True) -> None:
    a = _MountAttr(attr_set, 0, 0, 0)
    flags = AT_EMPTY_PATH | (AT_RECURSIVE if recursive else 0)
    _call(NR_MOUNT_SETATTR, ctypes.c_int(fd), b"", ctypes.c_uint(flags), ctypes.byref(a),
          ctypes.c_size_t(ctypes.sizeof(a)))
