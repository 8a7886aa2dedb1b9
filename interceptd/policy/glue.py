"""The policy's Python handlers: read arguments once, decide on the copy, act through the
namespace executor, and turn decisions into Verdicts.

Every handler follows the same order: copy pointer arguments (bounded; the core checks
ID_VALID after each read), resolve the paths the decision depends on *in the caller's
context* (the executor stands in its namespaces, root and cwd), decide with a pure
function, then perform allowed mounts through the executor on the copies. Where a
decision can act on an fd it holds (the exact mount it checked) instead of a path, it does.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
import stat
import struct
import threading
import time
import weakref
from dataclasses import dataclass, field
from typing import Any

from interceptd.handlers import thread_pidfd
from interceptd.policy import (
    callerpath,
    executors,
    fsapi,
    process_handlers,
    procinfo,
    sysinfo,
)
from interceptd.policy import consts as c
from interceptd.policy.decision import Decision, ExecOp
from interceptd.policy.mountapi import (
    FdMount,
    MountAttr,
    decide_detached_tree,
    decide_fsopen,
    decide_fspick,
    decide_mount_setattr,
    decide_move_mount,
    decide_open_tree,
)
from interceptd.policy.mounts import (
    ALLOWED_FSTYPES,
    MountCall,
    MountContext,
    UmountCall,
    attrs_from_msflags,
    decide_mount,
    decide_umount,
)
from interceptd.policy.mounttable import (
    DEFAULT_MASKED_PATHS,
    DEFAULT_READONLY_PATHS,
    FactsTable,
    ImmutableSet,
    MountTable,
    entry_from_facts,
    register_managed,
    snapshot,
    tables_of,
)
from interceptd.policy.targetmem import (
    RESOLVE_IN_ROOT,
    RESOLVE_NO_MAGICLINKS,
    call_adjtimex,
    openat2,
    pidfd_getfd,
    write_target,
)
from interceptd.verdict import Verdict

try:
    from interceptd import core as _core
except ImportError:  # the C core is not built (kernel-free unit tests)
    _core = None  # type: ignore[assignment]

log = logging.getLogger("interceptd.policy")

CLONE_NEWNS = 0x00020000
CLONE_NEWCGROUP = 0x02000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000
NS_MOUNT = CLONE_NEWUSER | CLONE_NEWNS

PATH_MAX = 4096
FSTYPE_MAX = 256
DATA_MAX = 4096  # the kernel copies at most a page of mount data
TIMEX_SIZE = 208


def _ns_for(fstype: str | None) -> int:
    # The mount namespace always: fsopen and mount need CAP_SYS_ADMIN over the mount
    # namespace's owner, which the executor has only inside the caller's user namespace.
    ns = NS_MOUNT
    if fstype == "proc":
        ns |= CLONE_NEWPID  # procfs shows the pid namespace of its mounter
    elif fstype == "sysfs":
        ns |= CLONE_NEWNET  # sysfs shows the network namespace of its mounter
    elif fstype in ("cgroup", "cgroup2"):
        ns |= CLONE_NEWCGROUP
    elif fstype == "mqueue":
        ns |= CLONE_NEWIPC
    return ns


def _s32(v: int) -> int:
    v &= 0xFFFFFFFF
    return v - (1 << 32) if v & 0x80000000 else v


def _u32(v: int) -> int:
    return v & 0xFFFFFFFF


# --- per-container policy state ---------------------------------------------------------


@dataclass
class ContainerPolicy:
    imm: ImmutableSet
    masked: tuple[str, ...]
    readonly: tuple[str, ...]
    lock: threading.Lock = field(default_factory=threading.Lock)
    sysinfo: sysinfo.Source | None = None
    native: bool = False  # the native mount helper was started (or tried) for it
    # container path -> the daemon's file bound there at attach (the emulated files):
    # a procfs/sysfs the container mounts later gets the same binds.
    emulated: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"immutable": self.imm.to_dict(), "masked": list(self.masked),
                "readonly": list(self.readonly), "emulated": dict(self.emulated)}


_states: dict[int, ContainerPolicy] = {}
_states_lock = threading.Lock()


def _bundle_paths(container: Any) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """maskedPaths/readonlyPaths of the container's config.json (what runc applied)."""
    masked, readonly = DEFAULT_MASKED_PATHS, DEFAULT_READONLY_PATHS
    bundle = getattr(container, "bundle", "") or ""
    try:
        with open(os.path.join(bundle, "config.json"), encoding="utf-8") as f:
            linux = json.load(f).get("linux", {})
        masked = tuple(linux.get("maskedPaths", masked))
        readonly = tuple(linux.get("readonlyPaths", readonly))
    except (OSError, ValueError, AttributeError):
        pass
    # Docker's defaults always apply to procfs/sysfs the container mounts later.
    return (tuple(dict.fromkeys(masked + DEFAULT_MASKED_PATHS)),
            tuple(dict.fromkeys(readonly + DEFAULT_READONLY_PATHS)))


_persist_dir: str | None = None
_fuse_dir: str | None = None  # <state_dir>/fs: the emulated files' tree
FUSE_FSTYPE = "fuse.interceptd"
_native_on = True


def configure(cfg: Any) -> None:
    """Where the per-container state is kept across daemon restarts (<state_dir>/policy),
    and whether the native mount helper is used (`[policy] native`, default true)."""
    global _persist_dir, _native_on, _fuse_dir
    state_dir = getattr(getattr(cfg, "daemon", None), "state_dir", None)
    _persist_dir = os.path.join(state_dir, "policy") if state_dir else None
    _fuse_dir = os.path.join(state_dir, "fs") if state_dir else None
    from interceptd.policy.deny import policy_section

    _native_on = bool(policy_section(cfg).get("native", True))


# What the native helper may mount itself: the allowed filesystem types that need only
# the caller's user and mount namespaces (mqueue and cgroup2 need others), whose options
# name no caller fd (fuse) and no path relative to the caller's cwd (overlay).
NATIVE_FSTYPES = tuple(sorted(t for t in ALLOWED_FSTYPES
                              if _ns_for(t) == NS_MOUNT
                              and t not in ("overlay", "fuse", "fuseblk", "none")))
NR_MOUNT, NR_UMOUNT2 = 165, 166  # x86_64; the helper forwards other arches


def _enable_native(req: Any, st: ContainerPolicy) -> None:
    """Start the container's native mount helper (csrc/native.c): from now on it receives
    the init's notifications, performs the plain mount/umount2 calls the policy surely
    allows, and forwards everything else here.

    Only after the attach-time snapshot (state_of) exists: the helper never consults it,
    but a snapshot taken after a native mount would count that mount as attach-time state.
    """
    if st.native or not _native_on:
        return
    c = req.container
    ch, core = getattr(c, "channel", None), getattr(req, "core", None)
    fds = list(getattr(c, "notify_fds", ()))
    if (ch is None or not hasattr(ch, "enable_native") or not hasattr(core, "ACT_NATIVE")
            or not fds or getattr(c, "pidfd", -1) < 0):
        return
    st.native = True  # once: a helper that failed or died is not restarted
    try:
        ch.enable_native(list(NATIVE_FSTYPES), c.pidfd, c.init_pid, fds[0])
        ch.set_rule(NR_MOUNT, core.ACT_NATIVE)
        ch.set_rule(NR_UMOUNT2, core.ACT_NATIVE)
    except OSError as e:
        log.warning("native mount path not started: %s", e,
                    extra={"fields": {"container": getattr(c, "id", "?")}})


def _lacks_cap_sys_admin(req: Any) -> Verdict | None:
    """EPERM for a caller without CAP_SYS_ADMIN (in its own user namespace): the kernel
    would refuse it the call, and the executor that performs it has every capability."""
    has_cap = getattr(_core, "has_cap", None) if _core is not None else None
    if has_cap is None:
        return None
    try:
        if has_cap(req.pid, c.CAP_SYS_ADMIN):
            return None
    except OSError:
        raise ProcessLookupError(req.pid) from None
    return Verdict.errno(errno.EPERM, f"{req.syscall}: the caller lacks CAP_SYS_ADMIN")


def _start_ticks(pid: int) -> int:
    with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
        stat = f.read()
    return int(stat[stat.rindex(")") + 2 :].split()[19])


def _state_path(container: Any) -> str | None:
    if _persist_dir is None:
        return None
    cid = "".join(ch if ch.isalnum() or ch in "-_.+" else "_" for ch in str(container.id))
    return os.path.join(_persist_dir, f"{cid}.json")


def _emulated_binds(table: MountTable) -> dict[str, str]:
    """The emulated files interceptd-runc bound in the container (what its init's mount
    table shows: our FUSE type on an emulated path), each with the daemon's file."""
    if _fuse_dir is None:
        return {}
    from interceptd.emulation import registry

    out = {}
    for e in table.entries:
        path = registry.file_at(e.mountpoint) if e.fstype == FUSE_FSTYPE else None
        if path is not None:
            out[e.mountpoint] = _fuse_dir + path
    return out


def _load(path: str | None, init_pid: int, start: int) -> ContainerPolicy | None:
    if path is None:
        return None
    try:
        with open(path, encoding="utf-8") as f:
            d = json.load(f)
        if d.get("init_pid") != init_pid or d.get("init_start") != start:
            return None  # a different container that reused the id
        emulated = {str(k): str(v) for k, v in dict(d.get("emulated", {})).items()}
        return ContainerPolicy(ImmutableSet.from_dict(d["immutable"]), tuple(d["masked"]),
                               tuple(d["readonly"]), emulated=emulated)
    except (OSError, ValueError, KeyError, TypeError):
        return None


def save_state(container: Any, st: ContainerPolicy) -> None:
    """Write the container's policy state (atomically) so a restarted daemon keeps the
    attach-time snapshot instead of re-deriving a coarser one."""
    path = _state_path(container)
    if path is None:
        return
    try:
        os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
        d = st.to_dict()
        d.update(init_pid=container.init_pid, init_start=_start_ticks(container.init_pid))
        tmp = f"{path}.tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(d, f)
        os.replace(tmp, path)
    except (OSError, ValueError) as e:
        log.warning("policy state not saved: %s", e)


def state_of(container: Any) -> ContainerPolicy:
    """The container's policy state, snapshotted from its init's mount table on first use
    (or reloaded from the state dir after a daemon restart).

    The first use is before any mount change the policy vets: runc installs the filter after
    it has set up the container's mounts, and every mount-changing syscall is notified.
    """
    key = id(container)
    with _states_lock:
        st = _states.get(key)
        if st is not None:
            return st
    start = _start_ticks(container.init_pid)
    path = _state_path(container)
    st = _load(path, container.init_pid, start)
    fresh = st is None
    if st is None:
        masked, readonly = _bundle_paths(container)
        table = MountTable.read(container.init_pid)
        emulated = _emulated_binds(table)
        st = ContainerPolicy(snapshot(table, masked, readonly, emulated), masked, readonly,
                             emulated=emulated)
    with _states_lock:
        if key in _states:
            return _states[key]
        _states[key] = st
        weakref.finalize(container, _forget, key, path, container.init_pid, start)
    if fresh:
        save_state(container, st)
    return st


def _forget(key: int, path: str | None, init_pid: int, start: int) -> None:
    with _states_lock:
        _states.pop(key, None)
    if path is None:
        return
    try:
        alive = _start_ticks(init_pid) == start
    except (OSError, ValueError):
        alive = False
    if not alive:  # the container is gone (not just this daemon): its state goes too
        with contextlib.suppress(OSError):
            os.unlink(path)


def tracked_states() -> int:
    with _states_lock:
        return len(_states)


# --- helpers ----------------------------------------------------------------------------


def _str(req: Any, addr: int, max_len: int) -> str | None:
    if addr == 0:
        return None
    return os.fsdecode(req.read_string(addr, max_len))


def _cgroupns_private(pid: int) -> bool:
    try:
        a = os.stat(f"/proc/{pid}/ns/cgroup")
        b = os.stat("/proc/self/ns/cgroup")  # the daemon runs in the host's
    except OSError:
        return False
    return (a.st_dev, a.st_ino) != (b.st_dev, b.st_ino)


# Executor ops that change a mount table (`_exec` forgets the container's cached tables
# after them; the cache also sees every change by itself, see mounttable.TableCache).
_MOUNT_CHANGING = frozenset({"mount", "umount2", "umount2_checked", "move_mount",
                             "mount_setattr"})


def _exec(req: Any, namespaces: int, op: str, *args: Any) -> Any:
    try:
        return executors.run(req, namespaces, op, *args)
    finally:
        if op in _MOUNT_CHANGING:
            tables_of(req.container).invalidate()


def _fd_mnt_id(fd: int) -> int | None:
    if _core is not None:
        return _core.fd_mnt_id(fd)  # statx: no fdinfo text to open and parse
    return procinfo.fd_mnt_id(fd)


def _context(req: Any, st: ContainerPolicy, table: MountTable | None = None, *,
             fstype: str | None = None) -> MountContext:
    """The decision's view; the mount table is read only if the decision looks at it, the
    cgroup namespace only for a cgroup filesystem (`fstype`, matched loosely so that no
    spelling the decision treats as cgroup skips the check)."""
    return MountContext(
        table=table if table is not None else tables_of(req.container).lazy(req.pid, req.valid),
        imm=st.imm,
        cgroupns_private=_cgroupns_private(req.pid) if "cgroup" in (fstype or "") else True,
        masked_paths=st.masked,
        readonly_paths=st.readonly,
        emulated_paths=st.emulated,
    )


def _verdict(d: Decision) -> Verdict:
    reason = _reason(d)
    if d.kind == "errno":
        return Verdict.errno(d.errno, reason)
    if d.kind == "value":
        return Verdict.value(d.value, reason)
    if d.kind == "continue":
        return Verdict.cont(reason)
    raise ValueError(f"decision {d.kind} needs performing")


def _reason(d: Decision) -> str:
    """The reason with the decoded arguments (events carry raw registers only)."""
    if not d.details:
        return d.reason
    parts = " ".join(f"{k}={v}" for k, v in d.details.items() if v is not None)
    return f"{d.reason} [{parts}]"


def _kernel_error(d: Decision, err: int, op: str) -> Verdict:
    name = errno.errorcode.get(err, str(err))
    return Verdict.errno(err, f"{_reason(d)}; {op}: {name}")


class _Fds:
    """Daemon-side fds to close whatever happens."""

    def __init__(self) -> None:
        self.fds: list[int] = []

    def add(self, fd: int) -> int:
        if fd >= 0:
            self.fds.append(fd)
        return fd

    def close(self) -> None:
        for fd in self.fds:
            with contextlib.suppress(OSError):
                os.close(fd)
        self.fds.clear()


def _caller_fd(req: Any, fd: int, fds: _Fds) -> int:
    """A daemon copy of the caller's fd `fd` (AT_FDCWD passes through), from the calling
    thread's own fd table (a thread pidfd; before Linux 6.9 the group leader's)."""
    if _s32(fd) == c.AT_FDCWD:
        return c.AT_FDCWD
    pidfd = fds.add(thread_pidfd(req.pid))
    copy = fds.add(pidfd_getfd(pidfd, _s32(fd)))
    if not req.valid():
        raise ProcessLookupError(req.pid)
    return copy


def _resolve(
    req: Any, dfd: int, path: str, nofollow: bool, fds: _Fds, *, empty: bool = False,
    facts: bool = False,
) -> tuple[int, int, FdMount | None]:
    """Open `path` (relative to the daemon's copy `dfd` of the caller's dirfd) as the caller
    sees it: (0, fd, mount) with an O_PATH fd held by the daemon, or (errno, -1, None).

    A path through the caller's own /proc entry (/proc/self/fd/N, ...) is walked from the
    caller's object itself (callerpath), never from the executor's /proc."""
    got = _caller_object(req, path, fds)
    if got is not None:
        if got[0] < 0:
            return (-got[0], -1, None)
        dfd, path = got
        empty = True
    if dfd == c.AT_FDCWD and path.startswith("/"):
        # In the daemon, without a fork: the caller's root and mount namespace are reached
        # through /proc/<pid>/root, and RESOLVE_IN_ROOT keeps "..", absolute symlinks and
        # magic links from leaving it (magic links are refused: they would resolve in the
        # daemon's context).
        got = _resolve_in_root(req, path, nofollow, fds, facts)
        if got is not None:
            return got
    flags = c.OPEN_TREE_CLOEXEC
    if nofollow:
        flags |= c.AT_SYMLINK_NOFOLLOW
    if empty and path == "":
        flags |= c.AT_EMPTY_PATH
    res = _exec(req, NS_MOUNT, "open_tree", dfd, path, flags)
    if res.errno or res.fd < 0:
        return (res.errno or errno.EINVAL, -1, None)
    fd = fds.add(res.fd)
    return (0, fd, _fd_mount(req, fd, facts=facts))


def _caller_object(req: Any, path: str, fds: _Fds) -> tuple[int, str] | None:
    """(daemon fd of the object, the rest of the path) when `path` names the caller's own
    fd, cwd or root through /proc; (-errno, "") if that object is missing; else None."""
    ref = callerpath.parse(path)
    if ref is None:
        return None
    try:
        fd = callerpath.open_object(req, ref)
    except ProcessLookupError:
        raise
    except OSError as e:
        return (-(e.errno or errno.ENOENT), "")
    if fd is None:
        return None
    return (fds.add(fd), ref.rest)


def _target_at(req: Any, dfd: int, path: str, fds: _Fds) -> tuple[int, str, int]:
    """Where a mount is attached, as move_mount's (to_dfd, to_path, flag): the caller's
    own object for a /proc/self/fd/N-style path (MOVE_MOUNT_T_EMPTY_PATH when the path
    ends there), else the path as given. OSError if that object is missing."""
    got = _caller_object(req, path, fds)
    if got is None:
        return (dfd, path, 0)
    if got[0] < 0:
        raise OSError(-got[0], f"cannot resolve {path}")
    return (got[0], got[1], c.MOVE_MOUNT_T_EMPTY_PATH if got[1] == "" else 0)


def _resolve_in_root(req: Any, path: str, nofollow: bool, fds: _Fds,
                     facts: bool = False) -> tuple[int, int, FdMount | None] | None:
    """(errno|0, fd, mount), or None to fall back to the executor (a magic link, FUSE)."""
    root = fds.add(os.open(f"/proc/{req.pid}/root", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC))
    if not req.valid():  # the root we opened is the caller's, not a reused pid's
        raise ProcessLookupError(req.pid)
    flags = os.O_PATH | os.O_CLOEXEC | (os.O_NOFOLLOW if nofollow else 0)
    try:
        fd = fds.add(openat2(root, path.lstrip("/") or ".", flags,
                             RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS))
    except OSError as e:
        # EACCES: a FUSE filesystem on the way refuses the daemon (host root, not its
        # server's user) without asking the server; the executor walks as the container's
        # root, which it answers. The daemon's DAC would have allowed anything else.
        if e.errno in (errno.ELOOP, errno.EXDEV, errno.EACCES):
            return None
        return (e.errno or errno.ENOENT, -1, None)
    return (0, fd, _fd_mount(req, fd, facts=facts))


def _fd_mount(req: Any, fd: int, *, facts: bool = False) -> FdMount:
    """The mount `fd` is on, looked up in the caller's mount table. With `facts` (callers
    whose decision needs only that mount and its parent: umount), statmount(2) reports
    both without generating the whole mountinfo (~20 us); the table is read only if the
    decision asks for more, or if the kernel cannot tell (before 6.11)."""
    if facts and _core is not None:
        try:
            got = _core.fd_mount_facts(fd, req.pid)
        except OSError as e:
            if e.errno == errno.ESRCH:
                raise ProcessLookupError(req.pid) from None
        else:
            entries = [entry_from_facts(f) for f in got]
            table = FactsTable(entries, req.pid)
            return FdMount(entries[0], entries[0].dev, table)
    table = tables_of(req.container).lazy(req.pid, req.valid)
    try:
        st = os.fstat(fd)
        mnt_id = _fd_mnt_id(fd)
    except PermissionError:
        if _fs_magic(fd) != FUSE_SUPER_MAGIC:
            raise
        # A FUSE filesystem answers only its own users' stat (the daemon is host root
        # outside the container's user namespace, so EACCES, never a request the server
        # could leave unanswered): fdinfo and the table name the mount without asking it.
        mnt_id = procinfo.fd_mnt_id(fd)
        entry = table.get(mnt_id) if mnt_id is not None else None
        return FdMount(entry, entry.dev if entry else "fuse:detached", table)
    dev = f"{os.major(st.st_dev)}:{os.minor(st.st_dev)}"
    entry = table.get(mnt_id) if mnt_id is not None else None
    return FdMount(entry, dev, table)


def _run_ops(req: Any, d: Decision, ns: int) -> tuple[Verdict | None, Any]:
    """Run a decision's ExecOps; the last result, or an error verdict."""
    res = None
    for op in d.ops:
        res = _exec(req, ns, op.op, *op.args)
        if res.errno:
            return _kernel_error(d, res.errno, op.op), None
    return None, res


# --- mount(2), umount2(2) ---------------------------------------------------------------


def handle_mount(req: Any) -> Verdict:
    a = req.args
    source = _str(req, a[0], PATH_MAX)
    target = _str(req, a[1], PATH_MAX)
    fstype = _str(req, a[2], FSTYPE_MAX)
    flags = _u32(a[3])
    if flags & c.MS_MGC_MSK == c.MS_MGC_VAL:
        flags &= ~c.MS_MGC_MSK
    data = None
    needs_data = not flags & (c.MS_BIND | c.MS_MOVE) and not (
        flags & c.MS_PROPAGATION and not flags & c.MS_REMOUNT)
    if needs_data:
        data = _str(req, a[4], DATA_MAX)
    if target is None:
        return Verdict.errno(errno.EFAULT, "mount: NULL target")
    st = state_of(req.container)
    _enable_native(req, st)
    fds = _Fds()
    with st.lock:
        try:
            return _mount_locked(req, st, fds, source, target, fstype, flags, data)
        finally:
            fds.close()


def _mount_locked(req: Any, st: ContainerPolicy, fds: _Fds, source: str | None, target: str,
                  fstype: str | None, flags: int, data: str | None) -> Verdict:
    tmount = smount = None
    tfd = sfd = -1
    resolved: FdMount | None = None
    if flags & c.MS_REMOUNT:
        err, tfd, resolved = _resolve(req, c.AT_FDCWD, target, False, fds)
        if err:
            return Verdict.errno(err, f"mount: cannot resolve target {target}")
        tmount = resolved.entry if resolved else None
    elif flags & (c.MS_MOVE | c.MS_BIND):
        if source is None:
            return Verdict.errno(errno.EFAULT, "mount: NULL source")
        err, sfd, resolved = _resolve(req, c.AT_FDCWD, source, False, fds)
        if err:
            return Verdict.errno(err, f"mount: cannot resolve source {source}")
        smount = resolved.entry if resolved else None
    elif flags & c.MS_PROPAGATION == c.MS_UNBINDABLE:
        err, tfd, resolved = _resolve(req, c.AT_FDCWD, target, False, fds)
        if err:
            return Verdict.errno(err, f"mount: cannot resolve target {target}")
        tmount = resolved.entry if resolved else None
    call = MountCall(source, target, fstype, flags, data, tmount, smount)
    ctx = _context(req, st, resolved.table if resolved else None, fstype=fstype)
    d = decide_mount(call, ctx)
    if d.kind != "perform":
        return _verdict(d)
    if flags & c.MS_REMOUNT:
        # On the fd of the very mount we checked: a path swapped meanwhile (a renamed
        # directory, a symlink put in its place) cannot redirect it; nothing walks the
        # path again.
        if flags & c.MS_BIND:
            return _remount_bind_fd(req, d, tfd, flags)
        attr_set, attr_clr = _remount_attrs(flags)
        res = _exec(req, NS_MOUNT, "remount_fd", tfd, flags, data, attr_set, attr_clr)
        if res.errno:
            return _kernel_error(d, res.errno, "remount (fspick/fsconfig/mount_setattr)")
        return Verdict.value(0, _reason(d))
    if d.ops and d.ops[0].op == "unbindable":
        # mount_setattr on the checked fd, for the same reason.
        rec = c.AT_RECURSIVE if d.ops[0].args[0] else 0
        res = _exec(req, NS_MOUNT, "mount_setattr", tfd, "", c.AT_EMPTY_PATH | rec, 0, 0,
                    c.MS_UNBINDABLE, 0)
        if res.errno:
            return _kernel_error(d, res.errno, "mount_setattr")
        return Verdict.value(0, _reason(d))
    if d.ops and d.ops[0].op == "mount_fuse":
        return _mount_fuse(req, d, fds)
    if d.ops and d.ops[0].op == "overlay":
        return _mount_overlay(req, d, fds)
    if flags & c.MS_MOVE:
        # move_mount on the checked fd, for the same reason.
        return _attach(req, d, sfd, target, fds)
    if d.details.get("managed"):
        return _mount_managed(req, st, d, fstype or "", flags, data, target, fds)
    if callerpath.parse(target) is not None or (
            flags & c.MS_BIND and source is not None and callerpath.parse(source) is not None):
        # The caller's own fd as source or target: the executor cannot walk that path
        # (its /proc is not the caller's), so the mount is made from fds and attached.
        if flags & c.MS_BIND:
            return _bind_at(req, d, sfd, target, fds)
        return _new_mount_at(req, d, fstype or "", source, flags, data, target, fds)
    err_v, _ = _run_ops(req, d, _ns_for(fstype if not flags & c.MS_BIND else None))
    if err_v is not None:
        return err_v
    return Verdict.value(0, _reason(d))


def _remount_bind_fd(req: Any, d: Decision, fd: int, flags: int) -> Verdict:
    attr_set, attr_clr = _remount_attrs(flags)
    res = _exec(req, NS_MOUNT, "mount_setattr", fd, "", c.AT_EMPTY_PATH, attr_set, attr_clr, 0, 0)
    if res.errno:
        return _kernel_error(d, res.errno, "mount_setattr")
    return Verdict.value(0, _reason(d))


FUSE_DEV = (10, 229)  # /dev/fuse


def _mount_fuse(req: Any, d: Decision, fds: _Fds) -> Verdict:
    """A FUSE mount with the caller's /dev/fuse file: its "fd=N" names the caller's table,
    so the daemon takes that file (pidfd_getfd) and the executor mounts with its own copy
    (SCM_RIGHTS, fd= rewritten there). Only a /dev/fuse file is passed on: the kernel
    would refuse anything else too, this says why."""
    source, target, fstype, flags, rest, caller_fd = d.ops[0].args
    try:
        fd = _caller_fd(req, caller_fd, fds)
    except OSError as e:
        if isinstance(e, ProcessLookupError):
            raise
        return Verdict.errno(e.errno or errno.EBADF,
                             f"{_reason(d)}; fd={caller_fd} is not an open fd of the caller")
    st = os.fstat(fd)
    is_fuse = (stat.S_ISCHR(st.st_mode)
               and (os.major(st.st_rdev), os.minor(st.st_rdev)) == FUSE_DEV
               and not fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_PATH)  # O_PATH: not opened
    if not is_fuse:
        return Verdict.errno(errno.EINVAL, f"{_reason(d)}; fd={caller_fd} is not an open "
                                           "/dev/fuse (char 10:229)")
    res = _exec(req, NS_MOUNT, "mount_fuse", source, target, fstype, flags, rest, fd)
    if res.errno:
        return _kernel_error(d, res.errno, "mount")
    return Verdict.value(0, _reason(d))


_SB_FLAGS = ((c.MS_RDONLY, "ro"), (c.MS_SYNCHRONOUS, "sync"), (c.MS_DIRSYNC, "dirsync"),
             (c.MS_LAZYTIME, "lazytime"))


def _mount_overlay(req: Any, d: Decision, fds: _Fds) -> Verdict:
    """overlay from checked fds: each layer is resolved once as the caller sees it, one on a
    procfs/sysfs is refused (a layer shows its directory without the mounts beneath it, so
    /sys as a layer would show what the /sys/firmware mask hides), and the overlay is built
    in the executor from those fds (fsopen + fsconfig FSCONFIG_SET_FD + fsmount), then
    attached at the target. mount(2)'s flags become the superblock's and the mount's."""
    source, target, flags, layers, rest = d.ops[0].args
    layer_fds = []
    for key, path in layers:
        err, fd, _ = _resolve(req, c.AT_FDCWD, path, False, fds)
        if err:
            return Verdict.errno(err, f"{_reason(d)}; cannot resolve overlay layer {path}")
        kind = _fs_type_of(fd)
        if kind:
            return Verdict.errno(errno.EPERM, f"overlay layer {path} is on {kind}: a layer "
                                              "shows it without its masks " + _reason(d))
        layer_fds.append((key, fd))
    steps: list[tuple[int, str | None, str | None, int]] = []
    if source:
        steps.append((fsapi.FSCONFIG_SET_STRING, "source", source, 0))
    steps += [(fsapi.FSCONFIG_SET_FLAG, name, None, 0) for ms, name in _SB_FLAGS if flags & ms]
    steps += [(fsapi.FSCONFIG_SET_FD, key, None, fd) for key, fd in layer_fds]
    for opt in rest:
        key, sep, val = opt.partition("=")
        steps.append((fsapi.FSCONFIG_SET_STRING, key, val, 0) if sep
                     else (fsapi.FSCONFIG_SET_FLAG, key, None, 0))
    steps.append((fsapi.FSCONFIG_CMD_CREATE, None, None, 0))
    res = _exec(req, NS_MOUNT, "fsopen", "overlay", c.FSOPEN_CLOEXEC)
    if res.errno:
        return _kernel_error(d, res.errno, "fsopen")
    return _configure_and_attach(req, d, fds.add(res.fd), steps, flags, target, fds)


def _attach(req: Any, d: Decision, tree: int, target: str, fds: _Fds) -> Verdict:
    """move_mount of the mount `tree` (a detached tree or a checked mount) to `target` as
    the caller sees it."""
    try:
        tdfd, tpath, tflag = _target_at(req, c.AT_FDCWD, target, fds)
    except ProcessLookupError:
        raise
    except OSError as e:
        return _kernel_error(d, e.errno or errno.ENOENT, "resolving the target")
    res = _exec(req, NS_MOUNT, "move_mount", tree, "", tdfd, tpath,
                c.MOVE_MOUNT_F_EMPTY_PATH | tflag)
    if res.errno:
        return _kernel_error(d, res.errno, "move_mount")
    return Verdict.value(0, _reason(d))


def _bind_at(req: Any, d: Decision, sfd: int, target: str, fds: _Fds) -> Verdict:
    """The (always recursive) bind as a clone of the checked source fd, attached at the
    target: what mount(MS_BIND|MS_REC) does, without walking either path again."""
    res = _exec(req, NS_MOUNT, "open_tree", sfd, "",
                c.OPEN_TREE_CLONE | c.OPEN_TREE_CLOEXEC | c.AT_RECURSIVE | c.AT_EMPTY_PATH)
    if res.errno:
        return _kernel_error(d, res.errno, "open_tree")
    return _attach(req, d, fds.add(res.fd), target, fds)


def _new_mount_at(req: Any, d: Decision, fstype: str, source: str | None, flags: int,
                  data: str | None, target: str, fds: _Fds) -> Verdict:
    """mount(2) of a new filesystem spelled with the new mount API (as the kernel itself
    parses mount data: source, superblock flags, then each option), attached at the
    target: the context in the caller's namespaces, the attach on the caller's fd. Every
    step runs in the executor, as the container's root: the superblock (its root inode's
    owner, a tmpfs's or ramfs's) is created with the creds of whoever sends CMD_CREATE."""
    res = _exec(req, _ns_for(fstype), "fsopen", fstype, c.FSOPEN_CLOEXEC)
    if res.errno:
        return _kernel_error(d, res.errno, "fsopen")
    fc = fds.add(res.fd)
    steps: list[tuple[int, str | None, str | None, int]] = []
    if source:
        steps.append((fsapi.FSCONFIG_SET_STRING, "source", source, 0))
    steps += [(fsapi.FSCONFIG_SET_FLAG, name, None, 0) for ms, name in _SB_FLAGS if flags & ms]
    for opt in (data or "").split(","):
        key, sep, val = opt.partition("=")
        if opt:
            steps.append((fsapi.FSCONFIG_SET_STRING, key, val, 0) if sep
                         else (fsapi.FSCONFIG_SET_FLAG, key, None, 0))
    steps.append((fsapi.FSCONFIG_CMD_CREATE, None, None, 0))
    return _configure_and_attach(req, d, fc, steps, flags, target, fds)


def _configure_and_attach(req: Any, d: Decision, fc: int,
                          steps: list[tuple[int, str | None, str | None, int]], flags: int,
                          target: str, fds: _Fds) -> Verdict:
    """fsconfig each step on the context fc, fsmount it and attach the new tree at target
    (the executor's calls; a kernel error is answered with its own errno)."""
    for cmd, key, val, aux in steps:
        res = _exec(req, NS_MOUNT, "fsconfig", fc, cmd, key, val, aux)
        if res.errno:
            return _kernel_error(d, res.errno, f"fsconfig {key or 'create'}")
    res = _exec(req, NS_MOUNT, "fsmount", fc, fsapi.FSMOUNT_CLOEXEC, _mount_attrs(flags))
    if res.errno:
        return _kernel_error(d, res.errno, "fsmount")
    return _attach(req, d, fds.add(res.fd), target, fds)


def _mount_attrs(flags: int) -> int:
    """fsmount's attributes for mount(2)'s per-mount flags."""
    attrs = attrs_from_msflags(flags)
    for ms, attr in ((c.MS_NOATIME, 0x10), (c.MS_STRICTATIME, 0x20),
                     (c.MS_NODIRATIME, c.MOUNT_ATTR_NODIRATIME),
                     (c.MS_NOSYMFOLLOW, c.MOUNT_ATTR_NOSYMFOLLOW)):
        if flags & ms:
            attrs |= attr
    return attrs


def _remount_attrs(flags: int) -> tuple[int, int]:
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
        attr_set |= 0x10
        attr_clr |= c.MOUNT_ATTR__ATIME
    elif flags & c.MS_STRICTATIME:
        attr_set |= 0x20
        attr_clr |= c.MOUNT_ATTR__ATIME
    elif flags & c.MS_RELATIME:
        attr_clr |= c.MOUNT_ATTR__ATIME
    return attr_set, attr_clr


def _mount_managed(req: Any, st: ContainerPolicy, d: Decision, fstype: str, flags: int,
                   data: str | None, target: str, fds: _Fds) -> Verdict:
    """procfs/sysfs as a detached tree, masked inside, then attached in one move_mount.

    The context comes from the caller's namespaces (so it shows the caller's pid or network
    namespace); superblock, mount and masks are made by the daemon. That also spares the
    container the kernel's "mount too revealing" refusal in a nested user namespace, whose
    copy of /proc has locked masks: the masks it would protect are put back here.
    """
    res = _exec(req, _ns_for(fstype), "fsopen", fstype, c.FSOPEN_CLOEXEC)
    if res.errno:
        return _kernel_error(d, res.errno, "fsopen")
    fc = fds.add(res.fd)
    try:
        fsapi.apply_options(fc, data)
        fsapi.fsconfig(fc, fsapi.FSCONFIG_CMD_CREATE)
        tree = fds.add(fsapi.fsmount(fc, attrs_from_msflags(flags)))
        net = _sys_net(tree, fstype, flags, d, fds)
        for op in d.ops[1:]:
            _cover(tree, target, op, fds)
        if net is not None:
            fsapi.attach(net, tree, "sys/net")
    except OSError as e:
        return _kernel_error(d, e.errno or errno.EINVAL, "building the masked tree")
    dev = os.fstat(tree).st_dev
    attached = _attach(req, d, tree, target, fds)
    if attached.kind != "value":
        return attached
    table = MountTable.read(req.pid)
    devname = f"{os.major(dev)}:{os.minor(dev)}"
    for e in table.entries:
        if e.dev == devname and e.root == "/":
            register_managed(st.imm, table, e)
    save_state(req.container, st)
    return Verdict.value(0, _reason(d))


def _sys_net(tree: int, fstype: str, flags: int, d: Decision, fds: _Fds) -> int | None:
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
        return fds.add(fsapi.clone_tree(tree, "sys/net"))
    except FileNotFoundError:
        return None


def _cover(tree: int, target: str, op: ExecOp, fds: _Fds) -> None:
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
            tfc = fds.add(fsapi.fsopen("tmpfs"))
            fsapi.fsconfig(tfc, fsapi.FSCONFIG_SET_STRING, "mode", "0555")
            fsapi.fsconfig(tfc, fsapi.FSCONFIG_CMD_CREATE)
            cover = fds.add(fsapi.fsmount(tfc, c.MOUNT_ATTR_RDONLY | c.MOUNT_ATTR_NOSUID
                                          | c.MOUNT_ATTR_NODEV | c.MOUNT_ATTR_NOEXEC))
        else:
            cover = fds.add(fsapi.clone_tree(c.AT_FDCWD, "/dev/null", recursive=False))
    elif op.op == "readonly":
        cover = fds.add(fsapi.clone_tree(tree, rel))
        fsapi.set_attrs(cover, c.MOUNT_ATTR_LOCKED)
    else:  # emulated: a file the daemon serves, bound over the procfs/sysfs file
        try:
            cover = fds.add(fsapi.clone_tree(c.AT_FDCWD, op.args[0], recursive=False))
        except OSError as e:
            # The daemon runs without its FUSE tree (restarted without /dev/fuse): the
            # new procfs shows the kernel's file, as the container's did before.
            log.warning("emulated file not bound: %s", e, extra={"fields": {"path": path}})
            return
    fsapi.attach(cover, tree, rel)


def handle_umount2(req: Any) -> Verdict:
    a = req.args
    target = _str(req, a[0], PATH_MAX)
    flags = _u32(a[1])
    if target is None:
        return Verdict.errno(errno.EFAULT, "umount2: NULL target")
    st = state_of(req.container)
    _enable_native(req, st)
    fds = _Fds()
    with st.lock:
        try:
            own = callerpath.parse(target) is not None
            # statmount names mount points from the namespace's root; the caller's own-fd
            # case below needs the mountinfo's, relative to the caller's root.
            err, _, fm = _resolve(req, c.AT_FDCWD, target, bool(flags & c.UMOUNT_NOFOLLOW),
                                  fds, facts=not own)
            if err:
                return Verdict.errno(err, f"umount2: cannot resolve {target}")
            ctx = _context(req, st, fm.table if fm else None)
            d = decide_umount(UmountCall(target, flags, fm.entry if fm else None), ctx)
            if d.kind != "perform":
                return _verdict(d)
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
            res = _exec(req, NS_MOUNT, "umount2_checked", where, uflags, fm.entry.mount_id)
            if res.errno == errno.ESTALE:
                return Verdict.errno(errno.EBUSY, f"{_reason(d)}; the path changed "
                                                  "between check and umount")
            if res.errno:
                return _kernel_error(d, res.errno, "umount2")
            return Verdict.value(0, _reason(d))
        finally:
            fds.close()


# --- new mount API ----------------------------------------------------------------------


def handle_fsopen(req: Any) -> Verdict:
    a = req.args
    name = _str(req, a[0], FSTYPE_MAX) or ""
    flags = _u32(a[1])
    st = state_of(req.container)
    with st.lock:
        d = decide_fsopen(name, flags, _context(req, st, fstype=name))
        if d.kind != "perform":
            return _verdict(d)
        res = _exec(req, _ns_for(name), "fsopen", name, flags | c.FSOPEN_CLOEXEC)
        if res.errno:
            return _kernel_error(d, res.errno, "fsopen")
        return Verdict.fd(res.fd, _reason(d), os.O_CLOEXEC if flags & c.FSOPEN_CLOEXEC else 0)


def handle_fspick(req: Any) -> Verdict:
    a = req.args
    dfd, path, flags = _s32(a[0]), _str(req, a[1], PATH_MAX) or "", _u32(a[2])
    st = state_of(req.container)
    fds = _Fds()
    with st.lock:
        try:
            mydfd = _caller_fd(req, dfd, fds)
            err, fd, fm = _resolve(req, mydfd, path, bool(flags & c.FSPICK_SYMLINK_NOFOLLOW),
                                   fds, empty=bool(flags & c.FSPICK_EMPTY_PATH))
            if err:
                return Verdict.errno(err, f"fspick: cannot resolve {path}")
            d = decide_fspick(fm, _context(req, st), {"path": path, "flags": hex(flags)},
                              _fs_type_of(fd))
            if d.kind != "perform":
                return _verdict(d)
            res = _exec(req, NS_MOUNT, "fspick", fd, "", c.FSPICK_EMPTY_PATH | c.FSPICK_CLOEXEC)
            if res.errno:
                return _kernel_error(d, res.errno, "fspick")
            return Verdict.fd(res.fd, _reason(d),
                              os.O_CLOEXEC if flags & c.FSPICK_CLOEXEC else 0)
        finally:
            fds.close()


def handle_open_tree(req: Any) -> Verdict:
    a = req.args
    flags = _u32(a[2])
    return _verdict(decide_open_tree(flags, {"dfd": _s32(a[0]), "flags": hex(flags)}))


PROC_ROOT_INO = 1  # procfs and sysfs number their root directory 1


def _unprotected_paths(fd: int, fm: FdMount, st: ContainerPolicy, fstype: str) -> list[str]:
    """Masked/read-only paths directly under a procfs/sysfs tree's root that no mount of
    their own covers. Only meaningful when the tree's root is the filesystem's root."""
    prefix = "/proc/" if fstype == "proc" else "/sys/"
    top = procinfo.fd_mnt_id(fd)
    top_ro = bool(fm.entry and fm.entry.readonly) or _fd_readonly(fd)
    bad = []
    # What the container's own /proc and /sys have: a recursive copy of them passes.
    wanted = [(m.mountpoint, "ro" if m.kind == "readonly" else "mask")
              for m in st.imm.mounts if m.kind in ("mask", "readonly", "emulated")]
    for path, need in wanted:
        if not path.startswith(prefix):
            continue
        if need == "ro" and top_ro:
            continue
        rel = path[len(prefix):]
        try:
            sub = os.open(rel, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
        except OSError:
            continue  # not there: nothing to reveal
        try:
            if procinfo.fd_mnt_id(sub) == top:
                bad.append(path)
        finally:
            os.close(sub)
    return bad


def _fd_readonly(fd: int) -> bool:
    return bool(os.fstatvfs(fd).f_flag & os.ST_RDONLY)


FUSE_SUPER_MAGIC = 0x65735546


def _fs_magic(fd: int) -> int:
    """The superblock magic of the fd's filesystem (0 if fstatfs fails). FUSE answers a
    stranger's statfs with its magic alone, without asking its server."""
    import ctypes

    class _Statfs(ctypes.Structure):
        _fields_ = [("f_type", ctypes.c_long), ("_rest", ctypes.c_long * 15)]

    buf = _Statfs()
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.fstatfs(fd, ctypes.byref(buf)) != 0:
        return 0
    return int(buf.f_type) & 0xFFFFFFFF


def _fs_type_of(fd: int) -> str:
    """'proc', 'sysfs' or '' from the superblock magic of the fd's filesystem."""
    return {0x9FA0: "proc", 0x62656572: "sysfs"}.get(_fs_magic(fd), "")


def _detached_on_pseudo(fd: int) -> bool:
    """Whether the mount `fd` is the root of sits on a procfs/sysfs of its (detached)
    tree: ".." from a mount's root is its mount point in the parent mount."""
    try:
        parent = os.open("..", os.O_PATH | os.O_CLOEXEC, dir_fd=fd)
    except OSError:
        return True  # cannot tell: treated as a mask
    try:
        if procinfo.fd_mnt_id(parent) == procinfo.fd_mnt_id(fd):
            return False  # the tree's root, or fd is no mount root (the kernel says EINVAL)
        return _fs_type_of(parent) in ("proc", "sysfs")
    finally:
        os.close(parent)


def handle_move_mount(req: Any) -> Verdict:
    a = req.args
    from_dfd, to_dfd, flags = _s32(a[0]), _s32(a[2]), _u32(a[4])
    from_path = _str(req, a[1], PATH_MAX) or ""
    to_path = _str(req, a[3], PATH_MAX) or ""
    st = state_of(req.container)
    fds = _Fds()
    with st.lock:
        try:
            my_from = _caller_fd(req, from_dfd, fds)
            my_to = _caller_fd(req, to_dfd, fds)
            err, src_fd, fm = _resolve(req, my_from, from_path,
                                       not flags & c.MOVE_MOUNT_F_SYMLINKS, fds,
                                       empty=bool(flags & c.MOVE_MOUNT_F_EMPTY_PATH))
            if err:
                return Verdict.errno(err, f"move_mount: cannot resolve {from_path}")
            details = {"from": from_path, "to": to_path, "flags": hex(flags)}
            d = decide_move_mount(flags, fm, _context(req, st), details)
            if d.kind != "perform":
                return _verdict(d)
            if fm is not None and fm.entry is None:
                fstype = _fs_type_of(src_fd)
                refusal = decide_detached_tree(
                    fstype, os.fstat(src_fd).st_ino == PROC_ROOT_INO,
                    _unprotected_paths(src_fd, fm, st, fstype) if fstype else [], details)
                if refusal is not None:
                    return _verdict(refusal)
            try:
                my_to, to_at, to_flag = _target_at(req, my_to, to_path, fds)
            except ProcessLookupError:
                raise
            except OSError as e:
                return _kernel_error(d, e.errno or errno.ENOENT, "resolving the target")
            res = _exec(req, NS_MOUNT, "move_mount", src_fd, "", my_to, to_at,
                        (flags & ~(c.MOVE_MOUNT_F_SYMLINKS | c.MOVE_MOUNT_F_AUTOMOUNTS))
                        | c.MOVE_MOUNT_F_EMPTY_PATH | to_flag)
            if res.errno:
                return _kernel_error(d, res.errno, "move_mount")
            return Verdict.value(0, _reason(d))
        finally:
            fds.close()


def handle_mount_setattr(req: Any) -> Verdict:
    a = req.args
    dfd, flags, size = _s32(a[0]), _u32(a[2]), a[4]
    path = _str(req, a[1], PATH_MAX) or ""
    if size < c.MOUNT_ATTR_SIZE_VER0 or size > 4096:
        return Verdict.errno(errno.EINVAL, "mount_setattr: bad size")
    raw = req.read(a[3], c.MOUNT_ATTR_SIZE_VER0)
    attr = MountAttr.unpack(raw)
    st = state_of(req.container)
    fds = _Fds()
    with st.lock:
        try:
            mydfd = _caller_fd(req, dfd, fds)
            err, fd, fm = _resolve(req, mydfd, path, bool(flags & c.AT_SYMLINK_NOFOLLOW), fds,
                                   empty=bool(flags & c.AT_EMPTY_PATH))
            if err:
                return Verdict.errno(err, f"mount_setattr: cannot resolve {path}")
            details = {"path": path, "flags": hex(flags)}
            on_pseudo = bool(attr.propagation & c.MS_UNBINDABLE and fm is not None
                             and fm.entry is None and _detached_on_pseudo(fd))
            d = decide_mount_setattr(flags, attr, fm, _context(req, st), details, on_pseudo)
            if d.kind != "perform":
                return _verdict(d)
            userns = -1
            if attr.attr_set & c.MOUNT_ATTR_IDMAP:
                userns = _caller_fd(req, attr.userns_fd, fds)
            res = _exec(req, NS_MOUNT, "mount_setattr", fd, "",
                           (flags & c.AT_RECURSIVE) | c.AT_EMPTY_PATH, attr.attr_set,
                           attr.attr_clr, attr.propagation, userns)
            if res.errno:
                return _kernel_error(d, res.errno, "mount_setattr")
            return Verdict.value(0, _reason(d))
        finally:
            fds.close()


# --- sysinfo, adjtimex ------------------------------------------------------------------


def handle_sysinfo(req: Any) -> Verdict:
    addr = req.args[0]
    st = state_of(req.container)
    if st.sysinfo is None:
        st.sysinfo = sysinfo.Source.of(req.container.init_pid)
    info = st.sysinfo.gather()
    err = write_target(req.pid, addr, info.pack(), req.valid)
    if err:
        return Verdict.errno(err, "sysinfo: bad buffer")
    return Verdict.value(0, f"sysinfo emulated [uptime={info.uptime} "
                            f"totalram={info.totalram} procs={info.procs}]")


def _adjtimex(req: Any, clockid: int | None, addr: int) -> Verdict:
    raw = bytearray(req.read(addr, TIMEX_SIZE))
    modes = struct.unpack_from("<I", raw, 0)[0]
    what = "adjtimex" if clockid is None else f"clock_adjtime(clock={clockid})"
    if modes != 0:
        return Verdict.errno(errno.EPERM, f"{what}: setting a clock is kernel-global "
                                          f"[modes={modes:#x}]")
    if clockid is not None and clockid < 0:
        return Verdict.errno(errno.EPERM, f"{what}: dynamic (device) clocks refused")
    # Performed on our own copy with modes 0 (read-only); the result goes back to the
    # caller's buffer: the kernel would have written the same bytes there.
    try:
        state = call_adjtimex(raw, clockid)
    except OSError as e:
        return Verdict.errno(e.errno or errno.EINVAL, f"{what}: {e.strerror}")
    err = write_target(req.pid, addr, bytes(raw), req.valid)
    if err:
        return Verdict.errno(err, f"{what}: bad buffer")
    return Verdict.value(state, f"{what}: read-only query performed")


def handle_adjtimex(req: Any) -> Verdict:
    return _adjtimex(req, None, req.args[0])


def handle_clock_adjtime(req: Any) -> Verdict:
    return _adjtimex(req, _s32(req.args[0]), req.args[1])


_POINTER_ERRORS = {errno.EFAULT: errno.EFAULT, errno.EIO: errno.EFAULT,
                   errno.ENAMETOOLONG: errno.ENAMETOOLONG}


def _guarded(fn: Any, req: Any) -> Verdict:
    """Bad pointers get the kernel's answer (EFAULT, ENAMETOOLONG) instead of the
    registry's generic EPERM; a target that went away still propagates."""
    try:
        return fn(req)
    except OSError as e:
        gone = getattr(req.core, "TargetGone", None) if hasattr(req, "core") else None
        if (isinstance(gone, type) and isinstance(e, gone)) or e.errno not in _POINTER_ERRORS:
            raise
        return Verdict.errno(_POINTER_ERRORS[e.errno],
                             f"{req.syscall}: unreadable argument ({e.strerror})")


def logged(fn: Any) -> Any:
    """`fn` with a debug log line per decision (operators: --log-level debug)."""

    def wrapper(req: Any) -> Verdict:
        if not log.isEnabledFor(logging.DEBUG):
            return _guarded(fn, req)
        t0 = time.perf_counter()
        v = _guarded(fn, req)
        log.debug("policy decision", extra={"fields": {
            "container": getattr(req.container, "id", "?"), "pid": req.pid,
            "syscall": req.syscall, "verdict": v.kind, "errno": v.error,
            "reason": v.reason, "us": round((time.perf_counter() - t0) * 1e6)}})
        return v

    wrapper.__name__ = getattr(fn, "__name__", "handler")
    wrapper.__doc__ = fn.__doc__
    return wrapper


def _with_cap_sys_admin(fn: Any) -> Any:
    """`fn` for callers with CAP_SYS_ADMIN only: what the daemon performs, it performs with
    every capability in the caller's user namespace."""

    def wrapper(req: Any) -> Verdict:
        return _lacks_cap_sys_admin(req) or fn(req)

    wrapper.__name__ = getattr(fn, "__name__", "handler")
    wrapper.__doc__ = fn.__doc__
    return wrapper


HANDLERS = {
    "mount": _with_cap_sys_admin(handle_mount),
    "umount2": _with_cap_sys_admin(handle_umount2),
    "fsopen": _with_cap_sys_admin(handle_fsopen),
    "fspick": _with_cap_sys_admin(handle_fspick),
    "open_tree": handle_open_tree,
    "move_mount": _with_cap_sys_admin(handle_move_mount),
    "mount_setattr": _with_cap_sys_admin(handle_mount_setattr),
    **process_handlers.HANDLERS,  # the ptrace family
    "sysinfo": handle_sysinfo,
    "adjtimex": handle_adjtimex,
    "clock_adjtime": handle_clock_adjtime,
}

MOUNT_FAMILY = ("mount", "umount2", "fsopen", "fspick", "open_tree", "move_mount",
                "mount_setattr")
PTRACE_FAMILY = ("ptrace", "process_vm_readv", "process_vm_writev", "pidfd_getfd", "kcmp")
CLOCK_FAMILY = ("adjtimex", "clock_adjtime")
