"""Bind and rootfs sources: opened once, checked on the fd (no kernel filesystem of
the host, no device node, nothing mounted below from elsewhere), against the mount
table read at most once per create."""

from __future__ import annotations

import errno
import os
import stat

from interceptd.kernel import mountapi, mountinfo

from . import spec


def open_checked(src: str, what: str) -> tuple[int, str]:
    """Open `src` once (O_PATH, no symlink anywhere after resolving the configured
    path): the fd and the path it really is. Everything after works on this fd."""
    real = os.path.realpath(src)
    try:
        fd = mountapi.open_nofollow(real)
    except OSError as e:
        if e.errno == errno.ENOENT:
            raise spec.Refused(f"{what} {src} does not exist") from None
        raise spec.Refused(f"cannot open {what} {src}: {e} (it changed while being "
                           "checked?)") from None
    try:
        if mountapi.fd_path(fd) != real:
            raise spec.Refused(f"{what} {src} is not where it resolved ({real})")
    except BaseException:
        os.close(fd)
        raise
    return fd, real


class MountTable:
    """The host's mount table, read at most once per create (only when needed)."""

    def __init__(self, entries: list[mountinfo.MountEntry] | None = None) -> None:
        self._entries = entries

    @property
    def entries(self) -> list[mountinfo.MountEntry]:
        if self._entries is None:
            self._entries = mountinfo.read()
        return self._entries

    def by_id(self, mnt_id: int) -> mountinfo.MountEntry | None:
        return next((e for e in self.entries if e.mount_id == mnt_id), None)

    def below(self, path: str) -> list[mountinfo.MountEntry]:
        top = path.rstrip("/") + "/"
        return [e for e in self.entries if e.mountpoint.startswith(top)]

    def origins(self, e: mountinfo.MountEntry, path: str) -> list[str]:
        """The other places on the host where `path` (on mount e) shows: through every
        other mount of the same filesystem whose root contains e's root."""
        if not under_any(path, e.mountpoint):
            return []
        inner = _join(e.root, path[len(e.mountpoint):])
        out = []
        for o in self.entries:
            if o.dev != e.dev or o.mount_id == e.mount_id or not under_any(inner, o.root):
                continue
            place = _join(o.mountpoint, inner[len(o.root.rstrip("/")):])
            if place != path and not under_any(place, path):
                out.append(place)
        return out


def _join(top: str, rest: str) -> str:
    return os.path.normpath(top.rstrip("/") + "/" + rest.lstrip("/"))


def check_source_fs(fd: int, real: str, what: str, table: MountTable,
                    recursive: bool, policy: spec.BindPolicy | None = None) -> None:
    """Refuse a source on a kernel pseudo-filesystem of the host (by the fd's statfs
    magic and its mount's type), a device node, and, for a recursive bind, any mount
    below it of that kind; a bind-mounted source (a volume with o=bind) is checked
    at the place it really comes from."""
    magic = mountapi.fd_fs_type(fd)
    if magic in spec.PSEUDO_FS_MAGIC:
        raise spec.Refused(f"{what} {real} is on the host's {spec.PSEUDO_FS_MAGIC[magic]} "
                           "filesystem: refused by interceptd")
    sx = mountapi.statx(fd)
    if stat.S_ISCHR(sx.mode) or stat.S_ISBLK(sx.mode):
        raise spec.Refused(f"{what} {real} is a device node: refused by interceptd")
    if not recursive and magic not in _SHARED_MAGIC and _on_area_mount(sx, real, policy):
        # The common case (Docker's per-container files): on the very mount of the
        # shared directory, nothing below: the mount table has nothing to add.
        return
    own = table.by_id(sx.mnt_id)
    mounts = [(own, real)] if own is not None else []
    if recursive:
        mounts += [(e, e.mountpoint) for e in table.below(real)]
    for e, path in mounts:
        if e.fstype in spec.PSEUDO_FS_NAMES:
            raise spec.Refused(f"{what} {real} carries the host's {e.fstype} filesystem "
                               f"(mounted at {e.mountpoint}): refused by interceptd")
        if policy is None:
            continue
        # Made at or above the shared directory (an admin's /home or data root
        # from another disk): that is the shared place. Made inside it (a volume
        # driver's o=bind,device=... or type=ext4,device=/dev/..., anyone's bind):
        # wherever else the same filesystem shows on the host, `path` is that place
        # too, which must be allowed itself.
        area = policy.area(path)
        if area is not None and under_any(area, e.mountpoint):
            continue
        for origin in table.origins(e, path):
            policy.check(origin, f"{path} (also {origin} on the host)", "the container")


# Filesystems whose statfs magic other kinds share (devtmpfs is a tmpfs): only the
# mount table's type tells them apart.
_SHARED_MAGIC = frozenset({0x01021994, 0x858458F6})  # tmpfs, ramfs


def _on_area_mount(sx: mountapi.Statx, real: str, policy: spec.BindPolicy | None) -> bool:
    area = policy.area(real) if policy is not None else None
    if area is None:
        return False
    try:
        return mountapi.statx(-100, area, follow=True).mnt_id == sx.mnt_id
    except OSError:
        return False


def under_any(path: str, top: str) -> bool:
    return path == top or path.startswith(top.rstrip("/") + "/")
