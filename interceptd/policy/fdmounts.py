"""The new mount API (fsopen, fspick, open_tree, move_mount, mount_setattr) under the
same rules as mount(2).

Tracking the mount fds a container holds: we do not keep a table of fds (it could not
follow dup, SCM_RIGHTS or fork). Instead each vetted call identifies the mount behind its
fd when it is used: `mnt_id` from /proc/<pid>/fdinfo/<fd>. A mount in the caller's
mount table is matched by (dev, root) like mount(2); a detached mount (an open_tree clone
or an fsmount result, in no table) is matched by its superblock (`st_dev` of the fd) alone,
which over-approximates: clearing a locked flag on a detached copy of anything that shares a
superblock with an immutable mount is refused.

fsconfig and fsmount are not notified: a filesystem context can only come from fsopen or
fspick, both vetted here, so configuring and mounting it cannot reach a filesystem type or
superblock the policy refused.
"""

from __future__ import annotations

import errno
import struct
from dataclasses import dataclass

from interceptd.kernel.consts import (
    AT_RECURSIVE,
    MOUNT_ATTR_IDMAP,
    MOUNT_ATTR_LOCKED,
    MOVE_MOUNT_SET_GROUP,
    MS_UNBINDABLE,
    OPEN_TREE_CLONE,
)
from interceptd.kernel.mountinfo import MountEntry
from interceptd.kernel.mounttable import MountTable
from interceptd.policy.decision import Decision, ExecOp, allow_continue, deny, perform
from interceptd.policy.mounts import (
    ALLOWED_FSTYPES,
    BLOCK_FSTYPES,
    MANAGED_FSTYPES,
    REFUSED_FSTYPES,
    MountContext,
    attr_names,
    is_protected_fs,
    protected_kind,
    unbindable_refusal,
)

MOUNT_ATTR_STRUCT = struct.Struct("<QQQQ")  # attr_set, attr_clr, propagation, userns_fd


@dataclass(frozen=True)
class MountAttr:
    attr_set: int
    attr_clr: int
    propagation: int
    userns_fd: int

    @classmethod
    def unpack(cls, raw: bytes) -> MountAttr:
        if len(raw) < MOUNT_ATTR_STRUCT.size:
            raise ValueError("struct mount_attr too short")
        return cls(*MOUNT_ATTR_STRUCT.unpack_from(raw))

    def pack(self) -> bytes:
        return MOUNT_ATTR_STRUCT.pack(self.attr_set, self.attr_clr, self.propagation,
                                      self.userns_fd)


@dataclass(frozen=True)
class FdMount:
    """The mount behind a path or fd, as identified by handlers/resolve.py."""

    entry: MountEntry | None  # attached: its entry in the caller's table
    dev: str  # superblock, "major:minor" (always known)
    table: MountTable | None = None  # the caller's table read while identifying it, for reuse


def decide_fsopen(fsname: str, flags: int, ctx: MountContext) -> Decision:
    d = {"fsname": fsname, "flags": hex(flags)}
    base = fsname.split(".", 1)[0]
    if fsname in MANAGED_FSTYPES:
        # The daemon masks procfs/sysfs by mounting on paths; a context the container
        # holds would be mounted (fsmount) and attached (move_mount) by itself, unmasked.
        return deny(
            errno.EPERM,
            f"fsopen({fsname}) refused: mount it with mount(2) so the daemon can mask it",
            **d,
        )
    if fsname == "overlay":
        # Its layers are set with fsconfig, which the daemon does not see: a layer on /sys
        # would show what the masks hide. mount(2) checks each layer and builds the overlay
        # from the checked fds.
        return deny(errno.EPERM, "fsopen(overlay) refused: its layers cannot be vetted; "
                                 "mount it with mount(2)", **d)
    if fsname == "cgroup" and not ctx.cgroupns_private:
        return deny(errno.EPERM, "cgroup v1 from the host cgroup namespace (release_agent)", **d)
    if fsname in REFUSED_FSTYPES:
        return deny(errno.EPERM, f"{fsname} refused: {REFUSED_FSTYPES[fsname]}", **d)
    if fsname in BLOCK_FSTYPES:
        return deny(errno.EPERM, f"{fsname} refused: block-device filesystem", **d)
    if base in ALLOWED_FSTYPES or fsname in ctx.extra_fstypes or fsname == "cgroup":
        return perform(
            f"fsopen({fsname}) allowed",
            ExecOp("fsopen", (fsname, flags), inject_fd=True),
            **d,
        )
    return deny(errno.EPERM, f"filesystem type {fsname!r} not allowed", **d)


def _locked(m: FdMount, ctx: MountContext) -> int:
    if m.entry is not None:
        bits = ctx.imm.locked_attrs(m.entry)
        if is_protected_fs(m.entry, ctx):
            bits |= m.entry.attrs
        return bits
    bits = 0
    for im in ctx.imm.mounts:
        if im.dev == m.dev:
            bits |= im.locked
    if m.dev in ctx.imm.protected_devs:
        bits |= MOUNT_ATTR_LOCKED
    return bits


def decide_fspick(target: FdMount, ctx: MountContext, details: dict[str, object],
                  fstype: str = "") -> Decision:
    """`fstype`: "proc" or "sysfs" when the fd's superblock is one (its magic, so a
    detached clone or a copy in another namespace is recognised as well)."""
    if fstype in ("proc", "sysfs") or (target.entry is not None
                                       and is_protected_fs(target.entry, ctx)):
        # Reconfiguring a procfs/sysfs superblock (hidepid, subset, ro -> rw) would change
        # every mount of it, the container's /proc and /sys included.
        return deny(errno.EPERM, f"fspick of a {fstype or target.entry.fstype} superblock "
                                 "refused", dev=target.dev, **details)
    if target.dev in ctx.imm.protected_devs or _locked(target, ctx):
        return deny(
            errno.EPERM,
            "fspick of an immutable mount's superblock refused",
            dev=target.dev,
            **details,
        )
    return perform("fspick of the container's own superblock", **details)


def decide_open_tree(flags: int, details: dict[str, object]) -> Decision:
    if not flags & OPEN_TREE_CLONE:
        # CONTINUE is safe: without OPEN_TREE_CLONE (a register value) open_tree is
        # open(O_PATH), which gives no mount and is never vetted; no rewritten path can turn
        # it into a clone.
        return allow_continue("open_tree without clone is open(O_PATH)", **details)
    if not flags & AT_RECURSIVE:
        # A copy of one mount without the mounts on it: a flat clone of /proc or /sys shows
        # what their masks hide (reading through the clone fd needs no move_mount). The
        # filter refuses it already (deny.open_tree_flat_clone); this is the second line
        # for filters that notify every open_tree.
        return deny(errno.EPERM, "open_tree clone without AT_RECURSIVE would leave the "
                                 "masks behind", **details)
    # CONTINUE is safe for recursive clones, whatever path the kernel re-reads: the copy
    # keeps every mount of the tree (no mount sitting on procfs/sysfs is ever unbindable,
    # mounts.unbindable_refusal, so copy_tree skips none) and every flag; it can only become
    # visible through move_mount, which verifies that a procfs/sysfs tree still has its
    # masks and read-only paths, and only be weakened through mount_setattr, which refuses
    # clearing a locked flag on anything sharing a superblock with an immutable mount; the
    # kernel refuses umount and move_mount of a mount inside a detached tree. (The daemon
    # cannot clone on the container's behalf: the result is an O_PATH fd, which seccomp's
    # ADDFD cannot inject.)
    return allow_continue("recursive open_tree clone: vetted when attached or changed",
                          **details)


def decide_detached_tree(
    top_fstype: str, at_fs_root: bool, unprotected: list[str], details: dict[str, object]
) -> Decision | None:
    """Refusal for attaching a detached tree (a clone or an fsmount result), or None.

    `unprotected`: masked or read-only paths that, in a procfs/sysfs tree, are not covered
    by a mount of their own (a non-recursive clone or a bare fsmount shows the real file).
    A partial procfs/sysfs tree (its root is not the filesystem's root) cannot be checked
    against the container's masks by path and is refused. (The kernel itself refuses to
    move a mount out of the middle of a detached tree, so only whole trees get here.)"""
    if top_fstype in ("proc", "sysfs"):
        if unprotected:
            return deny(
                errno.EPERM,
                f"move_mount of a {top_fstype} tree without its masks ({', '.join(unprotected)})",
                **details,
            )
        if not at_fs_root:
            return deny(errno.EPERM, f"move_mount of a partial {top_fstype} tree "
                                     "(a read-only path or a piece of a clone)", **details)
        return None
    return None


def decide_move_mount(
    flags: int, source: FdMount | None, ctx: MountContext, details: dict[str, object]
) -> Decision:
    if flags & MOVE_MOUNT_SET_GROUP:
        return perform("move_mount: propagation group change", **details)
    if source is None:
        return deny(errno.EINVAL, "move_mount: source is not a mount", **details)
    if source.entry is None:
        # A detached tree the container made (open_tree clone or fsmount): attaching it
        # reveals nothing, its masks and flags came with it.
        return perform("move_mount: attach a detached tree", **details)
    kind = protected_kind(source.entry, ctx)
    if kind is not None or is_protected_fs(source.entry, ctx):
        return deny(
            errno.EPERM,
            f"move_mount of protected mount {source.entry.mountpoint} ({kind or 'procfs/sysfs'})",
            **details,
        )
    return perform("move_mount of the container's own mount", **details)


def decide_mount_setattr(
    flags: int,
    attr: MountAttr,
    target: FdMount | None,
    ctx: MountContext,
    details: dict[str, object],
    detached_on_pseudo: bool = False,
) -> Decision:
    """`detached_on_pseudo`: the target is a detached mount sitting on a procfs/sysfs of
    its tree (the handler looks at its parent through ".."; no table shows detached trees)."""
    d = dict(details)
    d.update(attr_set=hex(attr.attr_set), attr_clr=hex(attr.attr_clr))
    if target is None:
        return deny(errno.EINVAL, "mount_setattr: target is not a mount", **d)
    if attr.propagation & MS_UNBINDABLE:  # the kernel takes exactly one propagation type
        d["propagation"] = "unbindable"
        recursive = bool(flags & AT_RECURSIVE)
        if target.entry is not None:
            why = unbindable_refusal(target.entry, recursive, ctx)
        elif recursive:
            why = "recursive unbindable on a detached tree cannot be vetted (its masks)"
        elif detached_on_pseudo:
            why = "making a mask of a detached tree unbindable would leave it out of copies"
        else:
            why = None
        if why is not None:
            return deny(errno.EPERM, why, **d)
    clearing = attr.attr_clr & ~attr.attr_set & MOUNT_ATTR_LOCKED
    if clearing:
        cleared = clearing & _locked(target, ctx)
        if cleared:
            return deny(
                errno.EPERM,
                f"mount_setattr would clear {attr_names(cleared)} on an immutable mount",
                **d,
            )
        if flags & AT_RECURSIVE:
            if target.entry is None:
                return deny(
                    errno.EPERM,
                    "recursive flag clearing on a detached tree cannot be vetted",
                    **d,
                )
            for sub in ctx.table.subtree(target.entry):
                bad = clearing & _locked(FdMount(sub, sub.dev), ctx)
                if bad:
                    return deny(
                        errno.EPERM,
                        f"mount_setattr would clear {attr_names(bad)} on immutable "
                        f"{sub.mountpoint}",
                        **d,
                    )
    if attr.attr_set & MOUNT_ATTR_IDMAP:
        d["idmap"] = True
    return perform("mount_setattr keeps immutable flags", **d)
