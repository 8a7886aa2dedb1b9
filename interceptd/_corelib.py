"""What the Python face of the C core shares: the binding, its error convention and
the struct layouts read from it (never written out a second time here).

The only module that imports interceptd._core; core.py (the notify engine),
core_exec.py (namespace executors, mount facts) and core_fuse.py (the FUSE server)
build on it. Every C call returns -errno on failure; -ENOENT from a call on a
notification means it is no longer valid (TargetGone).
"""

from __future__ import annotations

import errno as errno_mod
import os
import struct
from typing import Any

from interceptd._core import ffi, lib

__all__ = [
    "TargetGone",
    "check",
    "check_notif",
    "ffi",
    "fields",
    "lib",
    "path_bytes",
    "struct_of",
]


class TargetGone(OSError):
    """The notification is no longer valid: its task died or was interrupted."""

    def __init__(self, what: str = "notification no longer valid") -> None:
        super().__init__(errno_mod.ENOENT, what)


def check(ret: int, what: str) -> int:
    """`ret` if it is no failure, else OSError(-ret)."""
    if ret < 0:
        raise OSError(-ret, f"{what}: {os.strerror(-ret)}")
    return ret


def check_notif(ret: int, what: str) -> int:
    """check() for calls on a notification: -ENOENT is TargetGone."""
    if ret < 0:
        if ret == -errno_mod.ENOENT:
            raise TargetGone(what)
        raise OSError(-ret, f"{what}: {os.strerror(-ret)}")
    return ret


def path_bytes(v: Any) -> bytes:
    """A string argument as NUL-free bytes (what C will read up to its NUL)."""
    if isinstance(v, str):
        v = os.fsencode(v)
    if not isinstance(v, bytes) or b"\0" in v:
        raise ValueError(f"bad string argument {v!r}")
    return bytes(v)


def fields(ctype: str) -> tuple[str, ...]:
    """The field names of a C struct, in order, as the header declares them."""
    return tuple(name for name, _ in ffi.typeof(ctype).fields)


_CODES = {"int": "i", "int32_t": "i", "uint32_t": "I", "int64_t": "q", "uint64_t": "Q",
          "unsigned int": "I"}


def struct_of(ctype: str) -> struct.Struct:
    """A struct.Struct unpacking the C struct `ctype` in one go (a cdata struct read
    field by field costs several times more on the Python path): built from the
    layout cffi reports, so it cannot drift from the header."""
    t = ffi.typeof(ctype)
    fmt, at = "=", 0
    for _name, f in t.fields:
        if f.offset > at:
            fmt += f"{f.offset - at}x"
        ft = f.type
        if ft.kind == "array":
            fmt += f"{ft.length}{_CODES[ft.item.cname]}"
        else:
            fmt += _CODES[ft.cname]
        at = f.offset + ffi.sizeof(ft)
    if ffi.sizeof(t) > at:
        fmt += f"{ffi.sizeof(t) - at}x"
    s = struct.Struct(fmt)
    if s.size != ffi.sizeof(t):
        raise ImportError(f"{ctype}: no struct format for its layout")
    return s
