"""Python face of the C core (interceptd._core); the only module that imports it.

Blocking calls release the GIL (cffi does so for every call into C).
"""

from __future__ import annotations

import errno as errno_mod
import os
import struct
import threading
import weakref
from dataclasses import dataclass
from typing import Any, NamedTuple

from interceptd._core import ffi, lib

ACT_CONTINUE: int = lib.ICD_ACT_CONTINUE
ACT_ERRNO: int = lib.ICD_ACT_ERRNO
ACT_VALUE: int = lib.ICD_ACT_VALUE
ACT_PYTHON: int = lib.ICD_ACT_PYTHON
ACT_NATIVE: int = lib.ICD_ACT_NATIVE
NR_MAX: int = lib.ICD_NR_MAX
READ_MAX: int = lib.ICD_READ_MAX
_ITEM_NOTIF: int = lib.ICD_ITEM_NOTIF
_respond = lib.icd_channel_respond
FLAG_CONTINUE = 1  # SECCOMP_USER_NOTIF_FLAG_CONTINUE, for Channel.answer
_wait = lib.icd_channel_wait
# struct icd_item, unpacked in one go: reading a cdata struct field by field
# costs several times more on the Python path.
_ITEM = struct.Struct("=iiQIiI4xQ6Q")
if _ITEM.size != ffi.sizeof("struct icd_item"):
    raise ImportError("struct icd_item layout does not match core.py")
_new_notification = tuple.__new__

# Namespace flags for ns_exec (os.CLONE_* needs Python 3.12).
CLONE_NEWNS = 0x00020000
CLONE_NEWCGROUP = 0x02000000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000

# How long Channel.wait polls the queue before sleeping; see docs/INTERNALS.md.
DEFAULT_SPIN_US = 20


class TargetGone(OSError):
    """The notification is no longer valid: its task died or was interrupted."""

    def __init__(self, what: str = "notification no longer valid") -> None:
        super().__init__(errno_mod.ENOENT, what)


class Notification(NamedTuple):
    """One Python-path notification.  (A NamedTuple: made on every Python-path
    call, and a tuple is the cheapest object to build from the unpacked item.)"""

    id: int
    pid: int
    nr: int
    arch: int
    ip: int
    args: tuple[int, ...]
    notify_fd: int


@dataclass(slots=True)
class Detached:
    notify_fd: int


@dataclass(frozen=True, slots=True)
class Decision:
    cookie: int
    id: int
    pid: int
    nr: int
    action: int
    value: int
    ns_time: int
    send_errno: int = 0
    args: tuple[int, ...] = ()
    comm: str = ""  # read by the core when the pid was new to the channel
    reason: str = ""  # the native path's reason ("" for table rules)


class ExecResult(NamedTuple):
    """(A NamedTuple: made on every vetted operation; a frozen dataclass costs more.)"""

    ret: int
    errno: int
    fd: int  # -1 unless the operation made an fd


def _check(ret: int, what: str) -> int:
    if ret < 0:
        if ret == -lib.ICD_ETARGETGONE:
            raise TargetGone(what)
        raise OSError(-ret, f"{what}: {os.strerror(-ret)}")
    return ret


def notify_probe() -> dict[str, bool]:
    """Kernel features of seccomp user notification, probed in a throwaway child."""
    p = ffi.new("struct icd_probe *")
    _check(lib.icd_notify_probe(p), "notify_probe")
    return {
        "user_notif": bool(p.user_notif),
        "sync_wakeup": bool(p.sync_wakeup),
        "addfd_send": bool(p.addfd_send),
    }


def id_valid(notify_fd: int, notif_id: int) -> bool:
    return bool(_check(lib.icd_notify_id_valid(notify_fd, notif_id), "id_valid"))


def read_target(pid: int, addr: int, size: int, notify_fd: int, notif_id: int) -> bytes:
    """Exactly `size` bytes at `addr` (<= READ_MAX), trusted only because the
    notification was still valid after the read (else TargetGone)."""
    if size == 0:
        if not id_valid(notify_fd, notif_id):
            raise TargetGone()
        return b""
    buf = ffi.new("char[]", size)
    _check(lib.icd_read_target(pid, addr, buf, size, notify_fd, notif_id), "read_target")
    return ffi.buffer(buf, size)[:]


def has_cap(pid: int, cap: int) -> bool:
    """Whether process `pid` has capability `cap` in its effective set (capget)."""
    return bool(_check(lib.icd_has_cap(pid, cap), "capget"))


def read_target_string(pid: int, addr: int, max_len: int, notify_fd: int,
                       notif_id: int) -> bytes:
    """The NUL-terminated string at `addr` without its NUL; ENAMETOOLONG when no
    NUL is found within `max_len` bytes (the NUL included)."""
    buf = ffi.new("char[]", max_len)
    n = _check(lib.icd_read_target_string(pid, addr, buf, max_len, notify_fd, notif_id),
               "read_target_string")
    return ffi.buffer(buf, n)[:]


class Channel:
    """One container's verdict table and Python-path queue."""

    def __init__(self, engine: Engine, cookie: int, queue_size: int) -> None:
        ptr = lib.icd_channel_new(engine._ptr, cookie, queue_size)
        if ptr == ffi.NULL:
            raise OSError(ffi.errno, "icd_channel_new")
        self._ptr = ffi.gc(ptr, lib.icd_channel_free)
        self._engine = engine  # the C channel records decisions in the engine's ring
        self.cookie = cookie
        self.closed = False
        self.spin_us = DEFAULT_SPIN_US
        self._tls = threading.local()  # each waiting thread's item buffer

    def set_rule(self, nr: int, action: int, value: int = 0) -> None:
        _check(lib.icd_channel_set_rule(self._ptr, nr, action, value), f"set_rule({nr})")

    def clear_rule(self, nr: int) -> None:
        _check(lib.icd_channel_set_rule(self._ptr, nr, lib.ICD_ACT_DEFAULT, 0), "clear_rule")

    def set_default(self, action: int, value: int = 0) -> None:
        _check(lib.icd_channel_set_default(self._ptr, action, value), "set_default")

    def set_direct(self, on: bool) -> None:
        """Direct mode (default on): see docs/INTERNALS.md."""
        lib.icd_channel_set_direct(self._ptr, 1 if on else 0)

    def interrupt(self) -> None:
        """Make a blocked `wait` (or the next one) return, with [] if nothing
        is queued: how a waiter with no timeout is told to look up."""
        lib.icd_channel_interrupt(self._ptr)

    def wait(self, timeout: float | None = None, max_items: int = 32) -> list[Any]:
        """Queued items, blocking up to `timeout` seconds (None: forever) for the
        first; [] on timeout or once the channel is closed."""
        tls = self._tls
        try:
            buf, mv = tls.buf
        except AttributeError:
            buf = mv = None
        if buf is None or len(buf) < max_items:
            buf = ffi.new("struct icd_item[]", max_items)
            mv = ffi.buffer(buf)
            tls.buf = (buf, mv)
        ms = -1 if timeout is None else max(0, int(timeout * 1000))
        n = _wait(self._ptr, buf, max_items, ms, self.spin_us)
        if n <= 0:
            if n < 0:
                self.closed = True
            return []
        out: list[Any] = []
        unpack = _ITEM.unpack_from
        size = _ITEM.size
        for i in range(n):
            t = unpack(mv, i * size)
            if t[0] == _ITEM_NOTIF:
                out.append(_new_notification(Notification, (t[2], t[3], t[4], t[5], t[6],
                                                            t[7:13], t[1])))
            else:
                out.append(Detached(t[1]))
        return out

    def respond(self, notif: Notification, *, value: int = 0, error: int = 0,
                cont: bool = False) -> None:
        """Answer `notif`: return `value`, fail with errno `error`, or let the
        kernel run the call (`cont`).  TargetGone if it is no longer pending."""
        ret = _respond(self._ptr, notif.notify_fd, notif.id, value, -error, 1 if cont else 0)
        if ret < 0:
            if ret == -errno_mod.ENOENT:
                raise TargetGone("respond")
            raise OSError(-ret, f"respond: {os.strerror(-ret)}")

    def answer(self, notif: Notification, value: int, error: int, flags: int) -> int:
        """respond() for the hot path: no keywords, no exception; returns 0 or
        -errno (-ENOENT: the notification is gone). `flags` 0 or FLAG_CONTINUE."""
        return _respond(self._ptr, notif.notify_fd, notif.id, value, -error, flags)

    def addfd(self, notif: Notification, srcfd: int, newfd_flags: int = 0,
              send: bool = True) -> int:
        """Install a copy of `srcfd` in the target; with `send` this also answers
        the notification with the new fd number.  Returns that number."""
        ret = lib.icd_channel_addfd(self._ptr, notif.notify_fd, notif.id, srcfd, newfd_flags,
                                    1 if send else 0)
        if ret == -errno_mod.ENOENT:
            raise TargetGone("addfd")
        return _check(ret, "addfd")

    def id_valid(self, notif: Notification) -> bool:
        """Like id_valid(), but False once the fd was detached (never touches
        a closed, possibly reused, fd number)."""
        return bool(_check(lib.icd_channel_id_valid(self._ptr, notif.notify_fd, notif.id),
                           "id_valid"))

    def read_target(self, notif: Notification, addr: int, size: int) -> bytes:
        """read_target() for `notif`, with its fd held attached during the read."""
        if size == 0:
            if not self.id_valid(notif):
                raise TargetGone()
            return b""
        buf = ffi.new("char[]", size)
        _check(lib.icd_channel_read(self._ptr, notif.notify_fd, notif.id, notif.pid, addr, buf,
                                    size, 0), "read_target")
        return ffi.buffer(buf, size)[:]

    def read_target_string(self, notif: Notification, addr: int, max_len: int) -> bytes:
        """read_target_string() for `notif`, with its fd held attached."""
        buf = ffi.new("char[]", max_len)
        n = _check(lib.icd_channel_read(self._ptr, notif.notify_fd, notif.id, notif.pid, addr,
                                        buf, max_len, 1), "read_target_string")
        return ffi.buffer(buf, n)[:]

    def stats(self) -> dict[str, int]:
        s = ffi.new("struct icd_chstats *")
        lib.icd_channel_stats(self._ptr, s)
        return {k: int(getattr(s, k)) for k in
                ("fast", "python", "overflow", "send_errors", "detached", "receivers",
                 "direct", "native", "native_table")}

    def enable_native(self, fstypes: list[str], pidfd: int, pid: int, notify_fd: int) -> None:
        """Start the native mount helper in the namespaces of `pid` (`pidfd` names it) and
        let it receive on `notify_fd` (csrc/native.c): it performs mount(2) of these
        filesystem types and umount2(2) where the policy surely allows them and forwards
        every other notification here. The caller then sets ACT_NATIVE rules for them."""
        blob = b"".join(os.fsencode(t) + b"\0" for t in fstypes) + b"\0"
        _check(lib.icd_channel_set_native(self._ptr, blob, len(blob), pidfd, pid, notify_fd),
               "set_native")

    def close(self) -> None:
        """Stop the receivers, fail queued notifications with ENOSYS, close the fds."""
        self.closed = True
        lib.icd_channel_close(self._ptr)


class Engine:
    """Receiver threads (one per notify fd) and the ring of fast-path decisions."""

    def __init__(self, ring_size: int = 65536) -> None:
        ptr = lib.icd_engine_new(ring_size)
        if ptr == ffi.NULL:
            raise OSError(ffi.errno, "icd_engine_new")
        self._ptr = ffi.gc(ptr, lib.icd_engine_free)
        self._channels: weakref.WeakSet[Channel] = weakref.WeakSet()
        self._lock = threading.Lock()
        self._drain_buf = ffi.new("struct icd_decision[]", 4096)
        self._drain_lock = threading.Lock()

    def channel(self, cookie: int, queue_size: int = 4096) -> Channel:
        ch = Channel(self, cookie, queue_size)
        with self._lock:
            self._channels.add(ch)
        return ch

    def attach(self, channel: Channel, notify_fd: int) -> None:
        """Start a receiver on `notify_fd`; the engine owns the fd from here on
        (and closes it) once this returns.  OSError if it is not a notify fd."""
        _check(lib.icd_engine_attach(self._ptr, channel._ptr, notify_fd), "attach")

    def drain_decisions(self, max_items: int = 4096) -> list[Decision]:
        out: list[Decision] = []
        with self._drain_lock:
            buf = self._drain_buf
            cap = min(max_items, len(buf))
            while len(out) < max_items:
                n = lib.icd_engine_drain(self._ptr, buf, min(cap, max_items - len(out)))
                for i in range(n):
                    d = buf[i]
                    out.append(Decision(d.cookie, d.id, d.pid, d.nr, d.action, d.value,
                                        d.ns_time, d.send_errno, tuple(d.args),
                                        ffi.string(d.comm).decode(errors="replace")
                                        if d.comm[0] != b"\0" else "",
                                        ffi.string(d.reason).decode(errors="replace")
                                        if d.reason[0] != b"\0" else ""))
                if n < cap:
                    break
        return out

    @property
    def dropped_decisions(self) -> int:
        return int(lib.icd_engine_dropped(self._ptr))

    def close(self) -> None:
        with self._lock:
            chans = list(self._channels)
        for ch in chans:
            ch.close()


_OPS: dict[str, tuple[int, str]] = {
    # op: (C op, argument kinds in syscall order: s = string or None, i = int)
    "mount": (lib.ICD_OP_MOUNT, "sssis"),
    "umount2": (lib.ICD_OP_UMOUNT2, "si"),
    "open_tree": (lib.ICD_OP_OPEN_TREE, "isi"),
    "move_mount": (lib.ICD_OP_MOVE_MOUNT, "isisi"),
    "mount_setattr": (lib.ICD_OP_MOUNT_SETATTR, "isiiiii"),
    "fsopen": (lib.ICD_OP_FSOPEN, "si"),
    "fsconfig": (lib.ICD_OP_FSCONFIG, "iissi"),
    "fsmount": (lib.ICD_OP_FSMOUNT, "iii"),
    "fspick": (lib.ICD_OP_FSPICK, "isi"),
    # umount2(path, flags) only if path still resolves to mount `mnt_id` (else ESTALE)
    "umount2_checked": (lib.ICD_OP_UMOUNT_CHECKED, "sii"),
    # remount_fd(fd, ms_flags, data, attr_set, attr_clr): fspick + fsconfig on the
    # mount fd names, then mount_setattr on it (no path walk)
    "remount_fd": (lib.ICD_OP_REMOUNT_FD, "iisii"),
    # mount_fuse(source, target, fstype, flags, data without fd=, fuse_fd)
    "mount_fuse": (lib.ICD_OP_MOUNT_FUSE, "sssisi"),
}


def _op(op: str, args: tuple[Any, ...]) -> tuple[int, str]:
    """(C op, argument kinds) of `op`, checked against the arguments given."""
    try:
        cop, kinds = _OPS[op]
    except KeyError:
        raise ValueError(f"unknown ns_exec op {op!r}") from None
    if len(args) != len(kinds):
        raise TypeError(f"{op} takes {len(kinds)} arguments, got {len(args)}")
    return cop, kinds


def _path_bytes(v: Any) -> bytes:
    """A string argument as NUL-free bytes (what C will read up to its NUL)."""
    if isinstance(v, str):
        v = os.fsencode(v)
    if not isinstance(v, bytes) or b"\0" in v:
        raise ValueError(f"bad string argument {v!r}")
    return bytes(v)


def _cstr(v: Any) -> Any:
    return ffi.NULL if v is None else ffi.new("char[]", _path_bytes(v))


def _op_args(op: str, args: tuple[Any, ...]) -> tuple[int, Any, Any, list[Any]]:
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


def ns_exec(pidfd: int, pid: int, namespaces: int, op: str, *args: Any,
            timeout: float = 10.0) -> ExecResult:
    """Run one mount-family syscall inside the target's namespaces (CLONE_NEW*
    flags), with root and cwd set to the target's.  Arguments follow the
    syscall's order; mount_setattr takes (dfd, path, flags, attr_set, attr_clr,
    propagation, userns_fd) in place of its struct.  ExecResult.errno is ESRCH
    when the pidfd shows the target is gone; `fd` (for open_tree, fsopen,
    fsmount, fspick) belongs to the caller."""
    cop, s, a, _keep = _op_args(op, args)
    out = ffi.new("struct icd_exec_result *")
    _check(lib.icd_ns_exec(pidfd, pid, namespaces, cop, s, a, int(timeout * 1000), out),
           f"ns_exec({op})")
    return ExecResult(int(out.ret), int(out.err), int(out.fd))


def fd_mnt_id(fd: int) -> int:
    """The mount id (as in mountinfo) of the mount `fd` is on (statx STATX_MNT_ID)."""
    return _check(lib.icd_fd_mnt_id(fd), "fd_mnt_id")


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
    return _check(lib.icd_fd_mnt_uid(fd), "fd_mount_uid")


def mntns_id(nsfd: int) -> int:
    """The id of the mount namespace behind `nsfd` (NS_GET_MNTNS_ID)."""
    return _check(lib.icd_mntns_id(nsfd), "mntns_id")


def _facts(f: Any) -> MountFacts:
    dec = os.fsdecode
    return MountFacts(int(f.mnt_uid), int(f.parent_uid), int(f.mnt_id), int(f.parent_id),
                      f"{f.dev_major}:{f.dev_minor}", int(f.attr), int(f.sb_flags),
                      dec(ffi.string(f.fstype)), dec(ffi.string(f.root)),
                      dec(ffi.string(f.point)))


def statmount(uid: int, ns_id: int) -> MountFacts:
    """statmount(2) of the mount with unique id `uid` in mount namespace `ns_id`."""
    f = ffi.new("struct icd_mount_facts *")
    _check(lib.icd_statmount(uid, ns_id, f), "statmount")
    return _facts(f)


def fd_mount_facts(fd: int, pid: int) -> list[MountFacts]:
    """The mount `fd` is on and (if it has one in the namespace) its parent, as seen in
    the mount namespace of `pid`: statx + statmount, no mountinfo generated. OSError
    (ENOSYS, EINVAL on kernels before 6.11) when the kernel cannot tell."""
    out = ffi.new("struct icd_mount_facts[2]")
    n = _check(lib.icd_fd_mount_facts(fd, pid, out), "fd_mount_facts")
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
        _check(lib.icd_exec_start(pidfd, pid, self.namespaces, int(self.timeout * 1000),
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
        _check(lib.icd_exec_start(pidfd, pid, self.namespaces, int(self.timeout * 1000), x),
               "executor restart")
        if ((int(x.user_dev), int(x.user_ino)) != self.user_ns
                or (int(x.mnt_dev), int(x.mnt_ino)) != self.mnt_ns):
            lib.icd_exec_stop(x.sock, x.pid)
            raise ExecutorDied(errno_mod.ESTALE, "executor restart: the target changed "
                                                 "namespaces")
        self._x = x
        self.restarts += 1

    def run(self, pidfd: int, pid: int, op: str, *args: Any) -> ExecResult:
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
                strs.append(ffi.NULL if v is None else _path_bytes(v))
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


_FUSE_FILE_FIELDS = ("opens", "reads", "releases", "errors", "waits", "timeouts", "stale",
                     "refreshes", "renders", "failures", "cached_reads", "writes", "open_ns",
                     "read_ns", "max_ns")
_FUSE_FIELDS = ("requests", "unknown", "interrupts", "queue_full", "aliases", "containers",
                "parked", "handles", "write_errors", "read_errors")
FUSE_HIST: int = lib.ICD_FUSE_HIST


class FuseServer:
    """The emulated files' FUSE tree, served by C threads (csrc/fusefs.c).

    Files are declared with `add_file` before `start(mountpoint)`; each gets an id
    (its index). Containers are registered by pid namespace; the C side asks for
    renders (`requests`) and Python answers with `set` (or `fail`). No Python runs
    on a reader's path. See docs/emulation-fuse.md for the staleness bounds.
    """

    def __init__(self, workers: int = 2, wait_timeout: float = 1.0) -> None:
        ptr = lib.icd_fuse_new(workers, max(1, int(wait_timeout * 1000)))
        if ptr == ffi.NULL:
            raise OSError(ffi.errno, "icd_fuse_new")
        self._ptr = ffi.gc(ptr, lib.icd_fuse_free)
        self.paths: list[str] = []
        self._reqbuf = ffi.new("struct icd_fuse_req[]", 256)
        self._reqlock = threading.Lock()

    def add_file(self, path: str, fresh: float = 0.25, max_stale: float = 1.0,
                 size: int = 4096) -> int:
        """Declare the read-only file `path` (relative, e.g. "proc/meminfo"): bytes
        younger than `fresh` seconds are served as they are, up to `max_stale` while a
        re-render is requested, older ones wait for it. Readers of a container see
        its bytes' length as st_size; others (and before the first render) see
        `size` (not 0: see docs/emulation-fuse.md). Returns the file id."""
        fid = _check(lib.icd_fuse_add_file(self._ptr, _path_bytes(path), int(fresh * 1000),
                                           int(max_stale * 1000), size), f"add_file({path})")
        self.paths.append(path)
        return fid

    def start(self, mountpoint: str) -> None:
        """Mount the tree at `mountpoint` (a stale FUSE mount there is detached
        first) and start serving. Once per server (make a new one after `stop`)."""
        _check(lib.icd_fuse_start(self._ptr, _path_bytes(mountpoint)), "fuse start")

    def register(self, key: int, pid: int) -> None:
        """Readers in the pid namespace of `pid` (or in namespaces nested in it)
        read container `key`'s renders; the namespace is held while registered."""
        fd = os.open(f"/proc/{pid}/ns/pid", os.O_RDONLY | os.O_CLOEXEC)
        try:
            self.register_nsfd(key, fd)
        finally:
            os.close(fd)

    def register_nsfd(self, key: int, nsfd: int) -> None:
        """`register` from a pid-namespace fd (duplicated; EINVAL if it is not one,
        or is the daemon's own; EEXIST if the key or namespace is registered)."""
        _check(lib.icd_fuse_register(self._ptr, key, nsfd), "fuse register")

    def unregister(self, key: int) -> None:
        """Forget container `key` (its waiting readers get EIO; open files keep
        the bytes they opened)."""
        _check(lib.icd_fuse_unregister(self._ptr, key), "fuse unregister")

    def set(self, key: int, file_id: int, data: bytes) -> None:
        """The new bytes of file `file_id` for container `key`; answers its waiting
        readers. OSError(ENOENT) if `key` is not registered."""
        _check(lib.icd_fuse_set(self._ptr, key, file_id, data, len(data)), "fuse set")

    def fail(self, key: int, file_id: int, err: int = errno_mod.EIO) -> None:
        """The render failed: readers get `err` until the next render (requested
        again after the file's `fresh` bound)."""
        _check(lib.icd_fuse_fail(self._ptr, key, file_id, err), "fuse fail")

    def requests(self, timeout: float | None = None) -> list[tuple[int, int, int]]:
        """Pending requests as (key, file_id, write_id): a render when write_id is 0,
        else a parked write (`write_get`, `write_done`); waiting up to `timeout`
        seconds (None: until one comes, `wake` or `stop`); [] on timeout.
        OSError(ESHUTDOWN) once stopped."""
        ms = -1 if timeout is None else max(0, int(timeout * 1000))
        with self._reqlock:
            buf = self._reqbuf
            n = _check(lib.icd_fuse_requests(self._ptr, buf, len(buf), ms), "fuse requests")
            return [(int(buf[i].key), int(buf[i].file), int(buf[i].write)) for i in range(n)]

    def writable(self, file_id: int) -> None:
        """Before `start`: file `file_id` takes writes, each handed over as a request."""
        _check(lib.icd_fuse_writable(self._ptr, file_id), "fuse writable")

    def write_get(self, write_id: int) -> tuple[int, int, int, int, bytes] | None:
        """The parked write: (key, file_id, writer's uid, writer's pid, data); None if
        it was answered meanwhile (interrupted, timed out, container gone)."""
        w = ffi.new("struct icd_fuse_write *")
        n = lib.icd_fuse_write_get(self._ptr, write_id, w)
        if n < 0:
            return None
        return int(w.key), int(w.file), int(w.uid), int(w.pid), bytes(ffi.buffer(w.data, n))

    def write_done(self, write_id: int, result: int) -> bool:
        """Answer the write: `result` >= 0 bytes taken, or -errno. False if it was
        answered meanwhile."""
        return lib.icd_fuse_write_done(self._ptr, write_id, result) == 0

    def wake(self) -> None:
        """Make a blocked `requests` return."""
        lib.icd_fuse_wake(self._ptr)

    @property
    def dev(self) -> int:
        """st_dev of the mount (its /sys/fs/fuse/connections/<minor> entry)."""
        return int(lib.icd_fuse_dev(self._ptr))

    def stats(self) -> dict[str, Any]:
        """Global counters and, under "files", each file's: request counts, summed
        handling time (ns) and a latency histogram (`hist[0]` < 1 us, `hist[i]` <
        2**i us, the last bucket: more)."""
        g = ffi.new("struct icd_fuse_stats *")
        lib.icd_fuse_stats(self._ptr, g)
        out: dict[str, Any] = {k: int(getattr(g, k)) for k in _FUSE_FIELDS}
        s = ffi.new("struct icd_fuse_fstats *")
        files: dict[str, dict[str, Any]] = {}
        for fid, path in enumerate(self.paths):
            _check(lib.icd_fuse_file_stats(self._ptr, fid, s), "fuse file stats")
            d: dict[str, Any] = {k: int(getattr(s, k)) for k in _FUSE_FILE_FIELDS}
            d["hist"] = [int(s.hist[i]) for i in range(FUSE_HIST)]
            files[path] = d
        out["files"] = files
        return out

    def stop(self) -> None:
        """Detach the mount, end the threads and close /dev/fuse (binds of the
        files elsewhere then fail with ENOTCONN). Idempotent; in a forked child it
        only closes the child's copies of the fds."""
        _check(lib.icd_fuse_stop(self._ptr), "fuse stop")
