"""The container's immutable-mount set: what it may not weaken, classified from its
attach-time mount table and extended by the mounts the daemon makes for it.

Identity of a mount across mount namespaces: mount ids change when a namespace is copied
(`unshare -m`), paths change after chroot/pivot_root, but a mount's superblock (`dev`,
major:minor) and the dentry it shows (`root`) do not. A bind copy of a mount has the same
dev and the same root (or a root beneath it). The immutable set is therefore keyed by
(dev, root) and matched by prefix on root; the procfs/sysfs superblocks we protect are
keyed by dev alone (each procfs mount has its own superblock since Linux 5.8).
"""

from __future__ import annotations

import posixpath
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from interceptd.kernel.mountinfo import MountEntry
from interceptd.kernel.mounttable import MountTable

# Docker's defaults; runc applies the config's lists, the runtime shim keeps these at least.
DEFAULT_MASKED_PATHS = (
    "/proc/asound",
    "/proc/acpi",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
)
DEFAULT_READONLY_PATHS = (
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
)


def path_within(path: str, base: str) -> bool:
    """True if `path` is `base` or beneath it (both normalised absolute paths)."""
    if base == "/":
        return path.startswith("/")
    return path == base or path.startswith(base + "/")


@dataclass(frozen=True)
class ImmutableMount:
    dev: str
    root: str
    locked: int  # MOUNT_ATTR_* bits that may never be cleared on it or its copies
    kind: str  # "fsroot" | "mask" | "readonly" | "emulated" | "sub" | "mount"
    mountpoint: str  # where it was when recorded, for reasons and logs
    fstype: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "dev": self.dev,
            "root": self.root,
            "locked": self.locked,
            "kind": self.kind,
            "mountpoint": self.mountpoint,
            "fstype": self.fstype,
        }


@dataclass
class ImmutableSet:
    """What a container may not weaken, recorded at attach and extended by daemon mounts."""

    mounts: list[ImmutableMount] = field(default_factory=list)
    # procfs/sysfs superblocks whose submounts (masks, read-only paths, emulated files)
    # may not be unmounted or moved away.
    protected_devs: set[str] = field(default_factory=set)
    # superblocks mounted at attach at /proc and /sys: `umount` gets EBUSY.
    fsroot_devs: set[str] = field(default_factory=set)
    # procfs/sysfs superblocks the daemon mounted for the container: may be unmounted
    # (with their submounts), never moved or weakened.
    managed_devs: set[str] = field(default_factory=set)

    def match(self, e: MountEntry) -> list[ImmutableMount]:
        """Immutable mounts of which `e` is the same mount or a bind copy (of it or beneath)."""
        return [m for m in self.mounts if m.dev == e.dev and path_within(e.root, m.root)]

    def locked_attrs(self, e: MountEntry) -> int:
        bits = 0
        for m in self.match(e):
            bits |= m.locked
        return bits

    def exact(self, e: MountEntry) -> ImmutableMount | None:
        for m in self.mounts:
            if m.dev == e.dev and m.root == e.root:
                return m
        return None

    def add(self, m: ImmutableMount) -> None:
        if m not in self.mounts:
            self.mounts.append(m)

    def to_dict(self) -> dict[str, Any]:
        return {
            "mounts": [m.to_dict() for m in self.mounts],
            "protected_devs": sorted(self.protected_devs),
            "fsroot_devs": sorted(self.fsroot_devs),
            "managed_devs": sorted(self.managed_devs),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ImmutableSet:
        return cls(
            mounts=[ImmutableMount(**m) for m in d.get("mounts", [])],
            protected_devs=set(d.get("protected_devs", [])),
            fsroot_devs=set(d.get("fsroot_devs", [])),
            managed_devs=set(d.get("managed_devs", [])),
        )


def _is_mask(e: MountEntry, masked: set[str]) -> bool:
    if e.mountpoint in masked:
        return True
    # runc masks a file with a bind of /dev/null and a directory with a read-only tmpfs.
    return e.root == "/null" or (e.fstype == "tmpfs" and e.readonly)


def snapshot(
    table: MountTable,
    masked_paths: Iterable[str] = DEFAULT_MASKED_PATHS,
    readonly_paths: Iterable[str] = DEFAULT_READONLY_PATHS,
    emulated_paths: Iterable[str] = (),
) -> ImmutableSet:
    """Classify the container's attach-time mount table (its init's view).

    Every attach-time mount has its ro/nosuid/nodev/noexec locked (they can be added, never
    removed). /proc and /sys (procfs/sysfs at those paths) and everything mounted beneath
    them at attach (masks, read-only paths, emulated files, cgroup mounts) are protected.
    """
    masked = {posixpath.normpath(p) for p in masked_paths}
    readonly = {posixpath.normpath(p) for p in readonly_paths}
    emulated = {posixpath.normpath(p) for p in emulated_paths}
    imm = ImmutableSet()
    roots = [
        e
        for e in table.entries
        if (e.mountpoint == "/proc" and e.fstype == "proc")
        or (e.mountpoint == "/sys" and e.fstype == "sysfs")
    ]
    under_roots: set[int] = set()
    for r in roots:
        imm.fsroot_devs.add(r.dev)
        imm.protected_devs.add(r.dev)
        imm.add(ImmutableMount(r.dev, r.root, r.attrs, "fsroot", r.mountpoint, r.fstype))
        for s in table.subtree(r):
            under_roots.add(s.mount_id)
            if s.mountpoint in emulated:
                kind = "emulated"
            elif s.mountpoint in readonly:
                kind = "readonly"
            elif _is_mask(s, masked):
                kind = "mask"
            else:
                kind = "sub"
            imm.add(ImmutableMount(s.dev, s.root, s.attrs, kind, s.mountpoint, s.fstype))
            if s.fstype in ("proc", "sysfs"):
                imm.protected_devs.add(s.dev)
    root_ids = {r.mount_id for r in roots}
    for e in table.entries:
        if e.mount_id in under_roots or e.mount_id in root_ids:
            continue
        kind = "emulated" if e.mountpoint in emulated else "mount"
        imm.add(ImmutableMount(e.dev, e.root, e.attrs, kind, e.mountpoint, e.fstype))
    return imm


def register_managed(
    imm: ImmutableSet, table: MountTable, new_root: MountEntry
) -> list[ImmutableMount]:
    """Record a procfs/sysfs mount the daemon made (and the masks it applied beneath it)."""
    imm.protected_devs.add(new_root.dev)
    imm.managed_devs.add(new_root.dev)
    added = [
        ImmutableMount(
            new_root.dev, new_root.root, new_root.attrs, "fsroot", new_root.mountpoint,
            new_root.fstype,
        )
    ]
    for s in table.subtree(new_root):
        rel = posixpath.relpath(s.mountpoint, new_root.mountpoint)
        kind = "mask" if (s.root == "/null" or s.fstype == "tmpfs") else "readonly"
        added.append(ImmutableMount(s.dev, s.root, s.attrs, kind, "/" + rel, s.fstype))
    for m in added:
        imm.add(m)
    return added
