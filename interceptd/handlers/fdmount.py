"""The new mount API: fsopen, fspick, open_tree, move_mount, mount_setattr (decided by
policy/fdmounts.py, performed on the checked fds)."""

from __future__ import annotations

import errno
import os

from interceptd.handlers import resolve, scope
from interceptd.handlers.scope import NS_MOUNT
from interceptd.kernel import consts as c
from interceptd.kernel.consts import FSTYPE_MAX, PATH_MAX, PROC_ROOT_INO
from interceptd.policy.fdmounts import (
    MountAttr,
    decide_detached_tree,
    decide_fsopen,
    decide_fspick,
    decide_mount_setattr,
    decide_move_mount,
    decide_open_tree,
)
from interceptd.policystore import ContainerPolicy
from interceptd.seams import Request
from interceptd.verdict import Verdict


def handle_fsopen(req: Request) -> Verdict:
    a = req.args
    name = scope.read_str(req, a[0], FSTYPE_MAX) or ""
    flags = scope.u32(a[1])
    return scope.locked(req, _fsopen_locked, name, flags)


def _fsopen_locked(req: Request, st: ContainerPolicy, fds: scope.Fds, name: str,
                   flags: int) -> Verdict:
    d = decide_fsopen(name, flags, scope.context(req, st, fstype=name))
    if d.kind != "perform":
        return scope.verdict(d)
    res = scope.perform(req, d, scope.ns_for(name), "fsopen", name, flags | c.FSOPEN_CLOEXEC)
    return Verdict.fd(res.fd, scope.reason(d), os.O_CLOEXEC if flags & c.FSOPEN_CLOEXEC else 0)


def handle_fspick(req: Request) -> Verdict:
    a = req.args
    dfd, path, flags = scope.s32(a[0]), scope.read_str(req, a[1], PATH_MAX) or "", scope.u32(a[2])
    return scope.locked(req, _fspick_locked, dfd, path, flags)


def _fspick_locked(req: Request, st: ContainerPolicy, fds: scope.Fds, dfd: int, path: str,
                   flags: int) -> Verdict:
    mydfd = resolve.caller_fd(req, dfd, fds)
    err, fd, fm = resolve.resolve(req, mydfd, path, bool(flags & c.FSPICK_SYMLINK_NOFOLLOW),
                           fds, empty=bool(flags & c.FSPICK_EMPTY_PATH))
    if err:
        return Verdict.errno(err, f"fspick: cannot resolve {path}")
    d = decide_fspick(fm, scope.context(req, st), {"path": path, "flags": hex(flags)},
                      resolve.fs_type_of(fd))
    if d.kind != "perform":
        return scope.verdict(d)
    res = scope.perform(req, d, NS_MOUNT, "fspick", fd, "", c.FSPICK_EMPTY_PATH | c.FSPICK_CLOEXEC)
    return Verdict.fd(res.fd, scope.reason(d),
                      os.O_CLOEXEC if flags & c.FSPICK_CLOEXEC else 0)



def handle_open_tree(req: Request) -> Verdict:
    a = req.args
    flags = scope.u32(a[2])
    return scope.verdict(decide_open_tree(flags, {"dfd": scope.s32(a[0]), "flags": hex(flags)}))


def handle_move_mount(req: Request) -> Verdict:
    a = req.args
    from_dfd, to_dfd, flags = scope.s32(a[0]), scope.s32(a[2]), scope.u32(a[4])
    from_path = scope.read_str(req, a[1], PATH_MAX) or ""
    to_path = scope.read_str(req, a[3], PATH_MAX) or ""
    return scope.locked(req, _move_mount_locked, from_dfd, to_dfd, flags, from_path, to_path)


def _move_mount_locked(req: Request, st: ContainerPolicy, fds: scope.Fds, from_dfd: int,
                       to_dfd: int, flags: int, from_path: str, to_path: str) -> Verdict:
    my_from = resolve.caller_fd(req, from_dfd, fds)
    my_to = resolve.caller_fd(req, to_dfd, fds)
    err, src_fd, fm = resolve.resolve(req, my_from, from_path,
                               not flags & c.MOVE_MOUNT_F_SYMLINKS, fds,
                               empty=bool(flags & c.MOVE_MOUNT_F_EMPTY_PATH))
    if err:
        return Verdict.errno(err, f"move_mount: cannot resolve {from_path}")
    details = {"from": from_path, "to": to_path, "flags": hex(flags)}
    d = decide_move_mount(flags, fm, scope.context(req, st), details)
    if d.kind != "perform":
        return scope.verdict(d)
    if fm is not None and fm.entry is None:
        fstype = resolve.fs_type_of(src_fd)
        refusal = decide_detached_tree(
            fstype, os.fstat(src_fd).st_ino == PROC_ROOT_INO,
            resolve.unprotected_paths(src_fd, fm, st, fstype) if fstype else [], details)
        if refusal is not None:
            return scope.verdict(refusal)
    try:
        my_to, to_at, to_flag = resolve.target_at(req, my_to, to_path, fds)
    except ProcessLookupError:
        raise
    except OSError as e:
        return scope.kernel_error(d, e.errno or errno.ENOENT, "resolving the target")
    scope.perform(req, d, NS_MOUNT, "move_mount", src_fd, "", my_to, to_at,
                (flags & ~(c.MOVE_MOUNT_F_SYMLINKS | c.MOVE_MOUNT_F_AUTOMOUNTS))
                | c.MOVE_MOUNT_F_EMPTY_PATH | to_flag)
    return Verdict.value(0, scope.reason(d))



def handle_mount_setattr(req: Request) -> Verdict:
    a = req.args
    dfd, flags, size = scope.s32(a[0]), scope.u32(a[2]), a[4]
    path = scope.read_str(req, a[1], PATH_MAX) or ""
    if size < c.MOUNT_ATTR_SIZE_VER0 or size > 4096:
        return Verdict.errno(errno.EINVAL, "mount_setattr: bad size")
    raw = req.read(a[3], c.MOUNT_ATTR_SIZE_VER0)
    attr = MountAttr.unpack(raw)
    return scope.locked(req, _mount_setattr_locked, dfd, flags, path, attr)


def _mount_setattr_locked(req: Request, st: ContainerPolicy, fds: scope.Fds, dfd: int,
                          flags: int, path: str, attr: MountAttr) -> Verdict:
    mydfd = resolve.caller_fd(req, dfd, fds)
    err, fd, fm = resolve.resolve(req, mydfd, path, bool(flags & c.AT_SYMLINK_NOFOLLOW), fds,
                           empty=bool(flags & c.AT_EMPTY_PATH))
    if err:
        return Verdict.errno(err, f"mount_setattr: cannot resolve {path}")
    details = {"path": path, "flags": hex(flags)}
    on_pseudo = bool(attr.propagation & c.MS_UNBINDABLE and fm is not None
                     and fm.entry is None and resolve.detached_on_pseudo(fd))
    d = decide_mount_setattr(flags, attr, fm, scope.context(req, st), details, on_pseudo)
    if d.kind != "perform":
        return scope.verdict(d)
    userns = -1
    if attr.attr_set & c.MOUNT_ATTR_IDMAP:
        userns = resolve.caller_fd(req, attr.userns_fd, fds)
    scope.perform(req, d, NS_MOUNT, "mount_setattr", fd, "",
                   (flags & c.AT_RECURSIVE) | c.AT_EMPTY_PATH, attr.attr_set,
                   attr.attr_clr, attr.propagation, userns)
    return Verdict.value(0, scope.reason(d))
