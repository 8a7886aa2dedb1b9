"""The new mount API (open_tree, mount_setattr, move_mount, fsopen...) through ctypes.

Errors come back as OSError with the syscall named; nothing here is silent.
"""

from __future__ import annotations

import contextlib
import ctypes
import os

# The running interpreter's own libc (find_library would spawn ldconfig: slow).
_libc = ctypes.CDLL(None, use_errno=True)
_syscall = _libc.syscall
_syscall.restype = ctypes.c_long

# x86_64 numbers (include/uapi/asm-generic/unistd.h, shared by all arches for these)
SYS_OPEN_TREE = 428
SYS_MOVE_MOUNT = 429
SYS_FSOPEN = 430
SYS_FSCONFIG = 431
SYS_FSMOUNT = 432
SYS_MOUNT_SETATTR = 442
SYS_UNSHARE = 272
SYS_OPENAT2 = 437
SYS_STATX = 332

OPEN_TREE_CLONE = 1
OPEN_TREE_CLOEXEC = os.O_CLOEXEC
AT_EMPTY_PATH = 0x1000
AT_RECURSIVE = 0x8000
AT_SYMLINK_NOFOLLOW = 0x100
MOVE_MOUNT_F_EMPTY_PATH = 0x4
MOVE_MOUNT_T_EMPTY_PATH = 0x40
RESOLVE_NO_MAGICLINKS = 0x02
RESOLVE_NO_SYMLINKS = 0x04
MOUNT_ATTR_RDONLY = 0x1
MOUNT_ATTR_IDMAP = 0x100000
MS_REC = 0x4000
MS_PRIVATE = 1 << 18
MS_SHARED = 1 << 20
MNT_DETACH = 2
CLONE_NEWUSER = 0x10000000
FSCONFIG_SET_STRING = 1
FSCONFIG_CMD_CREATE = 6
FSMOUNT_CLOEXEC = 1


class MountAttr(ctypes.Structure):
    _fields_ = [
        ("attr_set", ctypes.c_uint64),
        ("attr_clr", ctypes.c_uint64),
        ("propagation", ctypes.c_uint64),
        ("userns_fd", ctypes.c_uint64),
    ]


def _check(ret: int, what: str) -> int:
    if ret < 0:
        e = ctypes.get_errno()
        raise OSError(e, f"{what}: {os.strerror(e)}")
    return ret


def open_tree(path: str, recursive: bool = False, dirfd: int = -100) -> int:
    flags = OPEN_TREE_CLONE | OPEN_TREE_CLOEXEC | (AT_RECURSIVE if recursive else 0)
    return _check(_syscall(SYS_OPEN_TREE, ctypes.c_int(dirfd), os.fsencode(path),
                           ctypes.c_uint(flags)), f"open_tree({path})")


def open_tree_fd(fd: int, recursive: bool = False) -> int:
    """A detached clone of the mount tree at an (O_PATH) fd: what was checked is cloned."""
    flags = (OPEN_TREE_CLONE | OPEN_TREE_CLOEXEC | AT_EMPTY_PATH
             | (AT_RECURSIVE if recursive else 0))
    return _check(_syscall(SYS_OPEN_TREE, ctypes.c_int(fd), b"", ctypes.c_uint(flags)),
                  "open_tree(fd)")


def move_mount_to_fd(mnt_fd: int, target_fd: int, what: str = "") -> None:
    """Attach a detached mount on the directory or file an (O_PATH) fd refers to."""
    _check(_syscall(SYS_MOVE_MOUNT, ctypes.c_int(mnt_fd), b"", ctypes.c_int(target_fd), b"",
                    ctypes.c_uint(MOVE_MOUNT_F_EMPTY_PATH | MOVE_MOUNT_T_EMPTY_PATH)),
           f"move_mount(-> {what or 'fd'})")


class OpenHow(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64),
                ("resolve", ctypes.c_uint64)]


def open_nofollow(path: str, flags: int = os.O_PATH) -> int:
    """openat2(path, RESOLVE_NO_SYMLINKS): no component, the last included, may be a
    symlink (ELOOP otherwise); the fd is what the caller checks and then uses."""
    how = OpenHow(flags | os.O_CLOEXEC, 0, RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS)
    return _check(_syscall(SYS_OPENAT2, ctypes.c_int(-100), os.fsencode(path),
                           ctypes.byref(how), ctypes.c_size_t(ctypes.sizeof(how))),
                  f"openat2({path})")


def fd_path(fd: int) -> str:
    return os.readlink(f"/proc/self/fd/{fd}")


STATX_MODE = 0x2
STATX_UID = 0x8
STATX_GID = 0x10
STATX_INO = 0x100
STATX_NLINK = 0x4
STATX_MNT_ID = 0x1000
STATX_ATTR_MOUNT_ROOT = 0x2000
AT_NO_AUTOMOUNT = 0x800


class Statx:
    """The statx(2) fields the shim uses."""

    __slots__ = ("attributes", "dev", "gid", "ino", "mnt_id", "mode", "mount_root", "nlink",
                 "uid")

    def __init__(self, raw: bytes) -> None:
        g = int.from_bytes
        self.attributes = g(raw[8:16], "little")
        attr_mask = g(raw[56:64], "little")
        self.nlink = g(raw[16:20], "little")
        self.uid = g(raw[20:24], "little")
        self.gid = g(raw[24:28], "little")
        self.mode = g(raw[28:30], "little")
        self.ino = g(raw[32:40], "little")
        self.dev = (g(raw[136:140], "little"), g(raw[140:144], "little"))
        self.mnt_id = g(raw[144:152], "little")
        self.mount_root = bool(attr_mask & STATX_ATTR_MOUNT_ROOT
                               and self.attributes & STATX_ATTR_MOUNT_ROOT)


def statx(dirfd: int, name: str = "", follow: bool = False) -> Statx:
    """statx of name under dirfd (name "" : the fd itself), never following a symlink
    nor triggering an automount."""
    buf = ctypes.create_string_buffer(256)
    flags = AT_NO_AUTOMOUNT | (0 if follow else AT_SYMLINK_NOFOLLOW) | (
        AT_EMPTY_PATH if not name else 0)
    mask = STATX_MODE | STATX_UID | STATX_GID | STATX_INO | STATX_NLINK | STATX_MNT_ID
    _check(_syscall(SYS_STATX, ctypes.c_int(dirfd), os.fsencode(name), ctypes.c_int(flags),
                    ctypes.c_uint(mask), buf), f"statx({name or 'fd'})")
    return Statx(buf.raw)


def set_idmap(mnt_fd: int, userns_fd: int, recursive: bool = False) -> None:
    attr = MountAttr(MOUNT_ATTR_IDMAP, 0, 0, userns_fd)
    flags = AT_EMPTY_PATH | (AT_RECURSIVE if recursive else 0)
    _check(_syscall(SYS_MOUNT_SETATTR, ctypes.c_int(mnt_fd), b"", ctypes.c_uint(flags),
                    ctypes.byref(attr), ctypes.c_size_t(ctypes.sizeof(attr))),
           "mount_setattr(MOUNT_ATTR_IDMAP)")


def move_mount(mnt_fd: int, target: str) -> None:
    _check(_syscall(SYS_MOVE_MOUNT, ctypes.c_int(mnt_fd), b"", ctypes.c_int(-100),
                    os.fsencode(target), ctypes.c_uint(MOVE_MOUNT_F_EMPTY_PATH)),
           f"move_mount(-> {target})")


def mount(source: str, target: str, fstype: str, flags: int = 0, data: str | None = None) -> None:
    _check(_libc.mount(os.fsencode(source), os.fsencode(target), os.fsencode(fstype),
                       ctypes.c_ulong(flags), os.fsencode(data) if data is not None else None),
           f"mount({fstype} on {target})")


def umount(target: str, flags: int = 0) -> None:
    _check(_libc.umount2(os.fsencode(target), ctypes.c_int(flags)), f"umount2({target})")


OVERLAYFS_SUPER_MAGIC = 0x794C7630
_statfs = _libc.statfs
_statfs.argtypes = [ctypes.c_char_p, ctypes.c_void_p]


def fs_type(path: str) -> int:
    """statfs(2)'s f_type of the filesystem at path (the topmost mount there)."""
    buf = ctypes.create_string_buffer(128)  # struct statfs is 120 bytes on x86_64
    _check(_statfs(os.fsencode(path), buf), f"statfs({path})")
    return int.from_bytes(buf.raw[:8], "little", signed=True)


_fstatfs = _libc.fstatfs
_fstatfs.argtypes = [ctypes.c_int, ctypes.c_void_p]


def fd_fs_type(fd: int) -> int:
    """fstatfs(2)'s f_type of the filesystem an fd (O_PATH too) is on."""
    buf = ctypes.create_string_buffer(128)
    _check(_fstatfs(fd, buf), "fstatfs")
    return int.from_bytes(buf.raw[:8], "little", signed=True) & 0xFFFFFFFF


def idmapped_clone(path: str, userns_fd: int, recursive: bool = False) -> int:
    """A detached, id-mapped copy of the mount tree at `path` (an fd; caller closes it)."""
    fd = open_tree(path, recursive)
    try:
        set_idmap(fd, userns_fd, recursive)
    except OSError:
        os.close(fd)
        raise
    return fd


class UserNamespace:
    """A user namespace with a given mapping, held by a parked child process.

    `fd` is an O_RDONLY fd on its /proc/<pid>/ns/user, usable for MOUNT_ATTR_IDMAP
    after the child is gone. Use as a context manager.
    """

    def __init__(self, host_base: int, size: int = 65536, uid_map: str | None = None,
                 gid_map: str | None = None) -> None:
        """uid_map/gid_map: the maps' text (lines `inside outside count`); by default
        `0 host_base size` for both."""
        self.fd = -1
        maps = {"uid_map": uid_map or f"0 {host_base} {size}\n",
                "gid_map": gid_map or f"0 {host_base} {size}\n"}
        r, w = os.pipe()
        r2, w2 = os.pipe()
        pid = os.fork()
        if pid == 0:  # child: unshare, tell the parent, wait to be killed
            try:
                os.close(r)
                os.close(w2)
                ok = _syscall(SYS_UNSHARE, ctypes.c_int(CLONE_NEWUSER)) == 0
                os.write(w, b"1" if ok else b"0")
                os.read(r2, 1)
            finally:
                os._exit(0)
        os.close(w)
        os.close(r2)
        try:
            if os.read(r, 1) != b"1":
                raise OSError("unshare(CLONE_NEWUSER) failed in the helper child")
            for name in ("uid_map", "gid_map"):
                with open(f"/proc/{pid}/{name}", "w") as f:
                    f.write(maps[name])
            self.fd = os.open(f"/proc/{pid}/ns/user", os.O_RDONLY | os.O_CLOEXEC)
        finally:
            os.close(r)
            os.close(w2)  # releases the child
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, 0)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> UserNamespace:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


