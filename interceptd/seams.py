"""The seams between the daemon's layers, as Protocols (what sysbox's domain/ interfaces
are to its seccomp handlers): a handler sees a `Request` on a `Container` with a `Channel`,
served by a `Core`. The real classes (handlers.Request, registry.Container, core.Channel,
the core module) and the unit tests' fakes implement them; nothing probes for attributes.
(The dispatcher's side: an `Engine` makes the channels and drains `DecisionRecord`s.)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol, runtime_checkable

from interceptd.config import Config
from interceptd.policystore import PolicyStore

__all__ = ["Channel", "Config", "Container", "Core", "DecisionRecord", "Detached", "Engine",
           "ExecResult", "Executor", "HelperStart", "Notification", "Request", "Watcher",
           "ZygoteParts"]


@runtime_checkable
class ExecResult(Protocol):
    """One executor operation's result (core.ExecResult)."""

    @property
    def ret(self) -> int: ...
    @property
    def errno(self) -> int: ...
    @property
    def fd(self) -> int: ...


@runtime_checkable
class Executor(Protocol):
    """A persistent helper in one target's user and mount namespaces (core.Executor)."""

    user_ns: tuple[int, int]  # (dev, ino) of the namespaces it entered
    mnt_ns: tuple[int, int]

    def run(self, pidfd: int, pid: int, op: str, *args: object) -> ExecResult: ...

    def close(self) -> None: ...


# Core.Executor's result (inside Core the name is the factory's)
AnExecutor = Executor

# (pidfd, pid, namespaces, timeout ms) -> (helper socket, helper pidfd, (helper pid, ids)):
# an executor's helper started by the zygote (kernel/zygote.Zygote.start)
HelperStart = Callable[[int, int, int, int], tuple[int, int, tuple[int, ...]]]


@runtime_checkable
class ZygoteParts(Protocol):
    """What kernel/zygote.py needs to fork a core's executors from its own small process
    (core_exec.ZYGOTE_PARTS): the helper's start, run in the zygote, and the executor
    class that asks the zygote instead of forking."""

    def start_helper(self, pidfd: int, pid: int, namespaces: int,
                     timeout_ms: int) -> tuple[int, int, tuple[int, ...]]: ...

    def stop_helper(self, sock: int, pid: int) -> None: ...

    def executor(self, start: HelperStart, pidfd: int, pid: int,
                 namespaces: int) -> Executor: ...


@runtime_checkable
class Notification(Protocol):
    """One received notification, as the Python path holds it (core.Notification)."""

    @property
    def id(self) -> int: ...
    @property
    def pid(self) -> int: ...
    @property
    def nr(self) -> int: ...
    @property
    def arch(self) -> int: ...
    @property
    def args(self) -> Sequence[int]: ...
    @property
    def notify_fd(self) -> int: ...


@runtime_checkable
class Detached(Protocol):
    """A channel's item saying that a notify fd's tasks are all gone (core.Detached)."""

    @property
    def notify_fd(self) -> int: ...


@runtime_checkable
class Channel(Protocol):
    """A container's verdict table and Python-path queue (core.Channel)."""

    closed: bool

    def set_rule(self, nr: int, action: int, value: int = 0) -> None: ...

    def clear_rule(self, nr: int) -> None: ...

    def set_default(self, action: int, value: int = 0) -> None: ...

    def wait(self, timeout: float | None = None) -> Sequence[Notification | Detached]: ...

    def answer(self, notif: Notification, value: int, error: int, flags: int) -> int: ...

    def respond(self, notif: Notification, *, value: int = 0, error: int = 0,
                cont: bool = False) -> None: ...

    def addfd(self, notif: Notification, srcfd: int, newfd_flags: int = 0,
              send: bool = True) -> int: ...

    def stats(self) -> dict[str, int]: ...

    def interrupt(self) -> None: ...

    def quiesce_native(self, timeout: float) -> bool: ...

    def act_lock(self, lock: bool) -> None: ...

    def close(self) -> None: ...

    def set_sysinfo(self, raw: bytes, fresh: float) -> bool: ...

    def enable_native(self, fstypes: list[str], pidfd: int, pid: int,
                      notify_fd: int) -> None: ...


@runtime_checkable
class DecisionRecord(Protocol):
    """A call the C side answered without Python, drained from the engine's ring
    (core.DecisionRecord)."""

    @property
    def cookie(self) -> int: ...
    @property
    def pid(self) -> int: ...
    @property
    def nr(self) -> int: ...
    @property
    def action(self) -> int: ...
    @property
    def value(self) -> int: ...
    @property
    def ns_time(self) -> int: ...
    @property
    def send_errno(self) -> int: ...
    @property
    def args(self) -> Sequence[int]: ...
    @property
    def comm(self) -> str: ...
    @property
    def reason(self) -> str: ...  # the native helper's; "" for the verdict table's
    @property
    def handling_ns(self) -> int: ...


@runtime_checkable
class Engine(Protocol):
    """The receivers and the ring of C-side decisions (core.Engine)."""

    @property
    def dropped_decisions(self) -> int: ...

    def channel(self, cookie: int) -> Channel: ...

    def attach(self, channel: Channel, notify_fd: int) -> None: ...

    def drain_decisions(self) -> Sequence[DecisionRecord]: ...

    def close(self) -> None: ...


@runtime_checkable
class Watcher(Protocol):
    """Told of each container's attach and release (the eBPF layer, ebpf.BpfLayer)."""

    def track(self, container_id: str, cgroup_path: str) -> None: ...

    def untrack(self, container_id: str) -> None: ...


@runtime_checkable
class Container(Protocol):
    """The record of one protected container (registry.Container)."""

    id: str
    bundle: str
    cookie: int  # its channel's key
    init_pid: int
    pidfd: int
    notify_fds: list[int]
    channel: Channel | None
    policy: PolicyStore | None


@runtime_checkable
class Core(Protocol):
    """The C core's calls a handler makes (the interceptd.core module)."""

    ACT_CONTINUE: int
    ACT_ERRNO: int
    ACT_VALUE: int
    ACT_NATIVE: int
    ACT_SYSINFO: int
    ACT_PYTHON: int
    ACT_HOLD: int
    FLAG_CONTINUE: int
    TargetGone: type[Exception]
    WrongNamespaces: type[OSError]  # an executor's caller stands in other namespaces
    ExecutorDied: type[OSError]  # an executor's helper is gone
    Detached: type  # a channel's item: a notify fd whose tasks are all gone
    # None: the executors are forked by the daemon itself (a unit fake)
    ZYGOTE_PARTS: ZygoteParts | None

    def Executor(self, pidfd: int, pid: int, namespaces: int) -> AnExecutor: ...

    def read_target(self, pid: int, addr: int, size: int, notify_fd: int,
                    notif_id: int) -> bytes: ...

    def read_target_string(self, pid: int, addr: int, max_len: int, notify_fd: int,
                           notif_id: int) -> bytes: ...

    def id_valid(self, notify_fd: int, notif_id: int) -> bool: ...

    def journal_mark(self, notify_fd: int, pid: int, notif_id: int, err: int) -> None: ...

    def ns_exec(self, pidfd: int, pid: int, namespaces: int, op: str,
                *args: object) -> ExecResult: ...


@runtime_checkable
class Request(Protocol):
    """One notification handed to a handler (handlers.Request)."""

    @property
    def container(self) -> Container: ...
    @property
    def core(self) -> Core: ...
    @property
    def syscall(self) -> str: ...
    @property
    def args(self) -> Sequence[int]: ...
    @property
    def pid(self) -> int: ...

    def read(self, addr: int, size: int) -> bytes: ...

    def read_string(self, addr: int, max_len: int) -> bytes: ...

    def valid(self) -> bool: ...

    def exec(self, namespaces: int, op: str, *args: object) -> ExecResult: ...
