"""A stand-in for interceptd.core with the same API, for kernel-free unit tests."""

from __future__ import annotations

import errno
import os
import queue
from dataclasses import dataclass, field
from typing import Any

ACT_CONTINUE = 1
ACT_ERRNO = 2
ACT_VALUE = 3
ACT_PYTHON = 4
ACT_NATIVE = 5
ACT_SYSINFO = 6
ACT_HOLD = 7
FLAG_CONTINUE = 1


class TargetGone(Exception):
    pass


@dataclass
class Notification:
    id: int
    pid: int
    nr: int
    arch: int = 0xC000003E
    ip: int = 0
    args: list[int] = field(default_factory=lambda: [0] * 6)
    notify_fd: int = 3


@dataclass
class Detached:
    notify_fd: int


@dataclass
class DecisionRecord:
    cookie: int
    id: int
    pid: int
    nr: int
    action: int
    value: int
    ns_time: int = 0
    send_errno: int = 0
    args: tuple[int, ...] = ()
    comm: str = ""
    reason: str = ""
    recv_ns: int = 0
    sent_ns: int = 0

    @property
    def handling_ns(self) -> int:
        return self.sent_ns - self.recv_ns if self.recv_ns and self.sent_ns else 0


_KICK = object()


class FakeChannel:
    def __init__(self, cookie: int) -> None:
        self.cookie = cookie
        self.rules: dict[int, tuple[int, int]] = {}
        self.default: tuple[int, int] | None = None
        self.items: queue.Queue[Any] = queue.Queue()
        self.responses: list[tuple[int, dict[str, Any]]] = []
        self.addfds: list[tuple[int, int, int]] = []
        self.fds: list[int] = []
        self.closed = False
        self.fail_respond: Exception | None = None
        self.native: tuple[list[str], int, int, int] | None = None
        self.quiesced = False
        self.act_held = False

    def set_rule(self, nr: int, action: int, value: int = 0) -> None:
        self.rules[nr] = (action, value)

    def clear_rule(self, nr: int) -> None:
        self.rules.pop(nr, None)

    def set_sysinfo(self, raw: bytes, fresh: float) -> bool:
        self.sysinfo = (raw, fresh)
        return True

    def enable_native(self, fstypes: list[str], pidfd: int, pid: int, notify_fd: int) -> None:
        self.native = (list(fstypes), pidfd, pid, notify_fd)

    def stats(self) -> dict[str, int]:
        return {"fast": 0, "python": len(self.responses)}

    def set_default(self, action: int, value: int) -> None:
        self.default = (action, value)

    def wait(self, timeout: float | None = None) -> list[Any]:
        try:
            first = (self.items.get_nowait() if timeout == 0
                     else self.items.get(timeout=timeout))
        except queue.Empty:
            return []
        out = [first]
        while True:
            try:
                out.append(self.items.get_nowait())
            except queue.Empty:
                return [i for i in out if i is not _KICK]

    def interrupt(self) -> None:
        self.items.put(_KICK)

    def act_lock(self, lock: bool) -> None:
        self.act_held = lock

    def quiesce_native(self, timeout: float) -> bool:
        self.quiesced = True
        return True

    def respond(self, notif: Any, *, value: int = 0, error: int = 0, cont: bool = False) -> None:
        if self.fail_respond is not None:
            raise self.fail_respond
        self.responses.append((notif.id, {"value": value, "error": error, "cont": cont}))

    def answer(self, notif: Any, value: int, error: int, flags: int) -> int:
        try:
            self.respond(notif, value=value, error=error, cont=bool(flags & FLAG_CONTINUE))
        except TargetGone:
            return -errno.ENOENT
        except OSError as e:
            return -(e.errno or errno.EIO)
        return 0

    def addfd(self, notif: Any, srcfd: int, newfd_flags: int, send: bool = True) -> int:
        self.addfds.append((notif.id, srcfd, newfd_flags))
        return 7

    def close(self) -> None:
        self.closed = True
        self.items.put(_KICK)


class FakeEngine:
    def __init__(self) -> None:
        self.channels: dict[int, FakeChannel] = {}
        self.decisions: list[DecisionRecord] = []
        self.dropped_decisions = 0
        self.closed = False

    def channel(self, cookie: int) -> FakeChannel:
        ch = FakeChannel(cookie)
        self.channels[cookie] = ch
        return ch

    def attach(self, channel: FakeChannel, notify_fd: int) -> None:
        channel.fds.append(notify_fd)

    def drain_decisions(self) -> list[DecisionRecord]:
        out, self.decisions = self.decisions, []
        return out

    def close(self) -> None:
        self.closed = True


def read_target(pid: int, addr: int, size: int, notify_fd: int, notif_id: int) -> bytes:
    return b"\0" * size


def read_target_string(pid: int, addr: int, max_len: int, notify_fd: int, notif_id: int) -> bytes:
    return b"x"


MARKS: list[tuple[int, int, int, int]] = []  # journal_mark calls


def journal_mark(notify_fd: int, pid: int, notif_id: int, err: int) -> None:
    MARKS.append((notify_fd, pid, notif_id, err))


def id_valid(notify_fd: int, notif_id: int) -> bool:
    return True


@dataclass
class ExecResult:
    ret: int
    errno: int
    fd: int = -1


def ns_exec(pidfd: int, pid: int, namespaces: int, op: str, *args: object) -> ExecResult:
    """No namespaces to enter here: every operation fails as the kernel would without
    the call (ENOSYS), so a handler's error path is what a test sees."""
    return ExecResult(-1, errno.ENOSYS)


class WrongNamespaces(OSError):
    pass


class ExecutorDied(OSError):
    pass


def _ns(pid: int, name: str) -> tuple[int, int]:
    st = os.stat(f"/proc/{pid}/ns/{name}")
    return (st.st_dev, st.st_ino)


class Executor:
    """A persistent executor in `pid`'s namespaces that, like ns_exec here, fails every
    operation as the kernel would without the call (ENOSYS)."""

    def __init__(self, pidfd: int, pid: int, namespaces: int) -> None:
        self.user_ns, self.mnt_ns = _ns(pid, "user"), _ns(pid, "mnt")
        self.closed = False

    def run(self, pidfd: int, pid: int, op: str, *args: object) -> ExecResult:
        if self.closed:
            raise ExecutorDied(errno.EBADF, "executor closed")
        if (_ns(pid, "user"), _ns(pid, "mnt")) != (self.user_ns, self.mnt_ns):
            raise WrongNamespaces(errno.EXDEV, "target not in the executor's namespaces")
        return ExecResult(-1, errno.ENOSYS)

    def close(self) -> None:
        self.closed = True


ZYGOTE_PARTS = None  # the executors are the daemon's own


def notify_probe() -> dict[str, Any]:
    return {"user_notif": True, "sync_wakeup": True, "addfd_send": True}


Engine = FakeEngine
