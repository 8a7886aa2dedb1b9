"""Shifting the owners of a (small) directory tree by a fixed offset.

Used for a container's own overlay upper dir only: it starts almost empty, and
the shared image layers are id-mapped, never chowned.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat

_CAP_XATTR = "security.capability"


def _shift_one(path: str, st: os.stat_result, delta: int, lo: int, hi: int) -> None:
    uid, gid = st.st_uid, st.st_gid
    nu = uid + delta if lo <= uid < hi else uid
    ng = gid + delta if lo <= gid < hi else gid
    if (nu, ng) == (uid, gid):
        return
    caps = None
    if stat.S_ISREG(st.st_mode):
        with contextlib.suppress(OSError):
            caps = os.getxattr(path, _CAP_XATTR, follow_symlinks=False)
    os.chown(path, nu, ng, follow_symlinks=False)
    # chown clears set-id bits and file capabilities; put them back.
    if not stat.S_ISLNK(st.st_mode) and st.st_mode & (stat.S_ISUID | stat.S_ISGID):
        os.chmod(path, stat.S_IMODE(st.st_mode))
    if caps is not None:
        with contextlib.suppress(OSError):
            os.setxattr(path, _CAP_XATTR, caps, follow_symlinks=False)


def shift_tree(top: str, delta: int, lo: int, hi: int) -> int:
    """Add `delta` to every uid/gid in [lo, hi) under top (top included); returns count."""
    n = 0
    try:
        st = os.lstat(top)
    except FileNotFoundError:
        return 0
    _shift_one(top, st, delta, lo, hi)
    for dirpath, dirnames, filenames in os.walk(top):
        for name in dirnames + filenames:
            p = os.path.join(dirpath, name)
            try:
                st = os.lstat(p)
            except OSError as e:
                if e.errno == errno.ENOENT:
                    continue
                raise
            _shift_one(p, st, delta, lo, hi)
            n += 1
    return n
