"""Mounts built from fds rather than paths: binds and moves attached at the caller's
target, new filesystems and overlays spelled with the new mount API, and procfs/sysfs as a
detached tree masked inside before it is attached."""

from __future__ import annotations

import errno
import logging
import os

from interceptd.handlers import resolve, scope
from interceptd.handlers.scope import NS_MOUNT
from interceptd.kernel import consts as c
from interceptd.kernel import mountapi
from interceptd.kernel.mounttable import MountTable
from interceptd.policy.decision import Decision, ExecOp
from interceptd.policy.immutable import register_managed
from interceptd.policy.mounts import attrs_from_msflags
from interceptd.policystore import ContainerPolicy
from interceptd.seams import Request
from interceptd.verdict import Verdict

log = logging.getLogger("interceptd.policy")


SB_FLAGS = ((c.MS_RDONLY, "ro"), (c.MS_SYNCHRONOUS, "sync"), (c.MS_DIRSYNC, "dirsync"),
             (c.MS_LAZYTIME, "lazytime"))


def mount_overlay(req: Request, d: Decision, fds: scope.Fds) -> Verdict:
    """overlay from checked fds: each layer is resolved once as the caller sees it, one on a
    procfs/sysfs is refused (a layer shows its directory without the mounts beneath it, so
    /sys as a layer would show what the /sys/firmware mask hides), and the overlay is built
    in the executor from those fds (fsopen + fsconfig FSCONFIG_SET_FD + fsmount), then
    attached at the target. mount(2)'s flags become the superblock's and the mount's."""
    source, target, flags, layers, rest = d.ops[0].args
    layer_fds = []
    for key, path in layers:
        err, fd, _ = resolve.resolve(req, c.AT_FDCWD, path, False, fds)
        if err:
            return Verdict.errno(err, f"{scope.reason(d)}; cannot resolve overlay layer {path}")
        kind = resolve.fs_type_of(fd)
        if kind:
            return Verdict.errno(errno.EPERM, f"overlay layer {path} is on {kind}: a layer "
                                              "shows it without its masks " + scope.reason(d))
        layer_fds.append((key, fd))
    steps: list[tuple[int, str | None, str | None, int]] = []
    if source:
        steps.append((c.FSCONFIG_SET_STRING, "source", source, 0))
    steps += [(c.FSCONFIG_SET_FLAG, name, None, 0) for ms, name in SB_FLAGS if flags & ms]
    steps += [(c.FSCONFIG_SET_FD, key, None, fd) for key, fd in layer_fds]
    for opt in rest:
        key, sep, val = opt.partition("=")
        steps.append((c.FSCONFIG_SET_STRING, key, val, 0) if sep
                     else (c.FSCONFIG_SET_FLAG, key, None, 0))
    steps.append((c.FSCONFIG_CMD_CREATE, None, None, 0))
    res = scope.perform(req, d, NS_MOUNT, "fsopen", "overlay", c.FSOPEN_CLOEXEC)
    return configure_and_attach(req, d, fds.add(res.fd), steps, flags, target, fds)


def attach(req: Request, d: Decision, tree: int, target: str, fds: scope.Fds) -> Verdict:
    """move_mount of the mount `tree` (a detached tree or a checked mount) to `target` as
    the caller sees it."""
    try:
        tdfd, tpath, tflag = resolve.target_at(req, c.AT_FDCWD, target, fds)
    except ProcessLookupError:
        raise
    except OSError as e:
        return scope.kernel_error(d, e.errno or errno.ENOENT, "resolving the target")
    scope.perform(req, d, NS_MOUNT, "move_mount", tree, "", tdfd, tpath,
                c.MOVE_MOUNT_F_EMPTY_PATH | tflag)
    return Verdict.value(0, scope.reason(d))


def bind_at(req: Request, d: Decision, sfd: int, target: str, fds: scope.Fds) -> Verdict:
    """The (always recursive) bind as a clone of the checked source fd, attached at the
    target: what mount(MS_BIND|MS_REC) does, without walking either path again."""
    res = scope.perform(req, d, NS_MOUNT, "open_tree", sfd, "",
                c.OPEN_TREE_CLONE | c.OPEN_TREE_CLOEXEC | c.AT_RECURSIVE | c.AT_EMPTY_PATH)
    return attach(req, d, fds.add(res.fd), target, fds)


def new_mount_at(req: Request, d: Decision, fstype: str, source: str | None, flags: int,
                  data: str | None, target: str, fds: scope.Fds) -> Verdict:
    """mount(2) of a new filesystem spelled with the new mount API (as the kernel itself
    parses mount data: source, superblock flags, then each option), attached at the
    target: the context in the caller's namespaces, the attach on the caller's fd. Every
    step runs in the executor, as the container's root: the superblock (its root inode's
    owner, a tmpfs's or ramfs's) is created with the creds of whoever sends CMD_CREATE."""
    res = scope.perform(req, d, scope.ns_for(fstype), "fsopen", fstype, c.FSOPEN_CLOEXEC)
    fc = fds.add(res.fd)
    steps: list[tuple[int, str | None, str | None, int]] = []
    if source:
        steps.append((c.FSCONFIG_SET_STRING, "source", source, 0))
    steps += [(c.FSCONFIG_SET_FLAG, name, None, 0) for ms, name in SB_FLAGS if flags & ms]
    for opt in (data or "").split(","):
        key, sep, val = opt.partition("=")
        if opt:
            steps.append((c.FSCONFIG_SET_STRING, key, val, 0) if sep
                         else (c.FSCONFIG_SET_FLAG, key, None, 0))
    steps.append((c.FSCONFIG_CMD_CREATE, None, None, 0))
    return configure_and_attach(req, d, fc, steps, flags, target, fds)


def configure_and_attach(req: Request, d: Decision, fc: int,
                          steps: list[tuple[int, str | None, str | None, int]], flags: int,
                          target: str, fds: scope.Fds) -> Verdict:
    """fsconfig each step on the context fc, fsmount it and attach the new tree at target
    (the executor's calls; a kernel error is answered with its own errno)."""
    for cmd, key, val, aux in steps:
        scope.perform(req, d, NS_MOUNT, "fsconfig", fc, cmd, key, val, aux,
                      what=f"fsconfig {key or 'create'}")
    res = scope.perform(req, d, NS_MOUNT, "fsmount", fc, c.FSMOUNT_CLOEXEC, mount_attrs(flags))
    return attach(req, d, fds.add(res.fd), target, fds)


def mount_attrs(flags: int) -> int:
    """fsmount's attributes for mount(2)'s per-mount flags."""
    attrs = attrs_from_msflags(flags)
    for ms, attr in ((c.MS_NOATIME, c.MOUNT_ATTR_NOATIME),
                     (c.MS_STRICTATIME, c.MOUNT_ATTR_STRICTATIME),
                     (c.MS_NODIRATIME, c.MOUNT_ATTR_NODIRATIME),
                     (c.MS_NOSYMFOLLOW, c.MOUNT_ATTR_NOSYMFOLLOW)):
        if flags & ms:
            attrs |= attr
    return attrs


def remount_attrs(flags: int) -> tuple[int, int]:
    """(attr_set, attr_clr) for mount_setattr that give a mount the per-mount flags a
    remount with `flags` gives it (they replace all of them, as mount(2) does)."""
    attr_set = attrs_from_msflags(flags)
    attr_clr = c.MOUNT_ATTR_LOCKED & ~attr_set
    if flags & c.MS_NOSYMFOLLOW:
        attr_set |= c.MOUNT_ATTR_NOSYMFOLLOW
    else:
        attr_clr |= c.MOUNT_ATTR_NOSYMFOLLOW
    if flags & c.MS_NODIRATIME:
        attr_set |= c.MOUNT_ATTR_NODIRATIME
    else:
        attr_clr |= c.MOUNT_ATTR_NODIRATIME
    if flags & c.MS_NOATIME:
        attr_set |= c.MOUNT_ATTR_NOATIME
        attr_clr |= c.MOUNT_ATTR__ATIME
    elif flags & c.MS_STRICTATIME:
        attr_set |= c.MOUNT_ATTR_STRICTATIME
        attr_clr |= c.MOUNT_ATTR__ATIME
    elif flags & c.MS_RELATIME:
        attr_clr |= c.MOUNT_ATTR__ATIME
    return attr_set, attr_clr


def mount_managed(req: Request, st: ContainerPolicy, d: Decision, fstype: str, flags: int,
                   data: str | None, target: str, fds: scope.Fds) -> Verdict:
    """procfs/sysfs as a detached tree, masked inside, then attached in one move_mount.

    The context comes from the caller's namespaces (so it shows the caller's pid or network
    namespace); superblock, mount and masks are made by the daemon. That also spares the
    container the kernel's "mount too revealing" refusal in a nested user namespace, whose
    copy of /proc has locked masks: the masks it would protect are put back here.
    """
    res = scope.perform(req, d, scope.ns_for(fstype), "fsopen", fstype, c.FSOPEN_CLOEXEC)
    fc = fds.add(res.fd)
    try:
        mountapi.apply_options(fc, data)
        mountapi.fsconfig(fc, c.FSCONFIG_CMD_CREATE)
        tree = fds.add(mountapi.fsmount(fc, attrs_from_msflags(flags)))
        net = _sys_net(tree, fstype, flags, d, fds)
        for op in d.ops[1:]:
            _cover(tree, target, op, fds)
        if net is not None:
            mountapi.attach(net, tree, "sys/net")
    except OSError as e:
        return scope.kernel_error(d, e.errno or errno.EINVAL, "building the masked tree")
    dev = os.fstat(tree).st_dev
    attached = attach(req, d, tree, target, fds)
    if attached.kind != "value":
        return attached
    table = MountTable.read(req.pid)
    devname = f"{os.major(dev)}:{os.minor(dev)}"
    for e in table.entries:
        if e.dev == devname and e.root == "/":
            register_managed(st.imm, table, e)
    scope.store_of(req.container).save()
    return Verdict.value(0, scope.reason(d))


def _sys_net(tree: int, fstype: str, flags: int, d: Decision, fds: scope.Fds) -> int | None:
    """A read-write clone of the new procfs's sys/net, taken before /proc/sys is made
    read-only, to attach over it: a nested runtime writes its container's network
    sysctls (runc sets Docker's net.ipv4.ip_unprivileged_port_start there before it
    makes /proc/sys read-only; here /proc/sys is read-only from the start). Each write
    is the kernel's to allow: net sysctls act on the writer's network namespace and
    need CAP_NET_ADMIN over its owner, the global ones exist in the host's only."""
    if fstype != "proc" or flags & c.MS_RDONLY or not any(
            op.op == "readonly" and op.args[-1].endswith("/sys") for op in d.ops[1:]):
        return None
    try:
        return fds.add(mountapi.clone_tree(tree, "sys/net"))
    except FileNotFoundError:
        return None


def _cover(tree: int, target: str, op: ExecOp, fds: scope.Fds) -> None:
    """Apply one mask / read-only path / emulated file inside the detached `tree`."""
    path = op.args[-1]
    rel = path[len(target.rstrip("/")):].lstrip("/")
    try:
        probe = os.open(rel, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=tree)
    except FileNotFoundError:
        return  # nothing to cover
    try:
        is_dir = os.path.isdir(f"/proc/self/fd/{probe}")
    finally:
        os.close(probe)
    if op.op == "mask":
        if is_dir:
            tfc = fds.add(mountapi.fsopen("tmpfs"))
            mountapi.fsconfig(tfc, c.FSCONFIG_SET_STRING, "mode", "0555")
            mountapi.fsconfig(tfc, c.FSCONFIG_CMD_CREATE)
            cover = fds.add(mountapi.fsmount(tfc, c.MOUNT_ATTR_RDONLY | c.MOUNT_ATTR_NOSUID
                                          | c.MOUNT_ATTR_NODEV | c.MOUNT_ATTR_NOEXEC))
        else:
            cover = fds.add(mountapi.clone_tree(c.AT_FDCWD, "/dev/null", recursive=False))
    elif op.op == "readonly":
        cover = fds.add(mountapi.clone_tree(tree, rel))
        mountapi.set_attrs(cover, c.MOUNT_ATTR_LOCKED)
    else:  # emulated: a file the daemon serves, bound over the procfs/sysfs file
        try:
            cover = fds.add(mountapi.clone_tree(c.AT_FDCWD, op.args[0], recursive=False))
        except OSError as e:
            # The daemon runs without its FUSE tree (restarted without /dev/fuse): the
            # new procfs shows the kernel's file, as the container's did before.
            log.warning("emulated file not bound: %s", e, extra={"fields": {"path": path}})
            return
    mountapi.attach(cover, tree, rel)
