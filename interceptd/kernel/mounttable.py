"""Mount tables read from /proc/<pid>/mountinfo: whole, lazily (only the lines a decision
asks for), from statmount's facts, and cached per mount namespace between calls.

The tables themselves are plain data the deciders walk (policy/immutable.py classifies
them); reading and caching them is mechanism, here.
"""

from __future__ import annotations

import os
import posixpath
import select
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Protocol

from interceptd.kernel.consts import (
    MOUNT_ATTR_NODEV,
    MOUNT_ATTR_NOEXEC,
    MOUNT_ATTR_NOSUID,
    MOUNT_ATTR_RDONLY,
    STATX_MNT_ID,
)
from interceptd.kernel.mountapi import statx
from interceptd.kernel.mountinfo import MountEntry, parse, parse_line


class MountTable:
    """One mount namespace's table as seen by one process (paths relative to its root)."""

    def __init__(self, entries: Iterable[MountEntry]):
        self.entries: list[MountEntry] = list(entries)
        self.by_id: dict[int, MountEntry] = {e.mount_id: e for e in self.entries}

    @classmethod
    def parse(cls, text: str) -> MountTable:
        return cls(parse(text))

    @classmethod
    def read(cls, pid: int) -> MountTable:
        with open(f"/proc/{pid}/mountinfo", encoding="utf-8", errors="surrogateescape") as f:
            return cls.parse(f.read())

    def get(self, mount_id: int) -> MountEntry | None:
        return self.by_id.get(mount_id)

    def parent(self, e: MountEntry) -> MountEntry | None:
        if e.parent_id == e.mount_id:
            return None
        return self.by_id.get(e.parent_id)

    def children(self, e: MountEntry) -> list[MountEntry]:
        return [c for c in self.entries if c.parent_id == e.mount_id and c is not e]

    def subtree(self, e: MountEntry) -> list[MountEntry]:
        """`e`'s descendants (not `e` itself), breadth first."""
        out: list[MountEntry] = []
        todo = [e]
        while todo:
            cur = todo.pop(0)
            for c in self.children(cur):
                if c.mount_id != e.mount_id and c not in out:
                    out.append(c)
                    todo.append(c)
        return out

    def topmost_at(self, path: str) -> MountEntry | None:
        """The mount visible at exactly `path` (the last one listed: mounts stack in order)."""
        path = posixpath.normpath(path)
        found = None
        for e in self.entries:
            if e.mountpoint == path:
                found = e
        return found


class LazyMountTable(MountTable):
    """`MountTable.read(pid)`, read and parsed only as far as a decision asks.

    Most vetted calls need nothing of the table (a new tmpfs mount) or two lines of it
    (the mount an umount names and its parent): those are found by id in the raw text
    without parsing the rest. The file is read on first use, once.
    """

    def __init__(self, pid: int) -> None:  # no super().__init__: nothing is read yet
        self._pid = pid
        self._text: str | None = None
        self._entries: list[MountEntry] | None = None
        self._one: dict[int, MountEntry | None] = {}

    def _raw(self) -> str:
        if self._text is None:
            # Raw reads: no text layer; the kernel hands out whole lines per read.
            fd = os.open(f"/proc/{self._pid}/mountinfo", os.O_RDONLY | os.O_CLOEXEC)
            try:
                parts = [b"\n"]
                while chunk := os.read(fd, 65536):
                    parts.append(chunk)
            finally:
                os.close(fd)
            self._text = b"".join(parts).decode("utf-8", "surrogateescape")
        return self._text

    @property  # type: ignore[override]
    def entries(self) -> list[MountEntry]:
        if self._entries is None:
            self._entries = parse(self._raw())
        return self._entries

    @property  # type: ignore[override]
    def by_id(self) -> dict[int, MountEntry]:
        return {e.mount_id: e for e in self.entries}

    def get(self, mount_id: int) -> MountEntry | None:
        if mount_id in self._one:
            return self._one[mount_id]
        text = self._raw()
        i = text.find(f"\n{int(mount_id)} ")
        e = None
        if i >= 0:
            j = text.find("\n", i + 1)
            e = parse_line(text[i + 1 : j if j >= 0 else len(text)])
        self._one[mount_id] = e
        return e

    def parent(self, e: MountEntry) -> MountEntry | None:
        if e.parent_id == e.mount_id:
            return None
        return self.get(e.parent_id)


class FactsTable(MountTable):
    """The mounts statmount(2) reported (an umount's target and its parent), with the
    full table read only if a decision asks for anything else."""

    def __init__(self, known: Iterable[MountEntry], pid: int) -> None:
        self._known = {e.mount_id: e for e in known}
        self._rest = LazyMountTable(pid)

    @property  # type: ignore[override]
    def entries(self) -> list[MountEntry]:
        return self._rest.entries

    @property  # type: ignore[override]
    def by_id(self) -> dict[int, MountEntry]:
        return self._rest.by_id

    def get(self, mount_id: int) -> MountEntry | None:
        e = self._known.get(mount_id)
        return e if e is not None else self._rest.get(mount_id)

    def parent(self, e: MountEntry) -> MountEntry | None:
        if e.parent_id == e.mount_id:
            return None
        return self.get(e.parent_id)


_ATTR_OPTS = ((MOUNT_ATTR_NOSUID, "nosuid"), (MOUNT_ATTR_NODEV, "nodev"),
              (MOUNT_ATTR_NOEXEC, "noexec"))


class MountFactsLike(Protocol):
    """What statmount(2) reports of a mount (core.MountFacts)."""

    mnt_id: int
    parent_id: int
    dev: str
    root: str
    mountpoint: str
    fstype: str
    attr: int
    sb_flags: int


def entry_from_facts(f: MountFactsLike) -> MountEntry:
    """A MountEntry from core.MountFacts (mount point relative to the namespace's root;
    no source or propagation fields: decisions that need them read the full table)."""
    opts = ["ro" if f.attr & MOUNT_ATTR_RDONLY else "rw"]
    opts += [name for bit, name in _ATTR_OPTS if f.attr & bit]
    return MountEntry(
        mount_id=f.mnt_id, parent_id=f.parent_id, dev=f.dev, root=f.root,
        mountpoint=f.mountpoint, options=",".join(opts), optional=(), fstype=f.fstype,
        source="", super_options="ro" if f.sb_flags & 1 else "rw")


# --- tables kept between calls ----------------------------------------------------------



def _root_mount(pid: int) -> tuple[int, int, int] | None:
    """(mount id, dev, ino) of `pid`'s root if that root is the root of its mount, else
    None (a chroot into a directory: its view is not the mount's, so it is not cached)."""
    fd = os.open(f"/proc/{pid}/root", os.O_PATH | os.O_CLOEXEC)
    try:
        sx = statx(fd)
    finally:
        os.close(fd)
    if not sx.mask & STATX_MNT_ID or not sx.mount_root:
        return None
    return (sx.mnt_id, os.makedev(*sx.dev), sx.ino)


def _seen_from(table: MountTable, root_id: int) -> bool:
    """True if `table` is the view from the root of mount `root_id`: that mount is at "/"
    and every other mount listed descends from it (a view from any other root lists a
    mount that does not, or lacks `root_id`)."""
    top = table.by_id.get(root_id)
    if top is None or top.mountpoint != "/":
        return False
    ok = {root_id}
    pending = [e for e in table.entries if e.mount_id != root_id]
    while pending:
        rest = [e for e in pending if e.parent_id not in ok]
        if len(rest) == len(pending):
            return False
        ok.update(e.mount_id for e in pending if e.parent_id in ok)
        pending = rest
    return True


@dataclass
class _Cached:
    fd: int  # /proc/<pid>/mountinfo as opened for the read: pins the namespace, pollable
    table: MountTable


class TableCache:
    """One container's mount tables, per (mount namespace, root mount), kept between calls.

    A cached table is handed out only after `poll(2)` on the mountinfo fd it was read from
    reports no change: the kernel flags that fd on every mount, umount, move, attribute
    change and propagation into that namespace, whoever made it (the daemon, the native
    helper, the host). Anything unsure means a fresh read: a caller whose root is not a
    mount's root (a chroot into a directory), a table whose content is not the view from
    that root (the root changed during the read), a flagged fd, `invalidate()` (the
    daemon's own mount changes, as a second guard). The cost of a call is the caller's own
    namespace's table at most, and only after it changed.
    """

    MAX_TABLES = 8  # namespaces (or roots) of one container kept at once

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._tables: OrderedDict[tuple[int, int, int, int, int], _Cached] = OrderedDict()
        self.reads = 0  # full reads made (tests, stats)

    def get(self, pid: int, valid: Callable[[], bool] | None = None) -> MountTable:
        """`pid`'s mount table, as `MountTable.read(pid)` would return it now. Call it after
        taking the fds whose mounts the decision looks up: a mount made after the check
        flags the fd, so an id missing from the table is really not in the namespace."""
        try:
            ns = os.stat(f"/proc/{pid}/ns/mnt")
            root = _root_mount(pid)
        except OSError:
            return LazyMountTable(pid)
        if valid is not None and not valid():
            raise ProcessLookupError(pid)
        if root is None:
            return LazyMountTable(pid)
        key = (ns.st_dev, ns.st_ino, *root)
        with self._lock:
            hit = self._tables.get(key)
            if hit is not None:
                if _unchanged(hit.fd):
                    self._tables.move_to_end(key)
                    return hit.table
                del self._tables[key]
        if hit is not None:
            os.close(hit.fd)
        return self._fill(pid, key, valid)

    def _fill(self, pid: int, key: tuple[int, int, int, int, int],
              valid: Callable[[], bool] | None) -> MountTable:
        fd = os.open(f"/proc/{pid}/mountinfo", os.O_RDONLY | os.O_CLOEXEC)
        try:
            parts = []
            while chunk := os.read(fd, 65536):
                parts.append(chunk)
            self.reads += 1
            table = MountTable.parse(b"".join(parts).decode("utf-8", "surrogateescape"))
            # The content proves whose view it is: mount ids are unique across namespaces,
            # so a table listing the root's mount at "/" and only its descendants was read
            # in that mount's namespace from that root, whatever the process did meanwhile
            # (chroot, setns, unshare between our look and the open).
            same = (valid is None or valid()) and _seen_from(table, key[2])
        except BaseException:
            os.close(fd)
            raise
        if not same:
            os.close(fd)
            return table  # fresh, but not kept: whose view it is cannot be told
        closing = []
        with self._lock:
            old = self._tables.pop(key, None)
            if old is not None:
                closing.append(old.fd)
            self._tables[key] = _Cached(fd, table)
            while len(self._tables) > self.MAX_TABLES:
                closing.append(self._tables.popitem(last=False)[1].fd)
        for f in closing:
            os.close(f)
        return table

    def lazy(self, pid: int, valid: Callable[[], bool] | None = None) -> MountTable:
        """`get(pid)` on first use only: a decision that never looks at the table costs
        nothing. The first use must come after the fds it looks up were taken."""
        return _LazyCached(self, pid, valid)

    def invalidate(self) -> None:
        """Forget every table (call after the daemon changed a mount for the container)."""
        self.close()

    def close(self) -> None:
        with self._lock:
            fds = [c.fd for c in self._tables.values()]
            self._tables.clear()
        for f in fds:
            os.close(f)

    def __len__(self) -> int:
        with self._lock:
            return len(self._tables)


class _LazyCached(MountTable):
    def __init__(self, cache: TableCache, pid: int,
                 valid: Callable[[], bool] | None) -> None:  # nothing read yet
        self._cache, self._pid, self._valid = cache, pid, valid
        self._t: MountTable | None = None

    def _table(self) -> MountTable:
        if self._t is None:
            self._t = self._cache.get(self._pid, self._valid)
        return self._t

    @property  # type: ignore[override]
    def entries(self) -> list[MountEntry]:
        return self._table().entries

    @property  # type: ignore[override]
    def by_id(self) -> dict[int, MountEntry]:
        return self._table().by_id

    def get(self, mount_id: int) -> MountEntry | None:
        return self._table().get(mount_id)

    def parent(self, e: MountEntry) -> MountEntry | None:
        return self._table().parent(e)


def _unchanged(fd: int) -> bool:
    p = select.poll()
    p.register(fd, select.POLLPRI)
    try:
        return not p.poll(0)
    except OSError:
        return False
