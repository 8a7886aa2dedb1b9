"""Host-side set-up for one container: id-mapped rootfs and volumes, the cgroup v2 node.

Every step is recorded before it takes effect; `teardown` undoes whatever the
record lists, in reverse, and tolerates steps that never happened.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat

from interceptd.kernel import mountapi, mountinfo

from . import ovlfd, spec
from .records import Record, RecordStore
from .shift import shift_file, shift_path, shift_tree
from .sourcecheck import MountTable, check_source_fs, open_checked


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


def _target_like(is_dir: bool, target: str) -> None:
    """A mount point: a directory or an empty file. The mount dir is reused by the
    id range's next holder, so a left-over point of the other kind is replaced."""
    if is_dir:
        if os.path.lexists(target) and not os.path.isdir(target):
            os.unlink(target)
        os.makedirs(target, exist_ok=True)
    else:
        if os.path.isdir(target) and not os.path.islink(target):
            os.rmdir(target)
        os.makedirs(os.path.dirname(target), exist_ok=True)
        with open(target, "a"):
            pass


def _adopt_volume(data: str, volume_base: int, size: int) -> None:
    """A Docker named volume still owned by host root (fresh: dockerd made it and
    copied the image's files in as root) is shifted once into the volume range, as
    dockerd's userns-remap keeps its volumes: from then on the container's root
    is volume_base there, never host root. Only a plain directory of Docker's
    volumes dir is shifted; a volume some driver mounted (tmpfs, nfs, a bind of
    another place) keeps its owners and only gets the mapping."""
    try:
        fd = os.open(data, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as e:
        raise SetupError(f"cannot open volume {data}: {e}") from None
    try:
        top = mountapi.statx(fd)
        if top.uid != 0 or top.mount_root:
            return
        parent = mountapi.statx(fd, "..")
        if parent.mnt_id != top.mnt_id:
            return
    finally:
        os.close(fd)
    shift_tree(data, volume_base, 0, size)


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

    def _cover(self, view: str, root_fd: int, real: str) -> None:
        """Mount the view over the original root path itself, as a peer of the view
        (both shared): hooks that mount into <bundle>/rootfs reach the container,
        whether they enter its mount namespace (root.path unchanged) or mount in the
        host's (propagated to the view, and from there to the container's copy)."""
        self.rec.mounts.append(real)
        self.store.save(self.rec)
        try:
            mountapi.mount("", view, "", mountapi.MS_SHARED)
            clone = mountapi.open_tree(view, recursive=True)
            try:
                mountapi.move_mount_to_fd(clone, root_fd, real)
            finally:
                os.close(clone)
        except OSError as e:
            self.rec.mounts.pop()
            self.store.save(self.rec)
            raise SetupError(f"cannot mount the id-mapped view over {real}: {e}") from None

    def rootfs(self, root: str, entries: list[mountinfo.MountEntry] | None = None,
               sensitive: list[str] | None = None, own: list[str] | None = None
               ) -> str | None:
        """Mount an id-mapped view of `root` over root itself. Returns None when
        root.path stays as it is, or the view's own path for root.path when the
        container's root could not walk to the original (Docker's data root is 0710).

        `entries` (the host's mount table) is read here only when `root` is on an
        overlay: parsing the table costs more than the rest of a plain rootfs' set-up.
        """
        fd, real = open_checked(root, "rootfs")
        try:
            if not stat.S_ISDIR(os.fstat(fd).st_mode):
                raise SetupError(f"rootfs {root} is not a directory")
            spec.check_root(real, sensitive or [], own or [])
            magic = mountapi.fd_fs_type(fd)
            if magic in spec.PSEUDO_FS_MAGIC:
                raise spec.Refused(f"rootfs {real} is on the host's "
                                   f"{spec.PSEUDO_FS_MAGIC[magic]} filesystem")
            return self._rootfs(fd, real, magic, entries)
        finally:
            os.close(fd)

    def _rootfs(self, fd: int, real: str, magic: int,
                entries: list[mountinfo.MountEntry] | None) -> str | None:
        top = None
        if magic == mountapi.OVERLAYFS_SUPER_MAGIC:
            top = mountinfo.mount_at(mountinfo.read() if entries is None else entries, real)
        target = os.path.join(self.rec.mount_dir, "rootfs")
        # Usually there already (kept for the id range's next holder): no mkdir.
        if not os.path.isdir(target):
            for d in (os.path.dirname(self.rec.mount_dir), self.rec.mount_dir):
                _mkdir_traversable(d)
            os.makedirs(target, exist_ok=True)
        if top is not None and top.fstype == "overlay":
            self._overlay(real, top, target)
            # Docker's overlay at `real` is gone; open the place again for the cover.
            fd2, _ = open_checked(real, "rootfs")
            try:
                self._cover(target, fd2, real)
            finally:
                os.close(fd2)
        else:
            try:
                clone = mountapi.open_tree_fd(fd, recursive=True)
                try:
                    mountapi.set_idmap(clone, self.userns_fd, recursive=True)
                except OSError:
                    os.close(clone)
                    raise
            except OSError as e:
                raise SetupError(f"cannot make an id-mapped mount of rootfs {real}: {e} "
                                 "(the filesystem must support id-mapped mounts)") from None
            try:
                self._mount_fd(clone, target)
            finally:
                os.close(clone)
            self._cover(target, fd, real)
        return None if _walkable(real) else target

    def _overlay(self, merged: str, top: mountinfo.MountEntry, target: str) -> None:
        # Docker's overlay2 home is two levels up from <home>/<id>/merged.
        base = os.path.dirname(os.path.dirname(merged))
        try:
            layers = mountinfo.overlay_layers(top.super_options, base)
        except ValueError as e:
            raise SetupError(f"cannot read overlay rootfs {merged}: {e}") from None
        if not layers.upper or not layers.work:
            raise SetupError(f"overlay rootfs {merged} has no upperdir/workdir")
        # Layers go to the kernel as fds (ovlfd): the mount's options, which every
        # container reads in its mountinfo, then name no host path.
        lower_fds: list[int] = []
        try:
            for low in layers.lowers:
                try:
                    lower_fds.append(mountapi.idmapped_clone(low, self.userns_fd))
                except OSError as e:
                    raise SetupError(f"cannot id-map overlay lower layer {low}: {e}") from None
            self._overlay_upper(merged, layers, lower_fds, target)
        finally:
            for fd in lower_fds:
                os.close(fd)

    def _overlay_upper(self, merged: str, layers: mountinfo.OverlayLayers,
                       lower_fds: list[int], target: str) -> None:
        assert layers.upper is not None and layers.work is not None
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
        try:
            fd = ovlfd.overlay_fd(lower_fds, layers.upper, layers.work, layers.other)
        except (OSError, ValueError) as e:
            raise SetupError(f"cannot mount the id-mapped overlay for {merged}: {e}") from None
        try:
            self._mount_fd(fd, target)
        except OSError as e:
            raise SetupError(f"cannot mount the id-mapped overlay for {merged}: {e}") from None
        finally:
            os.close(fd)

    def volumes(self, cfg: dict, policy: spec.BindPolicy, host_base: int, size: int,
                volume_base: int | None = None, table: MountTable | None = None) -> None:
        """Every bind: its source opened once and checked (policy on the path the fd
        really is, no kernel filesystem, no device), then that fd cloned, id-mapped
        so the container's root is the source's owner (never host root), mounted
        under the range's mount dir, and the config pointed there."""
        table = table or MountTable()
        mounts = cfg.get("mounts") or []
        nss: dict[tuple[str, str], mountapi.UserNamespace] = {}
        try:
            for n, idx in enumerate(spec.bind_indexes(cfg)):
                m = mounts[idx]
                src = m.get("source") or ""
                recursive = "rbind" in (m.get("options") or [])
                fd, real = open_checked(src, "bind mount source")
                try:
                    policy.check(real, src, m.get("destination"))
                    check_source_fs(fd, real, "bind mount source", table, recursive, policy)
                    st = os.fstat(fd)
                    if policy.docker_net_file(real):
                        st = self._hand_over(real, fd, st, host_base)
                    t = os.path.join(self.rec.mount_dir, "vol", str(n))
                    maps = self._maps(policy, real, st, host_base, size, volume_base)
                    clone = self._bind_clone(fd, real, recursive, maps, host_base, size, nss)
                    try:
                        _target_like(stat.S_ISDIR(st.st_mode), t)
                        self._mount_fd(clone, t)
                    finally:
                        os.close(clone)
                finally:
                    os.close(fd)
                m["source"] = t
        finally:
            for ns in nss.values():
                ns.close()

    def _hand_over(self, real: str, fd: int, st: os.stat_result, host_base: int
                   ) -> os.stat_result:
        """Docker's per-container hosts/hostname/resolv.conf, root's: given to the
        container's root for the container's life (as dockerd's userns-remap does), so
        images that rewrite /etc/hosts at start work; shifted back at delete, where a
        set-id bit or a file capability the container added is not kept."""
        if (st.st_uid, st.st_gid) != (0, 0) or not stat.S_ISREG(st.st_mode):
            return st
        self.rec.shifted.append([real, host_base, 0, 1])
        self.store.save(self.rec)
        shift_file(real, host_base, 0, 1)
        after = os.fstat(fd)  # the checked inode: a file put in its place is not ours
        return after

    def _maps(self, policy: spec.BindPolicy, real: str, st: os.stat_result, host_base: int,
              size: int, volume_base: int | None) -> tuple[str | None, str | None]:
        vol = policy.docker_volume(real) if volume_base is not None else None
        if vol is None:
            return spec.bind_maps(st.st_uid, st.st_gid, host_base, size)
        assert volume_base is not None
        _adopt_volume(vol, volume_base, size)
        return spec.volume_maps(volume_base, host_base, size)

    def _bind_clone(self, fd: int, real: str, recursive: bool,
                    maps: tuple[str | None, str | None], host_base: int, size: int,
                    nss: dict[tuple[str, str], mountapi.UserNamespace]) -> int:
        uid_map, gid_map = maps
        clone = mountapi.open_tree_fd(fd, recursive)
        if uid_map is None and gid_map is None:
            return clone  # the container's own range: nothing to map
        own = f"{host_base} {host_base} {size}\n"
        key = (uid_map or own, gid_map or own)
        try:
            if key not in nss:
                nss[key] = mountapi.UserNamespace(host_base, size, *key)
            mountapi.set_idmap(clone, nss[key].fd, recursive)
        except OSError as e:
            # The container's own range then: safe, only less convenient.
            self.rec.warnings.append(f"bind {real} not id-mapped to its owner: {e}")
            os.close(clone)
            clone = mountapi.open_tree_fd(fd, recursive)
        return clone


def _walkable(path: str) -> bool:
    """Whether any user (the container's root is one, unprivileged on the host) may
    walk to path: every directory above it searchable by others."""
    d = os.path.dirname(path)
    while True:
        try:
            if not os.stat(d).st_mode & stat.S_IXOTH:
                return False
        except OSError:
            return False
        if d == "/":
            return True
        d = os.path.dirname(d)


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
    for sub in ("lower", "rootfs", "vol", "emul"):
        d = os.path.join(mount_dir, sub)
        if sub in ("rootfs", "emul"):
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
            shift_path(path, -delta, lo + delta, hi + delta)
        except OSError as e:
            problems.append(f"unshift {path}: {e}")
    if rec.mount_dir and not rec.keep_dirs and os.path.isdir(rec.mount_dir):
        # rmdir/unlink of something still mounted fails (EBUSY), so this never
        # reaches into a filesystem; and nothing is walked recursively.
        leftovers = [os.path.join(rec.mount_dir, "rootfs"), os.path.join(rec.mount_dir, "emul")]
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
        from . import cgdelegate

        try:
            cgdelegate.remove_node(rec.cgroup_node)
        except FileNotFoundError:
            pass
        except OSError as e:
            problems.append(f"cgroup {rec.cgroup_node}: {e}")
    return problems


