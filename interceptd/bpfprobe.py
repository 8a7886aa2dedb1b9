"""What the kernel's BPF allows, probed with the smallest programs ("r0 = 0; exit").

Each probe loads a program, attaches it where that takes no more than an open
fd, and closes everything at once: nothing stays loaded. A refusal is reported
as the kernel's errno text, for `interceptctl probe`.
"""

from __future__ import annotations

import ctypes
import os
import struct

from interceptd.kernel.bpf import bpf as _bpf
from interceptd.kernel.bpf import raw_tracepoint_open as _raw_tp
from interceptd.kernel.consts import (
    BPF_LSM_MAC,
    BPF_PROG_LOAD,
    BPF_PROG_TYPE_LSM,
    BPF_PROG_TYPE_RAW_TRACEPOINT,
    BPF_PROG_TYPE_TRACEPOINT,
    BPF_PROG_TYPE_TRACING,
    BPF_TRACE_FENTRY,
    BTF_KIND_FUNC,
)

_RET0 = struct.pack("<BBhi", 0xB7, 0, 0, 0) + struct.pack("<BBhi", 0x95, 0, 0, 0)
_GPL = ctypes.create_string_buffer(b"GPL")

def load(prog_type: int, attach_type: int = 0, btf_id: int = 0) -> int:
    """A loaded "return 0" program of `prog_type`; its fd (the caller closes it)."""
    insns = ctypes.create_string_buffer(_RET0, len(_RET0))
    attr = ctypes.create_string_buffer(144)
    struct.pack_into("<IIQQ", attr, 0, prog_type, 2, ctypes.addressof(insns),
                     ctypes.addressof(_GPL))
    struct.pack_into("<I", attr, 68, attach_type)
    struct.pack_into("<I", attr, 108, btf_id)
    return _bpf(BPF_PROG_LOAD, attr)


def raw_tracepoint_open(prog_fd: int, name: bytes | None) -> int:
    return _raw_tp(prog_fd, name.decode() if name else None)


def _try(*steps: tuple) -> bool | str:
    """Run load/attach steps, close every fd; True, or the refusal's text."""
    fds: list[int] = []
    try:
        for fn, *args in steps:
            fds.append(fn(*[fds[-1] if a is _PREV else a for a in args]))
        return True
    except OSError as e:
        return f"refused: {e.strerror}"
    finally:
        for fd in reversed(fds):
            os.close(fd)


_PREV = object()  # stands for the fd the previous step returned


def tracepoint() -> bool | str:
    """A tracepoint program loads (attaching needs tracefs: see tracefs())."""
    return _try((load, BPF_PROG_TYPE_TRACEPOINT))


def raw_tracepoint() -> bool | str:
    return _try((load, BPF_PROG_TYPE_RAW_TRACEPOINT), (raw_tracepoint_open, _PREV, b"sys_enter"))


FENTRY_TARGETS = ("__x64_sys_getppid", "__do_sys_getppid", "do_sys_openat2")


def fentry() -> bool | str:
    btf_id: int | str = "no fentry target in kernel BTF"
    for func in FENTRY_TARGETS:
        btf_id = btf_func_id(func)
        if isinstance(btf_id, int):
            break
    if isinstance(btf_id, str):
        return btf_id
    return _try((load, BPF_PROG_TYPE_TRACING, BPF_TRACE_FENTRY, btf_id),
                (raw_tracepoint_open, _PREV, None))


def lsm(hook: str = "bpf_lsm_file_open") -> bool | str:
    try:
        with open("/sys/kernel/security/lsm", encoding="ascii") as f:
            active = "bpf" in f.read().strip().split(",")
    except OSError:
        active = False
    if not active:
        return "no: 'bpf' is not in the active LSMs (lsm= on the kernel command line)"
    btf_id = btf_func_id(hook)
    if isinstance(btf_id, str):
        return btf_id
    return _try((load, BPF_PROG_TYPE_LSM, BPF_LSM_MAC, btf_id))


def tracefs() -> bool | str:
    if os.path.isdir("/sys/kernel/tracing/events/raw_syscalls"):
        return True
    return ("not mounted at /sys/kernel/tracing (the eBPF layer does not need it: raw "
            "tracepoints are attached by name)")


# Trailing bytes after struct btf_type (12 bytes), by kind: (fixed, per vlen item).
_BTF_TAIL = {1: (4, 0), 3: (12, 0), 4: (0, 12), 5: (0, 12), 6: (0, 8), 13: (0, 8),
             14: (4, 0), 15: (0, 12), 17: (4, 0), 19: (0, 12)}


def btf_func_id(name: str, path: str = "/sys/kernel/btf/vmlinux") -> int | str:
    """The BTF type id of kernel function `name`, or why there is none."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        return f"no kernel BTF ({path}: {e.strerror})"
    magic, _ver, _flags, hdr_len, type_off, type_len, str_off, _str_len = struct.unpack_from(
        "<HBBIIIII", data, 0)
    if magic != 0xEB9F:
        return "kernel BTF unreadable"
    types, strs = hdr_len + type_off, hdr_len + str_off
    want = name.encode() + b"\0"
    pos, end, tid = types, types + type_len, 0
    while pos < end:
        tid += 1
        name_off, info, _size = struct.unpack_from("<III", data, pos)
        kind, vlen = (info >> 24) & 0x1F, info & 0xFFFF
        if kind == BTF_KIND_FUNC and data.startswith(want, strs + name_off):
            return tid
        fixed, per = _BTF_TAIL.get(kind, (0, 0))
        pos += 12 + fixed + per * vlen
    return f"{name} not in kernel BTF"
