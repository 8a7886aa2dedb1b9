"""bpf(2) through ctypes: the daemon's eBPF layer and the feature probe share these few
commands (maps read and written by key, raw tracepoints attached by name)."""

from __future__ import annotations

import ctypes
import os
import struct

from interceptd.kernel.consts import (
    BPF_MAP_LOOKUP_ELEM,
    BPF_MAP_UPDATE_ELEM,
    BPF_RAW_TRACEPOINT_OPEN,
)
from interceptd.kernel.libc import syscall as _syscall
from interceptd.syscalls import nr

_NR_BPF = nr("bpf")
ENOTSUPP = 524  # the kernel's own errno for "not supported" (no strerror text)


def bpf(cmd: int, attr: ctypes.Array[ctypes.c_char]) -> int:
    """bpf(cmd, attr): its result, or OSError."""
    ret = _syscall(_NR_BPF, cmd, attr, len(attr))
    if ret < 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e) if e != ENOTSUPP else "not supported (ENOTSUPP)")
    return int(ret)


def raw_tracepoint_open(prog_fd: int, name: str | None) -> int:
    """Attach a loaded raw tracepoint program (`name` None: the program's own attach
    target, for tracing programs): the returned fd keeps it attached."""
    buf = ctypes.create_string_buffer(name.encode()) if name else None
    attr = ctypes.create_string_buffer(16)
    struct.pack_into("<QI", attr, 0, ctypes.addressof(buf) if buf else 0, prog_fd)
    return bpf(BPF_RAW_TRACEPOINT_OPEN, attr)


def _map_attr(fd: int, key: ctypes.Array[ctypes.c_char],
              value: ctypes.Array[ctypes.c_char]) -> ctypes.Array[ctypes.c_char]:
    attr = ctypes.create_string_buffer(32)  # map_fd, pad, key, value, flags
    struct.pack_into("<IIQQQ", attr, 0, fd, 0, ctypes.addressof(key),
                     ctypes.addressof(value), 0)
    return attr


def map_update(fd: int, key: bytes, value: bytes) -> None:
    k = ctypes.create_string_buffer(key, len(key))
    v = ctypes.create_string_buffer(value, len(value))
    try:
        bpf(BPF_MAP_UPDATE_ELEM, _map_attr(fd, k, v))
    except OSError as e:
        raise OSError(e.errno, f"bpf map update: {e.strerror}") from None


def map_lookup(fd: int, key: bytes, size: int) -> bytes | None:
    """The value at `key`, or None (no such key, or the lookup failed)."""
    k = ctypes.create_string_buffer(key, len(key))
    v = ctypes.create_string_buffer(size)
    try:
        bpf(BPF_MAP_LOOKUP_ELEM, _map_attr(fd, k, v))
    except OSError:
        return None
    return v.raw


def cgroup2_id(mount: str, path: str) -> int:
    """The cgroup v2 id (what bpf_get_current_cgroup_id() returns): the inode number
    of the cgroup's directory in the unified hierarchy."""
    rel = path.lstrip("/")
    if not rel or ".." in rel.split("/"):
        raise ValueError(f"cgroup v2 path {path!r} is not a container's own cgroup")
    return os.stat(os.path.join(mount, rel)).st_ino
