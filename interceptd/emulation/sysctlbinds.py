"""The /proc/sys values the daemon serves, bound over the container's own files by the
daemon when it attaches the container, where interceptd-runc's createContainer hook
(runtime/sysctlhook.c) has not bound them already before the container ran.

interceptd-runc cannot put them in config.json as it does /proc/meminfo: runc (1.1)
refuses every config mount inside /proc but a fixed list (the files LXCFS serves). So
the hook, and failing it (a container started by the plain runtime, a hook that could
not), the daemon attaches a clone of each of its files on the container's /proc/sys file, in
the container's mount namespace, from a short-lived thread of its own that leaves the
daemon's filesystem context first (unshare(CLONE_FS): setns into a mount namespace is
refused to a thread sharing it), so no process is forked. The thread joins the
container's network namespace too: /proc/sys/net shows the looking task's network
namespace, and a bind made on the host's view of it would be one the container never
meets. Each target is opened without following any symlink from the container's root and
must be on a procfs.
docs/emulation.md "/proc/sys".
"""

from __future__ import annotations

import ctypes
import os
import threading
from collections.abc import Iterable

from interceptd.kernel import mountapi, mountinfo
from interceptd.kernel.consts import (
    CLONE_FS,
    CLONE_NEWNET,
    CLONE_NEWNS,
    FUSE_SUPER_MAGIC,
    PROC_SUPER_MAGIC,
)
from interceptd.kernel.libc import libc as _libc

_magic = mountapi.fd_fs_type


def _same_file(a: int, b: int) -> bool:
    sa, sb = os.fstat(a), os.fstat(b)
    return (sa.st_dev, sa.st_ino) == (sb.st_dev, sb.st_ino)


def _attach_all(nsfd: int, netfd: int, clones: list[tuple[str, int]], done: list[str],
                kept: list[str], errors: list[str]) -> None:
    if (_libc.unshare(CLONE_FS) != 0 or _libc.setns(netfd, CLONE_NEWNET) != 0
            or _libc.setns(nsfd, CLONE_NEWNS) != 0):
        errors.append(f"entering the mount namespace: {os.strerror(ctypes.get_errno())}")
        return
    # setns(CLONE_NEWNS) made this thread's root and cwd the namespace's root: the
    # container's "/".
    for path, fd in clones:
        try:
            t = mountapi.open_nofollow(path)
        except OSError as e:
            errors.append(f"{path}: {e.strerror}")
            continue
        try:
            magic = _magic(t)
            if magic == FUSE_SUPER_MAGIC and _same_file(t, fd):
                # bound by the hook, or by a predecessor from the connection handed over
                kept.append(path)
                continue
            if magic != PROC_SUPER_MAGIC:
                errors.append(f"{path}: not on a procfs")
                continue
            mountapi.move_mount_to_fd(fd, t, path)
            done.append(path)
        except OSError as e:
            errors.append(f"{path}: {e.strerror}")
        finally:
            os.close(t)


def bound_already(init_pid: int, dev: int, paths: Iterable[str]) -> set[str]:
    """The paths whose topmost mount in the mount namespace of `init_pid` is the file of
    the same path on the tree of st_dev `dev` (the hook's bind, or a predecessor's).

    Read from its mountinfo rather than by looking the paths up: a look-up from the
    daemon's thread goes through the daemon's pid namespace, and since Linux 6.14
    kernel/pid_max is a file per pid namespace, so the file the container meets is
    not the one the daemon would find. The device number is the superblock's, which
    no mount of the container's own can show."""
    want = f"{os.major(dev)}:{os.minor(dev)}"
    with open(f"/proc/{init_pid}/mountinfo", encoding="utf-8", errors="replace") as f:
        entries = mountinfo.parse(f.read(), skip_malformed=True)
    top = {e.mountpoint: e for e in entries}  # in mount order: the last one is on top
    return {p for p in paths if (e := top.get(p)) and e.dev == want and e.root == p}


def bind(init_pid: int, tree: str, paths: Iterable[str]
         ) -> tuple[list[str], list[str], list[str]]:
    """Attach `tree`'s file of each container path in `paths` over that path in the mount
    namespace of `init_pid`; (paths bound now, paths found bound already, errors)."""
    clones: list[tuple[str, int]] = []
    done: list[str] = []
    kept: list[str] = []
    errors: list[str] = []
    nsfd = os.open(f"/proc/{init_pid}/ns/mnt", os.O_RDONLY | os.O_CLOEXEC)
    try:
        netfd = os.open(f"/proc/{init_pid}/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        os.close(nsfd)
        raise
    try:
        for p in paths:
            try:
                clones.append((p, mountapi.open_tree(os.path.join(tree, p.lstrip("/")))))
            except OSError as e:
                errors.append(f"{p}: {e.strerror}")
        if clones:
            t = threading.Thread(target=_attach_all,
                                 args=(nsfd, netfd, clones, done, kept, errors),
                                 name="sysctl-binds", daemon=True)
            t.start()
            t.join(10)
            if t.is_alive():  # its fds stay open rather than be reused under it
                errors.append("timed out")
                return done, kept, errors
    except BaseException:
        os.close(nsfd)
        os.close(netfd)
        raise
    os.close(nsfd)
    os.close(netfd)
    for _, fd in clones:
        os.close(fd)
    return done, kept, errors
