"""The containers the daemon protects, with everything needed to act on them."""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from interceptd.ocistate import ProcessState
from interceptd.policystore import PolicyStore
from interceptd.seams import Channel

COMM_CACHE_MAX = 4096


@dataclass
class Container:
    id: str
    bundle: str
    annotations: dict[str, str]
    init_pid: int
    pidfd: int
    notify_fds: list[int] = field(default_factory=list)
    started_at: float = field(default_factory=time.time)
    cgroup_paths: dict[str, str] = field(default_factory=dict)
    uid_map: list[tuple[int, int, int]] = field(default_factory=list)
    gid_map: list[tuple[int, int, int]] = field(default_factory=list)
    channel: Channel | None = field(default=None, repr=False)
    cookie: int = 0
    # The container's policy state (policystore.py), made by the handlers on first use,
    # freed on release.
    policy: PolicyStore | None = field(default=None, repr=False)
    # pid -> comm, read from /proc when a pid is first seen (events name the
    # caller even once it has exited); best effort, bounded, not persisted.
    comms: dict[int, str] = field(default_factory=dict, repr=False)

    def sent(self, st: ProcessState) -> bool:
        """Whether a message for this id comes from this very container: a second init
        message for a live id is another container reusing the id; exec messages are
        checked on what they carry (crun sends pid 0 and bundle ".", runc the init's)."""
        if st.is_init or (st.state.pid and st.state.pid != self.init_pid):
            return False
        return st.state.bundle in ("", ".") or st.state.bundle == self.bundle

    def comm(self, pid: int, read: Callable[[int], str]) -> str:
        name = self.comms.get(pid)
        if name is None:
            if len(self.comms) >= COMM_CACHE_MAX:
                self.comms.clear()  # pids get reused: start over rather than grow
            name = self.comms[pid] = read(pid)
        return name

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready state; the channel and pidfd are process-local and left out (but for
        the channel's call counts, see core.Channel.stats)."""
        ch = self.channel
        calls = ch.stats() if ch is not None and not ch.closed else {}
        return {
            "calls": calls,
            "id": self.id,
            "bundle": self.bundle,
            "annotations": dict(self.annotations),
            "init_pid": self.init_pid,
            "notify_fds": list(self.notify_fds),
            "started_at": self.started_at,
            "cgroup_paths": dict(self.cgroup_paths),
            "uid_map": [list(m) for m in self.uid_map],
            "gid_map": [list(m) for m in self.gid_map],
            "cookie": self.cookie,
        }


class DuplicateContainerError(Exception):
    """An id is already registered by a different container."""


class Registry:
    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._by_id: dict[str, Container] = {}

    @property
    def lock(self) -> threading.RLock:
        """Held by callers that must check-then-act (attach vs. last detach)."""
        return self._lock

    def add(self, c: Container) -> None:
        with self._lock:
            if c.id in self._by_id:
                raise DuplicateContainerError(c.id)
            self._by_id[c.id] = c

    def get(self, cid: str) -> Container | None:
        with self._lock:
            return self._by_id.get(cid)

    def remove(self, cid: str) -> Container | None:
        with self._lock:
            return self._by_id.pop(cid, None)

    def list(self) -> list[Container]:
        with self._lock:
            return sorted(self._by_id.values(), key=lambda c: c.started_at)

    def __len__(self) -> int:
        with self._lock:
            return len(self._by_id)

    def to_dict(self) -> dict[str, Any]:
        return {"containers": [c.to_dict() for c in self.list()]}


def read_cgroup_paths(pid: int, proc: str = "/proc") -> dict[str, str]:
    """{controllers: path} from /proc/<pid>/cgroup; "" is the v2 unified entry."""
    out: dict[str, str] = {}
    with open(f"{proc}/{pid}/cgroup") as f:
        for line in f:
            parts = line.rstrip("\n").split(":", 2)
            if len(parts) == 3:
                out[parts[1]] = parts[2]
    return out


def parse_id_map(text: str) -> list[tuple[int, int, int]]:
    out = []
    for line in text.splitlines():
        fields = line.split()
        if len(fields) == 3:
            inside, outside, count = (int(x) for x in fields)
            out.append((inside, outside, count))
    return out


def read_id_maps(
    pid: int, proc: str = "/proc"
) -> tuple[list[tuple[int, int, int]], list[tuple[int, int, int]]]:
    with open(f"{proc}/{pid}/uid_map") as f:
        uid = parse_id_map(f.read())
    with open(f"{proc}/{pid}/gid_map") as f:
        gid = parse_id_map(f.read())
    return uid, gid


def close_container_fds(c: Container) -> None:
    """Closes the pidfd; notify fds belong to the engine once attached."""
    if c.pidfd >= 0:
        with contextlib.suppress(OSError):
            os.close(c.pidfd)
        c.pidfd = -1
