"""The container's rootfs overlay built from layer fds, so that no host path is stored in
its mount options.

overlayfs keeps the layer names it was given and prints them in /proc/<pid>/mountinfo
and /proc/mounts: mounted with `lowerdir=/var/lib/docker/overlay2/...,upperdir=...`,
every container reads where its writable layer lives on the host (the first step of
the cgroup release_agent escapes). Given each layer as an fd (`FSCONFIG_SET_FD` with
`lowerdir+`, `upperdir`, `workdir`, Linux 6.13), the kernel names it by the fd's path
within its own mount: a detached clone of the layer itself is `/`, and the upper and
work dirs, opened beneath one detached clone of their closest common directory (overlayfs wants
both on one mount), are `/<name>`. So the options read
`lowerdir+=/,lowerdir+=/,upperdir=/diff,workdir=/work`. The layers stay what they were:
lowers id-mapped detached clones, the upper the host's directory (its owners shifted).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Sequence

from interceptd.kernel import mountapi
from interceptd.kernel.consts import (
    FSCONFIG_CMD_CREATE,
    FSCONFIG_SET_FD,
    FSCONFIG_SET_FLAG,
    FSCONFIG_SET_STRING,
)

# Options Docker passes that name nothing on the host and are kept as they were.
KEPT_OPTIONS = frozenset({"redirect_dir", "metacopy", "volatile", "xino",
                          "nfs_export", "userxattr"})


def fsconfig_fd(fc: int, key: str, fd: int) -> None:
    mountapi.fsconfig(fc, FSCONFIG_SET_FD, key, None, fd)


def fsconfig_str(fc: int, key: str, value: str | None) -> None:
    if value is None:
        mountapi.fsconfig(fc, FSCONFIG_SET_FLAG, key)
        return
    mountapi.fsconfig(fc, FSCONFIG_SET_STRING, key, value)


def kept_options(other: Sequence[str]) -> list[tuple[str, str | None]]:
    """The overlay options carried over: the harmless feature switches only."""
    out: list[tuple[str, str | None]] = []
    for opt in other:
        key, sep, val = opt.partition("=")
        if key in KEPT_OPTIONS:
            out.append((key, val if sep else None))
    return out


def overlay_fd(lower_fds: Sequence[int], upper: str, work: str,
               other: Sequence[str] = ()) -> int:
    """A detached overlay mount (an fd, the caller's to close) of `lower_fds` (topmost
    first, each a detached mount of one layer) under the host directories `upper` and
    `work`. Both are opened beneath one clone of their closest common directory
    (Docker's and containerd's `<id>/`): the options show their paths below it only."""
    upper, work = os.path.normpath(upper), os.path.normpath(work)
    if not (os.path.isabs(upper) and os.path.isabs(work)):
        raise ValueError(f"upperdir {upper} and workdir {work} must be absolute")
    parent = os.path.commonpath([os.path.dirname(upper), os.path.dirname(work)])
    fds: list[int] = []
    try:
        fc = mountapi.fsopen("overlay")
        fds.append(fc)
        fsconfig_str(fc, "source", "overlay")
        for fd in lower_fds:
            fsconfig_fd(fc, "lowerdir+", fd)
        top = mountapi.open_tree(parent)
        fds.append(top)
        for key, path in (("upperdir", upper), ("workdir", work)):
            d = os.open(os.path.relpath(path, parent),
                        os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=top)
            fds.append(d)
            fsconfig_fd(fc, key, d)
        for key, val in kept_options(other):
            fsconfig_str(fc, key, val)
        mountapi.fsconfig(fc, FSCONFIG_CMD_CREATE)
        return mountapi.fsmount(fc, 0)
    finally:
        for fd in fds:
            with contextlib.suppress(OSError):
                os.close(fd)
