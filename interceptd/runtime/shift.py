"""Shifting the owners of a container's overlay upper dir by a fixed offset.

Used for a container's own overlay upper dir only: it starts almost empty, and
the shared image layers are id-mapped, never chowned.

The walk stays on the upper dir's own mount: every entry is looked at with
statx(AT_SYMLINK_NOFOLLOW) relative to its directory's fd; anything on another
mount (a mount point: a bind propagated into the upper dir, or anything else
mounted there), any device node (the container cannot create one; overlayfs's
whiteouts are its own, 0:0), and any directory that is not what was looked at
when opened, is left alone. Nothing is resolved by path, nothing followed.

When the shift makes a file host root's (the shift back at delete), its
setuid/setgid bits and file capabilities are not put back: the container's root
must never leave a setuid-root file or a capability-carrying root file on the host.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat

from interceptd.kernel import mountapi

AT_FDCWD = mountapi.AT_FDCWD
_CAP_XATTR = "security.capability"
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


class _Walk:
    def __init__(self, delta: int, lo: int, hi: int, mnt_id: int,
                 dev: tuple[int, int]) -> None:
        self.delta, self.lo, self.hi = delta, lo, hi
        self.mnt_id, self.dev = mnt_id, dev
        self.count = 0
        self.skipped: list[str] = []

    def _new_ids(self, sx: mountapi.Statx) -> tuple[int, int]:
        nu = sx.uid + self.delta if self.lo <= sx.uid < self.hi else sx.uid
        ng = sx.gid + self.delta if self.lo <= sx.gid < self.hi else sx.gid
        return nu, ng

    def foreign(self, sx: mountapi.Statx) -> bool:
        """Not the upper dir's own: another mount, another filesystem, a device."""
        return (sx.mnt_id != self.mnt_id or sx.dev != self.dev or sx.mount_root
                or stat.S_ISCHR(sx.mode) or stat.S_ISBLK(sx.mode))

    def shift(self, dirfd: int, name: str, sx: mountapi.Statx, fd: int | None = None) -> None:
        """chown one entry: a directory by its fd; a symlink by name under dirfd
        (never followed); anything else through an O_PATH fd checked to be the
        entry that was looked at."""
        nu, ng = self._new_ids(sx)
        if (nu, ng) == (sx.uid, sx.gid):
            return
        if stat.S_ISLNK(sx.mode):
            os.chown(name, nu, ng, dir_fd=dirfd, follow_symlinks=False)
            self.count += 1
            return
        own = fd is None
        if own:
            try:
                fd = os.open(name, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dirfd)
            except FileNotFoundError:
                return
        try:
            again = mountapi.statx(fd)
            if self.foreign(again) or (again.ino, again.dev) != (sx.ino, sx.dev):
                return  # not what was looked at
            # Through /proc/self/fd: the checked inode itself (O_PATH fds take no fchown).
            path = f"/proc/self/fd/{fd}"
            caps = None
            if stat.S_ISREG(sx.mode) and nu != 0:
                with contextlib.suppress(OSError):
                    caps = os.getxattr(path, _CAP_XATTR)
            os.chown(path, nu, ng)
            self.count += 1
            mode = stat.S_IMODE(sx.mode)
            if mode & (stat.S_ISUID | stat.S_ISGID):
                # chown cleared the set-id bits of a non-directory; put them back
                # unless the file is now host root's (user or group).
                keep = mode
                if not stat.S_ISDIR(sx.mode):
                    if nu == 0:
                        keep &= ~stat.S_ISUID
                    if ng == 0:
                        keep &= ~stat.S_ISGID
                os.chmod(path, keep)
            if caps is not None:
                with contextlib.suppress(OSError):
                    os.setxattr(path, _CAP_XATTR, caps)
            elif stat.S_ISREG(sx.mode) and nu == 0:
                # chown drops a file capability; should a kernel keep it, root's
                # file must not carry one the container set.
                with contextlib.suppress(OSError):
                    os.removexattr(path, _CAP_XATTR)
        finally:
            if own:
                os.close(fd)

    def walk(self, dirfd: int, where: str) -> None:
        for name in os.listdir(dirfd):
            try:
                sx = mountapi.statx(dirfd, name)
            except OSError as e:
                if e.errno == errno.ENOENT:
                    continue
                raise
            if self.foreign(sx):
                self.skipped.append(os.path.join(where, name))
                continue
            if not stat.S_ISDIR(sx.mode):
                self.shift(dirfd, name, sx)
                continue
            try:
                fd = os.open(name, _DIR_FLAGS, dir_fd=dirfd)
            except OSError as e:
                if e.errno in (errno.ENOENT, errno.ELOOP, errno.ENOTDIR):
                    continue
                raise
            try:
                again = mountapi.statx(fd)
                if self.foreign(again) or (again.ino, again.dev) != (sx.ino, sx.dev):
                    self.skipped.append(os.path.join(where, name))  # changed meanwhile
                    continue
                self.walk(fd, os.path.join(where, name))
                self.shift(dirfd, name, again, fd)
            finally:
                os.close(fd)


def shift_file(path: str, delta: int, lo: int, hi: int) -> int:
    """The same for one regular file (its last component never followed); returns 0 or 1.
    Anything else at `path` (a directory, a symlink, a device) is left alone."""
    parent, name = os.path.split(path)
    try:
        dfd = os.open(parent or ".", _DIR_FLAGS)
    except FileNotFoundError:
        return 0
    try:
        try:
            sx = mountapi.statx(dfd, name)
        except FileNotFoundError:
            return 0
        if not stat.S_ISREG(sx.mode):
            return 0
        w = _Walk(delta, lo, hi, sx.mnt_id, sx.dev)
        w.shift(dfd, name, sx)
        return w.count
    finally:
        os.close(dfd)


def shift_path(path: str, delta: int, lo: int, hi: int) -> int:
    """shift_tree for a directory, shift_file for a regular file (as recorded)."""
    try:
        sx = mountapi.statx(AT_FDCWD, path)
    except FileNotFoundError:
        return 0
    return shift_tree(path, delta, lo, hi) if stat.S_ISDIR(sx.mode) else shift_file(
        path, delta, lo, hi)


def shift_tree(top: str, delta: int, lo: int, hi: int) -> int:
    """Add `delta` to every uid/gid in [lo, hi) under top (top included); returns count.

    top itself must be a directory reached without a symlink in its last component.
    """
    try:
        fd = os.open(top, _DIR_FLAGS)
    except FileNotFoundError:
        return 0
    try:
        sx = mountapi.statx(fd)
        w = _Walk(delta, lo, hi, sx.mnt_id, sx.dev)
        w.walk(fd, top)
        w.shift(fd, ".", sx, fd)
        return w.count
    finally:
        os.close(fd)
