"""Paths and fds as the caller sees them: its fds copied with pidfd_getfd, paths resolved
beneath its root (openat2 RESOLVE_IN_ROOT in the daemon, or through the executor), and the
mount an fd is on, looked up in the caller's mount table."""

from __future__ import annotations

import errno
import logging
import os

from interceptd.handlers import callerpath, scope
from interceptd.kernel import consts as c
from interceptd.kernel import mountapi, procinfo
from interceptd.kernel.consts import FUSE_SUPER_MAGIC, RESOLVE_IN_ROOT, RESOLVE_NO_MAGICLINKS
from interceptd.kernel.mountapi import openat2
from interceptd.kernel.mounttable import FactsTable, entry_from_facts
from interceptd.kernel.pidfd import pidfd_getfd, thread_pidfd
from interceptd.policy.fdmounts import FdMount
from interceptd.policystore import ContainerPolicy
from interceptd.seams import Request

log = logging.getLogger("interceptd.policy")

try:
    from interceptd import core as _core
except ImportError:  # the C core is not built (kernel-free unit tests)
    _core = None  # type: ignore[assignment]


def caller_fd(req: Request, fd: int, fds: scope.Fds) -> int:
    """A daemon copy of the caller's fd `fd` (AT_FDCWD passes through), from the calling
    thread's own fd table (a thread pidfd; before Linux 6.9 the group leader's)."""
    if scope.s32(fd) == c.AT_FDCWD:
        return c.AT_FDCWD
    pidfd = fds.add(thread_pidfd(req.pid))
    copy = fds.add(pidfd_getfd(pidfd, scope.s32(fd)))
    if not req.valid():
        raise ProcessLookupError(req.pid)
    return copy


def resolve(
    req: Request, dfd: int, path: str, nofollow: bool, fds: scope.Fds, *, empty: bool = False,
    facts: bool = False,
) -> tuple[int, int, FdMount | None]:
    """Open `path` (relative to the daemon's copy `dfd` of the caller's dirfd) as the caller
    sees it: (0, fd, mount) with an O_PATH fd held by the daemon, or (errno, -1, None).

    A path through the caller's own /proc entry (/proc/self/fd/N, ...) is walked from the
    caller's object itself (callerpath), never from the executor's /proc."""
    got = caller_object(req, path, fds)
    if got is not None:
        if got[0] < 0:
            return (-got[0], -1, None)
        dfd, path = got
        empty = True
    if dfd == c.AT_FDCWD and path.startswith("/"):
        # In the daemon, without a fork: the caller's root and mount namespace are reached
        # through /proc/<pid>/root, and RESOLVE_IN_ROOT keeps "..", absolute symlinks and
        # magic links from leaving it (magic links are refused: they would resolve in the
        # daemon's context).
        got = resolve_in_root(req, path, nofollow, fds, facts)
        if got is not None:
            return got
    flags = c.OPEN_TREE_CLOEXEC
    if nofollow:
        flags |= c.AT_SYMLINK_NOFOLLOW
    if empty and path == "":
        flags |= c.AT_EMPTY_PATH
    res = scope.exec_op(req, scope.NS_MOUNT, "open_tree", dfd, path, flags)
    if res.errno or res.fd < 0:
        return (res.errno or errno.EINVAL, -1, None)
    fd = fds.add(res.fd)
    return (0, fd, fd_mount(req, fd, facts=facts))


def caller_object(req: Request, path: str, fds: scope.Fds) -> tuple[int, str] | None:
    """(daemon fd of the object, the rest of the path) when `path` names the caller's own
    fd, cwd or root through /proc; (-errno, "") if that object is missing; else None."""
    ref = callerpath.parse(path)
    if ref is None:
        return None
    try:
        fd = callerpath.open_object(req, ref)
    except ProcessLookupError:
        raise
    except OSError as e:
        if isinstance(e, PermissionError):  # the reason the caller's errno cannot carry
            log.warning("pid %d: %s refused: %s", req.pid, path, e.strerror)
        return (-(e.errno or errno.ENOENT), "")
    if fd is None:
        return None
    return (fds.add(fd), ref.rest)


def target_at(req: Request, dfd: int, path: str, fds: scope.Fds) -> tuple[int, str, int]:
    """Where a mount is attached, as move_mount's (to_dfd, to_path, flag): the caller's
    own object for a /proc/self/fd/N-style path (MOVE_MOUNT_T_EMPTY_PATH when the path
    ends there), else the path as given. OSError if that object is missing."""
    got = caller_object(req, path, fds)
    if got is None:
        return (dfd, path, 0)
    if got[0] < 0:
        raise OSError(-got[0], f"cannot resolve {path}")
    return (got[0], got[1], c.MOVE_MOUNT_T_EMPTY_PATH if got[1] == "" else 0)


def resolve_in_root(req: Request, path: str, nofollow: bool, fds: scope.Fds,
                     facts: bool = False) -> tuple[int, int, FdMount | None] | None:
    """(errno|0, fd, mount), or None to fall back to the executor (a magic link, FUSE)."""
    root = fds.add(os.open(f"/proc/{req.pid}/root", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC))
    if not req.valid():  # the root we opened is the caller's, not a reused pid's
        raise ProcessLookupError(req.pid)
    flags = os.O_PATH | os.O_CLOEXEC | (os.O_NOFOLLOW if nofollow else 0)
    try:
        fd = fds.add(openat2(root, path.lstrip("/") or ".", flags,
                             RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS))
    except OSError as e:
        # EACCES: a FUSE filesystem on the way refuses the daemon (host root, not its
        # server's user) without asking the server; the executor walks as the container's
        # root, which it answers. The daemon's DAC would have allowed anything else.
        if e.errno in (errno.ELOOP, errno.EXDEV, errno.EACCES):
            return None
        return (e.errno or errno.ENOENT, -1, None)
    return (0, fd, fd_mount(req, fd, facts=facts))


def fd_mount(req: Request, fd: int, *, facts: bool = False) -> FdMount:
    """The mount `fd` is on, looked up in the caller's mount table. With `facts` (callers
    whose decision needs only that mount and its parent: umount), statmount(2) reports
    both without generating the whole mountinfo (~20 us); the table is read only if the
    decision asks for more, or if the kernel cannot tell (before 6.11)."""
    if facts and _core is not None:
        try:
            got = _core.fd_mount_facts(fd, req.pid)
        except OSError as e:
            if e.errno == errno.ESRCH:
                raise ProcessLookupError(req.pid) from None
        else:
            entries = [entry_from_facts(f) for f in got]
            table = FactsTable(entries, req.pid)
            return FdMount(entries[0], entries[0].dev, table)
    table = scope.store_of(req.container).tables.lazy(req.pid, req.valid)
    try:
        st = os.fstat(fd)
        mnt_id = fd_mnt_id(fd)
    except PermissionError:
        if mountapi.fd_fs_magic(fd) != FUSE_SUPER_MAGIC:
            raise
        # A FUSE filesystem answers only its own users' stat (the daemon is host root
        # outside the container's user namespace, so EACCES, never a request the server
        # could leave unanswered): fdinfo and the table name the mount without asking it.
        mnt_id = procinfo.fd_mnt_id(fd)
        entry = table.get(mnt_id) if mnt_id is not None else None
        return FdMount(entry, entry.dev if entry else "fuse:detached", table)
    dev = f"{os.major(st.st_dev)}:{os.minor(st.st_dev)}"
    entry = table.get(mnt_id) if mnt_id is not None else None
    return FdMount(entry, dev, table)


def fd_mnt_id(fd: int) -> int | None:
    if _core is not None:
        return _core.fd_mnt_id(fd)  # statx: no fdinfo text to open and parse
    return procinfo.fd_mnt_id(fd)


def fs_type_of(fd: int) -> str:
    """'proc', 'sysfs' or '' from the superblock magic of the fd's filesystem."""
    return {c.PROC_SUPER_MAGIC: "proc", c.SYSFS_MAGIC: "sysfs"}.get(mountapi.fd_fs_magic(fd), "")


def fd_readonly(fd: int) -> bool:
    return bool(os.fstatvfs(fd).f_flag & os.ST_RDONLY)


def detached_on_pseudo(fd: int) -> bool:
    """Whether the mount `fd` is the root of sits on a procfs/sysfs of its (detached)
    tree: ".." from a mount's root is its mount point in the parent mount."""
    try:
        parent = os.open("..", os.O_PATH | os.O_CLOEXEC, dir_fd=fd)
    except OSError:
        return True  # cannot tell: treated as a mask
    try:
        if procinfo.fd_mnt_id(parent) == procinfo.fd_mnt_id(fd):
            return False  # the tree's root, or fd is no mount root (the kernel says EINVAL)
        return fs_type_of(parent) in ("proc", "sysfs")
    finally:
        os.close(parent)


def unprotected_paths(fd: int, fm: FdMount, st: ContainerPolicy, fstype: str) -> list[str]:
    """Masked/read-only paths directly under a procfs/sysfs tree's root that no mount of
    their own covers. Only meaningful when the tree's root is the filesystem's root."""
    prefix = "/proc/" if fstype == "proc" else "/sys/"
    top = procinfo.fd_mnt_id(fd)
    top_ro = bool(fm.entry and fm.entry.readonly) or fd_readonly(fd)
    bad = []
    # What the container's own /proc and /sys have: a recursive copy of them passes.
    wanted = [(m.mountpoint, "ro" if m.kind == "readonly" else "mask")
              for m in st.imm.mounts if m.kind in ("mask", "readonly", "emulated")]
    for path, need in wanted:
        if not path.startswith(prefix):
            continue
        if need == "ro" and top_ro:
            continue
        rel = path[len(prefix):]
        try:
            sub = os.open(rel, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
        except OSError:
            continue  # not there: nothing to reveal
        try:
            if procinfo.fd_mnt_id(sub) == top:
                bad.append(path)
        finally:
            os.close(sub)
    return bad
