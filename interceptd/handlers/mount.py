"""mount(2) and umount2(2): read the arguments once, resolve in the caller's context,
decide (policy/mounts.py), perform through the executor on the checked fds."""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import stat
import threading
import weakref
from collections.abc import Callable

from interceptd.handlers import callerpath, mountbuild, resolve, scope
from interceptd.handlers.scope import NS_MOUNT
from interceptd.kernel import consts as c
from interceptd.kernel.consts import DATA_MAX, FSTYPE_MAX, FUSE_DEV, PATH_MAX
from interceptd.policy.decision import Decision
from interceptd.policy.fdmounts import FdMount
from interceptd.policy.mounts import (
    ALLOWED_FSTYPES,
    MountCall,
    UmountCall,
    decide_mount,
    decide_umount,
)
from interceptd.policystore import ContainerPolicy
from interceptd.seams import Container, Core, Request
from interceptd.syscalls import nr
from interceptd.verdict import Verdict

log = logging.getLogger("interceptd.policy")


# What the native helper may mount itself: the allowed filesystem types that need only
# the caller's user and mount namespaces (mqueue and cgroup2 need others), whose options
# name no caller fd (fuse) and no path relative to the caller's cwd (overlay).
NATIVE_FSTYPES = tuple(sorted(t for t in ALLOWED_FSTYPES
                              if scope.ns_for(t) == NS_MOUNT
                              and t not in ("overlay", "fuse", "fuseblk", "none")))


NR_MOUNT, NR_UMOUNT2 = nr("mount"), nr("umount2")  # the helper forwards other arches


_native_lock = threading.Lock()  # one start per container, prestart or first call
# id(container) -> the channel whose helper was started (weak: goes with the container)
_helpers: weakref.WeakValueDictionary[int, object] = weakref.WeakValueDictionary()
_ruled: weakref.WeakValueDictionary[int, object] = weakref.WeakValueDictionary()  # rules set


def enable_native(req: Request, st: ContainerPolicy) -> None:
    """Start the container's native mount helper (csrc/native.c): from now on it receives
    the init's notifications, performs the plain mount/umount2 calls the policy surely
    allows, and forwards everything else here.

    Only after the attach-time snapshot (scope.state_of) exists: the helper never consults it,
    but a snapshot taken after a native mount would count that mount as attach-time state.
    """
    if not st.native:
        start_native(req.container, req.core, st)


def prestart_native(ct: Container, core: Core) -> None:
    """Attach hook (on its own thread): the helper and the attach-time snapshot at once,
    so that the container's first mount is the helper's (~100 us) rather than the Python
    path's plus a snapshot and two forks (tens of ms). The helper's fork (in C, without
    the GIL) and the snapshot (Python) run side by side; its mount rules are set only once
    the snapshot exists: until then (ACT_HOLD) it holds a mount-family call, at most 1 s.
    A call the daemon's receiver gets meanwhile (the helper not yet receiving) waits for
    this start (the lock) instead of making its own."""
    if not scope.settings.native or ct.channel is None:
        return
    snap: list[ContainerPolicy] = []

    def snapshot() -> None:
        try:
            snap.append(scope.state_of(ct))
        except OSError as e:  # the container is gone already
            log.debug("no attach-time snapshot: %s", e, extra={"fields": {"container": ct.id}})

    def snapshot_done() -> ContainerPolicy | None:
        t.join()
        return snap[0] if snap else None

    t = threading.Thread(target=snapshot, name="attach-snapshot", daemon=True)
    t.start()
    start_native(ct, core, None, snapshot_done)


def start_native(ct: Container, core: Core, st: ContainerPolicy | None,
                 wait: Callable[[], ContainerPolicy | None] | None = None) -> None:
    """Start the helper (unless started) and turn on its mount rules once the container's
    policy state exists: `st`, or what `wait()` returns (None: no state, no rules)."""
    if not scope.settings.native:
        return
    with _native_lock:
        if st is not None and st.native:
            return
        ch, fds = ct.channel, ct.notify_fds
        if ch is None or not fds or ct.pidfd < 0:
            return
        started = _helpers.get(id(ct)) is ch
        if started and _ruled.get(id(ct)) is ch:
            return  # the first call's own start got here first: rules set already
        held = False
        try:
            if not started:
                _helpers[id(ct)] = ch  # once: a helper that failed or died is not restarted
                ch.enable_native(list(NATIVE_FSTYPES), ct.pidfd, ct.init_pid, fds[0])
            if wait is not None:
                # The helper holds a mount arriving meanwhile (<= 1 s) rather than forward
                # it to the Python path, which would perform it through a new executor.
                for n in (NR_MOUNT, NR_UMOUNT2):
                    ch.set_rule(n, core.ACT_HOLD)
                held = True
                st = wait()
            if st is not None and not st.native:
                st.native = True
                ch.set_rule(NR_MOUNT, core.ACT_NATIVE)
                ch.set_rule(NR_UMOUNT2, core.ACT_NATIVE)
                _ruled[id(ct)] = ch
                held = False
        except OSError as e:
            if st is not None:
                st.native = True
            log.warning("native mount path not started: %s", e,
                        extra={"fields": {"container": ct.id}})
        finally:
            if held:  # no snapshot: the Python path decides, as before the helper
                for n in (NR_MOUNT, NR_UMOUNT2):
                    ch.set_rule(n, core.ACT_PYTHON)


def handle_mount(req: Request) -> Verdict:
    a = req.args
    source = scope.read_str(req, a[0], PATH_MAX)
    target = scope.read_str(req, a[1], PATH_MAX)
    fstype = scope.read_str(req, a[2], FSTYPE_MAX)
    flags = scope.u32(a[3])
    if flags & c.MS_MGC_MSK == c.MS_MGC_VAL:
        flags &= ~c.MS_MGC_MSK
    data = None
    needs_data = not flags & (c.MS_BIND | c.MS_MOVE) and not (
        flags & c.MS_PROPAGATION and not flags & c.MS_REMOUNT)
    if needs_data:
        data = scope.read_str(req, a[4], DATA_MAX)
    if target is None:
        return Verdict.errno(errno.EFAULT, "mount: NULL target")
    return scope.locked(req, _mount_locked, source, target, fstype, flags, data,
                        prepare=enable_native)


def _mount_locked(req: Request, st: ContainerPolicy, fds: scope.Fds, source: str | None,
                  target: str,
                  fstype: str | None, flags: int, data: str | None) -> Verdict:
    tmount = smount = None
    tfd = sfd = -1
    resolved: FdMount | None = None
    if flags & c.MS_REMOUNT:
        err, tfd, resolved = resolve.resolve(req, c.AT_FDCWD, target, False, fds)
        if err:
            return Verdict.errno(err, f"mount: cannot resolve target {target}")
        tmount = resolved.entry if resolved else None
    elif flags & (c.MS_MOVE | c.MS_BIND):
        if source is None:
            return Verdict.errno(errno.EFAULT, "mount: NULL source")
        err, sfd, resolved = resolve.resolve(req, c.AT_FDCWD, source, False, fds)
        if err:
            return Verdict.errno(err, f"mount: cannot resolve source {source}")
        smount = resolved.entry if resolved else None
    elif flags & c.MS_PROPAGATION == c.MS_UNBINDABLE:
        err, tfd, resolved = resolve.resolve(req, c.AT_FDCWD, target, False, fds)
        if err:
            return Verdict.errno(err, f"mount: cannot resolve target {target}")
        tmount = resolved.entry if resolved else None
    call = MountCall(source, target, fstype, flags, data, tmount, smount)
    ctx = scope.context(req, st, resolved.table if resolved else None, fstype=fstype)
    d = decide_mount(call, ctx)
    if d.kind != "perform":
        return scope.verdict(d)
    if flags & c.MS_REMOUNT:
        # On the fd of the very mount we checked: a path swapped meanwhile (a renamed
        # directory, a symlink put in its place) cannot redirect it; nothing walks the
        # path again.
        if flags & c.MS_BIND:
            return _remount_bind_fd(req, d, tfd, flags)
        attr_set, attr_clr = mountbuild.remount_attrs(flags)
        scope.perform(req, d, NS_MOUNT, "remount_fd", tfd, flags, data, attr_set, attr_clr,
                      what="remount (fspick/fsconfig/mount_setattr)")
        return Verdict.value(0, scope.reason(d))
    if d.ops and d.ops[0].op == "unbindable":
        # mount_setattr on the checked fd, for the same reason.
        rec = c.AT_RECURSIVE if d.ops[0].args[0] else 0
        scope.perform(req, d, NS_MOUNT, "mount_setattr", tfd, "", c.AT_EMPTY_PATH | rec, 0, 0,
                    c.MS_UNBINDABLE, 0)
        return Verdict.value(0, scope.reason(d))
    if d.ops and d.ops[0].op == "mount_fuse":
        return _mount_fuse(req, d, fds)
    if d.ops and d.ops[0].op == "overlay":
        return mountbuild.mount_overlay(req, d, fds)
    if flags & c.MS_MOVE:
        # move_mount on the checked fd, for the same reason.
        return mountbuild.attach(req, d, sfd, target, fds)
    if d.details.get("managed"):
        return mountbuild.mount_managed(req, st, d, fstype or "", flags, data, target, fds)
    if callerpath.parse(target) is not None or (
            flags & c.MS_BIND and source is not None and callerpath.parse(source) is not None):
        # The caller's own fd as source or target: the executor cannot walk that path
        # (its /proc is not the caller's), so the mount is made from fds and attached.
        if flags & c.MS_BIND:
            return mountbuild.bind_at(req, d, sfd, target, fds)
        return mountbuild.new_mount_at(req, d, fstype or "", source, flags, data, target, fds)
    scope.run_ops(req, d, scope.ns_for(fstype if not flags & c.MS_BIND else None))
    return Verdict.value(0, scope.reason(d))


def _remount_bind_fd(req: Request, d: Decision, fd: int, flags: int) -> Verdict:
    attr_set, attr_clr = mountbuild.remount_attrs(flags)
    scope.perform(req, d, NS_MOUNT, "mount_setattr", fd, "", c.AT_EMPTY_PATH, attr_set,
                  attr_clr, 0, 0)
    return Verdict.value(0, scope.reason(d))


def _mount_fuse(req: Request, d: Decision, fds: scope.Fds) -> Verdict:
    """A FUSE mount with the caller's /dev/fuse file: its "fd=N" names the caller's table,
    so the daemon takes that file (pidfd_getfd) and the executor mounts with its own copy
    (SCM_RIGHTS, fd= rewritten there). Only a /dev/fuse file is passed on: the kernel
    would refuse anything else too, this says why."""
    source, target, fstype, flags, rest, caller_fd = d.ops[0].args
    try:
        fd = resolve.caller_fd(req, caller_fd, fds)
    except OSError as e:
        if isinstance(e, ProcessLookupError):
            raise
        return Verdict.errno(e.errno or errno.EBADF,
                             f"{scope.reason(d)}; fd={caller_fd} is not an open fd of the caller")
    st = os.fstat(fd)
    is_fuse = (stat.S_ISCHR(st.st_mode)
               and (os.major(st.st_rdev), os.minor(st.st_rdev)) == FUSE_DEV
               and not fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_PATH)  # O_PATH: not opened
    if not is_fuse:
        return Verdict.errno(errno.EINVAL, f"{scope.reason(d)}; fd={caller_fd} is not an open "
                                           "/dev/fuse (char 10:229)")
    scope.perform(req, d, NS_MOUNT, "mount_fuse", source, target, fstype, flags, rest, fd,
                  what="mount")
    return Verdict.value(0, scope.reason(d))


def handle_umount2(req: Request) -> Verdict:
    a = req.args
    target = scope.read_str(req, a[0], PATH_MAX)
    flags = scope.u32(a[1])
    if target is None:
        return Verdict.errno(errno.EFAULT, "umount2: NULL target")
    return scope.locked(req, _umount2_locked, target, flags, prepare=enable_native)


def _umount2_locked(req: Request, st: ContainerPolicy, fds: scope.Fds, target: str,
                    flags: int) -> Verdict:
    own = callerpath.parse(target) is not None
    # statmount names mount points from the namespace's root; the caller's own-fd
    # case below needs the mountinfo's, relative to the caller's root.
    err, _, fm = resolve.resolve(req, c.AT_FDCWD, target, bool(flags & c.UMOUNT_NOFOLLOW),
                          fds, facts=not own)
    if err:
        return Verdict.errno(err, f"umount2: cannot resolve {target}")
    ctx = scope.context(req, st, fm.table if fm else None)
    d = decide_umount(UmountCall(target, flags, fm.entry if fm else None), ctx)
    if d.kind != "perform":
        return scope.verdict(d)
    # The umount acts on the path again (there is no umount-by-fd): the executor
    # re-resolves it and unmounts only if it is still the mount we checked (a
    # swapped directory or symlink gets ESTALE, answered EBUSY). What remains is
    # the executor's own resolve-to-umount window, see docs/policy.md "Residual
    # races". Our O_PATH fd would keep the mount busy, so it goes first.
    fds.close()
    op = d.ops[0]
    assert fm is not None and fm.entry is not None  # decide_umount refuses others
    where, uflags = op.args
    if own:
        # The caller's own fd: the checked mount's mount point as the caller's
        # root shows it (the executor's root), still checked by mount id there.
        where = fm.entry.mountpoint
    res = scope.exec_op(req, NS_MOUNT, "umount2_checked", where, uflags, fm.entry.mount_id)
    if res.errno == errno.ESTALE:
        return Verdict.errno(errno.EBUSY, f"{scope.reason(d)}; the path changed "
                                          "between check and umount")
    if res.errno:
        raise scope.KernelError(d, res.errno, "umount2")
    return Verdict.value(0, scope.reason(d))
