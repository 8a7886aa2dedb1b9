"""Python face of the C core's notify engine (csrc/engine.c and its neighbours):
the engine, its channels, probes and bounded reads of a target's memory.

The namespace executors and mount facts are in core_exec.py, the FUSE server in
core_fuse.py; they are re-exported here, so `core.X` is the one name callers use.
Blocking calls release the GIL (cffi does so for every call into C).
"""

from __future__ import annotations

import errno
import os
import threading
import weakref
from dataclasses import dataclass
from typing import NamedTuple

from interceptd._corelib import (
    TargetGone,
    check,
    check_notif,
    ffi,
    fields,
    lib,
    struct_of,
)
from interceptd.core_exec import (  # noqa: F401  (re-exported)
    OPS,
    ZYGOTE_PARTS,
    ExecResult,
    Executor,
    ExecutorDied,
    MountFacts,
    WrongNamespaces,
    fd_mnt_id,
    fd_mount_facts,
    fd_mount_uid,
    mntns_id,
    ns_exec,
    statmount,
)
from interceptd.core_fuse import FUSE_HIST, FuseServer  # noqa: F401  (re-exported)

ACT_CONTINUE: int = lib.ICD_ACT_CONTINUE
ACT_ERRNO: int = lib.ICD_ACT_ERRNO
ACT_VALUE: int = lib.ICD_ACT_VALUE
ACT_PYTHON: int = lib.ICD_ACT_PYTHON
ACT_NATIVE: int = lib.ICD_ACT_NATIVE
ACT_SYSINFO: int = lib.ICD_ACT_SYSINFO
ACT_HOLD: int = lib.ICD_ACT_HOLD
NR_MAX: int = lib.ICD_NR_MAX
READ_MAX: int = lib.ICD_READ_MAX
_ITEM_NOTIF: int = lib.ICD_ITEM_NOTIF
_respond = lib.icd_channel_respond
FLAG_CONTINUE = 1  # SECCOMP_USER_NOTIF_FLAG_CONTINUE, for Channel.answer
_wait = lib.icd_channel_wait
_ITEM = struct_of("struct icd_item")
_new_notification = tuple.__new__
_CHSTATS = fields("struct icd_chstats")

# How long Channel.wait polls the queue before sleeping; see docs/INTERNALS.md.
DEFAULT_SPIN_US = 20


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
class DecisionRecord:
    """One call the C side answered without Python (the verdict table, the native
    helper), as the engine's ring holds it."""

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
    recv_ns: int = 0  # CLOCK_MONOTONIC when the call was received (0: unknown)
    sent_ns: int = 0  # CLOCK_MONOTONIC right after it was answered

    @property
    def handling_ns(self) -> int:
        """Receive to answer, in ns, as the C path measured it (0 if unknown)."""
        return self.sent_ns - self.recv_ns if self.recv_ns and self.sent_ns else 0


def notify_probe() -> dict[str, bool]:
    """Kernel features of seccomp user notification, probed in a throwaway child."""
    p = ffi.new("struct icd_probe *")
    check(lib.icd_notify_probe(p), "notify_probe")
    return {
        "user_notif": bool(p.user_notif),
        "sync_wakeup": bool(p.sync_wakeup),
        "addfd_send": bool(p.addfd_send),
    }


def id_valid(notify_fd: int, notif_id: int) -> bool:
    return bool(check(lib.icd_notify_id_valid(notify_fd, notif_id), "id_valid"))


def journal_mark(notify_fd: int, pid: int, notif_id: int, err: int) -> None:
    """The call is acted on (a mount done) with `err` (0: success) and not answered
    yet: a successor that finds it in the journal answers so instead of acting again
    (csrc/journal.c). Best effort: a call not journaled is left as it is."""
    lib.icd_journal_mark(notify_fd, pid, notif_id, -err)


def read_target(pid: int, addr: int, size: int, notify_fd: int, notif_id: int) -> bytes:
    """Exactly `size` bytes at `addr` (<= READ_MAX), trusted only because the
    notification was still valid after the read (else TargetGone)."""
    if size == 0:
        if not id_valid(notify_fd, notif_id):
            raise TargetGone()
        return b""
    buf = ffi.new("char[]", size)
    check_notif(lib.icd_read_target(pid, addr, buf, size, notify_fd, notif_id), "read_target")
    return ffi.buffer(buf, size)[:]


def has_cap(pid: int, cap: int) -> bool:
    """Whether process `pid` has capability `cap` in its effective set (capget)."""
    return bool(check(lib.icd_has_cap(pid, cap), "capget"))


def read_target_string(pid: int, addr: int, max_len: int, notify_fd: int,
                       notif_id: int) -> bytes:
    """The NUL-terminated string at `addr` without its NUL; ENAMETOOLONG when no
    NUL is found within `max_len` bytes (the NUL included)."""
    # One buffer per thread, grown to the largest max_len asked: a fresh zeroed 4 KiB
    # cffi allocation per string was a measurable part of a Python-path mount.
    buf = getattr(_strbufs, "buf", None)
    if buf is None or len(buf) < max_len:
        buf = _strbufs.buf = ffi.new("char[]", max(max_len, 4096))
    n = check_notif(lib.icd_read_target_string(pid, addr, buf, max_len, notify_fd, notif_id),
                    "read_target_string")
    return ffi.buffer(buf, n)[:]


_strbufs = threading.local()


class Channel:
    """One container's verdict table and Python-path queue."""

    def __init__(self, engine: Engine, cookie: int, queue_size: int) -> None:
        pp = ffi.new("struct icd_channel **")
        check(lib.icd_channel_new(engine._ptr, cookie, queue_size, pp), "icd_channel_new")
        self._ptr = ffi.gc(pp[0], lib.icd_channel_free)
        self._engine = engine  # the C channel records decisions in the engine's ring
        self.cookie = cookie
        self.closed = False
        self.spin_us = DEFAULT_SPIN_US
        self._tls = threading.local()  # each waiting thread's item buffer

    def set_rule(self, nr: int, action: int, value: int = 0) -> None:
        check(lib.icd_channel_set_rule(self._ptr, nr, action, value), f"set_rule({nr})")

    def clear_rule(self, nr: int) -> None:
        check(lib.icd_channel_set_rule(self._ptr, nr, lib.ICD_ACT_DEFAULT, 0), "clear_rule")

    def set_sysinfo(self, raw: bytes, fresh: float) -> bool:
        """Publish the container's struct sysinfo for ACT_SYSINFO, answered in C for
        `fresh` seconds from now (csrc/canned.c); False if a concurrent publisher won."""
        r = lib.icd_channel_set_sysinfo(self._ptr, raw, len(raw), int(fresh * 1e9))
        if r == -errno.EBUSY:  # its figures are as fresh as ours
            return False
        check(r, "set_sysinfo")
        return True

    def set_default(self, action: int, value: int = 0) -> None:
        check(lib.icd_channel_set_default(self._ptr, action, value), "set_default")

    def set_direct(self, on: bool) -> None:
        """Direct mode (default on): a Python-path waiter receives on a one-fd
        channel's notify fd itself; see docs/INTERNALS.md."""
        lib.icd_channel_set_direct(self._ptr, 1 if on else 0)

    def interrupt(self) -> None:
        """Make a blocked `wait` (or the next one) return, with [] if nothing
        is queued: how a waiter with no timeout is told to look up."""
        lib.icd_channel_interrupt(self._ptr)

    def act_lock(self, lock: bool) -> None:
        """Take (True) or release (False) the lock the native helper holds while it vets
        and performs a mount-family call; the Python path holds it across its own."""
        check(lib.icd_channel_act_lock(self._ptr, 1 if lock else 0), "act_lock")

    def quiesce_native(self, timeout: float) -> bool:
        """A hand-over's: the native helper finishes the call in hand and exits;
        True once it is gone (or there is none), False if it still acts after
        `timeout` seconds (0: only ask)."""
        r = lib.icd_channel_quiesce_native(self._ptr, int(timeout * 1000))
        if r == -errno.ETIMEDOUT:
            return False
        check(r, "quiesce_native")
        return True

    def wait(self, timeout: float | None = None,
             max_items: int = 32) -> list[Notification | Detached]:
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
        out: list[Notification | Detached] = []
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
        check_notif(_respond(self._ptr, notif.notify_fd, notif.id, value, -error,
                             1 if cont else 0), "respond")

    def answer(self, notif: Notification, value: int, error: int, flags: int) -> int:
        """respond() for the hot path: no keywords, no exception; returns 0 or
        -errno (-ENOENT: the notification is gone). `flags` 0 or FLAG_CONTINUE."""
        return _respond(self._ptr, notif.notify_fd, notif.id, value, -error, flags)

    def addfd(self, notif: Notification, srcfd: int, newfd_flags: int = 0,
              send: bool = True) -> int:
        """Install a copy of `srcfd` in the target; with `send` this also answers
        the notification with the new fd number.  Returns that number."""
        return check_notif(lib.icd_channel_addfd(self._ptr, notif.notify_fd, notif.id, srcfd,
                                                 newfd_flags, 1 if send else 0), "addfd")

    def id_valid(self, notif: Notification) -> bool:
        """Like id_valid(), but False once the fd was detached (never touches
        a closed, possibly reused, fd number)."""
        return bool(check(lib.icd_channel_id_valid(self._ptr, notif.notify_fd, notif.id),
                           "id_valid"))

    def read_target(self, notif: Notification, addr: int, size: int) -> bytes:
        """read_target() for `notif`, with its fd held attached during the read."""
        if size == 0:
            if not self.id_valid(notif):
                raise TargetGone()
            return b""
        buf = ffi.new("char[]", size)
        check_notif(lib.icd_channel_read(self._ptr, notif.notify_fd, notif.id, notif.pid, addr,
                                         buf, size, 0), "read_target")
        return ffi.buffer(buf, size)[:]

    def read_target_string(self, notif: Notification, addr: int, max_len: int) -> bytes:
        """read_target_string() for `notif`, with its fd held attached."""
        buf = ffi.new("char[]", max_len)
        n = check_notif(lib.icd_channel_read(self._ptr, notif.notify_fd, notif.id, notif.pid,
                                             addr, buf, max_len, 1), "read_target_string")
        return ffi.buffer(buf, n)[:]

    def stats(self) -> dict[str, int]:
        s = ffi.new("struct icd_chstats *")
        lib.icd_channel_stats(self._ptr, s)
        return {k: int(getattr(s, k)) for k in _CHSTATS}

    def enable_native(self, fstypes: list[str], pidfd: int, pid: int, notify_fd: int) -> None:
        """Start the native mount helper in the namespaces of `pid` (`pidfd` names it) and
        let it receive on `notify_fd` (csrc/native.c): it performs mount(2) of these
        filesystem types and umount2(2) where the policy surely allows them and forwards
        every other notification here. The caller then sets ACT_NATIVE rules for them."""
        blob = b"".join(os.fsencode(t) + b"\0" for t in fstypes) + b"\0"
        check(lib.icd_channel_set_native(self._ptr, blob, len(blob), pidfd, pid, notify_fd),
               "set_native")

    def close(self) -> None:
        """Stop the receivers, fail queued notifications with ENOSYS, close the fds."""
        self.closed = True
        lib.icd_channel_close(self._ptr)


class Engine:
    """Receiver threads (one per notify fd) and the ring of fast-path decisions."""

    def __init__(self, ring_size: int = 65536) -> None:
        pp = ffi.new("struct icd_engine **")
        check(lib.icd_engine_new(ring_size, pp), "icd_engine_new")
        self._ptr = ffi.gc(pp[0], lib.icd_engine_free)
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
        check(lib.icd_engine_attach(self._ptr, channel._ptr, notify_fd), "attach")

    def drain_decisions(self, max_items: int = 4096) -> list[DecisionRecord]:
        out: list[DecisionRecord] = []
        with self._drain_lock:
            buf = self._drain_buf
            cap = min(max_items, len(buf))
            while len(out) < max_items:
                n = lib.icd_engine_drain(self._ptr, buf, min(cap, max_items - len(out)))
                for i in range(n):
                    d = buf[i]
                    out.append(DecisionRecord(
                        d.cookie, d.id, d.pid, d.nr, d.action, d.value, d.ns_time,
                        d.send_errno, tuple(d.args),
                        ffi.string(d.comm).decode(errors="replace")
                        if d.comm[0] != b"\0" else "",
                        ffi.string(d.reason).decode(errors="replace")
                        if d.reason[0] != b"\0" else "",
                        d.recv_ns, d.sent_ns))
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
