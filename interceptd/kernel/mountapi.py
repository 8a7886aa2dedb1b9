"""The mount API (open_tree, move_mount, fsopen, fsconfig, fsmount, mount_setattr, mount,
umount2), openat2, statx and statfs through ctypes: the daemon's and the runtime shim's one
wrapper. Numbers come from `interceptd.syscalls`, flags from `interceptd.kernel.consts`.

Errors come back as OSError with the syscall named; nothing here is silent.

The daemon builds a procfs/sysfs the container asks for as a detached tree with these: the
filesystem context comes from the caller's namespaces (fsopen through the executor, so it
shows the caller's pid or network namespace), the superblock and the detached mount are made
here, the masks and read-only paths are attached inside the detached tree, and only then is
the whole tree attached where the caller asked, in one move_mount. Nothing is ever visible
unmasked.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os

from interceptd.kernel.consts import (
    AT_EMPTY_PATH,
    AT_FDCWD,
    AT_NO_AUTOMOUNT,
    AT_RECURSIVE,
    AT_SYMLINK_NOFOLLOW,
    CLONE_NEWUSER,
    FSCONFIG_CMD_CREATE,
    FSCONFIG_SET_FLAG,
    FSCONFIG_SET_STRING,
    FSMOUNT_CLOEXEC,
    FSOPEN_CLOEXEC,
    MNT_DETACH,
    MOUNT_ATTR_IDMAP,
    MOVE_MOUNT_F_EMPTY_PATH,
    MOVE_MOUNT_T_EMPTY_PATH,
    MS_SHARED,
    OPEN_TREE_CLOEXEC,
    OPEN_TREE_CLONE,
    OVERLAYFS_SUPER_MAGIC,
    RESOLVE_NO_MAGICLINKS,
    RESOLVE_NO_SYMLINKS,
    STATX_ATTR_MOUNT_ROOT,
    STATX_GID,
    STATX_INO,
    STATX_MNT_ID,
    STATX_MODE,
    STATX_NLINK,
    STATX_UID,
)
from interceptd.kernel.libc import check as _check
from interceptd.kernel.libc import libc as _libc
from interceptd.kernel.libc import syscall as _syscall
from interceptd.syscalls import nr

__all__ = ["AT_FDCWD", "FSCONFIG_CMD_CREATE", "FSCONFIG_SET_STRING", "FSMOUNT_CLOEXEC",
           "MNT_DETACH", "MS_SHARED", "OVERLAYFS_SUPER_MAGIC"]


SYS_OPEN_TREE = nr("open_tree")
SYS_MOVE_MOUNT = nr("move_mount")
SYS_FSOPEN = nr("fsopen")
SYS_FSCONFIG = nr("fsconfig")
SYS_FSMOUNT = nr("fsmount")
SYS_MOUNT_SETATTR = nr("mount_setattr")
SYS_UNSHARE = nr("unshare")
SYS_OPENAT2 = nr("openat2")
SYS_STATX = nr("statx")


class MountAttr(ctypes.Structure):
    _fields_ = [
        ("attr_set", ctypes.c_uint64),
        ("attr_clr", ctypes.c_uint64),
        ("propagation", ctypes.c_uint64),
        ("userns_fd", ctypes.c_uint64),
    ]


def open_tree(path: str, recursive: bool = False, dirfd: int = AT_FDCWD) -> int:
    return clone_tree(dirfd, path, recursive)


def open_tree_fd(fd: int, recursive: bool = False) -> int:
    """A detached clone of the mount tree at an (O_PATH) fd: what was checked is cloned."""
    return clone_tree(fd, "", recursive)


class OpenHow(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64),
                ("resolve", ctypes.c_uint64)]


def open_nofollow(path: str, flags: int = os.O_PATH) -> int:
    """openat2(path, RESOLVE_NO_SYMLINKS): no component, the last included, may be a
    symlink (ELOOP otherwise); the fd is what the caller checks and then uses."""
    return openat2(AT_FDCWD, path, flags | os.O_CLOEXEC,
                   RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS)


def openat2(dirfd: int, path: str, flags: int, resolve: int) -> int:
    """openat2(2) with `resolve` (RESOLVE_*); OSError names the path."""
    how = OpenHow(flags, 0, resolve)
    r = _syscall(ctypes.c_long(SYS_OPENAT2), ctypes.c_int(dirfd),
                 ctypes.c_char_p(os.fsencode(path)), ctypes.byref(how),
                 ctypes.c_size_t(ctypes.sizeof(how)))
    if r < 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e), path)
    return int(r)


def fd_path(fd: int) -> str:
    return os.readlink(f"/proc/self/fd/{fd}")


class Statx:
    """The statx(2) fields the shim uses."""

    __slots__ = ("attributes", "dev", "gid", "ino", "mask", "mnt_id", "mode", "mount_root",
                 "nlink", "uid")

    def __init__(self, raw: bytes) -> None:
        g = int.from_bytes
        self.mask = g(raw[0:4], "little")  # the fields the kernel filled in
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


def fsopen(fstype: str) -> int:
    return _check(_syscall(SYS_FSOPEN, os.fsencode(fstype), ctypes.c_uint(FSOPEN_CLOEXEC)),
                  f"fsopen({fstype})")


def fsconfig(fd: int, cmd: int, key: str | None = None, value: str | None = None,
             aux: int = 0) -> None:
    _check(_syscall(SYS_FSCONFIG, ctypes.c_int(fd), ctypes.c_uint(cmd), _b(key), _b(value),
                    ctypes.c_int(aux)), f"fsconfig({key or cmd})")


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
    return _check(_syscall(SYS_FSMOUNT, ctypes.c_int(fd), ctypes.c_uint(FSMOUNT_CLOEXEC),
                           ctypes.c_uint(attrs)), "fsmount")


def clone_tree(dfd: int, path: str, recursive: bool = True) -> int:
    """open_tree(OPEN_TREE_CLONE) of `path` under `dfd` ("" : the fd itself)."""
    flags = OPEN_TREE_CLONE | OPEN_TREE_CLOEXEC | (AT_RECURSIVE if recursive else 0)
    if path == "":
        flags |= AT_EMPTY_PATH
    return _check(_syscall(SYS_OPEN_TREE, ctypes.c_int(dfd), _b(path), ctypes.c_uint(flags)),
                  f"open_tree({path or 'fd'})")


def _move_mount(src_fd: int, dst_dfd: int, dst_path: str, flags: int, what: str) -> None:
    _check(_syscall(SYS_MOVE_MOUNT, ctypes.c_int(src_fd), b"", ctypes.c_int(dst_dfd),
                    _b(dst_path), ctypes.c_uint(MOVE_MOUNT_F_EMPTY_PATH | flags)),
           f"move_mount(-> {what})")


def attach(src_fd: int, dst_dfd: int, dst_path: str) -> None:
    """move_mount of the detached tree `src_fd` onto `dst_path` (relative to `dst_dfd`,
    which may be a detached tree itself)."""
    _move_mount(src_fd, dst_dfd, dst_path, 0, dst_path)


def move_mount(mnt_fd: int, target: str) -> None:
    _move_mount(mnt_fd, AT_FDCWD, target, 0, target)


def move_mount_to_fd(mnt_fd: int, target_fd: int, what: str = "") -> None:
    """Attach a detached mount on the directory or file an (O_PATH) fd refers to."""
    _move_mount(mnt_fd, target_fd, "", MOVE_MOUNT_T_EMPTY_PATH, what or "fd")


def _setattr(fd: int, attr: MountAttr, recursive: bool, what: str) -> None:
    flags = AT_EMPTY_PATH | (AT_RECURSIVE if recursive else 0)
    _check(_syscall(SYS_MOUNT_SETATTR, ctypes.c_int(fd), b"", ctypes.c_uint(flags),
                    ctypes.byref(attr), ctypes.c_size_t(ctypes.sizeof(attr))), what)


def set_attrs(fd: int, attr_set: int, recursive: bool = True) -> None:
    _setattr(fd, MountAttr(attr_set, 0, 0, 0), recursive, "mount_setattr")


def set_idmap(mnt_fd: int, userns_fd: int, recursive: bool = False) -> None:
    _setattr(mnt_fd, MountAttr(MOUNT_ATTR_IDMAP, 0, 0, userns_fd), recursive,
             "mount_setattr(MOUNT_ATTR_IDMAP)")


def _b(s: str | None) -> bytes | None:
    return None if s is None else os.fsencode(s)


def mount(source: str, target: str, fstype: str, flags: int = 0, data: str | None = None) -> None:
    _check(_libc.mount(os.fsencode(source), os.fsencode(target), os.fsencode(fstype),
                       ctypes.c_ulong(flags), os.fsencode(data) if data is not None else None),
           f"mount({fstype} on {target})")


def umount(target: str, flags: int = 0) -> None:
    _check(_libc.umount2(os.fsencode(target), ctypes.c_int(flags)), f"umount2({target})")


def detach_all(target: str, most: int = 16) -> None:
    """Lazily unmount whatever is stacked on `target` (what a killed owner left there):
    until it is no mount point (EINVAL) or gone (ENOENT), `most` times at the most."""
    for _ in range(most):
        try:
            umount(target, MNT_DETACH)
        except OSError as e:
            if e.errno in (errno.EINVAL, errno.ENOENT):
                return
            raise


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


def fd_fs_magic(fd: int) -> int:
    """`fd_fs_type`, or 0 if fstatfs fails. FUSE answers a stranger's statfs with its
    magic alone, without asking its server."""
    try:
        return fd_fs_type(fd)
    except OSError:
        return 0


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


