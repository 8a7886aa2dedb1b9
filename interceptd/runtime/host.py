"""Host-side set-up for one container: id-mapped rootfs and volumes, the cgroup v2 node.

Every step is recorded before it takes effect; `teardown` undoes whatever the
record lists, in reverse, and tolerates steps that never happened.
"""

from __future__ import annotations

import contextlib
import errno
import os

from . import mountapi, mountinfo, spec
from .records import Record, RecordStore
from .shift import shift_tree


class SetupError(Exception):
    pass


def _mkdir_traversable(path: str) -> None:
    # The container's root (an unprivileged host uid) must be able to walk to its rootfs.
    os.makedirs(path, mode=0o711, exist_ok=True)
    os.chmod(path, 0o711)


def _clear_mount_point(target: str) -> None:
    """Mount points are reused by the id range's next holder: should a teardown have
    left something mounted there (it reports that), take it away rather than stack
    the new mount on top. One umount2 that fails with EINVAL in the usual case."""
    for _ in range(16):
        try:
            mountapi.umount(target, mountapi.MNT_DETACH)
        except OSError as e:
            if e.errno in (errno.EINVAL, errno.ENOENT):
                return
            raise SetupError(f"cannot clear mount point {target}: {e}") from None


def _target_like(src: str, target: str) -> None:
    """A mount point for src: a directory or an empty file. The mount dir is reused
    by the id range's next holder, so a left-over point of the other kind is replaced."""
    if os.path.isdir(src):
        if os.path.lexists(target) and not os.path.isdir(target):
            os.unlink(target)
        os.makedirs(target, exist_ok=True)
    else:
        if os.path.isdir(target) and not os.path.islink(target):
            os.rmdir(target)
        os.makedirs(os.path.dirname(target), exist_ok=True)
        with open(target, "a"):
            pass


class HostSetup:
    def __init__(self, rec: Record, store: RecordStore, userns_fd: int) -> None:
        self.rec = rec
        self.store = store
        self.userns_fd = userns_fd

    def _mount_fd(self, fd: int, target: str) -> None:
        # Not saved per mount (a rename costs a flush on ext4): every mount point
        # lives under rec.mount_dir, which teardown scans anyway.
        _clear_mount_point(target)
        mountapi.move_mount(fd, target)
        self.rec.mounts.append(target)

    def rootfs(self, root: str, entries: list[mountinfo.MountEntry] | None = None) -> str:
        """Mount an id-mapped view of `root`; return the new root path.

        `entries` (the host's mount table) is read here only when `root` is on an
        overlay: parsing the table costs more than the rest of a plain rootfs' set-up.
        """
        if not os.path.isdir(root):
            raise SetupError(f"rootfs {root} is not a directory")
        real = os.path.realpath(root)
        top = None
        if mountapi.fs_type(real) == mountapi.OVERLAYFS_SUPER_MAGIC:
            top = mountinfo.mount_at(mountinfo.read() if entries is None else entries, real)
        target = os.path.join(self.rec.mount_dir, "rootfs")
        # Usually there already (kept for the id range's next holder): no mkdir.
        if not os.path.isdir(target):
            for d in (os.path.dirname(self.rec.mount_dir), self.rec.mount_dir):
                _mkdir_traversable(d)
            os.makedirs(target, exist_ok=True)
        if top is not None and top.fstype == "overlay":
            self._overlay(real, top, target)
        else:
            try:
                fd = mountapi.idmapped_clone(real, self.userns_fd, recursive=True)
            except OSError as e:
                raise SetupError(f"cannot make an id-mapped mount of rootfs {real}: {e} "
                                 "(the filesystem must support id-mapped mounts)") from None
            try:
                self._mount_fd(fd, target)
            finally:
                os.close(fd)
        return target

    def _overlay(self, merged: str, top: mountinfo.MountEntry, target: str) -> None:
        # Docker's overlay2 home is two levels up from <home>/<id>/merged.
        base = os.path.dirname(os.path.dirname(merged))
        try:
            layers = mountinfo.overlay_layers(top.super_options, base)
        except ValueError as e:
            raise SetupError(f"cannot read overlay rootfs {merged}: {e}") from None
        if not layers.upper or not layers.work:
            raise SetupError(f"overlay rootfs {merged} has no upperdir/workdir")
        lower_paths = []
        for i, low in enumerate(layers.lowers):
            t = os.path.join(self.rec.mount_dir, "lower", str(i))
            os.makedirs(t, exist_ok=True)
            try:
                fd = mountapi.idmapped_clone(low, self.userns_fd)
            except OSError as e:
                raise SetupError(f"cannot id-map overlay lower layer {low}: {e}") from None
            try:
                self._mount_fd(fd, t)
            finally:
                os.close(fd)
            lower_paths.append(t)
        # The container's own upper starts almost empty: shift its owners to the
        # container's range (undone at delete) so copy-ups and new files map back.
        delta, hi = self.rec.host_base, 65536
        self.rec.shifted.append([layers.upper, delta, 0, hi])
        self.store.save(self.rec)
        shift_tree(layers.upper, delta, 0, hi)
        # The other mount of this upper (Docker's) must go: two overlays on one
        # upper dir are undefined behaviour. Ours takes its place below.
        with contextlib.suppress(OSError):
            mountapi.umount(merged, mountapi.MNT_DETACH)
        opts = [
            "lowerdir=" + ":".join(lower_paths),
            f"upperdir={layers.upper}",
            f"workdir={layers.work}",
            *[o for o in layers.other if not o.startswith(("uuid", "index"))],
        ]
        try:
            _clear_mount_point(target)
            mountapi.mount("overlay", target, "overlay", 0, ",".join(opts))
        except OSError as e:
            raise SetupError(f"cannot mount the id-mapped overlay for {merged}: {e}") from None
        self.rec.mounts.append(target)
        # Keep the caller's view (docker cp, docker export) on the same filesystem.
        self.rec.mounts.append(merged)
        self.store.save(self.rec)
        try:
            mountapi.mount(target, merged, "", 0x1000)  # MS_BIND
        except OSError:
            self.rec.mounts.pop()
            self.store.save(self.rec)

    def volumes(self, cfg: dict) -> None:
        mounts = cfg.get("mounts") or []
        for n, idx in enumerate(spec.idmappable_binds(cfg)):
            m = mounts[idx]
            src = os.path.realpath(m["source"])
            if not os.path.exists(src):
                continue  # the runtime reports a missing source itself
            t = os.path.join(self.rec.mount_dir, "vol", str(n))
            recursive = "rbind" in (m.get("options") or [])
            try:
                fd = mountapi.idmapped_clone(src, self.userns_fd, recursive=recursive)
            except OSError as e:
                self.rec.warnings.append(f"volume {src} not id-mapped: {e}")
                continue
            try:
                _target_like(src, t)
                self._mount_fd(fd, t)
            finally:
                os.close(fd)
            m["source"] = t


def cgroup2_path(pid: int) -> str:
    """The process's path in the cgroup v2 hierarchy ("/" when it has none)."""
    with open(f"/proc/{pid}/cgroup") as f:
        for line in f:
            if line.startswith("0::"):
                return line[3:].strip() or "/"
    return "/"


def place_in_cgroup2(rec: Record, store: RecordStore, pid: int, cgroup2_root: str,
                     container_id: str, caller_pid: int | None = None) -> str:
    """Make sure `pid` sits in a v2 node of its own; returns that node's path.

    runc in hybrid mode already creates one at cgroupsPath; other runtimes may
    leave the process in the root, or in the node it inherited from whoever ran the
    runtime (`caller_pid`'s: not its own), then the shim makes /interceptd/<id>.
    """
    cur = cgroup2_path(pid)
    inherited = cgroup2_path(caller_pid) if caller_pid else None
    if cur != "/" and cur != inherited:
        return os.path.join(cgroup2_root, cur.lstrip("/"))
    node = os.path.join(cgroup2_root, "interceptd", container_id)
    rec.cgroup_node = node
    store.save(rec)
    os.makedirs(node, exist_ok=True)
    with open(os.path.join(node, "cgroup.procs"), "w") as f:
        f.write(str(pid))
    return node


def _mount_points(mount_dir: str) -> list[str]:
    """Every place under mount_dir the shim may have mounted, in set-up order."""
    out = []
    for sub in ("lower", "rootfs", "vol"):
        d = os.path.join(mount_dir, sub)
        if sub == "rootfs":
            out.append(d)
            continue
        try:
            names = sorted(os.listdir(d), key=lambda n: (len(n), n))
        except OSError:
            continue
        out += [os.path.join(d, n) for n in names]
    return out


def teardown(rec: Record) -> list[str]:
    """Undo everything the record lists; returns problems (never raises)."""
    problems: list[str] = []
    targets = list(rec.mounts)
    if rec.mount_dir:
        targets += [p for p in _mount_points(rec.mount_dir) if p not in targets]
    for target in reversed(targets):
        try:
            mountapi.umount(target, mountapi.MNT_DETACH)
        except OSError as e:
            if e.errno not in (errno.EINVAL, errno.ENOENT):
                problems.append(str(e))
    for path, delta, lo, hi in reversed(rec.shifted):
        try:
            shift_tree(path, -delta, lo + delta, hi + delta)
        except OSError as e:
            problems.append(f"unshift {path}: {e}")
    if rec.mount_dir and not rec.keep_dirs and os.path.isdir(rec.mount_dir):
        # rmdir/unlink of something still mounted fails (EBUSY), so this never
        # reaches into a filesystem; and nothing is walked recursively.
        leftovers = [os.path.join(rec.mount_dir, "rootfs")]
        for sub in ("lower", "vol"):
            d = os.path.join(rec.mount_dir, sub)
            with contextlib.suppress(OSError):
                leftovers += [os.path.join(d, n) for n in os.listdir(d)]
            leftovers.append(d)
        leftovers.append(rec.mount_dir)
        for p in leftovers:
            try:
                if os.path.isdir(p) and not os.path.islink(p):
                    os.rmdir(p)
                elif os.path.lexists(p):
                    os.unlink(p)
            except FileNotFoundError:
                pass
            except OSError as e:
                problems.append(f"cannot remove {p}: {e}")
    if rec.cgroup_node:
        try:
            os.rmdir(rec.cgroup_node)
        except FileNotFoundError:
            pass
        except OSError as e:
            problems.append(f"cgroup {rec.cgroup_node}: {e}")
    return problems


