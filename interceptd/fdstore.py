"""File descriptors that must outlive the daemon process: systemd's fd store.

A service pushes an fd to the store with one notify datagram, `FDSTORE=1` and
`FDNAME=<name>`, the fd attached by SCM_RIGHTS (sd_pid_notify_with_fds(3)); the unit
needs `FileDescriptorStoreMax=`. `FDSTOREREMOVE=1` with `FDNAME=` drops every fd of that
name. systemd drops an fd by itself once it polls POLLHUP/POLLERR (a seccomp listener
whose tasks are all gone). When systemd starts the service again it passes the stored
fds (sd_listen_fds(3)): fds 3, 4, … with `LISTEN_FDS=<n>`, `LISTEN_FDNAMES=<a>:<b>:…`
and `LISTEN_PID=<the service's pid>` (a child that inherited them must ignore them).

The store here also keeps its own duplicate of every fd, so the daemon can hand them
over without systemd (interceptd/handover.py) and knows what it pushed.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import select
from collections.abc import Mapping

from interceptd.sdnotify import Notifier

log = logging.getLogger("interceptd.fdstore")

SD_LISTEN_FDS_START = 3
MAX_NAME = 255


def valid_name(name: str) -> bool:
    """systemd's rule for FDNAME=: printable ASCII but ':' (the list separator)."""
    return 0 < len(name) <= MAX_NAME and all(0x20 < ord(ch) < 0x7f and ch != ":"
                                              for ch in name)


def listen_fds(environ: Mapping[str, str] | None = None, *, unset: bool = True
               ) -> list[tuple[str, int]]:
    """The fds systemd (or a peer playing it) passed, as (name, fd), made close-on-exec.
    Empty unless `LISTEN_PID` is this process. The variables are removed from
    os.environ so that no child takes them for its own."""
    env = os.environ if environ is None else environ
    pid, count = env.get("LISTEN_PID", ""), env.get("LISTEN_FDS", "")
    names = env.get("LISTEN_FDNAMES", "")
    if unset and environ is None:
        for k in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
            os.environ.pop(k, None)
    if pid != str(os.getpid()) or not count.isdigit():
        return []
    n = int(count)
    split = names.split(":") if names else []
    out = []
    for i in range(n):
        fd = SD_LISTEN_FDS_START + i
        try:
            flags = fcntl.fcntl(fd, fcntl.F_GETFD)
            fcntl.fcntl(fd, fcntl.F_SETFD, flags | fcntl.FD_CLOEXEC)
        except OSError:
            continue  # not open after all: nothing to adopt
        out.append((split[i] if i < len(split) and split[i] else "unknown", fd))
    return out


def hung_up(fd: int) -> bool:
    """A seccomp listener with no task left (or a dead socket) polls POLLHUP/ERR."""
    p = select.poll()
    p.register(fd, 0)
    return any(ev & (select.POLLHUP | select.POLLERR | select.POLLNVAL) for _, ev in p.poll(0))


class FdStore:
    """Named fds kept for a successor: pushed to systemd's store when there is one, and
    duplicated here (close-on-exec) in every case."""

    def __init__(self, notifier: Notifier) -> None:
        self._notifier = notifier
        self._fds: dict[str, int] = {}

    def __contains__(self, name: str) -> bool:
        return name in self._fds

    def __len__(self) -> int:
        return len(self._fds)

    def items(self) -> list[tuple[str, int]]:
        return list(self._fds.items())

    def keep(self, name: str, fd: int) -> None:
        """Own an fd that is in systemd's store already (an adopted one): no push."""
        self._replace(name, fd)

    def add(self, name: str, fd: int) -> None:
        """Push a duplicate of `fd` under `name` (the caller keeps `fd`)."""
        if not valid_name(name):
            raise ValueError(f"bad fd store name {name!r}")
        dup = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, SD_LISTEN_FDS_START)
        self._replace(name, dup)
        if self._notifier.enabled and not self._notifier.send(
                fds=[dup], FDSTORE=1, FDNAME=name):
            log.warning("fd not stored with the service manager", extra={"fields": {
                "name": name}})

    def remove(self, name: str) -> None:
        """Close ours and drop systemd's copies (held here or not)."""
        fd = self._fds.pop(name, None)
        if fd is not None:
            with contextlib.suppress(OSError):
                os.close(fd)
        if self._notifier.enabled:
            self._notifier.send(FDSTOREREMOVE=1, FDNAME=name)

    def prune(self, prefix: str) -> list[str]:
        """Drop the fds named `prefix…` that hung up; their names."""
        gone = [n for n, fd in self._fds.items() if n.startswith(prefix) and hung_up(fd)]
        for n in gone:
            self.remove(n)
        return gone

    def _replace(self, name: str, fd: int) -> None:
        old = self._fds.get(name)
        self._fds[name] = fd
        if old is not None and old != fd:
            with contextlib.suppress(OSError):
                os.close(old)
