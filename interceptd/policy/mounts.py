"""mount(2) and umount2(2) decisions on decoded copies.

Every mount(2) that is allowed is *performed by the daemon* through the namespace executor
on the copied strings (the pointers could be rewritten after we read them), never answered
with CONTINUE, except pure propagation changes (see `decide_mount`).
"""

from __future__ import annotations

import errno
from collections.abc import Iterable
from dataclasses import dataclass, field

from interceptd.kernel.consts import (
    MNT_DETACH,
    MNT_EXPIRE,
    MNT_FORCE,
    MOUNT_ATTR_NODEV,
    MOUNT_ATTR_NOEXEC,
    MOUNT_ATTR_NOSUID,
    MOUNT_ATTR_RDONLY,
    MS_BIND,
    MS_MGC_MSK,
    MS_MGC_VAL,
    MS_MOVE,
    MS_NODEV,
    MS_NOEXEC,
    MS_NOSUID,
    MS_PROPAGATION,
    MS_RDONLY,
    MS_REC,
    MS_REMOUNT,
    MS_SILENT,
    MS_UNBINDABLE,
    UMOUNT_NOFOLLOW,
)
from interceptd.kernel.mountinfo import MountEntry
from interceptd.kernel.mounttable import MountTable
from interceptd.policy.decision import Decision, ExecOp, allow_continue, deny, perform
from interceptd.policy.immutable import (
    DEFAULT_MASKED_PATHS,
    DEFAULT_READONLY_PATHS,
    ImmutableSet,
)

# Filesystems a container may mount itself: all are either memory-backed, namespaced, or
# show only what the caller could already reach.
ALLOWED_FSTYPES = frozenset(
    {"tmpfs", "ramfs", "overlay", "mqueue", "devpts", "fuse", "fuseblk", "cgroup2", "none"}
)
# procfs/sysfs: mounted by the daemon, then masked like /proc and /sys (issue point 2).
MANAGED_FSTYPES = frozenset({"proc", "sysfs"})
# Refused with a specific reason.
REFUSED_FSTYPES: dict[str, str] = {
    "debugfs": "debugfs exposes kernel internals",
    "tracefs": "tracefs exposes kernel tracing",
    "securityfs": "securityfs exposes LSM policy",
    "bpf": "bpffs pins host BPF objects",
    "configfs": "configfs configures kernel subsystems",
    "pstore": "pstore exposes host crash records",
    "efivarfs": "efivarfs writes firmware variables",
    "hugetlbfs": "hugetlbfs reserves host memory",
    "binfmt_misc": "binfmt_misc registers interpreters",
    "autofs": "autofs hands mount control to a daemon",
    "nfsd": "nfsd configures the host NFS server",
    "rpc_pipefs": "rpc_pipefs talks to host RPC daemons",
}
BLOCK_FSTYPES = frozenset(
    {
        "ext2", "ext3", "ext4", "xfs", "btrfs", "vfat", "msdos", "exfat", "ntfs", "ntfs3",
        "iso9660", "udf", "squashfs", "f2fs", "jfs", "reiserfs", "hfs", "hfsplus", "minix",
        "erofs", "nilfs2", "ocfs2", "gfs2", "cramfs", "romfs", "ufs", "bcachefs", "zonefs",
    }
)

_FLAG_ATTR = (
    (MS_RDONLY, MOUNT_ATTR_RDONLY, "ro"),
    (MS_NOSUID, MOUNT_ATTR_NOSUID, "nosuid"),
    (MS_NODEV, MOUNT_ATTR_NODEV, "nodev"),
    (MS_NOEXEC, MOUNT_ATTR_NOEXEC, "noexec"),
)


def attrs_from_msflags(flags: int) -> int:
    return sum(attr for ms, attr, _ in _FLAG_ATTR if flags & ms)


def attr_names(attrs: int) -> str:
    return ",".join(n for _, a, n in _FLAG_ATTR if attrs & a) or "-"


@dataclass(frozen=True)
class MountCall:
    """A decoded mount(2): strings are the daemon's own bounded copies."""

    source: str | None
    target: str
    fstype: str | None
    flags: int
    data: str | None
    # Resolved by the kernel in the caller's context (see handlers/resolve.py).
    target_mount: MountEntry | None = None
    source_mount: MountEntry | None = None


@dataclass(frozen=True)
class UmountCall:
    target: str
    flags: int
    target_mount: MountEntry | None = None
    # True when target_mount's root is exactly at `target` (umount needs a mount root).
    at_root: bool = True


@dataclass
class MountContext:
    table: MountTable  # the caller's current mount namespace
    imm: ImmutableSet
    # False when the container shares the host's cgroup namespace: a cgroup v1 mount would
    # then show the hierarchy root with release_agent.
    cgroupns_private: bool = True
    extra_fstypes: frozenset[str] = frozenset()
    masked_paths: tuple[str, ...] = DEFAULT_MASKED_PATHS
    readonly_paths: tuple[str, ...] = DEFAULT_READONLY_PATHS
    emulated_paths: dict[str, str] = field(default_factory=dict)  # container path -> host file


def _details(call: MountCall) -> dict[str, object]:
    return {
        "source": call.source,
        "target": call.target,
        "fstype": call.fstype,
        "flags": hex(call.flags),
        "data": call.data,
    }


PSEUDO_FSTYPES = frozenset({"proc", "sysfs"})


def is_protected_fs(e: MountEntry, ctx: MountContext) -> bool:
    """procfs/sysfs: the attach-time ones, their copies, and those the daemon mounted.

    Every procfs/sysfs a container can have was either there at attach or mounted by the
    daemon with its masks, so the filesystem type alone is a sound test (and it survives a
    daemon restart, which forgets `protected_devs`).
    """
    return e.fstype in PSEUDO_FSTYPES or e.dev in ctx.imm.protected_devs


def is_protected_child(e: MountEntry, ctx: MountContext) -> bool:
    """A mount sitting on a procfs/sysfs: a mask, a read-only path, an emulated file."""
    parent = ctx.table.parent(e)
    return parent is not None and is_protected_fs(parent, ctx)


def is_fsroot(e: MountEntry, ctx: MountContext) -> bool:
    """The container's /proc or /sys (or a copy of them)."""
    return e.dev in ctx.imm.fsroot_devs and e.root == "/"


def protected_kind(e: MountEntry, ctx: MountContext) -> str | None:
    """Why `e` may not be unmounted or moved, or None."""
    if is_fsroot(e, ctx):
        return "fsroot"
    if is_protected_child(e, ctx):
        m = ctx.imm.exact(e)
        return m.kind if m else "protected submount"
    return None


def decide_mount(call: MountCall, ctx: MountContext) -> Decision:
    flags = call.flags
    if flags & MS_MGC_MSK == MS_MGC_VAL:
        flags &= ~MS_MGC_MSK
    d = _details(call)

    if flags & MS_REMOUNT:
        return _decide_remount(call, flags, ctx, d)
    if flags & MS_MOVE:
        return _decide_move(call, ctx, d)
    if flags & MS_BIND:
        return _decide_bind(call, flags, ctx, d)
    if flags & MS_PROPAGATION == MS_UNBINDABLE and not flags & ~(
            MS_PROPAGATION | MS_REC | MS_SILENT):
        return _decide_unbindable(call, flags, ctx, d)
    if flags & MS_PROPAGATION and not flags & ~(MS_PROPAGATION | MS_REC | MS_SILENT):
        # CONTINUE is safe: the flags are a register value the container cannot rewrite,
        # and a shared/slave/private change makes no mount appear, disappear or lose a
        # flag, whatever path the kernel re-reads. The container's mount namespace is a
        # slave of the host at most, so nothing propagates out. (MS_UNBINDABLE, which
        # changes what a recursive copy contains, is vetted above.)
        return allow_continue("propagation change", **d)
    return _decide_new(call, flags, ctx, d)


def unbindable_refusal(target: MountEntry, recursive: bool, ctx: MountContext) -> str | None:
    """Why making `target` (and with `recursive` its subtree) unbindable is refused, or None.

    A recursive copy (open_tree(OPEN_TREE_CLONE|AT_RECURSIVE), an rbind) silently leaves out
    every unbindable mount of the tree: an unbindable mask would not be in a copy of /proc
    or /sys, which would then show what the mask hides. So no mount sitting on a
    procfs/sysfs (mask, read-only path, emulated file, /sys/fs/cgroup) may become
    unbindable. /proc or /sys themselves may: a copy of their parent then leaves out the
    whole tree, masks and all, and a copy of them fails (EINVAL)."""
    for m in [target, *(ctx.table.subtree(target) if recursive else [])]:
        if is_protected_child(m, ctx):
            return (f"making {m.mountpoint} unbindable would leave it out of recursive "
                    "copies, showing what it covers")
    return None


def _decide_unbindable(
    call: MountCall, flags: int, ctx: MountContext, d: dict[str, object]
) -> Decision:
    t = call.target_mount
    if t is None:
        return deny(errno.EINVAL, "propagation change: target is not a mount", **d)
    why = unbindable_refusal(t, bool(flags & MS_REC), ctx)
    if why is not None:
        return deny(errno.EPERM, why, mount=t.mountpoint, **d)
    # Performed with mount_setattr on the fd of the mount checked (no second path walk).
    return perform(
        "unbindable: no mask in the tree",
        ExecOp("unbindable", (bool(flags & MS_REC),)),
        mount=t.mountpoint,
        **d,
    )


def _decide_remount(
    call: MountCall, flags: int, ctx: MountContext, d: dict[str, object]
) -> Decision:
    t = call.target_mount
    if t is None:
        return deny(errno.EINVAL, "remount: target is not a mount", **d)
    locked = ctx.imm.locked_attrs(t)
    if is_protected_fs(t, ctx):
        # procfs/sysfs superblocks keep their flags: a read-write /proc/sys is the classic
        # escape, so even a not-yet-ro protected mount may not lose flags it has.
        locked |= t.attrs
    if is_protected_fs(t, ctx) and not flags & MS_BIND and (call.data or "").strip(","):
        # A plain remount reconfigures the superblock with these options (hidepid, subset,
        # "rw" in the data), for every mount of it: procfs/sysfs keep theirs.
        return deny(errno.EPERM, f"remount would change the options of the {t.fstype} "
                                 f"superblock of {t.mountpoint}", mount=t.mountpoint, **d)
    cleared = locked & ~attrs_from_msflags(flags)
    if cleared:
        return deny(
            errno.EPERM,
            f"remount would clear {attr_names(cleared)} on immutable mount {t.mountpoint}",
            mount=t.mountpoint,
            **d,
        )
    return perform(
        "remount keeps immutable flags",
        ExecOp("mount", (None, call.target, None, flags, call.data)),
        mount=t.mountpoint,
        **d,
    )


def _decide_move(call: MountCall, ctx: MountContext, d: dict[str, object]) -> Decision:
    s = call.source_mount
    if s is None:
        return deny(errno.EINVAL, "move: source is not a mount", **d)
    kind = protected_kind(s, ctx)
    if kind is not None or is_protected_fs(s, ctx):
        return deny(
            errno.EPERM,
            f"move of protected mount {s.mountpoint} ({kind or 'procfs/sysfs'})",
            mount=s.mountpoint,
            **d,
        )
    return perform(
        "move of the container's own mount",
        ExecOp("mount", (call.source, call.target, None, MS_MOVE, None)),
        mount=s.mountpoint,
        **d,
    )


def _decide_bind(call: MountCall, flags: int, ctx: MountContext, d: dict[str, object]) -> Decision:
    s = call.source_mount
    # Always recursive: a non-recursive bind of /proc (or of any tree holding a mask) would
    # show what the masks cover. A recursive copy keeps the masks and every mount's flags,
    # and the copies match the immutable set by (dev, root).
    perform_flags = flags | MS_REC
    reason = "bind (performed recursively)"
    if s is not None and is_protected_fs(s, ctx) and not flags & MS_REC:
        reason = "bind of procfs/sysfs made recursive to keep its masks"
    # mount(2) ignores MS_RDONLY etc. on a bind; they need a remount: nothing to check here.
    return perform(
        reason,
        ExecOp("mount", (call.source, call.target, None, perform_flags, None)),
        **d,
    )


def _decide_new(call: MountCall, flags: int, ctx: MountContext, d: dict[str, object]) -> Decision:
    fstype = (call.fstype or "").strip()
    base = fstype.split(".", 1)[0]  # fuse.sshfs -> fuse
    if fstype in MANAGED_FSTYPES:
        return perform(
            f"{fstype} mounted by the daemon and masked",
            *managed_fs_ops(call.target, fstype, flags, call.data, ctx),
            managed=fstype,
            **d,
        )
    if fstype == "cgroup":
        if not ctx.cgroupns_private:
            return deny(
                errno.EPERM,
                "cgroup v1 mount from the host cgroup namespace exposes release_agent",
                **d,
            )
        return perform(
            "cgroup v1 mount inside a private cgroup namespace (no release_agent)",
            ExecOp("mount", (call.source, call.target, fstype, flags, call.data)),
            **d,
        )
    if fstype in REFUSED_FSTYPES:
        return deny(errno.EPERM, f"{fstype} refused: {REFUSED_FSTYPES[fstype]}", **d)
    if fstype in BLOCK_FSTYPES:
        return deny(errno.EPERM, f"{fstype} refused: block-device filesystem", **d)
    if base in ("fuse", "fuseblk"):
        return _decide_fuse(call, fstype, flags, d)
    if fstype == "overlay":
        return _decide_overlay(call, flags, d)
    if base in ALLOWED_FSTYPES or fstype in ctx.extra_fstypes:
        return perform(
            f"{fstype} allowed",
            ExecOp("mount", (call.source, call.target, fstype, flags, call.data)),
            **d,
        )
    return deny(errno.EPERM, f"filesystem type {fstype!r} not allowed", **d)


def _decide_fuse(call: MountCall, fstype: str, flags: int, d: dict[str, object]) -> Decision:
    """FUSE: its "fd=N" option names a /dev/fuse file in the caller's fd table, which the
    daemon's executor does not share; the handler takes that file from the caller and the
    executor mounts with its own copy (op mount_fuse: fd= is rewritten there)."""
    fds: list[str] = []
    rest: list[str] = []
    for opt in (call.data or "").split(","):
        if opt.startswith("fd="):
            fds.append(opt[3:])
        elif opt:
            rest.append(opt)
    if len(fds) != 1 or not fds[0].isdigit() or int(fds[0]) >= 1 << 30:
        return deny(errno.EINVAL, "fuse mount needs exactly one fd=N (an open /dev/fuse)",
                    **d)
    return perform(
        f"{fstype} allowed (with the caller's /dev/fuse fd {int(fds[0])})",
        ExecOp("mount_fuse", (call.source, call.target, fstype, flags, ",".join(rest),
                              int(fds[0]))),
        **d,
    )


# Overlay options naming a layer directory, as fsconfig keys taking an fd: an overlay layer
# shows its directory *without the mounts beneath it*, so a layer on /sys would show what
# the /sys/firmware mask hides (procfs the kernel refuses to stack on).
_OVERLAY_FD_KEYS = {"upperdir": "upperdir", "workdir": "workdir", "lowerdir+": "lowerdir+",
                    "datadir+": "datadir+"}


def overlay_layers(data: str | None) -> tuple[list[tuple[str, str]], list[str]] | str:
    """(layers as (fsconfig key, path), other options) of overlay mount data, or why it is
    refused. Legacy `lowerdir=top:...:bottom[::data...]` becomes `lowerdir+`/`datadir+`
    in the same order. Escaped paths (a backslash) are not taken apart here: refused."""
    layers: list[tuple[str, str]] = []
    rest: list[str] = []
    for opt in (data or "").split(","):
        key, sep, val = opt.partition("=")
        if not opt:
            continue
        if key == "lowerdir" and sep:
            parts = val.split("::")
            paths = [("lowerdir+", p) for p in parts[0].split(":")]
            paths += [("datadir+", p) for part in parts[1:] for p in part.split(":")]
        elif key in _OVERLAY_FD_KEYS and sep:
            paths = [(_OVERLAY_FD_KEYS[key], val)]
        else:
            rest.append(opt)
            continue
        for k, path in paths:
            if not path or "\\" in path:
                return f"overlay layer {path!r}: empty or escaped layer paths not supported"
            layers.append((k, path))
    if not any(k == "lowerdir+" for k, _ in layers):
        return "overlay needs a lowerdir"
    return layers, rest


def _decide_overlay(call: MountCall, flags: int, d: dict[str, object]) -> Decision:
    got = overlay_layers(call.data)
    if isinstance(got, str):
        return deny(errno.EINVAL, got, **d)
    layers, rest = got
    # The handler resolves each layer once as the caller sees it, refuses procfs/sysfs ones,
    # and builds the overlay from those very fds (fsconfig FSCONFIG_SET_FD): no path is
    # walked again, so no layer can be swapped for /sys after the check.
    return perform(
        "overlay allowed (layers checked and passed by fd)",
        ExecOp("overlay", (call.source, call.target, flags, tuple(layers), tuple(rest))),
        **d,
    )


def managed_fs_ops(
    target: str, fstype: str, flags: int, data: str | None, ctx: MountContext
) -> list[ExecOp]:
    """Mount procfs/sysfs at `target` with its masks, read-only paths and emulated files.

    The first op names the mount; `mask`, `readonly` and `emulated` are the covers the handler
    builds inside the detached tree before attaching it (a file is masked with a bind of
    /dev/null, a directory with a read-only tmpfs; a read-only path is a recursive clone of
    itself made read-only; an emulated file is a bind of the file the daemon serves).
    Missing paths are skipped.
    """
    prefix = "/proc" if fstype == "proc" else "/sys"
    src = fstype
    ops = [ExecOp("mount", (src, target, fstype, flags, data))]

    def rel(paths: Iterable[str]) -> list[str]:
        out = []
        for p in paths:
            if p == prefix or p.startswith(prefix + "/"):
                out.append(target.rstrip("/") + p[len(prefix) :])
        return out

    for p in rel(ctx.masked_paths):
        ops.append(ExecOp("mask", (p,)))
    for p in rel(ctx.readonly_paths):
        ops.append(ExecOp("readonly", (p,)))
    for cpath, host in sorted(ctx.emulated_paths.items()):
        for p in rel([cpath]):
            ops.append(ExecOp("emulated", (host, p)))
    return ops


def decide_umount(call: UmountCall, ctx: MountContext) -> Decision:
    d = {"target": call.target, "flags": hex(call.flags)}
    t = call.target_mount
    if call.flags & ~(MNT_DETACH | MNT_EXPIRE | UMOUNT_NOFOLLOW | MNT_FORCE):
        return deny(errno.EINVAL, "umount2: unknown flags", **d)
    if t is None or not call.at_root:
        return deny(errno.EINVAL, "umount: target is not a mount point", **d)
    if is_fsroot(t, ctx):
        return deny(errno.EBUSY, f"umount of the container's {t.mountpoint} refused", **d)
    if t.fstype in PSEUDO_FSTYPES and t.root == "/" and t.mountpoint in ("/proc", "/sys"):
        # A nested container's /proc or /sys (mounted through the daemon by its runtime):
        # it stays like the container's own, whatever is beneath (issue 12: what the
        # outer container may not do, the nested one may not either).
        return deny(errno.EBUSY, f"umount of the (nested) container's {t.mountpoint} "
                                 "refused", mount=t.mountpoint, **d)
    if t.fstype in PSEUDO_FSTYPES and t.root == "/":
        # A procfs/sysfs the daemon mounted elsewhere: take its masks with it (they sit on
        # it, so a plain umount would be EBUSY).
        return perform(
            "umount of a daemon-mounted procfs/sysfs with its submounts",
            ExecOp("umount2", (call.target, (call.flags | MNT_DETACH) & ~MNT_EXPIRE)),
            mount=t.mountpoint,
            **d,
        )
    kind = protected_kind(t, ctx)
    if kind is not None:
        return deny(
            errno.EPERM,
            f"umount of {kind} {t.mountpoint} would reveal what it covers",
            mount=t.mountpoint,
            **d,
        )
    return perform(
        "umount of the container's own mount",
        ExecOp("umount2", (call.target, call.flags)),
        mount=t.mountpoint,
        **d,
    )
