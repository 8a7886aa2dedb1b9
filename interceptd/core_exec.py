"""Python face of the C core's namespace executors (csrc/nsexec.c, csrc/executor.c)
and mount facts (csrc/mounts.c): one mount-family call inside a target's namespaces,
and one mount's facts without a mountinfo. Re-exported by core.py.
"""

from __future__ import annotations

import contextlib
import errno as errno_mod
import os
import signal
import threading
from typing import TYPE_CHECKING, Any, NamedTuple

from interceptd._corelib import check, ffi, lib, path_bytes

if TYPE_CHECKING:
    from interceptd.seams import HelperStart

from interceptd.kernel.consts import CLONE_NEWNS, CLONE_NEWUSER


class ExecResult(NamedTuple):
    """(A NamedTuple: made on every vetted operation; a frozen dataclass costs more.)"""

    ret: int
    errno: int
    fd: int  # -1 unless the operation made an fd


def _op_table() -> dict[str, tuple[int, str]]:
    """op name -> (C op, argument kinds in syscall order: s = string or None, i = int),
    from the C core's own table (csrc/nsexec.c)."""
    name, kinds = ffi.new("const char **"), ffi.new("const char **")
    table = {}
    for op in range(lib.ICD_OP_MOUNT, lib.ICD_OP_LAST + 1):
        check(lib.icd_op_info(op, name, kinds), "op_info")
        table[ffi.string(name[0]).decode()] = (op, ffi.string(kinds[0]).decode())
    return table


OPS: dict[str, tuple[int, str]] = _op_table()


def _op(op: str, args: tuple[object, ...]) -> tuple[int, str]:
    """(C op, argument kinds) of `op`, checked against the arguments given."""
    try:
        cop, kinds = OPS[op]
    except KeyError:
        raise ValueError(f"unknown ns_exec op {op!r}") from None
    if len(args) != len(kinds):
        raise TypeError(f"{op} takes {len(kinds)} arguments, got {len(args)}")
    return cop, kinds


def _cstr(v: Any) -> Any:
    return ffi.NULL if v is None else ffi.new("char[]", path_bytes(v))


def _op_args(op: str, args: tuple[object, ...]) -> tuple[int, Any, Any, list[Any]]:
    """(C op, strings, ints, keep-alive): the strings' buffers live as long as the
    last item does."""
    cop, kinds = _op(op, args)
    strs: list[Any] = []
    ints: list[int] = []
    for kind, v in zip(kinds, args, strict=True):
        if kind == "s":
            strs.append(_cstr(v))
        else:
            ints.append(int(v))
    s = ffi.new("const char *[4]", strs + [ffi.NULL] * (4 - len(strs)))
    a = ffi.new("int64_t[6]", ints + [0] * (6 - len(ints)))
    return cop, s, a, strs


def ns_exec(pidfd: int, pid: int, namespaces: int, op: str, *args: object,
            timeout: float = 10.0) -> ExecResult:
    """Run one mount-family syscall inside the target's namespaces (CLONE_NEW*
    flags), with root and cwd set to the target's.  Arguments follow the
    syscall's order; mount_setattr takes (dfd, path, flags, attr_set, attr_clr,
    propagation, userns_fd) in place of its struct.  ExecResult.errno is ESRCH
    when the pidfd shows the target is gone; `fd` (for open_tree, fsopen,
    fsmount, fspick) belongs to the caller."""
    cop, s, a, _keep = _op_args(op, args)
    out = ffi.new("struct icd_exec_result *")
    check(lib.icd_ns_exec(pidfd, pid, namespaces, cop, s, a, int(timeout * 1000), out),
           f"ns_exec({op})")
    return ExecResult(int(out.ret), int(out.err), int(out.fd))


def fd_mnt_id(fd: int) -> int:
    """The mount id (as in mountinfo) of the mount `fd` is on (statx STATX_MNT_ID)."""
    return check(lib.icd_fd_mnt_id(fd), "fd_mnt_id")


class MountFacts(NamedTuple):
    """One mount as statmount(2) reports it."""

    uid: int  # unique, never reused
    parent_uid: int
    mnt_id: int  # mountinfo's ids
    parent_id: int
    dev: str  # "major:minor"
    attr: int  # MOUNT_ATTR_*
    sb_flags: int
    fstype: str
    root: str
    mountpoint: str  # relative to the mount namespace's root


def fd_mount_uid(fd: int) -> int:
    """The unique (never reused) id of the mount `fd` is on (statx STATX_MNT_ID_UNIQUE)."""
    return check(lib.icd_fd_mnt_uid(fd), "fd_mount_uid")


def mntns_id(nsfd: int) -> int:
    """The id of the mount namespace behind `nsfd` (NS_GET_MNTNS_ID)."""
    return check(lib.icd_mntns_id(nsfd), "mntns_id")


def _facts(f: Any) -> MountFacts:
    dec = os.fsdecode
    return MountFacts(int(f.mnt_uid), int(f.parent_uid), int(f.mnt_id), int(f.parent_id),
                      f"{f.dev_major}:{f.dev_minor}", int(f.attr), int(f.sb_flags),
                      dec(ffi.string(f.fstype)), dec(ffi.string(f.root)),
                      dec(ffi.string(f.point)))


def statmount(uid: int, ns_id: int) -> MountFacts:
    """statmount(2) of the mount with unique id `uid` in mount namespace `ns_id`."""
    f = ffi.new("struct icd_mount_facts *")
    check(lib.icd_statmount(uid, ns_id, f), "statmount")
    return _facts(f)


def fd_mount_facts(fd: int, pid: int) -> list[MountFacts]:
    """The mount `fd` is on and (if it has one in the namespace) its parent, as seen in
    the mount namespace of `pid`: statx + statmount, no mountinfo generated. OSError
    (ENOSYS, EINVAL on kernels before 6.11) when the kernel cannot tell."""
    out = ffi.new("struct icd_mount_facts[2]")
    n = check(lib.icd_fd_mount_facts(fd, pid, out), "fd_mount_facts")
    return [_facts(out[i]) for i in range(n)]


class ExecutorDied(OSError):
    """The executor's helper is gone (or out of step) and could not be restarted."""


class WrongNamespaces(OSError):
    """The process is not in the executor's user and mount namespaces (nothing was done)."""


_exec_call = lib.icd_exec_call
_NULLS = [ffi.NULL] * 4
_ZEROS = [0] * 6


class Executor:
    """A persistent helper inside one target's user and mount namespaces.

    Started from any live process of those namespaces (`pidfd`/`pid`); then
    `run(pidfd, pid, op, *args)` performs `op` like `ns_exec` for any process
    `pid` of the same namespaces: the helper chroots to that process's root and
    chdirs to its cwd (opened here from /proc/<pid>/root and cwd, checked
    against `pidfd`) for the one call. Only the user and mount namespaces are
    entered: ops needing others (procfs in a pid namespace, sysfs in a network
    one) keep using `ns_exec`. `namespaces` says which of the two to enter
    (shared ones are skipped). If the helper died, `run` restarts it once from
    the requesting process, provided that one is in the same namespaces.
    Calls are serialised; `close()` kills and reaps the helper.
    """

    def __init__(self, pidfd: int, pid: int,
                 namespaces: int = CLONE_NEWUSER | CLONE_NEWNS,
                 timeout: float = 10.0) -> None:
        if namespaces & ~(CLONE_NEWUSER | CLONE_NEWNS):
            raise ValueError("an Executor enters only the user and mount namespaces")
        self.namespaces = namespaces
        self.timeout = timeout
        self._lock = threading.Lock()
        self._x = ffi.new("struct icd_executor *")
        self._x.sock = self._x.pid = -1
        self._out = ffi.new("struct icd_exec_result *")
        self.closed = False
        self.restarts = 0
        self._start(pidfd, pid)
        self.user_ns = (int(self._x.user_dev), int(self._x.user_ino))
        self.mnt_ns = (int(self._x.mnt_dev), int(self._x.mnt_ino))
        self._owner = os.getpid()

    def _start(self, pidfd: int, pid: int) -> None:
        check(lib.icd_exec_start(pidfd, pid, self.namespaces, int(self.timeout * 1000),
                                  self._x), "executor start")

    @property
    def helper_pid(self) -> int:
        return int(self._x.pid)

    def _stop(self) -> None:
        if self._x.pid > 0 or self._x.sock >= 0:
            lib.icd_exec_stop(self._x.sock, self._x.pid)
            self._x.sock = self._x.pid = -1

    def _restart(self, pidfd: int, pid: int) -> None:
        self._stop()
        x = ffi.new("struct icd_executor *")
        check(lib.icd_exec_start(pidfd, pid, self.namespaces, int(self.timeout * 1000), x),
               "executor restart")
        if ((int(x.user_dev), int(x.user_ino)) != self.user_ns
                or (int(x.mnt_dev), int(x.mnt_ino)) != self.mnt_ns):
            lib.icd_exec_stop(x.sock, x.pid)
            raise ExecutorDied(errno_mod.ESTALE, "executor restart: the target changed "
                                                 "namespaces")
        self._x = x
        self.restarts += 1

    def run(self, pidfd: int, pid: int, op: str, *args: object) -> ExecResult:
        """Perform `op` (see ns_exec) as process `pid` would, in these namespaces.
        ExecResult.errno is ESRCH when `pidfd` shows the process is gone; `fd`
        belongs to the caller. ExecutorDied if the helper cannot serve;
        WrongNamespaces if `pid` is not in the helper's namespaces."""
        cop, kinds = _op(op, args)
        # Strings go straight to C as char * (bytes are passed without a copy).
        strs: list[Any] = []
        ints: list[int] = []
        for kind, v in zip(kinds, args, strict=True):
            if kind == "i":
                ints.append(v)
            else:
                strs.append(ffi.NULL if v is None else path_bytes(v))
        strs += _NULLS[len(strs):]
        ints += _ZEROS[len(ints):]
        out = self._out
        ms = int(self.timeout * 1000)
        with self._lock:  # also guards the shared result buffer
            if self.closed:
                raise ExecutorDied(errno_mod.EBADF, "executor closed")
            for attempt in (0, 1):
                if self._x.sock < 0:
                    self._restart(pidfd, pid)
                ret = _exec_call(self._x, pidfd, pid, cop, *strs, *ints, ms, out)
                if ret == 0:
                    return ExecResult(out.ret, out.err, out.fd)  # copied out under the lock
                if ret == -errno_mod.EXDEV:
                    raise WrongNamespaces(errno_mod.EXDEV, "target not in the executor's "
                                                          "namespaces")
                # The helper died or is out of step: never reuse it. Only a failed
                # send (EPIPE: it was dead before this request) is retried; one that
                # died mid-request may have performed the op.
                self._stop()
                if attempt or ret != -errno_mod.EPIPE:
                    raise ExecutorDied(-ret, f"executor {op}: {os.strerror(-ret)}")
        raise AssertionError("unreachable")

    def close(self) -> None:
        """Kill and reap the helper. Idempotent; a no-op in a forked child."""
        with self._lock:
            self.closed = True
            if os.getpid() != self._owner:
                return
            self._stop()

    def __del__(self) -> None:
        try:
            if not self.closed and os.getpid() == self._owner:
                self._stop()
        except Exception:
            pass


# struct icd_executor's namespace and root ids, in the order a zygote sends them
EXEC_IDS = ("user_dev", "user_ino", "mnt_dev", "mnt_ino", "root_dev", "root_ino", "root_mnt")


def start_helper(pidfd: int, pid: int, namespaces: int,
                 timeout_ms: int) -> tuple[int, int, tuple[int, ...]]:
    """(0 or -errno, helper socket, (helper pid, *EXEC_IDS)) of a new executor's helper,
    forked by this process (the zygote calls this in its own process)."""
    x = ffi.new("struct icd_executor *")
    rc = lib.icd_exec_start(pidfd, pid, namespaces, timeout_ms, x)
    if rc != 0:
        return rc, -1, ()
    return 0, int(x.sock), (int(x.pid), *(int(getattr(x, f)) for f in EXEC_IDS))


def stop_helper(sock: int, pid: int) -> None:
    lib.icd_exec_stop(sock, pid)


class ZygoteExecutor(Executor):
    """An Executor whose helper a zygote forks (kernel/zygote.py says why): `start` asks
    it for one, and the helper is stopped through its pidfd, as it is not our child."""

    def __init__(self, start: HelperStart, pidfd: int, pid: int, namespaces: int,
                 timeout: float = 10.0) -> None:
        self._zstart = start
        self._hpidfd = -1
        super().__init__(pidfd, pid, namespaces, timeout)

    def _start(self, pidfd: int, pid: int) -> None:
        sock, hp, (hpid, *ids) = self._zstart(pidfd, pid, self.namespaces,
                                              int(self.timeout * 1000))
        self._x.sock, self._x.pid, self._hpidfd = sock, hpid, hp
        for f, v in zip(EXEC_IDS, ids, strict=False):
            setattr(self._x, f, v)

    def _stop(self) -> None:
        if self._x.sock >= 0:
            with contextlib.suppress(OSError):
                os.close(self._x.sock)
        if self._hpidfd >= 0:
            with contextlib.suppress(OSError):
                signal.pidfd_send_signal(self._hpidfd, signal.SIGKILL)
            with contextlib.suppress(OSError):
                os.close(self._hpidfd)
        self._x.sock = self._x.pid = self._hpidfd = -1

    def _restart(self, pidfd: int, pid: int) -> None:
        self._stop()
        was = (self.user_ns, self.mnt_ns)
        self._start(pidfd, pid)
        now = ((int(self._x.user_dev), int(self._x.user_ino)),
               (int(self._x.mnt_dev), int(self._x.mnt_ino)))
        if now != was:
            self._stop()
            raise ExecutorDied(errno_mod.ESTALE, "executor restart: the target changed "
                                                 "namespaces")
        self.restarts += 1


class _ZygoteParts:
    """seams.ZygoteParts of this core."""

    start_helper = staticmethod(start_helper)
    stop_helper = staticmethod(stop_helper)

    @staticmethod
    def executor(start: HelperStart, pidfd: int, pid: int, namespaces: int) -> Executor:
        return ZygoteExecutor(start, pidfd, pid, namespaces)


ZYGOTE_PARTS = _ZygoteParts()
