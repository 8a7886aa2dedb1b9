"""A container's policy state as one object owned by its record (`Container.policy`):
the attach-time immutable-mount set and masks, the emulated files bound at attach, the
sysinfo source, the native helper's flag and the cached mount tables. Freed on release
(`close`), or when the record is collected.

Persistence: `<state-dir>/policy/<container>.json`, keyed by the init's pid and start
time, so a restarted daemon keeps the attach-time snapshot instead of re-deriving a coarser
one. The load entry point is `load(path, init_pid, start)` (`PolicyStore.state` calls it
before snapshotting), `state_path(persist_dir, container_id)` names the file.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import threading
import weakref
from dataclasses import dataclass, field
from typing import Any, Protocol

from interceptd.emulation.sysinfo import Sysinfo
from interceptd.kernel.mounttable import MountTable, TableCache
from interceptd.kernel.procinfo import start_ticks
from interceptd.policy.immutable import (
    DEFAULT_MASKED_PATHS,
    DEFAULT_READONLY_PATHS,
    ImmutableSet,
    snapshot,
)

log = logging.getLogger("interceptd.policy")

FUSE_FSTYPE = "fuse.interceptd"


class SysinfoSource(Protocol):
    """Where the container's sysinfo(2) figures come from (handlers/sysinfo.Source)."""

    def gather(self) -> Sysinfo: ...


class Owner(Protocol):
    """What the store needs of its container record."""

    id: str
    bundle: str
    init_pid: int


@dataclass
class ContainerPolicy:
    imm: ImmutableSet
    masked: tuple[str, ...]
    readonly: tuple[str, ...]
    lock: threading.Lock = field(default_factory=threading.Lock)
    sysinfo: SysinfoSource | None = None  # made on first use
    native: bool = False  # the native mount helper was started (or tried) for it
    # container path -> the daemon's file bound there at attach (the emulated files):
    # a procfs/sysfs the container mounts later gets the same binds.
    emulated: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"immutable": self.imm.to_dict(), "masked": list(self.masked),
                "readonly": list(self.readonly), "emulated": dict(self.emulated)}


def state_path(persist_dir: str | None, container_id: str) -> str | None:
    if persist_dir is None:
        return None
    cid = "".join(ch if ch.isalnum() or ch in "-_.+" else "_" for ch in str(container_id))
    return os.path.join(persist_dir, f"{cid}.json")


def load(path: str | None, init_pid: int, start: int) -> ContainerPolicy | None:
    """The state saved at `path` for the container whose init is (`init_pid`, `start`),
    or None (no file, unreadable, or a different container that reused the id)."""
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


def bundle_paths(bundle: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """maskedPaths/readonlyPaths of the container's config.json (what runc applied)."""
    masked, readonly = DEFAULT_MASKED_PATHS, DEFAULT_READONLY_PATHS
    try:
        with open(os.path.join(bundle or "", "config.json"), encoding="utf-8") as f:
            linux = json.load(f).get("linux", {})
        masked = tuple(linux.get("maskedPaths", masked))
        readonly = tuple(linux.get("readonlyPaths", readonly))
    except (OSError, ValueError, AttributeError):
        pass
    # Docker's defaults always apply to procfs/sysfs the container mounts later.
    return (tuple(dict.fromkeys(masked + DEFAULT_MASKED_PATHS)),
            tuple(dict.fromkeys(readonly + DEFAULT_READONLY_PATHS)))


def emulated_binds(table: MountTable, fuse_dir: str | None) -> dict[str, str]:
    """The emulated files interceptd-runc bound in the container (what its init's mount
    table shows: our FUSE type on an emulated path), each with the daemon's file."""
    if fuse_dir is None:
        return {}
    from interceptd.emulation import registry

    out = {}
    for e in table.entries:
        path = registry.file_at(e.mountpoint) if e.fstype == FUSE_FSTYPE else None
        if path is not None:
            out[e.mountpoint] = fuse_dir + path
    return out


class PolicyStore:
    """One container's policy state, owned by its record."""

    def __init__(self, persist_dir: str | None = None, fuse_dir: str | None = None) -> None:
        self.persist_dir = persist_dir
        self.fuse_dir = fuse_dir
        self.tables = TableCache()
        self._lock = threading.Lock()
        self._state: ContainerPolicy | None = None
        self._path: str | None = None
        self._init: tuple[int, int] = (0, 0)
        self._finalizer: weakref.finalize | None = None

    def state(self, owner: Owner) -> ContainerPolicy:
        """The policy state, snapshotted from the init's mount table on first use (or
        reloaded from the state dir after a daemon restart).

        The first use is before any mount change the policy vets: runc installs the filter
        after it has set up the container's mounts, and every mount-changing syscall is
        notified."""
        st = self._state
        if st is not None:
            return st
        start = start_ticks(owner.init_pid)
        path = state_path(self.persist_dir, owner.id)
        st = load(path, owner.init_pid, start)
        fresh = st is None
        if st is None:
            masked, readonly = bundle_paths(owner.bundle)
            table = MountTable.read(owner.init_pid)
            emulated = emulated_binds(table, self.fuse_dir)
            st = ContainerPolicy(snapshot(table, masked, readonly, emulated), masked, readonly,
                                 emulated=emulated)
        with self._lock:
            if self._state is not None:
                return self._state
            self._state, self._path, self._init = st, path, (owner.init_pid, start)
            self._finalizer = weakref.finalize(self, _drop, path, owner.init_pid, start,
                                               self.tables)
        if fresh:
            self.save()
        return st

    def save(self) -> None:
        """Write the state (atomically) for a restarted daemon."""
        st, path = self._state, self._path
        if st is None or path is None:
            return
        try:
            os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
            d = st.to_dict()
            d.update(init_pid=self._init[0], init_start=self._init[1])
            tmp = f"{path}.tmp"
            with open(tmp, "w", encoding="utf-8") as f:
                json.dump(d, f)
            os.replace(tmp, path)
        except (OSError, ValueError) as e:
            log.warning("policy state not saved: %s", e)

    @property
    def loaded(self) -> bool:
        return self._state is not None

    def close(self) -> None:
        """Free the state and the cached tables (their fds pin mount namespaces); the
        saved file goes too if the container is gone (not just this daemon)."""
        fin = self._finalizer
        if fin is not None:
            fin()
        else:
            self.tables.close()
        self._state = None


def _drop(path: str | None, init_pid: int, start: int, tables: TableCache) -> None:
    tables.close()
    if path is None:
        return
    try:
        alive = start_ticks(init_pid) == start
    except (OSError, ValueError):
        alive = False
    if not alive:
        with contextlib.suppress(OSError):
            os.unlink(path)
