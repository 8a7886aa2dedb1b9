"""The seams between the daemon's layers, as Protocols (what sysbox's domain/ interfaces
are to its seccomp handlers): a handler sees a `Request` on a `Container` with a `Channel`,
served by a `Core`. The real classes (handlers.Request, registry.Container, core.Channel,
the core module) and the unit tests' fakes implement them; nothing probes for attributes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

from interceptd.config import Config
from interceptd.policystore import PolicyStore

__all__ = ["Channel", "Config", "Container", "Core", "ExecResult", "Notification", "Request"]


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
class Notification(Protocol):
    """One received notification, as the Python path holds it (core.Notification)."""

    @property
    def id(self) -> int: ...
    @property
    def pid(self) -> int: ...
    @property
    def nr(self) -> int: ...
    @property
    def fd(self) -> int: ...


@runtime_checkable
class Channel(Protocol):
    """A container's verdict table and Python-path queue (core.Channel)."""

    closed: bool

    def set_rule(self, nr: int, action: int, value: int = 0) -> None: ...

    def answer(self, notif: Notification, value: int, error: int, flags: int) -> int: ...

    def stats(self) -> dict[str, int]: ...

    def interrupt(self) -> None: ...

    def quiesce_native(self, timeout: float) -> bool: ...

    def close(self) -> None: ...

    def set_sysinfo(self, raw: bytes, fresh: float) -> bool: ...

    def enable_native(self, fstypes: list[str], pidfd: int, pid: int,
                      notify_fd: int) -> None: ...


@runtime_checkable
class Container(Protocol):
    """The record of one protected container (registry.Container)."""

    id: str
    bundle: str
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
    Detached: type  # a channel's item: a notify fd whose tasks are all gone

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
